"""FAILURE_MODES 30: what the node feeds the scanner is a hint, not the truth.

Two custody databases watch the same bcoin chain with the same keys. One
scanner gets the plugin's answers as they are; the other gets one answer in
ten dropped (NodeUnavailable) and two in ten with blocks delivered twice
(the previous answer again in front of the new one, or a block repeated).
Through deposits, a reorg that orphans a pending one and its re-mining, both
end with the same deposits, statuses and balances, and confirmation counts
are never negative."""
from __future__ import annotations

import random

from chains.base import NodeUnavailable
from custody.app import Custody
from tests.conftest import assert_invariants
from tests.support import databases
from tests.support.bitcoin import CONFIRMATIONS, make_chain_config


class UnreliableFeed:
    """The Bitcoin plugin, with fetch_blocks answers dropped and duplicated."""

    def __init__(self, plugin, seed: int):
        self._plugin = plugin
        self._rng = random.Random(seed)
        self._last: list = []
        self.dropped = self.duplicated = 0

    def __getattr__(self, name):
        return getattr(self._plugin, name)

    def fetch_blocks(self, start, count, watch):
        roll = self._rng.random()
        if roll < 0.1:
            self.dropped += 1
            raise NodeUnavailable("answer dropped by the test")
        blocks = self._plugin.fetch_blocks(start, count, watch)
        out = blocks
        if roll < 0.2 and self._last:
            out = self._last + blocks  # the previous answer again, in front
        elif roll < 0.3 and blocks:
            out = [blocks[0], *blocks]  # a block twice
        self.duplicated += out is not blocks
        self._last = blocks
        return out


def scan_through_drops(app: Custody, tip: int) -> None:
    scanner = app.scanner("bitcoin")
    for _ in range(500):
        try:
            result = scanner.run_once()
        except NodeUnavailable:
            continue
        if result.height == tip:
            return
    raise AssertionError("the scanner never reached the tip")


def ledger_view(app: Custody, accounts: dict[str, int]) -> dict:
    view = {}
    for name, account in accounts.items():
        _, deposits, more = app.list_deposits(str(account), page_size=1000)
        assert not more
        assert all(d.confirmations >= 0 for d in deposits), "a confirmation count went negative"
        balances = {b.asset: (b.available, b.pending) for b in app.get_balances(str(account))[1]}
        view[name] = (sorted((d.txid, d.index, d.amount, d.status) for d in deposits), balances["BTC"])
    return view


def test_dropped_and_duplicated_block_answers_leave_the_same_ledger(db_url, chain, tmp_path):
    kind = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    (tmp_path / "unreliable").mkdir()
    other_url = databases.new_database(kind, tmp_path / "unreliable")
    clean = Custody(make_chain_config(db_url, chain.rpc.url, blocks_per_commit=1))
    shaky = Custody(make_chain_config(other_url, chain.rpc.url, blocks_per_commit=1))
    try:
        feed = shaky.chains["bitcoin"] = UnreliableFeed(shaky.chains["bitcoin"], seed=30)
        apps = (clean, shaky)
        for app in apps:
            app.scanner("bitcoin").catch_up()
        names = ("ann", "bob", "cat")
        accounts = [{n: app.create_account(n).account_id for n in names} for app in apps]
        scripts = []
        for n in names:
            addresses = [app.deposit_address(str(ids[n]), "bitcoin")[1] for app, ids in zip(apps, accounts)]
            assert addresses[0] == addresses[1], "same keys, same accounts: same deposit addresses"
            scripts.append(clean.plugin("bitcoin").watch_key(addresses[0]))
        ann, bob, cat = scripts

        def everyone_scans():
            for app in apps:
                scan_through_drops(app, chain.height())

        for i in range(6):  # deposits spread over blocks, some blocks empty
            chain.pay((ann, 10_000 + i), (bob, 20_000 + i))
            chain.mine(1 + i % 3)
        chain.pay((cat, 30_000), (cat, 31_000))  # two deposits to one address in one transaction
        chain.mine(2)
        everyone_scans()

        fork = chain.height() + 1
        _, raw = chain.pay((ann, 77_000))
        chain.mine(1)
        everyone_scans()  # pending in both
        chain.reorg(fork, 2)  # drops it: orphaned
        everyone_scans()
        assert ledger_view(clean, accounts[0]) == ledger_view(shaky, accounts[1])
        chain.miner.send(raw)  # re-mined: seen again, credited once
        chain.mine(CONFIRMATIONS + 1)
        everyone_scans()

        final = [ledger_view(app, ids) for app, ids in zip(apps, accounts)]
        assert final[0] == final[1]
        assert final[0]["ann"][1][0] == sum(10_000 + i for i in range(6)) + 77_000
        assert final[0]["cat"][1][0] == 61_000
        assert feed.dropped >= 2 and feed.duplicated >= 2, (feed.dropped, feed.duplicated)
    finally:
        clean.close()
        shaky.close()
        try:
            assert_invariants(other_url)
        finally:
            databases.drop_database(other_url)
