"""Order matching through the service layer on SQLite and PostgreSQL; every fill is a ledger batch.

Market ETH/BTC (tests/support/config.py): prices in satoshi per ETH, tick 10;
quantities in wei, step 0.001 ETH, minimum 0.01 ETH; maker fee 0.1%, taker 0.2%."""
import pytest
from sqlalchemy import select, update

from custody.db import schema as t
from custody.errors import FailedPrecondition, IdempotencyConflict, InsufficientFunds, InvalidArgument, NotFound
from tests.support.matching import ETH, MARKET, accounts, balances, fees_revenue, open_holds, place

BTC = 10**8


def book(app):
    bids, asks, _ = app.matching.order_book(MARKET, 10)
    return bids, asks


def test_price_time_priority_and_the_makers_price(app):
    """The best price fills first, then the oldest order at that price, at the resting order's price."""
    s1, s2, s3, buyer = accounts(app, 4, btc=BTC, eth=10 * ETH)
    first = place(app, s1, "SELL", 101_000, ETH)
    second = place(app, s2, "SELL", 100_000, ETH)
    third = place(app, s3, "SELL", 100_000, ETH)
    taker = place(app, buyer, "BUY", 101_000, 3 * ETH // 2)

    assert [(tr.maker_order_id, tr.price, tr.quantity) for tr in taker.trades] == [
        (second.order.order_id, 100_000, ETH), (third.order.order_id, 100_000, ETH // 2)]
    assert taker.order.status == "FILLED" and taker.order.held == 0
    # Paid at the makers' price: 150,000 sat plus the 0.2% taker fee; the hold
    # taken at 101,000 sat came back (price improvement).
    assert balances(app, buyer) == {"BTC": (BTC - 150_000 - 300, 0), "ETH": (10 * ETH + 3 * ETH // 2, 0), "USDT": (0, 0)}
    assert balances(app, s2)["BTC"] == (BTC + 100_000 - 100, 0)  # 0.1% maker fee
    assert balances(app, s3)["BTC"] == (BTC + 50_000 - 50, 0)
    assert balances(app, s3)["ETH"] == (9 * ETH, ETH // 2)
    assert balances(app, s1)["ETH"] == (9 * ETH, ETH)
    assert fees_revenue(app) == 300 + 100 + 50
    assert book(app) == ([], [(100_000, ETH // 2), (101_000, ETH)])
    assert app.matching.get_order(first.order.order_id).status == "OPEN"
    assert app.matching.get_order(third.order.order_id).status == "PARTIALLY_FILLED"


def test_partial_fills_across_several_resting_orders_and_the_rest_rests(app):
    b1, b2, b3, seller = accounts(app, 4, btc=BTC, eth=10 * ETH)
    place(app, b1, "BUY", 100_000, ETH)
    place(app, b2, "BUY", 99_000, ETH)
    place(app, b3, "BUY", 98_000, ETH)
    taker = place(app, seller, "SELL", 99_000, 5 * ETH // 2)

    assert [(tr.price, tr.quantity) for tr in taker.trades] == [(100_000, ETH), (99_000, ETH)]
    assert (taker.order.status, taker.order.filled_quantity, taker.order.held) == ("PARTIALLY_FILLED", 2 * ETH, ETH // 2)
    assert balances(app, seller) == {"BTC": (BTC + 199_000 - 200 - 198, 0), "ETH": (10 * ETH - 5 * ETH // 2, ETH // 2),
                                     "USDT": (0, 0)}
    # Resting bids held the 0.2% fee in case they took; as makers they paid 0.1%: the rest came back.
    assert balances(app, b1)["BTC"] == (BTC - 100_000 - 100, 0)
    assert balances(app, b2)["BTC"] == (BTC - 99_000 - 99, 0)
    assert balances(app, b3)["BTC"] == (BTC - 98_000 - 196, 98_000 + 196)
    assert book(app) == ([(98_000, ETH)], [(99_000, ETH // 2)])


def test_immediate_or_cancel_expires_the_rest(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    ioc = place(app, buyer, "BUY", 100_000, 2 * ETH, "IOC")
    assert (ioc.order.status, ioc.order.reason, ioc.order.filled_quantity, ioc.order.held) == (
        "EXPIRED", "immediate_or_cancel", ETH, 0)
    assert balances(app, buyer)["BTC"] == (BTC - 100_000 - 200, 0)
    assert book(app) == ([], [])


def test_fill_or_kill_fills_completely_or_not_at_all(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    killed = place(app, buyer, "BUY", 100_000, 2 * ETH, "FOK")
    assert (killed.order.status, killed.order.reason, killed.order.filled_quantity, killed.trades) == (
        "EXPIRED", "fill_or_kill", 0, ())
    assert balances(app, buyer)["BTC"] == (BTC, 0)
    assert book(app) == ([], [(100_000, ETH)])
    filled = place(app, buyer, "BUY", 100_000, ETH, "FOK")
    assert (filled.order.status, len(filled.trades)) == ("FILLED", 1)
    assert balances(app, buyer)["BTC"] == (BTC - 100_200, 0)


def test_a_market_order_stops_at_its_protective_price(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    place(app, seller, "SELL", 102_000, ETH)
    market = place(app, buyer, "BUY", 101_000, 2 * ETH, "IOC", type="MARKET")
    assert [(tr.price, tr.quantity) for tr in market.trades] == [(100_000, ETH)]
    assert (market.order.status, market.order.type) == ("EXPIRED", "MARKET")
    assert balances(app, buyer)["BTC"] == (BTC - 100_200, 0)
    assert book(app) == ([], [(102_000, ETH)])


def test_post_only_that_would_match_is_refused_with_nothing_held(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    with pytest.raises(FailedPrecondition, match="post-only"):
        place(app, buyer, "BUY", 100_000, ETH, post_only=True, key="po-1")
    assert balances(app, buyer)["BTC"] == (BTC, 0)
    assert book(app) == ([], [(100_000, ETH)])
    resting = place(app, buyer, "BUY", 99_990, ETH, post_only=True, key="po-2")
    assert resting.order.status == "OPEN" and resting.order.post_only


def test_self_trade_prevention_cancels_the_resting_order(app):
    me, other = accounts(app, 2, btc=BTC, eth=10 * ETH)
    mine = place(app, me, "SELL", 100_000, ETH)
    theirs = place(app, other, "SELL", 100_000, ETH)
    taker = place(app, me, "BUY", 100_000, ETH)
    assert [tr.maker_order_id for tr in taker.trades] == [theirs.order.order_id]
    cancelled = app.matching.get_order(mine.order.order_id)
    assert (cancelled.status, cancelled.reason, cancelled.held) == ("CANCELLED", "self_trade_prevention", 0)
    assert balances(app, me)["ETH"] == (11 * ETH, 0)  # its own ask released, one ETH bought
    assert book(app) == ([], [])


def test_cancel_releases_the_hold_and_is_idempotent(app):
    (buyer,) = accounts(app, 1, btc=BTC)
    order = place(app, buyer, "BUY", 100_000, ETH)
    assert balances(app, buyer)["BTC"] == (BTC - 100_200, 100_200)
    cancelled = app.matching.cancel("exchange", "cancel-1", order.order.order_id)
    assert (cancelled.order.status, cancelled.order.reason, cancelled.order.held) == ("CANCELLED", "cancelled", 0)
    assert not cancelled.replayed
    assert balances(app, buyer)["BTC"] == (BTC, 0)
    again = app.matching.cancel("exchange", "cancel-1", order.order.order_id)
    assert again.replayed and again.order == cancelled.order
    other_key = app.matching.cancel("exchange", "cancel-2", order.order.order_id)  # cancelled already: fine
    assert not other_key.replayed and other_key.order == cancelled.order
    assert book(app) == ([], [])
    with pytest.raises(NotFound):
        app.matching.cancel("exchange", "cancel-3", "0" * 32)
    with pytest.raises(InvalidArgument):
        app.matching.cancel("exchange", "", order.order.order_id)


def test_a_cancel_key_names_one_order(app):
    """The same key for another order is ALREADY_EXISTS and cancels nothing; keys are per client;
    a refused cancel does not use up its key."""
    (buyer,) = accounts(app, 1, btc=BTC)
    first, second = (place(app, buyer, "BUY", price, ETH) for price in (100_000, 99_990))
    app.matching.cancel("exchange", "k", first.order.order_id)
    with pytest.raises(IdempotencyConflict):
        app.matching.cancel("exchange", "k", second.order.order_id)
    assert app.matching.get_order(second.order.order_id).status == "OPEN"
    assert book(app) == ([(99_990, ETH)], [])
    with pytest.raises(NotFound):
        app.matching.cancel("exchange", "k2", "f" * 32)
    assert not app.matching.cancel("exchange", "k2", second.order.order_id).replayed  # k2 was not used up
    assert app.matching.cancel("another-client", "k", first.order.order_id).order.status == "CANCELLED"
    assert balances(app, buyer)["BTC"] == (BTC, 0)


def test_cancel_keys_queued_together(app):
    """Cancels queued at once (committed in one group or several): a replay and a conflict."""
    (buyer,) = accounts(app, 1, btc=BTC)
    a, b = (place(app, buyer, "BUY", price, ETH) for price in (100_000, 99_990))
    futures = [app.matching.submit_cancel("exchange", "g", a.order.order_id),
               app.matching.submit_cancel("exchange", "g", a.order.order_id),
               app.matching.submit_cancel("exchange", "g", b.order.order_id)]
    assert futures[0].result().order.status == "CANCELLED" and futures[1].result().replayed
    with pytest.raises(IdempotencyConflict):
        futures[2].result()
    assert app.matching.get_order(b.order.order_id).status == "OPEN"


def test_a_filled_order_cannot_be_cancelled(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    resting = place(app, seller, "SELL", 100_000, ETH)
    place(app, buyer, "BUY", 100_000, ETH)
    with pytest.raises(FailedPrecondition, match="FILLED"):
        app.matching.cancel("exchange", "cancel-filled", resting.order.order_id)


def test_rounding_goes_to_the_exchange_by_at_most_one_unit_and_is_recorded(app):
    """0.001 ETH at 100,010 sat/ETH is worth 100.01 sat: the buyer pays the ceiling once per order."""
    s1, s2, s3, buyer = accounts(app, 4, btc=BTC, eth=ETH)
    step = 10**15
    for s in (s1, s2, s3):
        place(app, s, "SELL", 100_010, 10 * step)
    taker = place(app, buyer, "BUY", 100_010, 30 * step)
    # Each fill is worth 1000.1 sat; the buyer's order pays ceil(3000.3) = 3001 in all.
    assert [(tr.buyer_paid, tr.seller_gross, tr.rounding) for tr in taker.trades] == [
        (1001, 1000, 1), (1000, 1000, 0), (1000, 1000, 0)]
    assert [tr.buyer_fee for tr in taker.trades] == [3, 2, 2]  # ceil(6.0006) = 7 over the order
    assert [tr.seller_fee for tr in taker.trades] == [2, 2, 2]  # ceil(1.0001) per fill
    assert balances(app, buyer)["BTC"] == (BTC - 3001 - 7, 0)  # exactly what it held: ceil(3000.3) + ceil(6.0006)
    for s in (s1, s2, s3):
        assert balances(app, s)["BTC"] == (BTC + 998, 0)
    assert fees_revenue(app) == 1 + 7 + 6
    with app.engine.connect() as conn:
        rows = conn.execute(select(t.trades.c.rounding).order_by(t.trades.c.id)).scalars().all()
    assert rows == [1, 0, 0]


def test_insufficient_funds_and_frozen_accounts_are_refused_with_nothing_held(app):
    poor, frozen = accounts(app, 2, btc=100_199)
    with pytest.raises(InsufficientFunds):
        place(app, poor, "BUY", 100_000, ETH)  # needs 100,000 + 200 fee
    with app.engine.begin() as conn:
        conn.execute(update(t.accounts).where(t.accounts.c.id == frozen).values(frozen=True))
    with pytest.raises(FailedPrecondition, match="frozen"):
        place(app, frozen, "BUY", 10_000, ETH)
    with pytest.raises(NotFound):
        place(app, 999_999, "BUY", 10_000, ETH)
    assert balances(app, poor)["BTC"] == (100_199, 0) and balances(app, frozen)["BTC"] == (100_199, 0)
    assert open_holds(app) == 0
    assert place(app, poor, "BUY", 99_990, ETH).order.held == 99_990 + 200


def freeze(app, account: int) -> None:
    with app.engine.begin() as conn:
        conn.execute(update(t.accounts).where(t.accounts.c.id == account).values(frozen=True))


def test_a_frozen_accounts_resting_order_is_cancelled_instead_of_filled(app):
    """Frozen after placing: its ask is cancelled (hold released) before the next order matches, which
    fills the next ask instead."""
    frozen, other, buyer = accounts(app, 3, btc=BTC, eth=10 * ETH)
    stuck = place(app, frozen, "SELL", 100_000, ETH)
    theirs = place(app, other, "SELL", 100_000, ETH)
    freeze(app, frozen)
    taker = place(app, buyer, "BUY", 100_000, ETH)
    assert [tr.maker_order_id for tr in taker.trades] == [theirs.order.order_id]
    cancelled = app.matching.get_order(stuck.order.order_id)
    assert (cancelled.status, cancelled.reason, cancelled.held, cancelled.filled_quantity) == (
        "CANCELLED", "account_frozen", 0, 0)
    assert (balances(app, frozen)["BTC"], balances(app, frozen)["ETH"]) == ((BTC, 0), (10 * ETH, 0))  # released
    assert book(app) == ([], [])


def test_fill_or_kill_does_not_count_a_frozen_accounts_orders(app):
    frozen, other, buyer = accounts(app, 3, btc=BTC, eth=10 * ETH)
    place(app, frozen, "SELL", 100_000, ETH)
    place(app, other, "SELL", 100_000, ETH)
    freeze(app, frozen)
    killed = place(app, buyer, "BUY", 100_000, 2 * ETH, "FOK")
    assert (killed.order.status, killed.order.filled_quantity, killed.trades) == ("EXPIRED", 0, ())
    assert balances(app, buyer)["BTC"] == (BTC, 0)
    assert book(app) == ([], [(100_000, ETH)])  # the frozen account's ask is gone, the other one untouched


def test_a_freeze_empties_the_book_of_the_accounts_orders_at_the_next_request(app):
    """Any next request (here a cancel of an unrelated order) first cancels all resting orders of
    accounts frozen since, on every market side; the market data shows the levels go."""
    frozen, other = accounts(app, 2, btc=BTC, eth=10 * ETH)
    asks = [place(app, frozen, "SELL", price, ETH) for price in (100_000, 100_010)]
    bid = place(app, frozen, "BUY", 99_000, ETH)
    mine = place(app, other, "BUY", 98_000, ETH)
    freeze(app, frozen)
    _, _, cursor = app.matching.engine.order_book(MARKET, 10)
    app.matching.cancel("exchange", "unrelated", mine.order.order_id)
    assert book(app) == ([], [])
    for o in (*asks, bid):
        got = app.matching.get_order(o.order.order_id)
        assert (got.status, got.reason, got.held) == ("CANCELLED", "account_frozen", 0)
    assert balances(app, frozen)["BTC"] == (BTC, 0) and balances(app, frozen)["ETH"] == (10 * ETH, 0)
    changes = [item.payload for item in app.matching.market_data_after(MARKET, cursor)]
    assert all('"0"' in p for p in changes) and len(changes) == 4  # three levels gone, then the cancelled bid


def test_idempotent_place(app):
    (buyer,) = accounts(app, 1, btc=BTC)
    first = place(app, buyer, "BUY", 100_000, ETH, key="same")
    again = place(app, buyer, "BUY", 100_000, ETH, key="same")
    assert again.replayed and not first.replayed
    fields = ("order_id", "status", "price", "quantity", "held", "sequence")
    assert [getattr(again.order, f) for f in fields] == [getattr(first.order, f) for f in fields]
    assert balances(app, buyer)["BTC"] == (BTC - 100_200, 100_200)
    with pytest.raises(IdempotencyConflict):
        place(app, buyer, "BUY", 100_010, ETH, key="same")
    other_client = place(app, buyer, "BUY", 100_000, ETH, key="same", client="another-client")
    assert other_client.order.order_id != first.order.order_id


def test_a_trade_is_one_ledger_batch_on_the_event_stream(app):
    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    taker = place(app, buyer, "BUY", 100_000, ETH)
    events = [e for e in app.events_after(0, 1000) if e.type == "ledger.trade"]
    assert len(events) == 1 and taker.trades[0].batch_id in events[0].payload
    assert f'"reference":"trade:{taker.trades[0].trade_id}"' in events[0].payload


def test_a_trade_pointing_at_no_order_is_reported_by_the_check(app, request):
    """trades has no foreign keys (migration 0009): `custody admin check` reports what they would have refused."""
    from custody.ledger.invariants import check

    seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
    place(app, seller, "SELL", 100_000, ETH)
    place(app, buyer, "BUY", 100_000, ETH)
    assert check(app.engine).ok
    request.node.skip_invariants = True  # corrupted on purpose
    with app.engine.begin() as conn:
        conn.execute(update(t.trades).values(maker_order_id="0" * 32, buyer_account_id=10**9))
    messages = [f.message for f in check(app.engine).findings if f.invariant == "references"]
    assert any(f"1 trades.maker_order_id values point at no orders row (e.g. {'0' * 32})" in m for m in messages)
    assert any("1 trades.buyer_account_id values point at no accounts row" in m for m in messages)


def test_the_book_survives_a_restart(config, app):
    """Open orders come back in time priority with what they hold; matching goes on where it stopped."""
    a, b, c = accounts(app, 3, btc=BTC, eth=10 * ETH)
    place(app, a, "SELL", 100_000, ETH)
    place(app, b, "SELL", 100_000, 2 * ETH)
    place(app, c, "SELL", 100_500, ETH)
    place(app, a, "BUY", 90_000, ETH)
    place(app, c, "BUY", 100_000, ETH // 2)  # partly fills a's ask
    cancelled = place(app, b, "BUY", 80_000, ETH)
    app.matching.cancel("exchange", "restart-cancel", cancelled.order.order_id)
    before = {name: book.snapshot() for name, book in app.matching.engine.books.items()}
    state = {o.id: (o.remaining, o.filled, o.fill_value, o.quote_filled, o.fee, o.hold_remaining, o.sequence)
             for o in app.matching.engine.books[MARKET].orders.values()}
    app.close()

    from custody.app import Custody
    again = Custody(config)
    try:
        assert {name: book.snapshot() for name, book in again.matching.engine.books.items()} == before
        assert {o.id: (o.remaining, o.filled, o.fill_value, o.quote_filled, o.fee, o.hold_remaining, o.sequence)
                for o in again.matching.engine.books[MARKET].orders.values()} == state
        (d,) = accounts(again, 1, btc=BTC, prefix="late")
        taker = place(again, d, "BUY", 100_000, 2 * ETH)
        assert [(tr.seller_account_id, tr.quantity) for tr in taker.trades] == [(a, ETH // 2), (b, 3 * ETH // 2)]
    finally:
        again.close()
        app.close = lambda: None  # closed above; the fixture would close it twice


def test_when_the_ledger_refuses_what_memory_allowed_nothing_of_the_group_is_lost(app, monkeypatch):
    """The in-memory forecast is wrong for one order (as after a concurrent transfer on PostgreSQL):
    the ledger refuses its hold, the group rolls back, the books are rebuilt and each request is
    retried alone: that order fails with InsufficientFunds, the others go through."""
    from matching_stub import engine as engine_mod

    rich, poor = accounts(app, 2, btc=BTC, eth=10 * ETH)
    real_load = engine_mod._LedgerFunds.load

    def optimistic_load(self, keys):
        real_load(self, keys)
        if (poor, "BTC") in keys:
            self.balances[(poor, "BTC")] += 10**12  # the forecast thinks poor is rich

    monkeypatch.setattr(engine_mod._LedgerFunds, "load", optimistic_load)
    app.transfer("exchange", "drain", str(poor), str(rich), "BTC", str(BTC), "")  # poor has no BTC left
    service = app.matching
    requests = [service.parse_place("exchange", f"g-{i}", str(who), MARKET, side, "LIMIT", "GTC", False, "100000",
                                    str(ETH)) for i, (who, side) in enumerate(((rich, "SELL"), (poor, "BUY"),
                                                                                (rich, "BUY")))]
    results, _, _ = service.engine.run(requests)
    assert [type(r).__name__ for r in results] == ["Placed", "InsufficientFunds", "Placed"]
    assert results[2].order.status == "OPEN"  # its own ask is cancelled by self-trade prevention
    assert balances(app, poor)["BTC"] == (0, 0)
    assert book(app) == ([(100_000, ETH)], [])
    assert set(service.engine.books[MARKET].orders) == {results[2].order.order_id}


def test_two_engines_on_one_database_never_match_from_stale_books(config, app):
    """Two core instances on one database, orders to both in turn: whichever writes takes the
    epoch and reloads the books first, so every order sees the other's; the book of the one
    that does not write is refused (FAILED_PRECONDITION), not served stale. An instance that
    only starts (as the scanner's process does) takes nothing from the one that matches."""
    from custody.app import Custody
    from matching_stub.engine import EngineReplaced

    a, b, c = accounts(app, 3, btc=BTC, eth=10 * ETH)
    first = place(app, a, "SELL", 100_000, ETH)
    idle = Custody(config)
    try:
        assert app.matching.order_book(MARKET, 10)[:2] == ([], [(100_000, ETH)])  # still the writer
        second = place(app, b, "SELL", 100_010, ETH)
        newer = Custody(config)
        try:
            assert newer.matching.order_book(MARKET, 10)[:2] == ([], [(100_000, ETH), (100_010, ETH)])
            taker = place(newer, c, "BUY", 100_000, ETH)  # takes over: matches the ask placed through app
            assert [tr.maker_order_id for tr in taker.trades] == [first.order.order_id]
            with pytest.raises(EngineReplaced):
                app.matching.order_book(MARKET, 10)
            with pytest.raises(EngineReplaced):
                idle.matching.order_book(MARKET, 10)
            again = place(app, c, "BUY", 100_010, ETH)  # app takes over again and reloads: no fill of `first`
            assert [tr.maker_order_id for tr in again.trades] == [second.order.order_id]
            with pytest.raises(FailedPrecondition, match="FILLED"):  # filled through newer, app knows it now
                app.matching.cancel("exchange", "after-take-over", first.order.order_id)
        finally:
            newer.close()
        assert app.matching.order_book(MARKET, 10)[:2] == ([], [])
        assert balances(app, c)["ETH"] == (12 * ETH, 0)
    finally:
        idle.close()


def test_a_group_lost_with_the_database_leaves_nothing_in_the_books(pg_url, monkeypatch):
    """The database goes away while a group commits, and is still away when the engine
    rebuilds its books after the rollback: once it is back, the next order matches what
    committed, not the fill of the group that was lost."""
    from custody.app import Custody
    from matching_stub import engine as engine_mod
    from tests.support.config import make_config
    from tests.support.databases import refuse_connections

    app = Custody(make_config(pg_url))
    try:
        seller, buyer = accounts(app, 2, btc=BTC, eth=10 * ETH)
        resting = place(app, seller, "SELL", 100_000, ETH).order
        real_flush = engine_mod._Group.flush

        def flush_as_the_database_goes(self):
            refuse_connections(pg_url)  # ends the group's connection: its commit fails
            return real_flush(self)

        monkeypatch.setattr(engine_mod._Group, "flush", flush_as_the_database_goes)
        try:
            with pytest.raises(Exception):
                place(app, buyer, "BUY", 100_000, ETH, key="lost")
        finally:
            refuse_connections(pg_url, refused=False)
            monkeypatch.setattr(engine_mod._Group, "flush", real_flush)

        assert balances(app, buyer)["ETH"] == (10 * ETH, 0)  # nothing of the lost group committed
        placed = place(app, buyer, "BUY", 100_000, ETH, key="after")
        assert placed.order.status == "FILLED"
        assert [tr.maker_order_id for tr in placed.trades] == [resting.order_id]
        assert balances(app, buyer)["ETH"] == (11 * ETH, 0)
        assert book(app) == ([], [])
    finally:
        app.close()


def test_a_sell_that_took_from_huge_bids_can_still_be_filled_as_a_maker(db_url):
    """A sell filled at the bids' prices, far above its own, summed fill and fee values past what the
    78-digit columns hold: on PostgreSQL every later buy that met it failed with a numeric overflow,
    until its owner cancelled it. A sell's proceeds are worked out per fill; the sums were unused."""
    import dataclasses

    from custody.app import Custody
    from tests.support.config import make_config

    base = make_config(db_url)
    markets = tuple(dataclasses.replace(m, price_unit=1, price_tick=1, quantity_step=1, min_quantity=1,
                                        maker_fee_ppm=100_000, taker_fee_ppm=100_000) for m in base.markets)
    app = Custody(dataclasses.replace(base, markets=markets))
    try:
        q, p = 10**36 - 1, 10**36 + 1  # q x p = 10^72 - 1: the largest a bid may be here
        for buyer in accounts(app, 10, btc=2 * 10**72, prefix="bigbuyer"):
            place(app, buyer, "BUY", p, q)
        (seller,) = accounts(app, 1, eth=10 * q + 10**6, prefix="seller")
        sell = place(app, seller, "SELL", 1, 10 * q + 10**6)
        assert sell.order.filled_quantity == 10 * q and len(sell.trades) == 10  # the rest rests
        (small,) = accounts(app, 1, btc=10**6, prefix="smallbuyer")
        for _ in range(3):
            assert place(app, small, "BUY", 1, 100).order.status == "FILLED"
        assert balances(app, seller)["ETH"] == (0, 10**6 - 300)
    finally:
        app.close()


def test_a_resting_order_whose_owner_is_frozen_during_a_group_does_not_trade(pg_url, monkeypatch):
    """PostgreSQL: the group read frozen accounts when it began; a freeze committed after that was
    confirmed to staff, and the frozen maker's resting order still traded in the group (found by the
    matching review). The fill now names the maker as not frozen, and the request is played again
    in a new group, which sweeps the frozen maker's orders first."""
    from custody.accounts.service import set_frozen
    from custody.app import Custody
    from matching_stub import engine as engine_mod
    from tests.support.config import make_config

    app = Custody(make_config(pg_url))
    try:
        maker, other, taker = accounts(app, 3, btc=10**8, eth=10 * ETH)
        resting = place(app, maker, "SELL", 100_000, ETH).order
        fallback = place(app, other, "SELL", 110_000, ETH).order
        real_load, frozen_at = engine_mod._LedgerFunds.load_frozen, []

        def load_frozen_then_staff_freeze(self):
            real_load(self)  # the group's read: the maker is not frozen yet
            if not frozen_at:  # staff freeze it now, in a transaction of their own, committed first
                frozen_at.append(set_frozen(app.engine, maker, True, "alice-admin", "deposit reversed")[2])

        monkeypatch.setattr(engine_mod._LedgerFunds, "load_frozen", load_frozen_then_staff_freeze)
        placed = place(app, taker, "BUY", 110_000, ETH)
        assert [tr.maker_order_id for tr in placed.trades] == [fallback.order_id]  # the other seller's
        assert app.matching.get_order(resting.order_id).status == "CANCELLED"  # swept, never traded
        assert balances(app, maker)["ETH"] == (10 * ETH, 0)  # its held ETH back, none sold
    finally:
        app.close()
