"""Fee bumping (RBF) on a real bcoin regtest node with a real signer process, the two
ways it happens in production (DESIGN 8): (a) the replacement is refused or loses
and the original confirms; (b) the original leaves the mempool and the replacement
confirms. Either way the withdrawals complete once, with the transaction that
confirmed, and the ledger's network fee is that transaction's fee."""
from __future__ import annotations

import datetime

import pytest
from embit.transaction import Transaction

from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.params import network
from custody.app import Custody
from custody.withdrawals import store
from tests.support.bitcoin import random_script
from tests.support.withdrawals import (BTC, WITHDRAWAL_FEE, attempts, available_held, batches, confirm, fund,
                                       fund_hot_wallet, ledger_balance, reserved, sender, start_signer,
                                       withdrawal_config)

REGTEST = network("regtest")
AMOUNT = 2_000_000


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self):
        self.offset = datetime.timedelta()

    def __call__(self):
        return store.now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += datetime.timedelta(seconds=seconds)


@pytest.fixture
def btc(db_url, chain):
    app = Custody(withdrawal_config(db_url, chain.rpc.url, confirmations=2, replace_after_s=600,
                                    replace_fee_multiplier=2.0, fallback_fee_rate=2))
    app.scanner("bitcoin").catch_up()
    yield app
    app.close()


def mempool(chain) -> set[str]:
    return set(chain.rpc.call("getrawmempool"))


def stuck_then_bumped(app, chain, signer, clock):
    """One withdrawal broadcast, unconfirmed past replace_after_s, then bumped."""
    acct = app.create_account("payer").account_id
    fund(app, acct, BTC)
    to = script_to_address(random_script(), REGTEST)
    wid = app.withdrawals.request("wallet-service", "k", str(acct), "BTC", to, str(AMOUNT))[0]["id"]
    s = sender(app, signer, clock=clock)
    s.tick()
    (original,) = attempts(app)
    assert original["txid"] in mempool(chain)
    coins = reserved(app)
    clock.advance(590)  # real time runs too: 10 s of margin on a slow machine
    s.tick()
    assert len(attempts(app)) == 1  # not yet
    clock.advance(11)
    s.tick()
    original, bumped = attempts(app)
    o, b = Transaction.parse(original["raw"]), Transaction.parse(bumped["raw"])
    # Same inputs, same payment, a higher fee taken from the change only.
    assert [(i.txid, i.vout) for i in o.vin] == [(i.txid, i.vout) for i in b.vin]
    assert (o.vout[0].script_pubkey.data, o.vout[0].value) == (b.vout[0].script_pubkey.data, b.vout[0].value)
    assert o.vout[0].value == AMOUNT and len(o.vout) == len(b.vout) == 2
    assert bumped["fee_rate"] == 2 * original["fee_rate"] and bumped["fee"] > original["fee"]
    assert o.vout[1].value - b.vout[1].value == bumped["fee"] - original["fee"]
    assert reserved(app) == coins
    # bcoin never replaces: the original stays in the mempool, the replacement is refused.
    assert original["txid"] in mempool(chain) and bumped["txid"] not in mempool(chain)
    w, history = app.withdrawals.get(wid)
    assert w["status"] == "BROADCAST" and w["txid"] == bumped["txid"]
    assert "fee bumped" in history[-1]["reason"] and bumped["txid"] in history[-1]["reason"]
    # Bumped only once per replace_after_s.
    s.tick()
    assert len(attempts(app)) == 2
    return s, acct, wid, original, bumped, coins


def check_completed_once_with(app, acct, wid, confirmed, other, s, clock):
    w, history = app.withdrawals.get(wid)
    assert w["status"] == "COMPLETED" and w["txid"] == confirmed["txid"]
    assert w["network_fee"] == confirmed["fee"]
    assert [h["to_status"] for h in history].count("COMPLETED") == 1
    assert available_held(app, acct) == (BTC - AMOUNT - WITHDRAWAL_FEE, 0)
    assert ledger_balance(app, "fees:network") == -confirmed["fee"]
    assert ledger_balance(app, "wallet:bitcoin:hot") == -(AMOUNT + confirmed["fee"])
    assert ledger_balance(app, "fees:revenue") == WITHDRAWAL_FEE
    # Nothing more happens, however long we wait: no third attempt, no second completion.
    clock.advance(10_000)
    s.tick()
    assert len(attempts(app)) == 2 and app.withdrawals.get(wid)[0]["status"] == "COMPLETED"
    assert ledger_balance(app, "fees:network") == -confirmed["fee"]


def test_a_replacement_refused_and_the_original_confirms(btc, chain, signer):
    fund_hot_wallet(btc, chain, BTC)
    clock = Clock()
    s, acct, wid, original, bumped, coins = stuck_then_bumped(btc, chain, signer, clock)
    # While the original can confirm, its coin is used for nothing else.
    other = btc.withdrawals.request("wallet-service", "other", str(acct), "BTC",
                                    script_to_address(random_script(), REGTEST), str(AMOUNT))[0]["id"]
    s.tick()
    assert btc.withdrawals.get(other)[0]["status"] == "APPROVED" and reserved(btc) == coins
    btc.withdrawals.cancel("wallet-service", other)
    confirm(btc, chain, s)
    check_completed_once_with(btc, acct, wid, original, bumped, s, clock)


