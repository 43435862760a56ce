"""The hand-written parser against a reference decoding: random blocks built and
decoded with embit (legacy and segwit transactions, scripts of every length up to
past the one-byte varint, values up to 2^64-1, in-block spends of earlier outputs).
Whatever the block, the parser reports exactly the receipts and spends the
reference finds, and refuses any truncated block."""
import hashlib

from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.bitcoin.blocks import MalformedBlock, parse_block
from tests.unit.test_block_parser import block

scripts = st.one_of(
    st.binary(min_size=0, max_size=40),
    st.binary(min_size=250, max_size=300),  # 3-byte script length varint
    st.just(b"\x00\x14" + b"\x07" * 20),
)
outputs = st.lists(st.tuples(scripts, st.integers(0, 2**64 - 1)), min_size=1, max_size=6)
inputs = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1),
                            st.binary(max_size=300)), min_size=1, max_size=3)
txs = st.lists(st.tuples(inputs, outputs, st.booleans(), st.lists(st.integers(0, 40), max_size=2)),
               min_size=1, max_size=6)


def make_tx(ins, outs, segwit):
    vin = [TransactionInput(txid, vout, script_sig=Script(b"" if segwit else sig)) for txid, vout, sig in ins]
    if segwit:
        for i, (_, _, sig) in zip(vin, ins):
            i.witness = Witness([sig, b"\x02" * 33])
    return Transaction(version=2, vin=vin, vout=[TransactionOutput(v, Script(s)) for s, v in outs])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(txs=txs, watch_bits=st.integers(0, 2**64 - 1), own_bits=st.integers(0, 2**64 - 1), data=st.data())
def test_the_parser_finds_what_the_reference_decoding_finds(txs, watch_bits, own_bits, data):
    built = []
    for n, (ins, outs, segwit, spend_earlier) in enumerate(txs):
        if n and spend_earlier:  # spend outputs of earlier transactions of this block
            for pick in spend_earlier:
                earlier = built[pick % len(built)]
                ins = ins + [(earlier.txid(), pick % len(earlier.vout), b"")]
        built.append(make_tx(ins, outs, segwit and n > 0))
    raw = block(built)

    all_scripts = sorted({o.script_pubkey.data for t in built for o in t.vout})
    keys = {s for i, s in enumerate(all_scripts) if watch_bits >> (i % 64) & 1}
    spent = [(i.txid.hex(), i.vout) for t in built[1:] for i in t.vin]
    owned = {o for i, o in enumerate(spent) if own_bits >> (i % 64) & 1}
    track = data.draw(st.booleans(), label="track outputs created in the block")

    expected_receipts, expected_spends, created = [], [], set()
    for n, t in enumerate(built):
        txid = t.txid().hex()
        if n:
            expected_spends += [(txid, i.txid.hex(), i.vout) for i in t.vin
                                if (i.txid.hex(), i.vout) in owned or track and (i.txid.hex(), i.vout) in created]
        for vout, o in enumerate(t.vout):
            if o.script_pubkey.data in keys:
                expected_receipts.append((txid, vout, o.script_pubkey.data, o.value, "", n == 0))
                created.add((txid, vout))

    parsed = parse_block(raw, 5, keys, owned, {} if track else None)
    assert [tuple(r) for r in parsed.receipts] == expected_receipts
    assert [tuple(s) for s in parsed.spends] == expected_spends
    assert parsed.hash == hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()
    assert (parsed.tx_count, parsed.output_count) == (len(built), sum(len(t.vout) for t in built))

    cut = data.draw(st.integers(1, len(raw) - 81), label="bytes cut off the end")
    try:
        parse_block(raw[:-cut], 5, keys, owned)
    except MalformedBlock:
        pass
    else:
        raise AssertionError(f"a block cut by {cut} bytes was accepted")
