"""The raw block parser on blocks built here with embit: legacy and segwit
transactions, several outputs to one script, spends of owned outpoints."""
import hashlib

import pytest
from embit.script import Script, Witness
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from chains.bitcoin.blocks import MalformedBlock, parse_block, transaction_id

WATCHED = bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
OTHER = bytes.fromhex("a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87")


def tx(inputs, outputs, witness=False):
    vin = [TransactionInput(bytes.fromhex(txid), vout, script_sig=Script(b"" if witness else b"\x01\x02"))
           for txid, vout in inputs]
    if witness:
        for i in vin:
            i.witness = Witness([b"\x30" * 71, b"\x02" * 33])
    return Transaction(version=2, vin=vin, vout=[TransactionOutput(v, Script(s)) for s, v in outputs])


def varint(n):
    return bytes([n]) if n < 0xFD else b"\xfd" + n.to_bytes(2, "little")


def block(txs, parent=b"\x11" * 32):
    header = (2).to_bytes(4, "little") + parent + b"\x22" * 32 + b"\x00" * 12
    return header + varint(len(txs)) + b"".join(t.serialize() for t in txs)


COINBASE = tx([("00" * 32, 0xFFFFFFFF)], [(WATCHED, 50 * 10**8)])
LEGACY = tx([("ab" * 32, 3)], [(OTHER, 1000), (WATCHED, 2000)])
SEGWIT = tx([("cd" * 32, 1), ("ef" * 32, 0)], [(WATCHED, 3), (OTHER, 4), (WATCHED, 5)], witness=True)
MANY = tx([("12" * 32, 0)], [(OTHER, 1)] * 300 + [(WATCHED, 7)], witness=True)  # 3-byte varint output count


def test_receipts_are_found_by_raw_script_with_txid_index_amount_and_coinbase_flag():
    raw = block([COINBASE, LEGACY, SEGWIT, MANY])
    parsed = parse_block(raw, 7, {WATCHED})
    assert parsed.height == 7 and parsed.parent_hash == (b"\x11" * 32)[::-1].hex()
    assert parsed.hash == hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()
    got = [(r.txid, r.index, r.amount, r.coinbase) for r in parsed.receipts]
    assert got == [
        (COINBASE.txid().hex(), 0, 50 * 10**8, True),
        (LEGACY.txid().hex(), 1, 2000, False),
        (SEGWIT.txid().hex(), 0, 3, False),
        (SEGWIT.txid().hex(), 2, 5, False),
        (MANY.txid().hex(), 300, 7, False),
    ]
    assert parsed.tx_count == 4 and parsed.output_count == 1 + 2 + 3 + 301


def test_unwatched_outputs_are_ignored():
    assert parse_block(block([COINBASE, LEGACY]), 1, {b"\x00\x14" + b"\x99" * 20}).receipts == ()


def test_spends_of_owned_outpoints_are_reported_with_the_spending_txid():
    parsed = parse_block(block([COINBASE, LEGACY, SEGWIT]), 1, set(), {("ef" * 32, 0), ("ab" * 32, 9)})
    assert [(s.txid, s.spent_txid, s.spent_index) for s in parsed.spends] == [
        (SEGWIT.txid().hex(), "ef" * 32, 0)]


def test_txid_of_a_raw_transaction_excludes_the_witness():
    assert transaction_id(SEGWIT.serialize()) == SEGWIT.txid().hex()
    assert transaction_id(LEGACY.serialize()) == LEGACY.txid().hex()


@pytest.mark.parametrize("cut", [1, 50, 200])
def test_truncated_or_padded_blocks_are_refused(cut):
    raw = block([COINBASE, LEGACY, SEGWIT])
    with pytest.raises(MalformedBlock):
        parse_block(raw[:-cut], 1, {WATCHED})
    with pytest.raises(MalformedBlock, match="bytes left"):
        parse_block(raw + b"\x00" * cut, 1, {WATCHED})
