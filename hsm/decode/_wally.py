"""libwally's calls on the signer's hot path, without wallycore's Python wrappers.

wallycore wraps each C function that fills a buffer in a Python closure that
calls a length function, allocates, and re-packs the arguments (about
0.25 us a call), each function with default arguments in another closure
(about 0.5 us: psbt_from_bytes, psbt_extract, psbt_finalize), and every
other function in a one-line Python function. A signature makes about thirty
such calls, together more than a tenth of what decoding costs. The decoder
calls the same C functions through the SWIG module that wallycore itself
imports (`c`, below; the version is pinned in pyproject), with every argument
given and buffers of known size: same checks, same results (checked against
embit in tests/signer/test_psbt_decoder.py).
"""
from __future__ import annotations

import _wallycore as c
import wallycore as wally

_USE_WITNESS = wally.WALLY_TX_FLAG_USE_WITNESS


def segwit_sighash(tx, index: int, script_code: bytes, amount: int, sighash: int) -> bytes:
    """BIP143 signature hash of input index."""
    out = bytearray(32)
    c.tx_get_btc_signature_hash(tx, index, script_code, amount, sighash, _USE_WITNESS, out)
    return bytes(out)


def txid(tx) -> str:
    out = bytearray(32)
    c.tx_get_txid(tx, out)
    return out[::-1].hex()


def input_outpoint(tx, index: int) -> str:
    """"txid:vout" of input index."""
    out = bytearray(32)
    c.tx_get_input_txhash(tx, index, out)
    return f"{out[::-1].hex()}:{c.tx_get_input_index(tx, index)}"


def output_script(tx, index: int) -> bytes:
    out = bytearray(c.tx_get_output_script_len(tx, index))
    c.tx_get_output_script(tx, index, out)
    return bytes(out)


def txout_script(txout) -> bytes:
    out = bytearray(c.tx_output_get_script_len(txout))
    c.tx_output_get_script(txout, out)
    return bytes(out)


def psbt_serialized(psbt) -> bytes:
    out = bytearray(c.psbt_get_length(psbt, 0))
    c.psbt_to_bytes(psbt, 0, out)
    return bytes(out)


def tx_serialized(tx) -> bytes:
    """With witnesses."""
    out = bytearray(c.tx_get_length(tx, _USE_WITNESS))
    c.tx_to_bytes(tx, _USE_WITNESS, out)
    return bytes(out)


def output_keypath(psbt, index: int, subindex: int) -> bytes:
    """The subindex-th key origin (fingerprint || path) of output index."""
    out = bytearray(c.psbt_get_output_keypath_len(psbt, index, subindex))
    c.psbt_get_output_keypath(psbt, index, subindex, out)
    return bytes(out)
