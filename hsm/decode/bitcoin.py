"""PSBT: explain (inputs, destinations, change, fee) and sign p2wpkh inputs.

Nothing in the PSBT is taken on trust. Input amounts come from each input's
witness_utxo (an input without one is refused: its fee could not be known).
An output counts as our change only if the signer re-derives its public key
from its own keys (FAILURE_MODES 9): the PSBT's derivation hints only say
where to look. Only p2wpkh inputs with SIGHASH_ALL are signed.
"""
from __future__ import annotations

import base64
import binascii
import functools

from embit.psbt import PSBT, DerivationPath
from embit.hashes import hash160
from embit.script import Witness
from embit.transaction import SIGHASH

from chains.bitcoin.addresses import derive, parse_account_key, script_to_address
from chains.bitcoin.params import BitcoinNetwork
from hsm.decode import Explained, Signed, Transfer
from hsm.errors import Refused, UnknownKey
from hsm.keystores.base import Keystore

PSBT_MAGIC = b"psbt\xff"


def psbt_bytes(payload: bytes) -> bytes:
    """The binary PSBT whether it came binary or as base64 text (approvals sign this form)."""
    if payload.startswith(PSBT_MAGIC):
        return payload
    try:
        raw = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("decode", "payload is neither a binary nor a base64 PSBT") from None
    if not raw.startswith(PSBT_MAGIC):
        raise Refused("decode", "payload is neither a binary nor a base64 PSBT")
    return raw


def path_text(derivation: DerivationPath) -> str:
    return "m/" + "/".join(f"{i - 2**31}h" if i >= 2**31 else str(i) for i in derivation.derivation)


def p2wpkh_script(pub: bytes) -> bytes:
    return b"\x00\x14" + hash160(pub)


@functools.lru_cache(maxsize=100_000)
def _address(script: bytes, net_name: str) -> str | None:
    # embit's bech32 is pure Python (about 0.3 ms per address): hot-wallet and
    # frequent payee addresses repeat, so they are encoded once.
    from chains.bitcoin.params import network

    return script_to_address(script, network(net_name))


@functools.lru_cache(maxsize=64)
def _account_key(xpub: str, net_name: str):
    from chains.bitcoin.params import network

    return parse_account_key(xpub, network(net_name))


@functools.lru_cache(maxsize=100_000)
def _xpub_script(xpub: str, net_name: str, change: int, index: int) -> bytes:
    from chains.bitcoin.params import network

    net = network(net_name)
    return derive(_account_key(xpub, net_name), index, bool(change), net).watch_key


class BitcoinDecoder:
    def __init__(self, net: BitcoinNetwork, keystore: Keystore, asset: str = "BTC",
                 internal_addresses: frozenset[str] = frozenset(), internal_xpubs: tuple[str, ...] = ()):
        self.net = net
        self.keystore = keystore
        self.asset = asset
        self.internal_addresses = internal_addresses
        self.internal_xpubs = internal_xpubs

    def explain(self, payload: bytes, keys: list[tuple[str, str]]) -> Explained:
        try:
            psbt = PSBT.parse(psbt_bytes(payload))
        except Refused:
            raise
        except Exception as exc:
            raise Refused("decode", f"not a valid PSBT: {exc}") from None
        if not psbt.inputs or not psbt.outputs:
            raise Refused("decode", "a PSBT needs at least one input and one output")
        signers = self._signing_keys(keys)
        plan, total_in = [], 0
        for i, inp in enumerate(psbt.inputs):
            utxo = inp.witness_utxo
            if utxo is None:
                raise Refused("decode", f"input {i} lacks its witness_utxo: its amount, and so the fee, "
                                        "can't be checked")
            script = utxo.script_pubkey.data
            if not (len(script) == 22 and script[:2] == b"\x00\x14"):
                raise Refused("decode", f"input {i} is not p2wpkh; only p2wpkh inputs are signed")
            if inp.sighash_type not in (None, SIGHASH.ALL):
                raise Refused("decode", f"input {i} asks for sighash {inp.sighash_type}; only SIGHASH_ALL is signed")
            signer = signers.get(script)
            if signer is None:
                raise Refused("keys", f"input {i} is not spendable by any of the keys given")
            plan.append(signer)
            total_in += utxo.value
        transfers, total_out = [], 0
        for j, out in enumerate(psbt.outputs):
            script = out.script_pubkey.data
            address = _address(script, self.net.name)
            if address is None:
                raise Refused("decode", f"output {j} pays a script with no address (OP_RETURN or non-standard)")
            # Ours if it pays a key signing this very transaction, or re-derives from our keys.
            internal = address in self.internal_addresses or script in signers or self._is_ours(out, script)
            transfers.append(Transfer(address, self.asset, "", out.value, internal))
            total_out += out.value
        fee = total_in - total_out
        if fee < 0:
            raise Refused("decode", f"outputs ({total_out} sats) exceed inputs ({total_in} sats)")
        return Explained("bitcoin", transfers, fee, self.asset, (psbt, plan))

    def sign(self, explained: Explained) -> Signed:
        psbt, plan = explained.detail
        tx = psbt.tx
        for i, (key_id, path, pub) in enumerate(plan):
            digest = psbt.sighash(i, SIGHASH.ALL)
            der = self.keystore.sign_digest(key_id, path, digest).der() + bytes([SIGHASH.ALL])
            witness = Witness([der, pub])
            inp = psbt.inputs[i]
            # BIP174 finaliser: keep the final witness, drop what only signers need.
            inp.partial_sigs.clear()
            inp.bip32_derivations.clear()
            inp.final_scriptwitness = witness
            tx.vin[i].witness = witness
        return Signed(psbt.serialize(), tx.serialize(), tx.txid().hex())

    # -- keys ----------------------------------------------------------------------------------
    def _signing_keys(self, keys: list[tuple[str, str]]) -> dict[bytes, tuple[str, str, bytes]]:
        if not keys:
            raise Refused("keys", "the request names no key to sign with")
        out = {}
        for key_id, path in keys:
            try:
                pub = self.keystore.public_key(key_id, path)
            except UnknownKey as exc:
                raise Refused("keys", str(exc)) from None
            out[p2wpkh_script(pub)] = (key_id, path, pub)
        return out

    def _is_ours(self, out, script: bytes) -> bool:
        """True only if we derive this output's key ourselves (our HD wallets, a token key,
        or a configured internal account xpub)."""
        wallets = {k.fingerprint: k for k in self._keys()}
        for k in wallets.values():
            if k.public_key and p2wpkh_script(k.public_key) == script:
                return True
        for pub, derivation in out.bip32_derivations.items():
            owner = wallets.get(derivation.fingerprint.hex())
            if owner is not None and not owner.public_key:
                try:
                    mine = self.keystore.public_key(owner.key_id, path_text(derivation))
                except UnknownKey:
                    continue
                if mine == pub.sec() and p2wpkh_script(mine) == script:
                    return True
            tail = derivation.derivation[-2:]
            if len(tail) == 2 and tail[0] in (0, 1) and tail[1] < 2**31:
                for xpub in self.internal_xpubs:
                    if _xpub_script(xpub, self.net.name, tail[0], tail[1]) == script:
                        return True
        return False

    def _keys(self):
        # Listed once: a running signer's keys don't change (ceremonies run offline).
        if not hasattr(self, "_key_list"):
            self._key_list = self.keystore.list_keys()
        return self._key_list

