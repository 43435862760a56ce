"""20,000 random orders and cancels from 50 accounts against a reference model written here.

The model is deliberately naive: lists scanned in full, exact fractions for
every amount, balances as plain dicts. Requests go to the service in batches
(so they share transactions, as under load) and each answer is compared with
the model's: the same acceptances and refusals, the same trades with the same
amounts. Between batches a few accounts are frozen: from then on their
orders are refused and their resting orders are cancelled. At
the end every open order is cancelled: then no hold is left and every
balance equals the model's to the base unit.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

from sqlalchemy import select, update

from custody.db import schema as t
from custody.errors import AccountFrozen, CustodyError, FailedPrecondition, InsufficientFunds
from tests.support.matching import ETH, MARKET, balances, fees_revenue, fund

STEP = 10**15
UNIT = 10**18
TICK = 10
MAKER_PPM, TAKER_PPM = 1000, 2000
HELD_PPM = max(MAKER_PPM, TAKER_PPM)
PPM = 10**6
ACCOUNTS = 50
BATCH = 400


class ModelOrder:
    def __init__(self, id, seq, account, side, price, quantity, tif):
        self.id, self.seq, self.account, self.side, self.price = id, seq, account, side, price
        self.quantity, self.remaining, self.tif = quantity, quantity, tif
        self.value = Fraction(0)  # sum of q*p/U
        self.fee_value = Fraction(0)  # sum of q*p*ppm/(U*10^6)
        self.paid = self.fee = 0
        self.held = 0
        self.status = "OPEN"


class Model:
    """Price-time matching the slow, obvious way."""

    def __init__(self, funding: dict[tuple[int, str], int]):
        self.available = dict(funding)
        self.held = {key: 0 for key in funding}
        self.resting: list[ModelOrder] = []
        self.orders: dict[str, ModelOrder] = {}
        self.fees = 0
        self.seq = 0
        self.frozen: set[int] = set()

    def place(self, account, side, price, quantity, tif, post_only):
        """Returns ("refused", error type) or ("placed", trades, status) and takes an order id later."""
        if account in self.frozen:
            return ("refused", AccountFrozen), None
        # Every resting order of the other side that this price reaches, best price first, then oldest.
        opposite = sorted((o for o in self.resting
                           if o.side != side and (o.price <= price if side == "BUY" else o.price >= price)),
                          key=lambda o: (o.price if side == "BUY" else -o.price, o.seq))
        crosses = bool(opposite)
        if post_only and crosses:
            return ("refused", FailedPrecondition), None
        if side == "BUY":
            asset, hold = "BTC", math.ceil(Fraction(quantity * price, UNIT)) + math.ceil(
                Fraction(quantity * price * HELD_PPM, UNIT * PPM))
        else:
            asset, hold = "ETH", quantity
        if self.available[(account, asset)] < hold:
            return ("refused", InsufficientFunds), None
        self.available[(account, asset)] -= hold
        self.held[(account, asset)] += hold
        self.seq += 1
        order = ModelOrder(None, self.seq, account, side, price, quantity, tif)
        order.held = hold
        trades = []
        fillable = sum(o.remaining for o in opposite if o.account != account and o.account not in self.frozen)
        if tif == "FOK" and fillable < quantity:
            self._release(order)
            order.status = "EXPIRED"
            return ("placed", trades, order), order
        for maker in opposite:
            if order.remaining == 0:
                break
            if maker.account == account or maker.account in self.frozen:
                self.resting.remove(maker)
                self._release(maker)
                maker.status = "CANCELLED"
                continue
            q = min(order.remaining, maker.remaining)
            trades.append(self._fill(order, maker, q))
        if order.remaining == 0:
            order.status = "FILLED"
        elif tif == "GTC":
            order.status = "PARTIALLY_FILLED" if order.remaining < quantity else "OPEN"
            self.resting.append(order)
        else:
            self._release(order)
            order.status = "EXPIRED"
        return ("placed", trades, order), order

    def _fill(self, taker, maker, q):
        buy, sell = (taker, maker) if taker.side == "BUY" else (maker, taker)
        buy_ppm, sell_ppm = (TAKER_PPM, MAKER_PPM) if taker.side == "BUY" else (MAKER_PPM, TAKER_PPM)
        p = maker.price
        buy.value += Fraction(q * p, UNIT)
        buy.fee_value += Fraction(q * p * buy_ppm, UNIT * PPM)
        paid, fee = math.ceil(buy.value) - buy.paid, math.ceil(buy.fee_value) - buy.fee
        buy.paid += paid
        buy.fee += fee
        gross = math.floor(Fraction(q * p, UNIT))
        sell_fee = min(math.ceil(Fraction(q * p * sell_ppm, UNIT * PPM)), gross)
        for o in (buy, sell):
            o.remaining -= q
        rest = buy.remaining * buy.price
        needed = (math.ceil(buy.value + Fraction(rest, UNIT)) - buy.paid
                  + math.ceil(buy.fee_value + Fraction(rest * HELD_PPM, UNIT * PPM)) - buy.fee)
        refund = buy.held - paid - fee - needed
        assert refund >= 0 and gross <= paid <= gross + 1
        self.held[(buy.account, "BTC")] -= buy.held - needed
        buy.held = needed
        self.available[(buy.account, "BTC")] += refund
        self.available[(buy.account, "ETH")] += q
        self.held[(sell.account, "ETH")] -= q
        sell.held -= q
        self.available[(sell.account, "BTC")] += gross - sell_fee
        self.fees += paid - gross + fee + sell_fee
        if maker.remaining == 0:
            self.resting.remove(maker)
            maker.status = "FILLED"
        else:
            maker.status = "PARTIALLY_FILLED"
        return (maker.id, p, q, paid, fee, gross, sell_fee)

    def cancel(self, order_id):
        order = self.orders[order_id]
        if order.status == "CANCELLED":
            return "ok"
        if order not in self.resting:
            return FailedPrecondition
        self.resting.remove(order)
        self._release(order)
        order.status = "CANCELLED"
        return "ok"

    def freeze(self, account):
        """Its orders are refused from now on; its resting orders are cancelled at once
        (the service cancels them at the start of the next group, before any request)."""
        self.frozen.add(account)
        for order in [o for o in self.resting if o.account == account]:
            self.resting.remove(order)
            self._release(order)
            order.status = "CANCELLED"

    def _release(self, order):
        asset = "BTC" if order.side == "BUY" else "ETH"
        self.available[(order.account, asset)] += order.held
        self.held[(order.account, asset)] -= order.held
        order.held = 0


def random_requests(rng: random.Random, n: int):
    """Yields ("place", account index, side, price, quantity, tif, type, post_only) or
    ("cancel", resting or any, pick): most cancels aim at resting orders, some at any order seen."""
    mid = 100_000
    for _ in range(n):
        mid = min(max(mid + rng.choice((-TICK, 0, TICK)), 90_000), 110_000)
        roll = rng.random()
        if roll < 0.2:
            yield ("cancel", rng.random() < 0.8, rng.random())
            continue
        side = rng.choice(("BUY", "SELL"))
        offset = rng.randint(-4, 25) * TICK  # mostly passive, sometimes crossing
        price = mid - offset if side == "BUY" else mid + offset
        quantity = rng.choice((10, 10, 25, 100, 333, 1000, 2500)) * STEP
        if roll < 0.30:
            yield ("place", rng.randrange(ACCOUNTS), side, price, quantity, "IOC", "LIMIT", False)
        elif roll < 0.35:
            yield ("place", rng.randrange(ACCOUNTS), side, price, quantity, "FOK", "LIMIT", False)
        elif roll < 0.38:
            yield ("place", rng.randrange(ACCOUNTS), side, price + (50 if side == "BUY" else -50) * TICK, quantity,
                   "IOC", "MARKET", False)
        else:
            yield ("place", rng.randrange(ACCOUNTS), side, price, quantity, "GTC", "LIMIT", rng.random() < 0.1)


def run_random_session(app, n: int, seed: int) -> None:
    rng = random.Random(seed)
    ids = [app.create_account(f"random-{i}").account_id for i in range(ACCOUNTS)]
    funding = {}
    for i, a in enumerate(ids):
        # Poorer and richer accounts, so that some orders are refused for funds.
        funding[(a, "BTC")] = (i + 1) * 400_000
        funding[(a, "ETH")] = (i + 1) * 4 * ETH // 10
        fund(app, a, "BTC", funding[(a, "BTC")])
        fund(app, a, "ETH", funding[(a, "ETH")])
    model = Model(funding)
    known: list[str] = []  # order ids the service has returned so far
    stats = {"trades": 0, "refused": 0, "cancels": 0, "rounding": 0, "frozen_refused": 0}
    requests = list(random_requests(rng, n))
    starts = list(range(0, n, BATCH))
    freezes = random.Random(seed + 1)  # its own generator: the requests stay the same
    freeze_at = {starts[len(starts) * k // 4] for k in (1, 2, 3)}
    for start in starts:
        if start in freeze_at:  # between batches: the matching thread is idle
            account = ids[freezes.randrange(ACCOUNTS)]
            with app.engine.begin() as conn:
                conn.execute(update(t.accounts).where(t.accounts.c.id == account).values(frozen=True))
            model.freeze(account)
        batch = []
        for k, r in enumerate(requests[start:start + BATCH]):
            if r[0] == "cancel":
                pool = [o.id for o in model.resting] if r[1] else known  # as of the previous batch
                if not pool:
                    continue
                order_id = pool[int(r[2] * len(pool))]
                future = app.matching.submit_cancel("exchange", f"cancel-{start + k}", order_id)
                batch.append((r, future, order_id))
            else:
                _, who, side, price, quantity, tif, type_, post_only = r
                future = app.matching.submit_place("exchange", f"r-{start + k}", str(ids[who]), MARKET, side, type_,
                                                   tif, post_only, str(price), str(quantity))
                batch.append((r, future, None))
        for r, future, order_id in batch:
            try:
                result, error = future.result(), None
            except CustodyError as exc:
                result, error = None, exc
            if r[0] == "cancel":
                expected = model.cancel(order_id)
                stats["cancels"] += 1
                if expected == "ok":
                    assert error is None and result.order.status == "CANCELLED", (order_id, error)
                else:
                    assert isinstance(error, expected), (order_id, error)
                continue
            _, who, side, price, quantity, tif, type_, post_only = r
            outcome, order = model.place(ids[who], side, price, quantity, tif, post_only)
            if outcome[0] == "refused":
                assert isinstance(error, outcome[1]), (r, error)
                stats["refused"] += 1
                stats["frozen_refused"] += outcome[1] is AccountFrozen
                continue
            assert error is None, (r, error)
            order.id = result.order.order_id
            model.orders[order.id] = order
            known.append(order.id)
            got = [(tr.maker_order_id, tr.price, tr.quantity, tr.buyer_paid, tr.buyer_fee, tr.seller_gross,
                    tr.seller_fee) for tr in result.trades]
            assert got == outcome[1], (r, got, outcome[1])
            assert (result.order.status, result.order.filled_quantity) == (order.status, quantity - order.remaining)
            stats["trades"] += len(got)
            stats["rounding"] += sum(tr.rounding for tr in result.trades)
    # Every order still open goes: afterwards nothing may be held anywhere.
    open_ids = [o.id for o in model.resting]
    futures = [app.matching.submit_cancel("exchange", f"cancel-end-{order_id}", order_id)
               for order_id in open_ids]
    for order_id, future in zip(open_ids, futures):
        assert future.result().order.status == "CANCELLED"
        assert model.cancel(order_id) == "ok"
    assert not app.matching.engine.books[MARKET].orders
    with app.engine.connect() as conn:
        assert conn.execute(select(t.ledger_holds.c.id).where(t.ledger_holds.c.status == "OPEN")).first() is None
        reasons = conn.execute(select(t.orders.c.reason)).scalars().all()
    for a in ids:
        got = balances(app, a)
        assert got["BTC"] == (model.available[(a, "BTC")], 0), a
        assert got["ETH"] == (model.available[(a, "ETH")], 0), a
    assert fees_revenue(app) == model.fees
    # The session exercised what it is meant to.
    assert stats["trades"] > n // 10 and stats["refused"] > 50 and stats["cancels"] > n // 10
    assert stats["rounding"] > 100, stats
    print(stats)
    assert {"self_trade_prevention", "fill_or_kill", "immediate_or_cancel", "cancelled", "account_frozen"} <= set(
        reasons)
    assert stats["frozen_refused"] > 0, stats


def test_random_orders_and_cancels_match_the_reference_model(app):
    run_random_session(app, 20_000, seed=7)
