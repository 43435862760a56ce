"""The withdrawal job under the APScheduler runner of `custody serve`, with the signer
client built from the [withdrawals] config: a real signer process and bcoin node."""
from __future__ import annotations

import time

import pytest

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody import config as config_mod
from custody.app import Custody, signer_client
from tests.support.bitcoin import random_script
from tests.support.signer import CLIENT_TOKEN
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, available_held, fund, fund_hot_wallet, start_signer,
                                       withdrawal_config)


def wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_scheduled_job_sends_and_completes(db_url, chain, tmp_path, monkeypatch):
    signer = start_signer(tmp_path)
    monkeypatch.setenv("TEST_CUSTODY_SIGNER_TOKEN", CLIENT_TOKEN)
    config = withdrawal_config(db_url, chain.rpc.url, confirmations=2, poll_interval_s=0.2,
                               signer_target=f"unix:{tmp_path / 'signer' / 'signer.sock'}",
                               signer_token_env="TEST_CUSTODY_SIGNER_TOKEN")
    app = Custody(config)
    try:
        app.scanner("bitcoin").catch_up()
        fund_hot_wallet(app, chain, BTC)
        acct = app.create_account("payer").account_id
        fund(app, acct, BTC)
        to = script_to_address(random_script(), network("regtest"))
        wid = app.withdrawals.request("wallet-service", "k", str(acct), "BTC", to, "2000000")[0]["id"]
        app.start_jobs()
        assert sorted(app._jobs.job_ids) == ["scan:bitcoin", "withdrawals:bitcoin"]
        wait_for(lambda: app.withdrawals.get(wid)[0]["status"] == "BROADCAST")
        chain.mine(2)
        wait_for(lambda: app.withdrawals.get(wid)[0]["status"] == "COMPLETED")
        assert available_held(app, acct) == (BTC - 2_000_000 - WITHDRAWAL_FEE, 0)
    finally:
        app.close()
        signer.stop()


def test_no_signer_configured_means_no_withdrawal_job(db_url, chain):
    app = Custody(withdrawal_config(db_url, chain.rpc.url))
    try:
        assert app.withdrawal_sender() is None
        app.start_jobs()
        assert app._jobs.job_ids == ["scan:bitcoin"]
    finally:
        app.close()


@pytest.mark.parametrize("rules, message", [
    ({"signer_target": "unix:/nowhere.sock"}, "needs signer_token"),
    ({"signer_target": "unix:/nowhere.sock", "signer_token_env": "TEST_CUSTODY_UNSET_VAR"}, "is not set"),
    ({"signer_target": "127.0.0.1:7000", "signer_token": "t"}, "needs signer_ca_file"),
])
def test_signer_client_config_errors(rules, message):
    raw = config_mod.WithdrawalConfig(**rules)
    with pytest.raises(config_mod.ConfigError, match=message):
        signer_client(raw)
