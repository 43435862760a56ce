"""PSBT: explain (inputs, destinations, change, fee) and sign p2wpkh inputs.

Nothing in the PSBT is taken on trust. Input amounts come from each input's
witness_utxo (an input without one is refused: its fee could not be known).
An output counts as our change only if the signer re-derives its public key
from its own keys (FAILURE_MODES 9): the PSBT's derivation hints only say
where to look. Only p2wpkh inputs with SIGHASH_ALL are signed.

Parsing, the BIP143 signature hash, finalising and extraction use libwally
(wallycore, C): embit's pure-Python PSBT parse and sighash cost several times
a coincurve signature, libwally's a small fraction (benchmarks/SIGNER_RESULTS.md).
The PSBT is parsed in libwally's strict mode (BIP174/BIP370 as written).
The hot path calls libwally's C functions directly (`c`, see _wally.py), not
through wallycore's Python wrappers: the same functions with the same arguments.
"""
from __future__ import annotations

import base64
import binascii
import functools
import struct

import wallycore as wally

from chains.bitcoin.addresses import derive, parse_account_key
from chains.bitcoin.params import BitcoinNetwork
from hsm.decode import Explained, Signed, Transfer, _wally
from hsm.decode._wally import c
from hsm.errors import Refused, UnknownKey
from hsm.keystores.base import KeyInfo, Keystore

PSBT_MAGIC = b"psbt\xff"
SIGHASH_ALL = wally.WALLY_SIGHASH_ALL
HARDENED = 2**31
# Where our own change may go: BIP84 paths m/84'/coin'/account'/branch/index with an account below
# this and an index below that. Any other path of our keys is not counted as ours (its output is
# external, under the limits): coins sent to a path nobody records could never be found again.
MAX_CHANGE_ACCOUNT = 100
MAX_CHANGE_INDEX = 1_000_000
_MAX_CACHED_SCRIPTS = 100_000


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


def parse_psbt(payload: bytes):
    """libwally's PSBT (version 0 or 2) and its unsigned transaction, or Refused("decode")."""
    raw = psbt_bytes(payload)
    try:
        psbt = c.psbt_from_bytes(raw, wally.WALLY_PSBT_PARSE_FLAG_STRICT)
        # For version 2 the transaction is built from the per-input/output fields (BIP370).
        tx = c.psbt_extract(psbt, wally.WALLY_PSBT_EXTRACT_NON_FINAL)
    except (ValueError, TypeError):
        raise Refused("decode", "not a valid PSBT (libwally's strict BIP174/BIP370 parser refused it)") from None
    return psbt, tx


def path_text(derivation: list[int]) -> str:
    return "m/" + "/".join(f"{i - HARDENED}h" if i >= HARDENED else str(i) for i in derivation)


def keypath(value: bytes) -> tuple[str, list[int]]:
    """A PSBT key origin (4-byte master fingerprint, little-endian uint32 path) as (fingerprint hex, path)."""
    return value[:4].hex(), list(struct.unpack(f"<{(len(value) - 4) // 4}I", value[4:]))


def input_keypaths(psbt, index: int) -> list[tuple[str, list[int]]]:
    return [keypath(bytes(wally.psbt_get_input_keypath(psbt, index, k)))
            for k in range(wally.psbt_get_input_keypaths_size(psbt, index))]


def p2wpkh_script(pub: bytes) -> bytes:
    return b"\x00\x14" + bytes(wally.hash160(pub))


