"""Matching benchmarks, self-contained: `.venv/bin/python -m benchmarks.matching [--quick] [--backends ...]`.

1. In memory: order operations per second (place, cancel, fill in a realistic
   mix) through matching_stub's book and matcher with its in-memory fund checks
   and settlement arithmetic, against a plain but complete price-time book
   written here (BareBook), on the same operations in the same process: the
   two alternate every 1,000 operations so both see the same machine load;
   the ratio is the median over rounds. p50/p99 per operation from a
   separate, per-operation-timed run.
2. End to end with ledger settlement (SQLite, PostgreSQL): orders through
   MatchingService (queue, matching thread, one transaction per group, one
   ledger batch per fill), fills settled per second, against the bare ledger
   rate of the same run: fill-shaped batches (two hold posts each) applied with
   apply_commands, as many per commit as the matching groups settled, with
   nothing else around them. Each round's ratio is taken against the bare
   rate measured right after it; the report gives the median.

Nothing here asserts on timings: targets are printed as met or missed.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import gc
import os
import pathlib
import random
import shutil
import statistics
import tempfile
import time

from custody import config as config_mod
from custody.db.engine import write_transaction
from custody.ledger import invariants
from custody.ledger.commands import BatchResult, Command, HoldCreate, HoldPost
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import EQUITY, FEES_REVENUE, Posting, new_id, user_available
from matching_stub.book import Book, Order
from matching_stub.matcher import DictFunds, Matcher

ROOT = pathlib.Path(__file__).resolve().parents[1]
ETH = 10**18
STEP = 10**15
MARKET = config_mod.MarketConfig(base="ETH", quote="BTC", price_unit=ETH, price_tick=10, quantity_step=STEP,
                                 min_quantity=10 * STEP, maker_fee_ppm=1000, taker_fee_ppm=2000)
TARGET_OPS = 100_000
TARGET_RATIO = 0.25
TARGET_FILLS = 10_000
ACCOUNTS = 1000


# -- 1. in memory ------------------------------------------------------------------------------

def operations(n: int, accounts: int = ACCOUNTS, seed: int = 1) -> list[tuple]:
    """A realistic mix: ~50% passive limit orders near the top of the book, ~35%
    cancels (most of resting orders, some of orders already filled), ~15%
    orders that cross the spread and fill one or more resting orders."""
    rng = random.Random(seed)
    ops: list[tuple] = []
    live: list[str] = []
    mid = 100_000
    for k in range(n):
        mid = min(max(mid + rng.choice((-10, 0, 10)), 95_000), 105_000)
        roll = rng.random()
        if roll < 0.35 and live:
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            ops.append(("cancel", live.pop()))
            continue
        side = "BUY" if rng.random() < 0.5 else "SELL"
        quantity = rng.choice((10, 20, 50, 100, 200)) * STEP
        if roll < 0.50:  # aggressive: crosses a few levels
            price = mid + 50 if side == "BUY" else mid - 50
        else:
            offset = 10 * rng.randint(1, 20)
            price = mid - offset if side == "BUY" else mid + offset
        order_id = f"{k:032x}"
        ops.append(("place", order_id, rng.randrange(accounts), side, price, quantity))
        live.append(order_id)  # may have filled: cancelling it then is a no-op in both books
    return ops


class BareOrder:
    __slots__ = ("id", "account", "side", "price", "quantity", "remaining", "status")

    def __init__(self, id, account, side, price, quantity):
        self.id, self.account, self.side, self.price = id, account, side, price
        self.quantity = self.remaining = quantity
        self.status = "OPEN"


class BareLevel:
    __slots__ = ("price", "orders", "total")

    def __init__(self, price):
        self.price = price
        self.orders: collections.OrderedDict[str, BareOrder] = collections.OrderedDict()
        self.total = 0


class BareBook:
    """A plain but complete price-time book, the baseline matching_stub is compared with.

    What it does, like any order book that an exchange could run:
    - every placed order becomes an order object (id, account, side, price,
      quantity, remaining, status), whether it rests or fills at once;
    - an order crosses the opposite side from the best level outwards while
      its price allows, oldest order first at each level (time priority),
      filling partially or completely at the resting order's price; every
      fill is recorded as (taker id, maker id, price, quantity) and returned;
    - filled resting orders leave the book, empty levels are dropped;
    - the rest of an order rests at its price, at the back of its level;
    - each level keeps its orders in arrival order (OrderedDict: O(1) append,
      O(1) removal by id) and its total quantity (what a depth view shows);
      per side a sorted list of prices keeps the levels in price order;
    - cancel by id removes the order from its level in O(1).
    What it does not do: no funds or holds, no fees or rounding, no
    validation, no self-trade prevention, no persistence or market-data
    records, only GTC limit orders (the benchmark's mix has nothing else)."""

    def __init__(self):
        self.levels = ({}, {})  # 0: bids, 1: asks; price -> BareLevel
        self.prices = ([], [])  # sorted so the best is last: bids by price, asks by minus price
        self.orders: dict[str, BareOrder] = {}  # resting orders by id

    def place(self, order_id, account, side, price, quantity) -> list[tuple]:
        order = BareOrder(order_id, account, side, price, quantity)
        s = 0 if side == "BUY" else 1
        o = 1 - s
        levels, prices = self.levels[o], self.prices[o]
        fills = []
        while order.remaining and prices:
            best = prices[-1] if o == 0 else -prices[-1]
            if (best > price) if s == 0 else (best < price):
                break
            level = levels[best]
            resting_orders = level.orders
            while order.remaining and resting_orders:
                resting = next(iter(resting_orders.values()))
                take = order.remaining if order.remaining < resting.remaining else resting.remaining
                resting.remaining -= take
                order.remaining -= take
                level.total -= take
                fills.append((order_id, resting.id, best, take))
                if resting.remaining == 0:
                    resting.status = "FILLED"
                    del resting_orders[resting.id]
                    del self.orders[resting.id]
                else:
                    resting.status = "PARTIALLY_FILLED"
            if not resting_orders:
                del levels[best]
                prices.pop()
        if order.remaining:
            order.status = "PARTIALLY_FILLED" if order.remaining < quantity else "OPEN"
            level = self.levels[s].get(price)
            if level is None:
                level = self.levels[s][price] = BareLevel(price)
                bisect.insort(self.prices[s], price if s == 0 else -price)
            level.orders[order_id] = order
            level.total += order.remaining
            self.orders[order_id] = order
        else:
            order.status = "FILLED"
        return fills

    def cancel(self, order_id) -> BareOrder | None:
        order = self.orders.pop(order_id, None)
        if order is None:
            return None
        s = 0 if order.side == "BUY" else 1
        level = self.levels[s][order.price]
        del level.orders[order_id]
        level.total -= order.remaining
        order.status = "CANCELLED"
        if not level.orders:
            del self.levels[s][order.price]
            key = order.price if s == 0 else -order.price
            prices = self.prices[s]
            del prices[bisect.bisect_left(prices, key)]
        return order


class BareRunner:
    """Runs operations through the bare book; `trades` collects its fills."""

    def __init__(self):
        self.book = BareBook()
        self.fills = 0
        self.trades: list[tuple] = []

    def run(self, ops, keep: bool = False) -> None:
        place, cancel = self.book.place, self.book.cancel
        fills = 0
        for op in ops:
            if op[0] == "place":
                made = place(op[1], op[2], op[3], op[4], op[5])
                fills += len(made)
                if keep:
                    self.trades += made
            else:
                cancel(op[1])
        self.fills += fills


class MatcherRunner:
    """Runs operations through matching_stub's book and matcher, with in-memory funds."""

    def __init__(self, accounts: int = ACCOUNTS):
        self.book = Book("ETH/BTC")
        funds = DictFunds({(a, asset): 10**30 for a in range(accounts) for asset in ("BTC", "ETH")})
        self.matcher = Matcher(MARKET, self.book, funds)
        self.fills = 0
        self.trades: list[tuple] = []

    def run(self, ops, keep: bool = False, timed: list[int] | None = None) -> None:
        place, cancel, orders = self.matcher.place, self.matcher.cancel, self.book.orders
        clock = time.perf_counter_ns
        fills = 0
        for op in ops:
            started = clock() if timed is not None else 0
            if op[0] == "place":
                made = place(Order(op[1], op[2], "ETH/BTC", op[3], op[4], op[5])).fills
                fills += len(made)
                if keep:
                    self.trades += [(f.taker.id, f.maker.id, f.price, f.quantity) for f in made]
            else:
                order = orders.get(op[1])
                if order is not None:
                    cancel(order)
            if timed is not None:
                timed.append(clock() - started)
        self.fills += fills


def interleaved(ops, chunk: int = 1000) -> tuple[float, float, int, int]:
    """Both books over the same operations, alternating every `chunk` operations
    (and which goes first), so that both run under the same machine load;
    returns (bare ops/s, matching_stub ops/s, bare fills, matching_stub fills)."""
    bare, ours = BareRunner(), MatcherRunner()
    spent = {bare: 0, ours: 0}
    clock = time.perf_counter_ns
    gc.collect()
    for k, start in enumerate(range(0, len(ops), chunk)):
        part = ops[start:start + chunk]
        for runner in ((bare, ours) if k % 2 == 0 else (ours, bare)):
            started = clock()
            runner.run(part)
            spent[runner] += clock() - started
    return len(ops) * 1e9 / spent[bare], len(ops) * 1e9 / spent[ours], bare.fills, ours.fills


def in_memory(n: int, rounds: int) -> dict:
    ops = operations(n)
    bare_rates, ours_rates, ratios = [], [], []
    for r in range(rounds):
        bare, ours, bare_fills, fills = interleaved(ops)
        bare_rates.append(bare)
        ours_rates.append(ours)
        ratios.append(ours / bare)
        print(f"  in memory round {r + 1}/{rounds}: bare {bare:,.0f} ops/s, ours {ours:,.0f} ops/s, "
              f"ratio {ours / bare:.3f}", flush=True)
    timed: list[int] = []
    MatcherRunner().run(ops, timed=timed)
    timed.sort()
    kinds = collections.Counter(op[0] for op in ops)
    return {"ops": n, "places": kinds["place"], "cancels": kinds["cancel"], "fills": fills, "bare_fills": bare_fills,
            "bare": max(bare_rates), "ours": max(ours_rates), "ratio": statistics.median(ratios),
            "ratios": ratios, "p50_us": timed[len(timed) // 2] / 1000, "p99_us": timed[int(len(timed) * 0.99)] / 1000,
            "max_us": timed[-1] / 1000}


# -- 2. end to end with the ledger ---------------------------------------------------------------

def new_database(kind: str, folder: pathlib.Path) -> str:
    from tests.support.databases import new_database as make
    return make(kind, folder)


def drop_database(url: str) -> None:
    from tests.support.databases import drop_database as drop
    drop(url)


def bench_config(url: str, group: int) -> config_mod.Config:
    return config_mod.parse({
        "database": {"url": url}, "server": {"listen": "127.0.0.1:0", "max_group_commit": group},
        "assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8}, {"asset": "ETH", "chain": "ethereum", "decimals": 18}],
        "markets": [{"base": "ETH", "quote": "BTC", "price_unit": str(ETH), "price_tick": "10",
                     "quantity_step": str(STEP), "min_quantity": str(10 * STEP),
                     "maker_fee_ppm": 1000, "taker_fee_ppm": 2000}],
    })


def funded_accounts(app, n: int, prefix: str) -> list[int]:
    from custody.accounts.service import create_account
    ids = [create_account(app.engine, f"{prefix}-{i}").account_id for i in range(n)]
    ledger_ids = AccountIds()
    with write_transaction(app.engine) as conn:
        results = apply_commands(conn, [
            Command(kind="adjustment", actor="bench", memo="benchmark funding", postings=(
                Posting("BTC", EQUITY, user_available(a), 10**15), Posting("ETH", EQUITY, user_available(a), 10**30)))
            for a in ids], ledger_ids)
    assert all(isinstance(r, BatchResult) for r in results), results
    return ids


class Timed:
    """Wraps a function to add up the seconds spent in it (on any thread)."""

    def __init__(self, function):
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


ROW_WRITERS = ("insert_orders", "update_orders", "insert_trades", "insert_market_data")


def end_to_end(kind: str, fills_per_taker: int, takers: int, group: int, rounds: int) -> dict:
    """Also splits the taker phase's time: inside the ledger's apply_commands,
    the rest of MatchingEngine.run (matching, building commands and rows,
    writing orders/trades/market data, commit), and outside the engine
    (validation, queueing, waking the callers)."""
    from custody.app import Custody
    from matching_stub import engine as engine_mod
    from matching_stub import rows as rows_mod

    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"matching-{kind}-", dir=ROOT / "var"))
    url = new_database(kind, folder)
    app = Custody(bench_config(url, group))
    try:
        makers = funded_accounts(app, 200, "maker")
        buyers = funded_accounts(app, 200, "taker")
        matching = app.matching
        fill_rates, bare_rates, maker_rates, splits = [], [], [], []
        key = 0
        ledger_timer = Timed(engine_mod.apply_commands)
        run_timer = Timed(matching.engine.run)
        handle_timer = Timed(engine_mod._Group.handle_all)
        row_timers = [Timed(getattr(rows_mod, name)) for name in ROW_WRITERS]
        engine_mod.apply_commands, matching.engine.run = ledger_timer, run_timer
        engine_mod._Group.handle_all = lambda group, requests: handle_timer(group, requests)
        for timer, name in zip(row_timers, ROW_WRITERS):
            setattr(rows_mod, name, timer)
        timers = [ledger_timer, run_timer, handle_timer, *row_timers]
        for r in range(rounds):
            # Resting asks, oldest first at one price; each taker buy sweeps fills_per_taker of them.
            price = 100_000 + 10 * r
            futures = []
            started = time.perf_counter()
            for k in range(takers * fills_per_taker):
                key += 1
                futures.append(matching.submit_place("bench", f"m{key}", str(makers[k % len(makers)]), "ETH/BTC",
                                                     "SELL", "LIMIT", "GTC", False, str(price), str(10 * STEP + STEP * (k % 7))))
            for f in futures:
                f.result()
            maker_rates.append(len(futures) / (time.perf_counter() - started))
            wanted = sum(10 * STEP + STEP * (k % 7) for k in range(fills_per_taker))
            futures = []
            for timer in timers:
                timer.seconds = 0.0
            started = time.perf_counter()
            for k in range(takers):
                key += 1
                futures.append(matching.submit_place("bench", f"t{key}", str(buyers[k % len(buyers)]), "ETH/BTC",
                                                     "BUY", "LIMIT", "IOC", False, str(price), str(wanted)))
            fills = sum(len(f.result().trades) for f in futures)
            elapsed = time.perf_counter() - started
            fill_rates.append(fills / elapsed)
            own_rows = sum(timer.seconds for timer in row_timers)
            splits.append((elapsed, ledger_timer.seconds, handle_timer.seconds, own_rows,
                           run_timer.seconds - ledger_timer.seconds - handle_timer.seconds - own_rows, fills))
            # The same number of batches per commit as the matching groups had (each group's
            # orders made about fills_per_taker fills each): a commit's fsync is shared alike.
            bare_rates.append(bare_ledger(app, makers, buyers, fills, group * fills_per_taker))
            print(f"  {kind} round {r + 1}/{rounds}: {fills:,} fills at {fill_rates[-1]:,.0f}/s "
                  f"({takers:,} taker orders); bare ledger {bare_rates[-1]:,.0f} fill-shaped batches/s; "
                  f"resting orders placed at {maker_rates[-1]:,.0f}/s", flush=True)
        engine_mod.apply_commands = ledger_timer.function
        engine_mod._Group.handle_all = handle_timer.function
        for timer, name in zip(row_timers, ROW_WRITERS):
            setattr(rows_mod, name, timer.function)
        report = invariants.check(app.engine)
        best = max(range(rounds), key=lambda i: fill_rates[i])
        elapsed, ledger_s, handle_s, rows_s, rest_s, n = splits[best]
        split = {"ledger_us": ledger_s / n * 1e6, "handle_us": handle_s / n * 1e6, "rows_us": rows_s / n * 1e6,
                 "rest_us": rest_s / n * 1e6,
                 "outside_us": (elapsed - ledger_s - handle_s - rows_s - rest_s) / n * 1e6,
                 "total_us": elapsed / n * 1e6}
        ratios = [f / b for f, b in zip(fill_rates, bare_rates)]
        return {"fills": max(fill_rates), "bare": max(bare_rates), "makers": max(maker_rates), "split": split,
                "ratio": statistics.median(ratios), "ratios": ratios,
                "invariants": report.ok, "fills_per_taker": fills_per_taker, "takers": takers, "group": group}
    finally:
        app.close()
        drop_database(url)
        shutil.rmtree(folder, ignore_errors=True)


