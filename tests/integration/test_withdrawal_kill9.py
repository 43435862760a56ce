"""The crash tests with a real process: the withdrawal job runs in a child process that
is killed with SIGKILL at each step (nothing flushed, no cleanup), then a new job on
the same database and node finishes: paid once on chain, completed once in the ledger."""
from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.db import schema as t
from custody.db.engine import read_transaction
from tests.support.bitcoin import random_script
from tests.support.databases import ROOT
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, attempts, available_held, fund, fund_hot_wallet,
                                       ledger_balance, sender, start_signer)

CHILD = r"""
import os, signal, sys
from custody.app import Custody
from custody.withdrawals.sender import BitcoinSender
from hsm.client import SignerClient
from tests.support.signer import CLIENT_TOKEN
from tests.support.withdrawals import withdrawal_config

db_url, rpc_url, socket, step = sys.argv[1:5]
app = Custody(withdrawal_config(db_url, rpc_url, confirmations=2))
s = BitcoinSender(app.config, app.engine, app.plugin("bitcoin"), SignerClient(socket, CLIENT_TOKEN),
                  app.notifier.notify)
s._crash = lambda at: os.kill(os.getpid(), signal.SIGKILL) if at == step else None
s.tick()
app.close()
"""



@pytest.mark.parametrize("step", ["after_sign", "after_store", "after_broadcast", "before_complete"])
def test_kill9_at_each_step_then_restart_pays_once(btc, chain, tmp_path, db_url, step):
    signer = start_signer(tmp_path)
    try:
        fund_hot_wallet(btc, chain, BTC)
        acct = btc.create_account("payer").account_id
        fund(btc, acct, BTC)
        to = script_to_address(random_script(), network("regtest"))
        wid = btc.withdrawals.request("wallet-service", "k", str(acct), "BTC", to, "2000000")[0]["id"]
        socket = f"unix:{tmp_path / 'signer' / 'signer.sock'}"
        codes = []
        for _ in range(4):
            child = subprocess.run([sys.executable, "-c", CHILD, db_url, chain.rpc.url, socket, step], cwd=ROOT,
                                   capture_output=True, text=True, timeout=60)
            codes.append(child.returncode)
            assert child.returncode in (0, -signal.SIGKILL), child.stderr
            if child.returncode == -signal.SIGKILL:
                break
            chain.mine(1)
            btc.scanner("bitcoin").catch_up()
        assert codes[-1] == -signal.SIGKILL, f"never reached {step}: {codes}"
        # Restart: a new job (this process) on the same database, node and signer.
        s = sender(btc, signer)
        for _ in range(4):
            s.tick()
            chain.mine(1)
            btc.scanner("bitcoin").catch_up()
        s.tick()
        w, history = btc.withdrawals.get(wid)
        assert w["status"] == "COMPLETED"
        assert [h["to_status"] for h in history].count("COMPLETED") == 1
        with read_transaction(btc.engine) as conn:
            spenders = set(conn.execute(select(t.utxos.c.spent_txid)
                                        .where(t.utxos.c.spent_txid.is_not(None))).scalars())
        assert spenders == {w["txid"]} and w["txid"] in {a["txid"] for a in attempts(btc)}
        assert ledger_balance(btc, "fees:revenue") == WITHDRAWAL_FEE
        assert available_held(btc, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 0)
    finally:
        signer.stop()


def test_kill9_after_storing_the_self_spend_then_restart_fails_once(btc, chain, tmp_path, db_url):
    """The node refuses the batch (a conflicting spend of its coin is in the mempool); the job
    process is SIGKILLed right after storing the self-spend. A new job sends those stored bytes
    (no second self-spend), and the withdrawal fails once, after the self-spend confirms."""
    from custody.withdrawals.sender import CrashForTest
    from tests.support.bitcoin import account_xprv, spend
    from tests.support.withdrawals import batches, confirm, reserved, wipe_mempool

    signer = start_signer(tmp_path)
    try:
        fund_hot_wallet(btc, chain, BTC)
        chain.mine(1)
        btc.scanner("bitcoin").catch_up()
        acct = btc.create_account("payer").account_id
        fund(btc, acct, BTC)
        to = script_to_address(random_script(), network("regtest"))
        wid = btc.withdrawals.request("wallet-service", "k", str(acct), "BTC", to, "2000000")[0]["id"]
        with pytest.raises(CrashForTest):
            sender(btc, signer, crash_at="after_store").tick()
        (coin,) = reserved(btc)
        chain.miner.send(spend(coin, BTC, account_xprv(1).derive("m/0/1").key, random_script()))
        socket = f"unix:{tmp_path / 'signer' / 'signer.sock'}"
        child = subprocess.run([sys.executable, "-c", CHILD, db_url, chain.rpc.url, socket, "after_cancel_store"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert child.returncode == -signal.SIGKILL, child.stderr
        payment, cancel = attempts(btc)
        assert cancel["kind"] == "cancel" and batches(btc)[0]["status"] == "CANCELLING"
        wipe_mempool(btc, chain)
        s = sender(btc, signer)
        s.tick()
        assert cancel["txid"] in chain.rpc.call("getrawmempool")
        confirm(btc, chain, s, blocks=2)
        w, history = btc.withdrawals.get(wid)
        assert w["status"] == "FAILED" and [h["to_status"] for h in history].count("FAILED") == 1
        assert len(attempts(btc)) == 2 and batches(btc)[0]["status"] == "CANCELLED"
        assert available_held(btc, acct) == (BTC, 0)
        assert ledger_balance(btc, "fees:network") == -cancel["fee"]
    finally:
        signer.stop()