def script_to_address(script: bytes, net: BitcoinNetwork) -> str | None:
    """The address a scriptPubKey pays to, or None for scripts without one.

    The same classification as chains.bitcoin.addresses.script_to_address (a
    property test checks they agree), with libwally's C encoders: an uncached
    bech32 encode in embit costs about 0.3 ms, here about 1 us.
    """
    n = len(script)
    if n == 22 and script[:2] == b"\x00\x14" or n == 34 and script[:2] in (b"\x00\x20", b"\x51\x20"):
        return c.addr_segwit_from_bytes(script, net.hrp, 0)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return c.base58_from_bytes(bytes([net.p2pkh]) + script[3:23], wally.BASE58_FLAG_CHECKSUM)
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return c.base58_from_bytes(bytes([net.p2sh]) + script[2:22], wally.BASE58_FLAG_CHECKSUM)
    return None


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
        self._key_index: tuple[dict[str, KeyInfo], frozenset[bytes]] | None = None
        # (key id, path) -> (p2wpkh script, public key), as the keystore derived them.
        self._scripts: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._hints: dict[bytes, tuple[bytes, bytes, str] | None] = {}  # see _derived_at
        # script -> address of the scripts _derived_at found ours: change goes to the same few
        # addresses again and again, and encoding one costs about 0.7 us, a thirtieth of a signature.
        # Only a memo of script_to_address: being in it makes no output ours.
        self._addresses: dict[bytes, str] = {}

    def explain(self, payload: bytes, keys: list[tuple[str, str]]) -> Explained:
        psbt, tx = parse_psbt(payload)
        n_in, n_out = c.tx_get_num_inputs(tx), c.tx_get_num_outputs(tx)
        if not n_in or not n_out:
            raise Refused("decode", "a PSBT needs at least one input and one output")
        signers = self._signing_keys(keys)
        plan, claims, total_in = [], [], 0
        for i in range(n_in):
            utxo = c.psbt_get_input_witness_utxo_alloc(psbt, i)
            if utxo is None:
                raise Refused("decode", f"input {i} lacks its witness_utxo: its amount, and so the fee, "
                                        "can't be checked")
            script = _wally.txout_script(utxo)
            if not (len(script) == 22 and script[:2] == b"\x00\x14"):
                raise Refused("decode", f"input {i} is not p2wpkh; only p2wpkh inputs are signed")
            # 0: the PSBT names no sighash type (libwally can't tell it from an explicit 0,
            # which for a segwit v0 input has no meaning other than ALL either).
            sighash = c.psbt_get_input_sighash(psbt, i)
            if sighash not in (0, SIGHASH_ALL):
                raise Refused("decode", f"input {i} asks for sighash {sighash}; only SIGHASH_ALL is signed")
            signer = signers.get(script)
            if signer is None:
                raise Refused("keys", f"input {i} is not spendable by any of the keys given")
            amount = c.tx_output_get_satoshi(utxo)
            plan.append((*signer, script, amount))
            claims.append((_wally.input_outpoint(tx, i), amount, script))
            total_in += amount
        if len({outpoint for outpoint, _, _ in claims}) != n_in:
            # Invalid on chain, and a way to give one coin two claimed amounts in one request
            # (the inputs rule compares a request's claims with those signed before).
            raise Refused("decode", "the transaction spends one outpoint twice")
        transfers, total_out = [], 0
        spent = {spent_script for _, _, spent_script in claims}
        for j in range(n_out):
            script = _wally.output_script(tx, j)
            amount = c.tx_get_output_satoshi(tx, j)
            address = self._addresses.get(script) or script_to_address(script, self.net)
            if address is None:
                raise Refused("decode", f"output {j} pays a script with no address (OP_RETURN or non-standard)")
            # Ours if it pays back a key whose coin this very transaction spends, or re-derives from
            # our keys. Not any key the request names: the keys list is the caller's word, and a key
            # named there only to be paid made an output to it "ours" at any path, past every limit.
            path = "" if address in self.internal_addresses or script in spent else self._is_ours(psbt, j, script)
            internal = path is not None
            transfers.append(Transfer(address, self.asset, "", amount, internal, path or ""))
            total_out += amount
        fee = total_in - total_out
        if fee < 0:
            raise Refused("decode", f"outputs ({total_out} sats) exceed inputs ({total_in} sats)")
        return Explained("bitcoin", transfers, fee, self.asset, (psbt, tx, plan), tuple(claims),
                         tuple(outpoint for outpoint, _, _ in claims))

    def sign(self, explained: Explained) -> Signed:
        psbt, tx, plan = explained.detail
        for i, (key_id, path, pub, script, amount) in enumerate(plan):
            # BIP143 scriptCode of a p2wpkh input: the p2pkh script of its key hash.
            script_code = b"\x76\xa9\x14" + script[2:] + b"\x88\xac"
            digest = _wally.segwit_sighash(tx, i, script_code, amount, SIGHASH_ALL)
            der = self.keystore.sign_digest_der(key_id, path, digest) + bytes([SIGHASH_ALL])
            witness = c.tx_witness_stack_init_alloc(2)
            c.tx_witness_stack_add(witness, der)
            c.tx_witness_stack_add(witness, pub)
            c.psbt_set_input_final_witness(psbt, i, witness)
            c.tx_set_input_witness(tx, i, witness)  # the same transaction, extracted at explain
        # BIP174 finaliser: with every final witness in place, libwally drops what only
        # signers need (partial signatures, derivation paths, sighash type, scripts).
        # (Setting the witness ourselves skips psbt_add_input_signature's re-parse of our own key.)
        c.psbt_finalize(psbt, 0)
        if not c.psbt_is_finalized(psbt):
            raise Refused("decode", "the PSBT could not be finalised after signing every input")
        return Signed(_wally.psbt_serialized(psbt), _wally.tx_serialized(tx), _wally.txid(tx))

    # -- keys ----------------------------------------------------------------------------------
    def _signing_keys(self, keys: list[tuple[str, str]]) -> dict[bytes, tuple[str, str, bytes]]:
        if not keys:
            raise Refused("keys", "the request names no key to sign with")
        out = {}
        for key_id, path in keys:
            found = self._scripts.get((key_id, path))
            if found is None:
                if len(self._scripts) >= _MAX_CACHED_SCRIPTS:
                    self._scripts.clear()
                try:
                    pub = self.keystore.public_key(key_id, path)
                except UnknownKey as exc:
                    raise Refused("keys", str(exc)) from None
                found = self._scripts[(key_id, path)] = p2wpkh_script(pub), pub
            out[found[0]] = (key_id, path, found[1])
        return out

    def _is_ours(self, psbt, index: int, script: bytes) -> str | None:
        """Where we derive this output's key ourselves (our HD wallets at a change path, a token
        key, or a configured internal account xpub), said as a path for the audit log; else None."""
        wallets, token_scripts = self._wallets()
        if script in token_scripts:
            return "token key"
        for k in range(c.psbt_get_output_keypaths_size(psbt, index)):
            hint = _wally.output_keypath(psbt, index, k)
            mine = self._derived_at(hint, wallets)
            # The hint must name our key (not only our path) and the output must pay it.
            if mine and mine[0] == script and c.psbt_find_output_keypath(psbt, index, mine[1]) == k + 1:
                return mine[2]
            if self.internal_xpubs:
                tail = keypath(hint)[1][-2:]
                if len(tail) == 2 and tail[0] in (0, 1) and tail[1] < MAX_CHANGE_INDEX:
                    for xpub in self.internal_xpubs:
                        if _xpub_script(xpub, self.net.name, tail[0], tail[1]) == script:
                            return f"{xpub[:16]}.../{tail[0]}/{tail[1]}"
        return None

    def _change_path(self, derivation: list[int]) -> bool:
        coin = 0 if self.net.name == "mainnet" else 1
        return (len(derivation) == 5 and derivation[:2] == [84 + HARDENED, coin + HARDENED]
                and HARDENED <= derivation[2] < HARDENED + MAX_CHANGE_ACCOUNT
                and derivation[3] in (0, 1) and derivation[4] < MAX_CHANGE_INDEX)

    def _derived_at(self, hint: bytes, wallets: dict[str, KeyInfo]) -> tuple[bytes, bytes, str] | None:
        """(p2wpkh script, public key, key id and path) of our HD key at a derivation hint
        (fingerprint || path), if the fingerprint is one of our wallets' and the path a change
        path (_change_path). Cached: change hints repeat, and a derivation costs more than the
        rest of the decoding."""
        if hint in self._hints:
            return self._hints[hint]
        fingerprint, derivation = keypath(hint)
        owner, found = wallets.get(fingerprint), None
        if owner is not None and not owner.public_key and self._change_path(derivation):
            try:
                pub = self.keystore.public_key(owner.key_id, path_text(derivation))
            except UnknownKey:
                pass
            else:
                found = (p2wpkh_script(pub), pub, f"{owner.key_id} {path_text(derivation)}")
        if len(self._hints) >= _MAX_CACHED_SCRIPTS:
            self._hints.clear()
            self._addresses.clear()
        self._hints[hint] = found
        if found:
            self._addresses[found[0]] = script_to_address(found[0], self.net)
        return found

    def _wallets(self) -> tuple[dict[str, KeyInfo], frozenset[bytes]]:
        """(HD wallets and token keys by fingerprint, the p2wpkh scripts of token keys).

        Listed once: a running signer's keys don't change (ceremonies run offline).
        """
        if self._key_index is None:
            keys = self.keystore.list_keys()
            self._key_index = ({k.fingerprint: k for k in keys},
                               frozenset(p2wpkh_script(k.public_key) for k in keys if k.public_key))
        return self._key_index
