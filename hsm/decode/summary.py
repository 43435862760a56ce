"""What a payload does, in words, for a person about to approve it (`custody signer approve`).

A staff approval of a whole payload lets the signer pay what that payload pays, past the limits
that need a quorum: the person must see the destinations and amounts, not only a file name. The
decoders (bitcoin.py, ethereum.py) explain a payload for the keys that will sign it; an approver
holds no wallet keys, so this reads the payload alone. It says nothing about which outputs are
ours: only the signer's keystore can tell.
"""
from __future__ import annotations

import rlp

from chains.bitcoin.params import BitcoinNetwork
from hsm.decode import _wally
from hsm.decode._wally import c
from hsm.decode.bitcoin import parse_psbt, script_to_address
from hsm.decode.ethereum import _FIELDS, ERC20_TRANSFER, TX_TYPE, _int
from hsm.errors import Refused


def summarize(chain: str, payload: bytes, net: BitcoinNetwork | None = None) -> str:
    if chain == "bitcoin":
        return _bitcoin(payload, net)
    return _ethereum(payload)


def _bitcoin(payload: bytes, net: BitcoinNetwork) -> str:
    psbt, tx = parse_psbt(payload)
    lines = [f"bitcoin transaction ({net.name}), txid {_wally.txid(tx)}:"]
    total_in: int | None = 0
    for i in range(c.tx_get_num_inputs(tx)):
        utxo = c.psbt_get_input_witness_utxo_alloc(psbt, i)
        amount = None if utxo is None else c.tx_output_get_satoshi(utxo)
        lines.append(f"  spend {_wally.input_outpoint(tx, i)}: "
                     + ("amount not stated" if amount is None else f"{amount} sats"))
        total_in = None if amount is None or total_in is None else total_in + amount
    total_out = 0
    for j in range(c.tx_get_num_outputs(tx)):
        script, amount = _wally.output_script(tx, j), c.tx_get_output_satoshi(tx, j)
        address = script_to_address(script, net) or f"script {script.hex()} (no address)"
        lines.append(f"  pay {amount} sats to {address}")
        total_out += amount
    if total_in is None:
        lines.append("  fee: unknown (an input does not state its amount)")
    else:
        lines.append(f"  fee: {total_in - total_out} sats (as the inputs state their amounts)")
    return "\n".join(lines)


def _ethereum(payload: bytes) -> str:
    if not payload or payload[0] != TX_TYPE:
        raise Refused("decode", "not an unsigned EIP-1559 (type 2) transaction")
    try:
        items = rlp.decode(payload[1:])
    except Exception as exc:
        raise Refused("decode", f"not valid RLP: {exc}") from None
    if not isinstance(items, list) or len(items) != len(_FIELDS):
        raise Refused("decode", f"an unsigned EIP-1559 transaction has {len(_FIELDS)} fields")
    fields = dict(zip(_FIELDS, items))
    numbers = {n: _int(fields[n], n) for n in ("chain_id", "nonce", "max_fee_per_gas", "gas", "value")}
    to, data = fields["to"], fields["data"]
    if not isinstance(to, bytes) or len(to) != 20 or not isinstance(data, bytes):
        raise Refused("decode", "no 20-byte destination, or data that is not bytes")
    lines = [f"ethereum transaction, chain id {numbers['chain_id']}, nonce {numbers['nonce']}:"]
    if numbers["value"] or not data:
        lines.append(f"  pay {numbers['value']} wei to 0x{to.hex()}")
    if data[:4] == ERC20_TRANSFER and len(data) == 68:
        lines.append(f"  call token contract 0x{to.hex()}: transfer {int.from_bytes(data[36:68], 'big')} "
                     f"token units to 0x{data[16:36].hex()}")
    elif data:
        lines.append(f"  call contract 0x{to.hex()} with {len(data)} bytes of data (not a token transfer)")
    lines.append(f"  fee: at most {numbers['gas'] * numbers['max_fee_per_gas']} wei")
    return "\n".join(lines)
