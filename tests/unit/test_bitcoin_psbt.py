"""Pure checks of the withdrawal PSBT builder: the size estimate and fee bumping."""
from __future__ import annotations

import pytest
from embit.psbt import PSBT

from chains.base import Coin, DerivedAddress, NodeError, Payment
from chains.bitcoin import psbt
from chains.bitcoin.addresses import derive, parse_account_key, script_to_address
from chains.bitcoin.params import network
from tests.support.bitcoin import HOT_XPUB, random_script

NET = network("regtest")
HOT = parse_account_key(HOT_XPUB, NET)


def built(n_payments: int, coin_value: int = 10**8, fee_rate: int = 2):
    change: DerivedAddress = derive(HOT, 0, False, NET)
    coin = Coin("11" * 32, 0, coin_value, derive(HOT, 1, False, NET).watch_key, "0/1")
    payments = [Payment(script_to_address(random_script(), NET), 10_000 + i) for i in range(n_payments)]
    pub = HOT.child(0).child(0).sec()
    return psbt.build(payments, [coin], change, fee_rate, NET, pub), payments


def test_size_counts_the_output_count_bytes():
    scripts = [b"\0" * 22] * 253
    assert psbt.vsize(1, scripts) - psbt.vsize(1, scripts[:252]) == psbt.output_vsize(scripts[0]) + 2


def test_bump_keeps_inputs_and_payments_and_takes_the_fee_from_change():
    unsigned, payments = built(3)
    bumped, fee = psbt.bump(unsigned.payload, 5)
    a, b = PSBT.parse(unsigned.payload), PSBT.parse(bumped)
    assert [(i.vin.txid, i.vin.vout) for i in a.inputs] == [(i.vin.txid, i.vin.vout) for i in b.inputs]
    assert [(o.script_pubkey.data, o.value) for o in a.outputs[:3]] == [(o.script_pubkey.data, o.value)
                                                                         for o in b.outputs[:3]]
    assert fee == psbt.vsize(1, [o.script_pubkey.data for o in b.outputs]) * 5 and fee > unsigned.fee
    assert a.outputs[3].value - b.outputs[3].value == fee - unsigned.fee
    assert b.outputs[3].bip32_derivations  # still recognisable as our change by the signer


def test_bump_refuses_to_leave_dust_change():
    unsigned, _ = built(1, coin_value=10_000 + 1_500)
    with pytest.raises(NodeError, match="dust"):
        psbt.bump(unsigned.payload, 50)


def test_dust_limits_are_bitcoin_cores():
    from chains.bitcoin.psbt import dust_limit

    scripts = {
        "p2wpkh": (bytes([0, 20]) + bytes(20), 294),
        "p2wsh": (bytes([0, 32]) + bytes(32), 330),
        "p2tr": (bytes([0x51, 32]) + bytes(32), 330),
        "p2sh": (bytes([0xA9, 0x14]) + bytes(20) + bytes([0x87]), 540),
        "p2pkh": (bytes([0x76, 0xA9, 0x14]) + bytes(20) + bytes([0x88, 0xAC]), 546),
    }
    assert {kind: dust_limit(script) for kind, (script, _) in scripts.items()} == \
        {kind: limit for kind, (_, limit) in scripts.items()}
