"""Two core instances on one database (behind a load balancer) take turns scanning: each keeps our
unspent outputs in memory, and one that missed what the other recorded did not see a batch spend
a coin the other had recorded: the withdrawal stayed BROADCAST for good and the coin looked
unspent. A run now reads the outputs again when another instance recorded since its own last."""
from __future__ import annotations

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from tests.support.bitcoin import random_script
from tests.support.withdrawals import BTC, fund, fund_hot_wallet, sender, withdrawal_config
from tests.support.reconciliation import only_outside_spends


def test_a_spend_of_a_coin_another_instance_recorded_is_seen(db_url, chain, signer):
    config = withdrawal_config(db_url, chain.rpc.url, confirmations=2)
    a, b = Custody(config), Custody(config)
    try:
        a.scanner("bitcoin").catch_up()
        b.scanner("bitcoin").catch_up()  # b has read our (no) unspent outputs
        fund_hot_wallet(a, chain, 5_000_000)  # a records the hot coin
        payer = a.create_account("payer").account_id
        fund(a, payer, BTC)
        to = script_to_address(random_script(), network("regtest"))
        (w, _) = a.withdrawals.request("wallet-service", "k1", str(payer), "BTC", to, "1000000")
        s = sender(a, signer)
        s.tick()
        assert a.withdrawals.get(w["id"])[0]["status"] == "BROADCAST"
        chain.mine(1)
        b.scanner("bitcoin").catch_up()  # the block spending a's coin happens to be b's to scan
        for _ in range(2):
            chain.mine(1)
            a.scanner("bitcoin").catch_up()
            s.tick()
        assert a.withdrawals.get(w["id"])[0]["status"] == "COMPLETED"
    finally:
        a.close()
        b.close()


def test_a_rescan_by_another_instance_during_a_run_is_not_stamped_over(db_url, chain, monkeypatch, request):
    """Instance b records a rescan's new output while instance a's run is fetching: a's commit must
    not stamp over b's, or a never reads its outputs again and misses a later spend of that output.
    The job lock keeps b out while a runs (jobs/locks.py); b here goes around it, as a process that
    does not take it would, so that the cursor's compare-and-set is what is tested."""
    import contextlib

    from sqlalchemy import select

    from custody.db import schema as t
    from custody.deposits import service as deposits
    from tests.support.bitcoin import DEPOSIT_XPUB, deposit_key, make_chain_config, spend

    a, b = (Custody(make_chain_config(db_url, chain.rpc.url)) for _ in range(2))
    try:
        scanner_a, scanner_b = a.scanner("bitcoin"), b.scanner("bitcoin")
        scanner_a.catch_up()
        scanner_b.catch_up()
        monkeypatch.setattr(scanner_b, "_exclusive", lambda: contextlib.nullcontext(True))
        plugin = a.plugin("bitcoin")
        ann = a.create_account("ann").account_id
        created = chain.height()
        late = plugin.derive_address(DEPOSIT_XPUB, 100_000)  # far past the addresses issued: unwatched
        txid, _ = chain.pay((late.watch_key, 70_000))
        chain.mine(1)
        scanner_a.catch_up()
        chain.mine(1)
        fetch, once = plugin.fetch_blocks, []

        def fetch_while_b_rescans(start, count, watch):
            blocks = fetch(start, count, watch)
            if not once:
                once.append(True)
                deposits.register_deposit_address(a.engine, plugin, "bitcoin", DEPOSIT_XPUB, ann, 100_000, created)
                scanner_b.run_once(max_blocks=0)  # b's rescan records the output
            return blocks

        monkeypatch.setattr(plugin, "fetch_blocks", fetch_while_b_rescans)
        try:
            scanner_a.run_once()
        except Exception:
            pass  # refused: another instance recorded meanwhile; the next run starts over
        monkeypatch.undo()
        swept = chain.miner.send(spend((txid, 0), 70_000, deposit_key(100_000), random_script()))
        chain.mine(1)
        for _ in range(2):
            scanner_a.next_attempt = 0.0
            scanner_a.tick()
        with a.engine.connect() as conn:
            assert conn.execute(select(t.utxos.c.spent_txid).where(t.utxos.c.txid == txid)).scalar() == swept
        only_outside_spends(a.engine, request, {swept: 70_000})  # swept here with the deposit key
    finally:
        a.close()
        b.close()
