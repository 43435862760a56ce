"""Two core instances on one database (behind a load balancer) take turns scanning: each keeps our
unspent outputs in memory, and one that missed what the other recorded did not see a batch spend
a coin the other had recorded: the withdrawal stayed BROADCAST for good and the coin looked
unspent. A run now reads the outputs again when another instance recorded since its own last."""
from __future__ import annotations

import pytest

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from tests.support.bitcoin import random_script
from tests.support.withdrawals import BTC, fund, fund_hot_wallet, sender, start_signer, withdrawal_config


@pytest.fixture
def signer(tmp_path):
    process = start_signer(tmp_path)
    yield process
    process.stop()


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
