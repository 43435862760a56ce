"""Unsigned withdrawal transactions as PSBTs (embit), their size, and finalising.

Sizes are virtual bytes of p2wpkh spends: 68 vB per input (41 bytes plus a
107-byte witness at a quarter weight, rounded up), 8 + 1 + len(script) per
output, 11 vB of version, counts, locktime and the segwit marker.
"""
from __future__ import annotations

from typing import Sequence

from embit.ec import PublicKey
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from chains.base import Coin, DerivedAddress, NodeError, Payment, UnsignedTransaction
from chains.bitcoin import addresses
from chains.bitcoin.params import BitcoinNetwork

INPUT_VSIZE = 68
OVERHEAD_VSIZE = 11
DUST = 546
DUST_RELAY_FEE_RATE = 3  # sat/vB: Bitcoin Core's -dustrelayfee default


def dust_limit(script: bytes) -> int:
    """The smallest output to script that Bitcoin Core relays: what spending it would cost at
    the dust relay fee rate (its GetDustThreshold; no library we use exposes it): p2wpkh 294,
    p2wsh and p2tr 330, p2sh 540, p2pkh 546 sats."""
    output = 8 + 1 + len(script)  # amount, script length, script
    witness_program = 4 <= len(script) <= 42 and (script[0] == 0 or 0x51 <= script[0] <= 0x60) \
        and script[1] == len(script) - 2
    spend = 32 + 4 + 1 + 107 // 4 + 4 if witness_program else 32 + 4 + 1 + 107 + 4
    return (output + spend) * DUST_RELAY_FEE_RATE
# Opt in to replacement (BIP125) so a stuck transaction can be fee-bumped.
RBF_SEQUENCE = 0xFFFFFFFD
# The master fingerprint is unknown to the core (it holds no private keys):
# the signer recognises change by the path under its configured hot xpub.
NO_FINGERPRINT = bytes(4)


def output_vsize(script: bytes) -> int:
    return 8 + 1 + len(script)


def _varint_extra(n: int) -> int:
    """Bytes a count takes beyond the one OVERHEAD_VSIZE allows for (253+ outputs: 3 bytes)."""
    return 0 if n < 0xFD else 2 if n <= 0xFFFF else 4


def vsize(n_inputs: int, output_scripts: Sequence[bytes]) -> int:
    return (OVERHEAD_VSIZE + _varint_extra(n_inputs) + _varint_extra(len(output_scripts)) + INPUT_VSIZE * n_inputs
            + sum(output_vsize(s) for s in output_scripts))


def build(payments: Sequence[Payment], coins: Sequence[Coin], change: DerivedAddress, fee_rate: int,
          net: BitcoinNetwork, change_pub: bytes | None = None, min_fee: int = 0) -> UnsignedTransaction:
    """min_fee: an absolute floor (a replacement must pay more than what it replaces, BIP125)."""
    scripts = [addresses.parse_address(p.destination, net)[1] for p in payments]
    total_in = sum(c.amount for c in coins)
    paid = sum(p.amount for p in payments)
    fee = max(vsize(len(coins), scripts + [change.watch_key]) * fee_rate, min_fee)
    rest = total_in - paid - fee
    with_change = rest >= DUST
    if not with_change and not payments:
        raise NodeError(f"coins of {total_in} sats can't pay a fee of {fee} sats and leave change above dust")
    if not with_change:
        fee = total_in - paid  # no change output: the fee takes the rest
        if fee < vsize(len(coins), scripts) * fee_rate:
            raise NodeError(f"coins of {total_in} sats can't pay {paid} sats plus the fee")
    tx = Transaction(version=2, locktime=0,
                     vin=[TransactionInput(bytes.fromhex(c.txid), c.index, sequence=RBF_SEQUENCE) for c in coins],
                     vout=[TransactionOutput(p.amount, Script(s)) for p, s in zip(payments, scripts)])
    if with_change:
        tx.vout.append(TransactionOutput(rest, Script(change.watch_key)))
    p = PSBT(tx)
    for scope, coin in zip(p.inputs, coins):
        scope.witness_utxo = TransactionOutput(coin.amount, Script(coin.watch_key))
    if with_change and change_pub:
        branch, index = (int(x) for x in change.path.split("/"))
        p.outputs[-1].bip32_derivations[PublicKey.parse(change_pub)] = DerivationPath(NO_FINGERPRINT, [branch, index])
    return UnsignedTransaction("bitcoin", p.serialize(), fee, tuple(coins))


def inputs_of(unsigned_psbt: bytes) -> list[Coin]:
    """The coins a PSBT spends (amount and script from each input's witness_utxo)."""
    p = PSBT.parse(unsigned_psbt)
    return [Coin(vin.txid.hex(), vin.vout, scope.witness_utxo.value, scope.witness_utxo.script_pubkey.data, "")
            for vin, scope in zip(p.tx.vin, p.inputs)]


def finalize(signed_psbt: bytes) -> bytes:
    p = PSBT.parse(signed_psbt)
    for i, scope in enumerate(p.inputs):
        if scope.final_scriptwitness is None:
            raise NodeError(f"input {i} of the signed PSBT has no final witness")
        p.tx.vin[i].witness = scope.final_scriptwitness
    return p.tx.serialize()


def bump(unsigned_psbt: bytes, fee_rate: int) -> tuple[bytes, int]:
    """The same unsigned PSBT (same inputs, same payment outputs, same change
    address) paying fee_rate: only the change output shrinks. Returns (PSBT, fee).
    Raises NodeError when there is no change output or it would fall below dust."""
    p = PSBT.parse(unsigned_psbt)
    change = [i for i, o in enumerate(p.outputs) if o.bip32_derivations]
    if len(change) != 1:
        raise NodeError("the transaction has no change output to take a higher fee from")
    if any(scope.witness_utxo is None for scope in p.inputs):
        raise NodeError("an input of the PSBT has no witness_utxo: its value is unknown")
    total_in = sum(scope.witness_utxo.value for scope in p.inputs)
    scripts = [o.script_pubkey.data for o in p.outputs]
    fee = vsize(len(p.inputs), scripts) * fee_rate
    paid = sum(o.value for i, o in enumerate(p.outputs) if i != change[0])
    rest = total_in - paid - fee
    if rest < DUST:
        raise NodeError(f"a fee of {fee} sats leaves {rest} sats of change, below the dust limit")
    p.outputs[change[0]].value = rest
    return p.serialize(), fee
