"""The libwally PSBT decoder against embit, the pure-Python reference it replaced.

For random PSBTs (several inputs and outputs, every address type, change hints
right and wrong, version 0 and 2) both must explain the same destinations,
amounts, change and fee, and produce the same signed transaction (the same
BIP143 sighash: RFC 6979 makes the signature a function of it). Mutated bytes
must be refused with a rule, never crash the signer.
"""
from __future__ import annotations

import hashlib

import pytest
import wallycore as wally
from embit.psbt import PSBT
from embit.script import Witness
from embit.transaction import SIGHASH
from hypothesis import HealthCheck, event, given, settings, strategies as st

from chains.bitcoin.addresses import script_to_address as embit_script_to_address
from hsm.decode import bitcoin as decoder_mod
from hsm.decode.bitcoin import BitcoinDecoder, script_to_address
from hsm.errors import Refused
from tests.support import signer as S

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEY_PATHS = [f"m/84h/1h/1h/0/{i}" for i in range(3)]
CHANGE_PATHS = [f"m/84h/1h/1h/1/{i}" for i in range(3)]


def h(seed) -> bytes:
    return hashlib.sha256(repr(seed).encode()).digest()


SCRIPT_KINDS = {
    "p2wpkh": lambda s: b"\x00\x14" + h(s)[:20],
    "p2wsh": lambda s: b"\x00\x20" + h(s),
    "p2tr": lambda s: b"\x51\x20" + h(s),
    "p2pkh": lambda s: b"\x76\xa9\x14" + h(s)[:20] + b"\x88\xac",
    "p2sh": lambda s: b"\xa9\x14" + h(s)[:20] + b"\x87",
    "op_return": lambda s: b"\x6a\x08" + h(s)[:8],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return S.make_keystore(tmp_path_factory.mktemp("psbt-decoder"))


def reference_explain(payload: bytes, keys, store):
    """The embit decoder this replaced, reduced to what it computed: (transfers, fee) or the refusing rule."""
    psbt = PSBT.parse(decoder_mod.psbt_bytes(payload))
    signers = {S.p2wpkh_script(store.public_key(k, p)): (k, p) for k, p in keys}
    total_in = 0
    for inp in psbt.inputs:
        if inp.witness_utxo is None:
            return "decode"
        script = inp.witness_utxo.script_pubkey.data
        if not (len(script) == 22 and script[:2] == b"\x00\x14"):
            return "decode"
        if inp.sighash_type not in (None, SIGHASH.ALL):
            return "decode"
        if script not in signers:
            return "keys"
        total_in += inp.witness_utxo.value
    transfers, total_out = [], 0
    fingerprint = store.fingerprint(S.HOT)
    for out in psbt.outputs:
        script = out.script_pubkey.data
        address = embit_script_to_address(script, S.REGTEST)
        if address is None:
            return "decode"
        ours = script in signers
        for pub, derivation in out.bip32_derivations.items():
            if derivation.fingerprint.hex() == fingerprint:
                mine = store.public_key(S.HOT, decoder_mod.path_text(derivation.derivation))
                ours = ours or (mine == pub.sec() and S.p2wpkh_script(mine) == script)
        transfers.append((address, out.value, ours))
        total_out += out.value
    if total_in < total_out:
        return "decode"
    return transfers, total_in - total_out


def reference_sign(payload: bytes, keys, store) -> bytes:
    psbt = PSBT.parse(decoder_mod.psbt_bytes(payload))
    by_script = {S.p2wpkh_script(store.public_key(k, p)): (k, p) for k, p in keys}
    tx = psbt.tx
    for i, inp in enumerate(psbt.inputs):
        key_id, path = by_script[inp.witness_utxo.script_pubkey.data]
        sig = store.sign_digest(key_id, path, psbt.sighash(i, SIGHASH.ALL))
        tx.vin[i].witness = Witness([sig.der() + bytes([SIGHASH.ALL]), store.public_key(key_id, path)])
    return tx.serialize()


@st.composite
def psbts(draw, store):
    n_in = draw(st.integers(1, 3))
    inputs, keys = [], []
    for i in range(n_in):
        path = draw(st.sampled_from(KEY_PATHS + ["foreign"]))
        if path == "foreign":
            script = SCRIPT_KINDS["p2wpkh"](("foreign", i))
        else:
            script = S.p2wpkh_script(store.public_key(S.HOT, path))
            keys.append((S.HOT, path))
        inputs.append((h(("txid", i)).hex(), draw(st.integers(0, 5)), draw(st.integers(1_000, 10 * S.BTC)), script))
    outputs, change = [], {}
    for j in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(list(SCRIPT_KINDS) + ["change", "bad change"]))
        amount = draw(st.integers(0, 5 * S.BTC))
        if kind in ("change", "bad change"):
            path = draw(st.sampled_from(CHANGE_PATHS))
            pub = store.public_key(S.HOT, path)
            paid = pub if kind == "change" else store.public_key(S.HOT, CHANGE_PATHS[(CHANGE_PATHS.index(path) + 1) % 3])
            outputs.append((S.p2wpkh_script(paid), amount))
            change[j] = (pub, bytes.fromhex(store.fingerprint(S.HOT)), path)
        else:
            outputs.append((SCRIPT_KINDS[kind](("out", j, draw(st.integers(0, 3)))), amount))
    payload = S.make_psbt(inputs, outputs, change=change, with_utxo=draw(st.sampled_from([True, True, True, False])))
    if draw(st.booleans()):  # the same transaction as a version 2 PSBT (BIP370)
        p = wally.psbt_from_bytes(payload, 0)
        wally.psbt_set_version(p, 0, 2)
        payload = bytes(wally.psbt_to_bytes(p, 0))
    given_keys = keys or [(S.HOT, KEY_PATHS[0])]
    return payload, sorted(set(given_keys))