def test_b_the_original_leaves_the_mempool_and_the_replacement_confirms(btc, chain, signer):
    fund_hot_wallet(btc, chain, BTC)
    chain.mine(1)  # a block to take back later, above the one that funded the hot wallet
    btc.scanner("bitcoin").catch_up()
    clock = Clock()
    s, acct, wid, original, bumped, coins = stuck_then_bumped(btc, chain, signer, clock)
    # bcoin's invalidateblock is a chain reset: the mempool is wiped with the tip.
    chain.miner.invalidate(chain.height())
    chain.mine(1)
    btc.scanner("bitcoin").catch_up()
    assert original["txid"] not in mempool(chain)
    s.tick()  # none of its attempts in the mempool: the highest fee is sent first, and accepted
    assert bumped["txid"] in mempool(chain) and original["txid"] not in mempool(chain)
    confirm(btc, chain, s)
    check_completed_once_with(btc, acct, wid, bumped, original, s, clock)


def test_the_change_of_a_bumped_batch_is_spent_only_once_deep_enough(btc, chain, signer):
    """The original confirms, one block deep; a reorg of that block then mines the bump instead, and
    the original's change never exists. A batch built on that change at depth 1 could never be
    mined and its withdrawals would be stuck; the sender waits for BTC's confirmations instead."""
    fund_hot_wallet(btc, chain, BTC)  # one coin: the next withdrawal can only be paid from change
    clock = Clock()
    s, acct, wid, original, bumped, coins = stuck_then_bumped(btc, chain, signer, clock)
    one_deep = chain.height() + 1
    chain.mine(1)  # bcoin refused the bump: the original is mined
    btc.scanner("bitcoin").catch_up()
    second = btc.withdrawals.request("wallet-service", "second", str(acct), "BTC",
                                     script_to_address(random_script(), REGTEST), "3000000")[0]["id"]
    s.tick()
    assert btc.withdrawals.get(second)[0]["status"] == "APPROVED", "the change is one block deep: not spent yet"
    assert all(txid != original["txid"] for txid, _ in reserved(btc))
    chain.miner.invalidate(one_deep)  # bcoin's invalidateblock also wipes the mempool
    chain.mine(1)
    btc.scanner("bitcoin").catch_up()
    s.tick()  # the highest fee is sent again first: the bump
    assert bumped["txid"] in mempool(chain)
    confirm(btc, chain, s, blocks=4)
    assert btc.withdrawals.get(wid)[0]["status"] == "COMPLETED" and btc.withdrawals.get(wid)[0]["txid"] == bumped["txid"]
    paid = btc.withdrawals.get(second)[0]
    assert paid["status"] == "COMPLETED", paid
    spent = {(i.txid.hex(), i.vout) for i in Transaction.parse(attempts(btc)[-1]["raw"]).vin}
    assert spent == {(bumped["txid"], 1)}, "paid from the bump's change"
    assert available_held(btc, acct)[1] == 0


def test_a_bump_counts_once_against_the_signers_24h_limit(btc, chain, tmp_path):
    """The signer allows 1.5 withdrawals' worth a day: counted twice, the bump would be refused."""
    from tests.support.withdrawals import refusals

    signer = start_signer(tmp_path, name="tight", assets=[{
        "asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(BTC), "max_per_24h": str(AMOUNT * 3 // 2),
        "max_fee": "1000000"}])
    try:
        fund_hot_wallet(btc, chain, BTC)
        clock = Clock()
        s, acct, wid, original, bumped, coins = stuck_then_bumped(btc, chain, signer, clock)
        assert refusals(signer) == []
        confirm(btc, chain, s)
        check_completed_once_with(btc, acct, wid, original, bumped, s, clock)
    finally:
        signer.stop()


def test_a_batch_keeps_change_enough_to_be_bumped_to_the_maximum_fee_rate(btc, chain, signer):
    """The largest coin pays the withdrawal and its fee with 1,000 sats to spare. Taken alone, the
    batch had a change output too small for any real bump (a bump takes its fee from the change),
    so in a fee spike it waited for days (FAILURE_MODES 26). With another coin in the hot wallet,
    the batch takes it too and can be bumped all the way to max_fee_rate."""
    from chains.bitcoin.psbt import bump

    size, rate = 141, 2  # vB of one p2wpkh input, the payment and the change; the fallback rate
    tight, other = AMOUNT + size * rate + 1_000, 500_000
    fund_hot_wallet(btc, chain, tight, other)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)
    btc.withdrawals.request("wallet-service", "k", str(acct), "BTC", script_to_address(random_script(), REGTEST),
                            str(AMOUNT))
    sender(btc, signer).tick()
    assert _reserved_amounts(btc) == [other, tight]
    (batch,) = batches(btc)
    max_rate = btc.config.withdrawals.max_fee_rate
    _, fee = bump(batch["psbt"], max_rate)  # raised NodeError ("below the dust limit") before
    assert fee == (size + 68) * max_rate


def test_without_another_coin_the_batch_goes_with_the_change_it_has(btc, chain, signer):
    """The rule above never holds a withdrawal back: with no other coin, the tight one pays."""
    tight = AMOUNT + 141 * 2 + 1_000
    fund_hot_wallet(btc, chain, tight)
    acct = btc.create_account("payer").account_id
    fund(btc, acct, BTC)
    wid = btc.withdrawals.request("wallet-service", "k", str(acct), "BTC", script_to_address(random_script(), REGTEST),
                                  str(AMOUNT))[0]["id"]
    sender(btc, signer).tick()
    assert _reserved_amounts(btc) == [tight]
    assert btc.withdrawals.get(wid)[0]["status"] == "BROADCAST"


def _reserved_amounts(app) -> list[int]:
    from sqlalchemy import select

    from custody.db import schema as t
    from custody.db.engine import read_transaction

    u, r = t.utxos.c, t.utxo_reservations.c
    with read_transaction(app.engine) as conn:
        return sorted(conn.execute(select(u.amount).join(t.utxo_reservations, (r.chain == u.chain) & (
            r.txid == u.txid) & (r.output_index == u.output_index))).scalars())
