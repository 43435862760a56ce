"""libwally's buffer-filling calls on the signer's hot path, without wallycore's generic wrapper.

wallycore wraps each C function that fills a buffer in a Python closure that
calls a length function, allocates, and re-packs the arguments (about
0.25 us a call); a signature makes seven such calls, about a tenth of what
decoding costs. These call the same C functions through the SWIG module that
wallycore itself imports (_wallycore; the version is pinned in pyproject),
with buffers of known size: same checks, same results (checked against embit
in tests/signer/test_psbt_decoder.py).
"""
from __future__ import annotations

import _wallycore as _c
import wallycore as wally

_USE_WITNESS = wally.WALLY_TX_FLAG_USE_WITNESS


def segwit_sighash(tx, index: int, script_code: bytes, amount: int, sighash: int) -> bytes:
    """BIP143 signature hash of input index."""
    out = bytearray(32)
    _c.tx_get_btc_signature_hash(tx, index, script_code, amount, sighash, _USE_WITNESS, out)
    return bytes(out)


def txid(tx) -> str:
    out = bytearray(32)
    _c.tx_get_txid(tx, out)
    return out[::-1].hex()


def output_script(tx, index: int) -> bytes:
    out = bytearray(_c.tx_get_output_script_len(tx, index))
    _c.tx_get_output_script(tx, index, out)
    return bytes(out)


def txout_script(txout) -> bytes:
    out = bytearray(_c.tx_output_get_script_len(txout))
    _c.tx_output_get_script(txout, out)
    return bytes(out)


def psbt_serialized(psbt) -> bytes:
    out = bytearray(_c.psbt_get_length(psbt, 0))
    _c.psbt_to_bytes(psbt, 0, out)
    return bytes(out)


def tx_serialized(tx) -> bytes:
    """With witnesses."""
    out = bytearray(_c.tx_get_length(tx, _USE_WITNESS))
    _c.tx_to_bytes(tx, _USE_WITNESS, out)
    return bytes(out)
