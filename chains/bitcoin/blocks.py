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
_NULL_OUTPOINT = b"\x00" * 32 + b"\xff\xff\xff\xff"


class MalformedBlock(ValueError):
    pass


def block_hash(header: bytes) -> str:
    return _sha256(_sha256(header[:80]).digest()).digest()[::-1].hex()


def parse_block(raw: bytes, height: int, keys: Container[bytes],
                outpoints: Container[tuple[str, int]] = frozenset(),
                created: set[tuple[str, int]] | None = None) -> Block:
    """Receipts to scripts in keys and spends of outpoints, in block order.

    raw: the block's serialization (getblock verbosity 0, hex-decoded).
    created: if given, the outpoint of every receipt is added to it, and a
    spend of anything in it is reported too: an output paid to us and spent
    later in the same block (or, with one set for several blocks, in a later
    block of the same batch) is seen spent although the caller didn't own it yet.
    Raises MalformedBlock if the bytes do not parse to the end exactly."""
    try:
        return _parse(raw, height, keys, outpoints, created)
    except (IndexError, ValueError) as exc:
        if isinstance(exc, MalformedBlock):
            raise
        raise MalformedBlock(f"block at height {height} does not parse: {exc}") from None


def _parse(data: bytes, height: int, keys, outpoints, created) -> Block:
    if len(data) < 81:
        raise MalformedBlock(f"block at height {height} is {len(data)} bytes, shorter than a header")
    header_hash = block_hash(data)
    parent = data[4:36][::-1].hex()
    track = created is not None
    check_spends = bool(outpoints) or track
    if not track:
        created = ()
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
                prev = data[pos:pos + 36]
                outpoint = (prev[31::-1].hex(), _from_le(prev[32:36], "little"))
                if outpoint in outpoints or outpoint in created:
                    spent_here = spent_here or []
                    spent_here.append(outpoint)
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
                end = pos + 9 + n
                if data[pos + 9:end] in keys:
                    matched = matched or []
                    matched.append((vout, data[pos + 9:end], _from_le(data[pos:pos + 8], "little")))
                pos = end
            else:
                n, start_script = _varint(data, pos + 8)
                end = start_script + n
                if data[start_script:end] in keys:
                    matched = matched or []
                    matched.append((vout, data[start_script:end], _from_le(data[pos:pos + 8], "little")))
                pos = end
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
            if segwit:
                txid = _sha256(_sha256(data[start:start + 4] + data[body_start:body_end] + data[pos - 4:pos])
                               .digest()).digest()[::-1].hex()
            else:
                txid = _sha256(_sha256(data[start:pos]).digest()).digest()[::-1].hex()
            coinbase = tx_index == 0
            for vout, script, value in matched or ():
                receipts.append(Receipt(txid, vout, script, value, "", coinbase))
                if track:
                    created.add((txid, vout))
            for spent_txid, spent_index in spent_here or ():
                spends.append(Spend(txid, spent_txid, spent_index))
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
