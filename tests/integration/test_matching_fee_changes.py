"""A market's fee rates changed while buy orders rest (docs/matching.md, "Changing fee rates").

A buy holds its fee at the market's higher rate when it was placed, and keeps that rate
(orders.held_fee_ppm): the service starts after the rates changed, the order keeps its hold,
and each fill charges it min(the market's current rate for the fill, its held rate).
Before, the start recomputed every resting buy's hold at the new rates and refused to start
(RecoveryError)."""
import pytest
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, update

from custody.app import Custody
from custody.config import MarketConfig
from custody.db import schema as t
from custody.db.engine import make_engine
from custody.db.migrate import alembic_config, current
from matching_stub import amounts
from matching_stub.book import BUY, SELL, Book, Order
from matching_stub.engine import MatchingEngine, RecoveryError
from matching_stub.matcher import DictFunds, Matcher
from tests.support.matching import ETH, MARKET, accounts, balances, config_with_fees, fees_revenue, open_holds, place

BTC = 10**8
PRICE = 100_000  # sat per ETH: 1 ETH is worth 100,000 sat


def stored_rates(app) -> dict[str, int | None]:
    with app.engine.connect() as conn:
        return dict(conn.execute(select(t.orders.c.id, t.orders.c.held_fee_ppm)).all())


