"""A raw block parser that does only what the scanner needs.

Hand-written on purpose: embit and python-bitcoinlib parse a block into
objects (every transaction, input, output and witness item) and hash every
transaction, which costs several times the RPC fetch for a block with
thousands of outputs. The scanner needs far less: for each output, its raw
scriptPubKey (matched against the watched set as bytes, never as an address
string the node rendered: FAILURE_MODES 19), and for each input, the outpoint
it spends. A transaction's id is computed only when one of its outputs or
inputs matched. Layout: https://en.bitcoin.it/wiki/Protocol_documentation#block
and BIP144 (segwit serialization).
"""
from __future__ import annotations

import hashlib
from typing import Container

from chains.base import Block, Receipt, Spend

_sha256 = hashlib.sha256
_from_le = int.from_bytes
_new_tuple = tuple.__new__


class MalformedBlock(ValueError):
    pass


def block_hash(header: bytes) -> str:
    return _sha256(_sha256(header[:80]).digest()).digest()[::-1].hex()


def parse_block(raw: bytes, height: int, keys: Container[bytes],
                outpoints: Container[tuple[str, int]] = frozenset(),
                created: dict[str, list] | None = None) -> Block:
    """Receipts to scripts in keys and spends of outpoints, in block order.

    raw: the block's serialization (getblock verbosity 0, hex-decoded).
    created: if given, a dict the parser fills with the outputs it matched,
    by txid, and checks inputs against: a spend of one of them is reported too: an output paid to us and
    spent later in the same block (or, with one dict for several blocks, in a
    later block of the same batch) is seen spent although the caller did not
    own it yet.
    Raises MalformedBlock if the bytes do not parse to the end exactly."""
    try:
        return _parse(raw, height, keys, outpoints, created)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, MalformedBlock):
            raise
        raise MalformedBlock(f"block at height {height} does not parse: {exc}") from None


def _parse(data: bytes, height: int, keys, outpoints, created) -> Block:
    # Written for speed: most of a scan's time is this function's loop over
    # outputs, so it uses local names, reads a one-byte length inline (scripts
    # under 253 bytes are nearly all of them), slices a script once and keeps
    # the slice for the receipt, and makes Receipts with tuple.__new__ (half
    # the cost of the NamedTuple constructor). tests/unit/test_block_parser.py
    # checks it against embit's decoding of random blocks.
    if len(data) < 81:
        raise MalformedBlock(f"block at height {height} is {len(data)} bytes, shorter than a header")
    header_hash = block_hash(data)
    parent = data[4:36][::-1].hex()
    track = created is not None
    if not track:
        created = {}
    check_spends = bool(outpoints) or track
    receipts: list[Receipt] = []
    spends: list[Spend] = []
    pos = 80
    tx_count, pos = _varint(data, pos)
    output_count = 0
    for tx_index in range(tx_count):
        start = pos
        pos += 4  # version
        segwit = data[pos] == 0 and data[pos + 1] == 1
        if segwit:
            pos += 2
        body_start = pos
        n_in, pos = _varint(data, pos)
        spent_here = None
        for _ in range(n_in):
            if check_spends and tx_index:
                spent_txid = data[pos:pos + 32][::-1].hex()
                spent_index = _from_le(data[pos + 32:pos + 36], "little")
                if (spent_txid, spent_index) in outpoints or (
                        spent_txid in created and any(v == spent_index for v, _, _ in created[spent_txid])):
                    spent_here = spent_here or []
                    spent_here.append((spent_txid, spent_index))
            pos += 36
            n = data[pos]
            if n < 0xFD:
                pos += 1 + n
            else:
                n, pos = _varint(data, pos)
                pos += n
            pos += 4  # sequence
        n_out = data[pos]
        if n_out < 0xFD:
            pos += 1
        else:
            n_out, pos = _varint(data, pos)
        matched = None
        for vout in range(n_out):
            # value (8 bytes), script length, script; the value is read only on a match.
            n = data[pos + 8]
            if n < 0xFD:
                script = data[pos + 9:pos + 9 + n]
                if script in keys:
                    if matched is None:
                        matched = []
                    matched.append((vout, script, _from_le(data[pos:pos + 8], "little")))
                pos += 9 + n
            else:
                n, script_start = _varint(data, pos + 8)
                script = data[script_start:script_start + n]
                if script in keys:
                    if matched is None:
                        matched = []
                    matched.append((vout, script, _from_le(data[pos:pos + 8], "little")))
                pos = script_start + n
        output_count += n_out
        body_end = pos
        if segwit:
            for _ in range(n_in):
                items, pos = _varint(data, pos)
                for _ in range(items):
                    n = data[pos]
                    if n < 0xFD:
                        pos += 1 + n
                    else:
                        n, pos = _varint(data, pos)
                        pos += n
        pos += 4  # lock time
        if pos > len(data):
            raise MalformedBlock(f"block at height {height}: transaction {tx_index} runs past the end")
        if matched or spent_here:
            if segwit:  # the txid hashes the transaction without marker, flag and witnesses
                first = _sha256(data[start:start + 4])
                first.update(data[body_start:body_end])
                first.update(data[pos - 4:pos])
            else:
                first = _sha256(data[start:pos])
            txid = _sha256(first.digest()).digest()[::-1].hex()
            if matched:
                coinbase = tx_index == 0
                receipts += [_new_tuple(Receipt, (txid, vout, script, value, "", coinbase))
                             for vout, script, value in matched]
                if track:
                    created[txid] = matched
            if spent_here:
                spends += [Spend(txid, spent_txid, spent_index) for spent_txid, spent_index in spent_here]
    if pos != len(data):
        raise MalformedBlock(f"block at height {height}: {len(data) - pos} bytes left after {tx_count} transactions")
    return Block(height, header_hash, parent, tuple(receipts), tuple(spends), tx_count, output_count)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    n = data[pos]
    if n < 0xFD:
        return n, pos + 1
    if n == 0xFD:
        return _from_le(data[pos + 1:pos + 3], "little"), pos + 3
    if n == 0xFE:
        return _from_le(data[pos + 1:pos + 5], "little"), pos + 5
    return _from_le(data[pos + 1:pos + 9], "little"), pos + 9


def transaction_id(raw: bytes) -> str:
    """The txid of one raw transaction (witness data excluded, as consensus has it)."""
    block = b"\x00" * 80 + b"\x01" + raw
    tx_start = 81
    data = block
    pos = tx_start + 4
    segwit = data[pos] == 0 and data[pos + 1] == 1
    if not segwit:
        return _sha256(_sha256(raw).digest()).digest()[::-1].hex()
    pos += 2
    body_start = pos
    n_in, pos = _varint(data, pos)
    for _ in range(n_in):
        pos += 36
        n, pos = _varint(data, pos)
        pos += n + 4
    n_out, pos = _varint(data, pos)
    for _ in range(n_out):
        pos += 8
        n, pos = _varint(data, pos)
        pos += n
    body_end = pos
    return _sha256(_sha256(raw[:4] + data[body_start:body_end] + raw[-4:]).digest()).digest()[::-1].hex()