@pytest.fixture(scope="module")
def decoder(store):
    return BitcoinDecoder(S.REGTEST, store)


@given(data=st.data())
@SETTINGS
def test_explains_and_signs_like_embit(store, decoder, data):
    payload, keys = data.draw(psbts(store))
    expected = reference_explain(payload, keys, store)
    try:
        explained = decoder.explain(payload, keys)
    except Refused as exc:
        event(f"refused: {exc.rule}")
        assert exc.rule == expected, exc.reason
        return
    event("explained")
    assert not isinstance(expected, str), f"embit refused with {expected}, libwally explained it"
    transfers, fee = expected
    assert [(t.destination, t.amount, t.internal) for t in explained.transfers] == transfers
    assert explained.fee == fee
    assert decoder.sign(explained).raw_transaction == reference_sign(payload, keys, store)


@given(script=st.one_of(st.binary(max_size=40),
                        st.tuples(st.sampled_from(list(SCRIPT_KINDS)), st.integers()).map(
                            lambda k: SCRIPT_KINDS[k[0]](k[1]))),
       net=st.sampled_from(["mainnet", "testnet", "regtest"]))
@settings(max_examples=300, deadline=None)
def test_addresses_match_embit(script, net):
    from chains.bitcoin.params import network

    assert script_to_address(script, network(net)) == embit_script_to_address(script, network(net))


@given(data=st.data())
@SETTINGS
def test_mutated_psbts_are_refused_with_a_rule_or_explained_like_embit(store, decoder, data):
    payload, keys = data.draw(psbts(store))
    raw = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(5, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:at + data.draw(st.integers(1, 8))]
    mutated = bytes(raw)
    try:
        explained = decoder.explain(mutated, keys)
    except Refused as exc:
        event(f"refused: {exc.rule}")
        assert exc.rule in ("decode", "keys")
        return
    event("explained")
    # libwally accepted it: then embit must read the same transaction out of it.
    expected = reference_explain(mutated, keys, store)
    assert not isinstance(expected, str), f"embit refused with {expected}, libwally explained it"
    transfers, fee = expected
    assert [(t.destination, t.amount, t.internal) for t in explained.transfers] == transfers
    assert explained.fee == fee


def test_refuses_what_is_not_a_psbt(decoder):
    for payload in (b"", b"psbt\xff", b"psbt\xff" + bytes(40), b"pset\xff\x01\x00", bytes(range(32))):
        with pytest.raises(Refused) as exc:
            decoder.explain(payload, [(S.HOT, KEY_PATHS[0])])
        assert exc.value.rule == "decode"


def test_non_default_sighash_is_refused(store, decoder):
    payload = S.simple_psbt(store, 1000)
    p = wally.psbt_from_bytes(payload, 0)
    wally.psbt_set_input_sighash(p, 0, wally.WALLY_SIGHASH_NONE)
    with pytest.raises(Refused, match="sighash 2"):
        decoder.explain(bytes(wally.psbt_to_bytes(p, 0)), [(S.HOT, S.HOT_BTC_PATH)])


def test_remembered_change_address_makes_no_output_ours(store):
    """The decoder remembers the address of change it re-derived (a memo of script_to_address); a later
    output paying that script without a derivation hint gets the same address and is still external."""
    decoder = BitcoinDecoder(S.REGTEST, store)
    keys = [(S.HOT, KEY_PATHS[0])]
    ours = S.p2wpkh_script(store.public_key(*keys[0]))
    path = CHANGE_PATHS[0]
    pub = store.public_key(S.HOT, path)
    change = S.p2wpkh_script(pub)
    hinted = S.make_psbt([(h("in").hex(), 0, S.BTC, ours)], [(SCRIPT_KINDS["p2tr"]("pay"), 10_000), (change, 50_000)],
                         change={1: (pub, bytes.fromhex(store.fingerprint(S.HOT)), path)})
    bare = S.make_psbt([(h("in").hex(), 0, S.BTC, ours)], [(SCRIPT_KINDS["p2tr"]("pay"), 10_000), (change, 50_000)])
    address = script_to_address(change, S.REGTEST)
    for payload, internal in ((hinted, True), (bare, False), (hinted, True)):
        paid = decoder.explain(payload, keys).transfers[1]
        assert (paid.destination, paid.internal) == (address, internal)
    assert decoder._addresses == {change: address}