def resting_buy_with_a_fill(app) -> tuple[int, int, str]:
    """At maker 0.1% / taker 0.2%: a buy of 1 ETH rests (holding its fee at 0.2%), then a sell
    of 0.3 ETH fills it as maker at 0.1%. Returns (buyer, seller, buy order id)."""
    buyer, seller = accounts(app, 2, btc=BTC, eth=10 * ETH)
    buy = place(app, buyer, "BUY", PRICE, ETH)
    assert buy.order.held == 100_000 + 200
    place(app, seller, "SELL", PRICE, 3 * ETH // 10)
    # Paid 30,000 + 30 (0.1%); the rest, 70,000, still held with its fee at 0.2%: 140.
    assert balances(app, buyer)["BTC"] == (BTC - 30_030 - 70_140, 70_140)
    return buyer, seller, buy.order.order_id


# (new maker, new taker, what the resting buy is charged as maker): the held rate is 2000 ppm.
CHANGES = [
    pytest.param(1000, 2500, 1000, id="higher-max-rate"),
    pytest.param(3000, 4000, 2000, id="maker-rate-above-the-held-rate"),  # capped at what it holds
    pytest.param(1000, 1500, 1000, id="lower-max-rate"),
    pytest.param(500, 1500, 500, id="both-rates-lower"),
]


@pytest.mark.parametrize("maker_ppm, taker_ppm, charged_ppm", CHANGES)
def test_fee_rates_changed_while_a_buy_rests(db_url, maker_ppm, taker_ppm, charged_ppm):
    app = Custody(config_with_fees(db_url, 1000, 2000))
    try:
        buyer, seller, buy_id = resting_buy_with_a_fill(app)
        before = (balances(app, buyer), balances(app, seller), fees_revenue(app))
    finally:
        app.close()

    app = Custody(config_with_fees(db_url, maker_ppm, taker_ppm))  # raised RecoveryError before
    try:
        # It still rests, with the hold it was sized with.
        assert (balances(app, buyer), balances(app, seller), fees_revenue(app)) == before
        order = app.matching.get_order(buy_id)
        assert (order.status, order.held, order.fee) == ("PARTIALLY_FILLED", 70_140, 30)
        assert app.matching.order_book(MARKET, 10)[:2] == ([(PRICE, 7 * ETH // 10)], [])

        # Sells take it: the buyer pays min(the new maker rate, 0.2%); its hold is kept at
        # the rest's cost plus 0.2% (what it may still be charged), the excess released.
        first = place(app, seller, "SELL", PRICE, 3 * ETH // 10).trades
        assert [(tr.buyer_paid, tr.buyer_fee) for tr in first] == [(30_000, 30_000 * charged_ppm // 10**6)]
        assert balances(app, buyer)["BTC"][1] == 40_000 + 80
        second = place(app, seller, "SELL", PRICE, 4 * ETH // 10).trades
        assert [(tr.buyer_paid, tr.buyer_fee) for tr in second] == [(40_000, 40_000 * charged_ppm // 10**6)]
        order = app.matching.get_order(buy_id)
        assert (order.status, order.held, order.fee) == ("FILLED", 0, 30 + 70_000 * charged_ppm // 10**6)
        # Nothing is left held; every satoshi went to the seller or to fees.
        assert balances(app, buyer) == {"BTC": (BTC - 100_000 - order.fee, 0), "ETH": (11 * ETH, 0), "USDT": (0, 0)}
        seller_fees = sum(-(-tr.seller_gross * taker_ppm // 10**6) for tr in first + second)
        assert [tr.seller_fee for tr in first + second] == [-(-g * taker_ppm // 10**6) for g in (30_000, 40_000)]
        assert balances(app, seller) == {"BTC": (BTC + 100_000 - 60 - seller_fees, 0), "ETH": (9 * ETH, 0),
                                         "USDT": (0, 0)}
        assert fees_revenue(app) == before[2] + (order.fee - 30) + seller_fees
        assert open_holds(app) == 0

        # A new buy holds at the new higher rate, and the rate is stored with it.
        (other,) = accounts(app, 1, btc=BTC, prefix="late")
        late = place(app, other, "BUY", PRICE, ETH)
        new_max = max(maker_ppm, taker_ppm)
        assert late.order.held == 100_000 + 100_000 * new_max // 10**6
        assert stored_rates(app)[buy_id] == 2000 and stored_rates(app)[late.order.order_id] == new_max
    finally:
        app.close()


def _forget_stored_rates(db_url: str) -> None:
    """What a database written before migration 0014 has: no rate on any order."""
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(t.orders).values(held_fee_ppm=None))
    finally:
        engine.dispose()


def test_an_order_written_before_the_rate_was_stored_is_recovered_at_the_current_rate(db_url):
    """NULL held_fee_ppm: the market's current higher rate, checked against the hold at start
    and stored by the engine's first write; the rates may then change like any order's."""
    app = Custody(config_with_fees(db_url, 1000, 2000))
    try:
        buyer, seller, buy_id = resting_buy_with_a_fill(app)
    finally:
        app.close()
    _forget_stored_rates(db_url)

    app = Custody(config_with_fees(db_url, 1000, 2000))
    try:
        order = app.matching.get_order(buy_id)
        assert (order.status, order.held) == ("PARTIALLY_FILLED", 70_140)
        assert stored_rates(app)[buy_id] is None  # an engine that only starts writes nothing
        place(app, seller, "SELL", PRICE, 3 * ETH // 10)  # the first write stores the rate
        assert stored_rates(app)[buy_id] == 2000
        assert balances(app, buyer)["BTC"] == (BTC - 60_060 - 40_080, 40_080)
    finally:
        app.close()

    app = Custody(config_with_fees(db_url, 3000, 4000))
    try:
        assert app.matching.get_order(buy_id).held == 40_080
        (trade,) = place(app, seller, "SELL", PRICE, 4 * ETH // 10).trades
        assert trade.buyer_fee == 80  # capped at the held 0.2%
        assert balances(app, buyer)["BTC"] == (BTC - 100_000 - 140, 0)
    finally:
        app.close()


def test_an_order_without_a_stored_rate_still_needs_the_rates_it_was_sized_with(db_url):
    """The documented limit: an order written before migration 0014, whose market's rates
    were changed before the engine first wrote after the upgrade, cannot be told from a
    damaged hold: matching refuses to start until the old rates are put back."""
    app = Custody(config_with_fees(db_url, 1000, 2000))
    try:
        _buyer, _seller, buy_id = resting_buy_with_a_fill(app)
    finally:
        app.close()
    _forget_stored_rates(db_url)
    engine = make_engine(db_url)
    try:
        changed = config_with_fees(db_url, 1000, 2500)
        with pytest.raises(RecoveryError, match=f"open order {buy_id} should hold"):
            MatchingEngine(engine, changed.markets)
        MatchingEngine(engine, config_with_fees(db_url, 1000, 2000).markets)  # the old rates: it starts
    finally:
        engine.dispose()


def test_migration_0014_adds_and_drops_the_column_with_orders_stored(db_url):
    """Also with a cancel key referring to an order (on SQLite the downgrade copies the table)."""
    app = Custody(config_with_fees(db_url, 1000, 2000))
    try:
        buyer, _seller, buy_id = resting_buy_with_a_fill(app)
        cancelled = place(app, buyer, "BUY", PRICE, ETH // 10).order.order_id
        app.matching.cancel("exchange", "cancel-before-migrating", cancelled)
    finally:
        app.close()
    cfg = alembic_config(db_url)
    engine = make_engine(db_url)

    def columns() -> set[str]:
        with engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns("orders")}

    try:
        command.downgrade(cfg, "0014")  # from whatever later revision is the head now
        assert current(db_url) == "0014" and "held_fee_ppm" in columns()
        command.downgrade(cfg, "0013")
        assert current(db_url) == "0013" and "held_fee_ppm" not in columns()
        command.upgrade(cfg, "0014")
        assert current(db_url) == "0014" and "held_fee_ppm" in columns()
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            assert conn.execute(select(t.orders.c.held_fee_ppm).where(t.orders.c.id == buy_id)).scalar() is None
            assert len(conn.execute(select(t.orders.c.id)).all()) == 3
    finally:
        engine.dispose()
    app = Custody(config_with_fees(db_url, 1000, 2000))  # recovered at the current rate
    try:
        assert app.matching.get_order(buy_id).held == 70_140
    finally:
        app.close()


# -- the arithmetic, without a database ------------------------------------------------------
def _market(maker_ppm: int, taker_ppm: int) -> MarketConfig:
    return MarketConfig(base="ETH", quote="BTC", price_unit=10**18, price_tick=10, quantity_step=10**15,
                        min_quantity=10**16, maker_fee_ppm=maker_ppm, taker_fee_ppm=taker_ppm)


RATES = st.tuples(st.integers(0, 100_000), st.integers(0, 100_000))


@settings(max_examples=200, deadline=None)
@given(placed_at=RATES, ask_prices=st.lists(st.integers(1, 20_000), min_size=0, max_size=4),
       limit_extra=st.integers(0, 500), fills=st.lists(st.tuples(RATES, st.integers(1, 3000), st.integers(0, 30)),
                                                       min_size=1, max_size=8))
def test_a_buys_hold_covers_its_fills_whatever_the_rates_become(placed_at, ask_prices, limit_extra, fills):
    """A buy placed at some rates (taking asks below its limit, then resting) and then hit by
    sells under other rates after each "restart" (a new Matcher over the same book): its
    hold always equals amounts.buy_still_needed at its own held rate, refunds are never
    negative, each fill is charged min(market rate, held rate) with the fee rounded up
    cumulatively, and it never spends more than it held."""
    book = Book(MARKET)
    funds = DictFunds({(a, asset): 10**40 for a in range(40) for asset in ("ETH", "BTC")})
    first = _market(*placed_at)
    matcher = Matcher(first, book, funds)
    for i, price in enumerate(ask_prices):
        matcher.place(Order(f"a{i}", i + 1, MARKET, SELL, price * 10, 10**16))
    limit = (max(ask_prices, default=1) + limit_extra) * 10
    quantity = (len(ask_prices) * 10 + sum(step for _, step, _ in fills)) * 10**15
    buy = Order("b", 0, MARKET, BUY, limit, quantity)
    before = funds.available(0, "BTC")
    outcome = matcher.place(buy)
    held_ppm = amounts.held_fee_ppm(first)
    assert buy.held_fee_ppm == held_ppm and outcome.held == amounts.buy_hold(first, limit, quantity, held_ppm)
    charged_value = sum(f.quantity * f.price * first.taker_fee_ppm for f in outcome.fills)
    spent = sum(f.buyer_paid + f.buyer_fee for f in outcome.fills)
    for i, (rates, step, below) in enumerate(fills):
        market = _market(*rates)
        matcher = Matcher(market, book, funds)  # the service restarted with these rates
        assert buy.hold_remaining == amounts.buy_still_needed(
            market, buy.fill_value, buy.fee_value, buy.quote_filled, buy.fee, buy.remaining, buy.price, held_ppm)
        sell = matcher.place(Order(f"s{i}", 20 + i, MARKET, SELL, max(limit - 10 * below, 10), step * 10**15))
        (fill,) = sell.fills
        assert fill.maker is buy and fill.refund >= 0 and fill.rounding in (0, 1)
        charged_value += fill.quantity * fill.price * amounts.charged_fee_ppm(market.maker_fee_ppm, held_ppm)
        spent += fill.buyer_paid + fill.buyer_fee
        assert buy.fee == -(-charged_value // (10**18 * 10**6))  # rounded up over its life
    assert buy.remaining == 0 and buy.hold_remaining == 0 and buy.status == "FILLED"
    assert spent <= outcome.held and before - funds.available(0, "BTC") == spent