def bare_ledger(app, makers: list[int], buyers: list[int], n: int, group: int) -> float:
    """n fill-shaped batches (a buyer's quote hold and a seller's base hold each
    posted: seller paid, fee, buyer's base) via apply_commands, `group` per commit.
    The holds are made first, untimed."""
    ids = AccountIds()
    holds = []
    for start in range(0, n, group):
        commands = []
        for k in range(start, min(n, start + group)):
            buy, sell = buyers[k % len(buyers)], makers[k % len(makers)]
            commands.append(Command(kind="bench_holds", actor="bench", hold_creates=(
                HoldCreate(buy, "BTC", 2000, hold_id=new_id()), HoldCreate(sell, "ETH", 10 * STEP, hold_id=new_id()))))
        with write_transaction(app.engine) as conn:
            results = apply_commands(conn, commands, ids)
        ids.commit()
        holds += [r.hold_ids for r in results]
    started = time.perf_counter()
    for start in range(0, n, group):
        commands = []
        for k in range(start, min(n, start + group)):
            buy_hold, sell_hold = holds[k]
            buy, sell = buyers[k % len(buyers)], makers[k % len(makers)]
            commands.append(Command(kind="trade", actor="bench", reference=f"bench:{k}", hold_posts=(
                HoldPost(buy_hold, ((user_available(sell), 1000), (FEES_REVENUE, 3), (user_available(buy), 997))),
                HoldPost(sell_hold, ((user_available(buy), 10 * STEP),)))))
        with write_transaction(app.engine) as conn:
            results = apply_commands(conn, commands, ids)
        ids.commit()
        assert all(isinstance(r, BatchResult) for r in results), results[:3]
    return n / (time.perf_counter() - started)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- report ----------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--backends", nargs="*", default=["sqlite", "postgresql"])
    parser.add_argument("--no-memory", action="store_true", help="skip the in-memory part")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    n, rounds = (20_000, 2) if args.quick else (200_000, 5)
    lines = ["## Matching (benchmarks/matching.py)", "", f"- load average at start: {load_average()}"]
    if not args.no_memory:
        print(f"in memory: {n:,} operations, {rounds} interleaved rounds", flush=True)
        mem = in_memory(n, rounds)
        ratio = mem["ratio"]
        lines += [
            "",
            "### In memory: book + matcher with in-memory fund checks and settlement arithmetic",
            f"- {mem['ops']:,} operations: {mem['places']:,} places ({mem['fills']:,} fills), "
            f"{mem['cancels']:,} cancels; {rounds} rounds, the two books alternating every 1,000 operations",
            f"- matching_stub: **{mem['ours']:,.0f} ops/s**; bare price-time book: {mem['bare']:,.0f} ops/s "
            f"(best rounds); ratio **{ratio:.2f}** (median of rounds: {', '.join(f'{x:.3f}' for x in mem['ratios'])}; "
            f"bare book fills: {mem['bare_fills']:,}, it has no self-trade prevention)",
            f"- per operation (separate timed run): p50 {mem['p50_us']:.1f} us, **p99 {mem['p99_us']:.1f} us**, "
            f"max {mem['max_us']:.0f} us",
            f"- target >= {TARGET_OPS:,}/s: {'MET' if mem['ours'] >= TARGET_OPS else 'MISSED'}; "
            f"target >= {TARGET_RATIO} of bare: {'MET' if ratio >= TARGET_RATIO else 'MISSED'}",
        ]
    lines += ["", "### End to end: MatchingService, one ledger batch per fill, one transaction per group"]
    for kind in args.backends:
        takers, per = (300, 5) if args.quick else (2000, 5)
        print(f"end to end on {kind}: {takers:,} taker orders x {per} fills per round", flush=True)
        e2e = end_to_end(kind, per, takers, 1000, 2 if args.quick else 3)
        ratio = e2e["ratio"]
        lines += [
            f"- {kind}: **{e2e['fills']:,.0f} fills settled/s** (taker orders of {e2e['fills_per_taker']} fills, "
            f"{e2e['takers']:,} per round, groups of up to {e2e['group']} orders); bare ledger, fill-shaped batches "
            f"in groups of {e2e['group'] * e2e['fills_per_taker']:,}: {e2e['bare']:,.0f}/s; ratio **{ratio:.2f}** (median of the rounds' ratios: "
            f"{', '.join(f'{x:.2f}' for x in e2e['ratios'])}); resting orders placed: "
            f"{e2e['makers']:,.0f}/s; invariants {'ok' if e2e['invariants'] else 'VIOLATED'}; "
            f"target >= {TARGET_FILLS:,} fills/s: {'MET' if e2e['fills'] >= TARGET_FILLS else 'MISSED'}",
            f"  - per fill in the best round: {e2e['split']['total_us']:.1f} us = ledger apply_commands "
            f"{e2e['split']['ledger_us']:.1f} us + matching in memory and building the ledger commands "
            f"{e2e['split']['handle_us']:.1f} us + writing orders, trades, market data "
            f"{e2e['split']['rows_us']:.1f} us + commit and the rest of the engine {e2e['split']['rest_us']:.1f} us "
            f"+ outside the engine (validation, queue, callers) {e2e['split']['outside_us']:.1f} us",
        ]
    lines.append(f"- load average at the end: {load_average()}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
