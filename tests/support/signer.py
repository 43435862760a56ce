"""Helpers for the signer's tests and benchmark: a software keystore with the
BIP84 test mnemonic, signer.toml as a dict, PSBTs and EIP-1559 payloads,
staff keys that sign approvals."""
from __future__ import annotations

import hashlib
import pathlib
import subprocess

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from embit.ec import PublicKey
from embit.psbt import PSBT, DerivationPath
from embit.script import Script
from embit.transaction import Transaction, TransactionInput, TransactionOutput

from chains.bitcoin.addresses import p2wpkh_address
from chains.bitcoin.params import network
from hsm import config as config_mod
from hsm.api.auth import token_digest
from hsm.decode.ethereum import address_of, unsigned_transaction
from hsm.keystores.software import Passphrase, SoftwareKeystore

MNEMONIC = "abandon " * 11 + "about"
OTHER_MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PASSPHRASE = "correct horse battery staple"
REGTEST = network("regtest")
CLIENT_TOKEN = "signer-test-token"
HOT = "hot"
HOT_BTC_PATH = "m/84h/1h/1h/0/0"
HOT_CHANGE_PATH = "m/84h/1h/1h/1/0"
HOT_ETH_PATH = "m/44h/60h/0h/0/0"
ANVIL_CHAIN_ID = 31337
BTC = 100_000_000
ETH = 10**18
STAFF = {name: Ed25519PrivateKey.from_private_bytes(hashlib.sha256(name.encode()).digest())
         for name in ("alice", "bob", "carol")}
USDT_CONTRACT = "0xdac17f958d2ee523a2206206994597c13d831ec7"


def staff_public_hex(name: str) -> str:
    return STAFF[name].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def make_keystore(folder: pathlib.Path, mnemonic: str = MNEMONIC, name: str = HOT) -> SoftwareKeystore:
    store = SoftwareKeystore.create(folder / "keystore.json", Passphrase(PASSPHRASE), scrypt_n=2**10)
    store.import_wallet(name, mnemonic)
    return store


def raw_config(folder: pathlib.Path, **policy) -> dict:
    return {
        "server": {"listen": f"unix:{folder}/signer.sock"},
        "clients": [{"name": "custody-core", "token_sha256": token_digest(CLIENT_TOKEN)}],
        "keystore": {"kind": "software", "path": str(folder / "keystore.json"), "passphrase_env": "TEST_SIGNER_PASS"},
        "state": {"audit_log": str(folder / "audit.log"), "limits_db": str(folder / "limits.sqlite")},
        "chains": {"bitcoin": {"network": "regtest"}, "ethereum": {"chain_id": ANVIL_CHAIN_ID}},
        "policy": {
            "approval_quorum": 2,
            "staff": [{"name": n, "ed25519_public_key": staff_public_hex(n)} for n in STAFF],
            "assets": [
                {"asset": "BTC", "chain": "bitcoin", "max_per_transaction": str(2 * BTC),
                 "max_per_24h": str(3 * BTC), "max_fee": "100000", "approval_above": str(BTC // 2)},
                {"asset": "ETH", "chain": "ethereum", "max_per_transaction": str(5 * ETH),
                 "max_per_24h": str(8 * ETH), "max_fee": str(ETH // 100), "approval_above": str(2 * ETH)},
                {"asset": "USDT", "chain": "ethereum", "contract": USDT_CONTRACT,
                 "max_per_transaction": str(10_000 * 10**6)},
            ],
            **policy,
        },
    }


def make_config(folder: pathlib.Path, **policy) -> config_mod.Config:
    return config_mod.parse(raw_config(folder, **policy))


def hot_script(store, path: str = HOT_BTC_PATH, key_id: str = HOT) -> bytes:
    return p2wpkh_address(store.public_key(key_id, path), REGTEST)[1]


def p2wpkh_script(pub: bytes) -> bytes:
    return p2wpkh_address(pub, REGTEST)[1]


def address_for(script: bytes) -> str:
    from chains.bitcoin.addresses import script_to_address

    return script_to_address(script, REGTEST)


def foreign_script(seed: str = "someone else") -> bytes:
    return b"\x00\x14" + hashlib.sha256(seed.encode()).digest()[:20]


def make_psbt(inputs: list[tuple[str, int, int, bytes]], outputs: list[tuple[bytes, int]],
              change: dict[int, tuple[bytes, bytes, str]] | None = None, with_utxo: bool = True) -> bytes:
    """inputs: (txid hex, vout, value sats, scriptPubKey); outputs: (script, sats);
    change: output index -> (pubkey, master fingerprint, path) as a watch-only wallet would add."""
    tx = Transaction(version=2, vin=[TransactionInput(bytes.fromhex(txid), vout, sequence=0xFFFFFFFD)
                                     for txid, vout, _, _ in inputs],
                     vout=[TransactionOutput(value, Script(script)) for script, value in outputs], locktime=0)
    psbt = PSBT(tx)
    if with_utxo:
        for scope, (_, _, value, script) in zip(psbt.inputs, inputs):
            scope.witness_utxo = TransactionOutput(value, Script(script))
    for index, (pub, fingerprint, path) in (change or {}).items():
        parts = [int(p[:-1]) + 2**31 if p.endswith("h") else int(p) for p in path.split("/")[1:]]
        psbt.outputs[index].bip32_derivations[PublicKey.parse(pub)] = DerivationPath(fingerprint, parts)
    return psbt.serialize()


def coin_creator(outputs: list[tuple[bytes, int]], seed: str = "funding") -> Transaction:
    """A transaction creating coins (script, sats): what a PSBT's non_witness_utxo carries."""
    spent = TransactionInput(hashlib.sha256(seed.encode()).digest(), 0)
    return Transaction(version=2, vin=[spent], vout=[TransactionOutput(v, Script(s)) for s, v in outputs], locktime=0)


def with_creators(payload: bytes, creators: list[Transaction]) -> bytes:
    """payload with each input's non_witness_utxo set to the given transaction."""
    psbt = PSBT.parse(payload)
    for scope, creator in zip(psbt.inputs, creators):
        scope.non_witness_utxo = creator
    return psbt.serialize()


def simple_psbt(store, amount: int, to: bytes | None = None, fee: int = 1_000, input_value: int = 5 * BTC,
                change_path: str = HOT_CHANGE_PATH, input_txid: str = "11" * 32) -> bytes:
    """One input of ours, a payment and our change (with its derivation hint)."""
    change_pub = store.public_key(HOT, change_path)
    change_script = p2wpkh_address(change_pub, REGTEST)[1]
    return make_psbt([(input_txid, 0, input_value, hot_script(store))],
                     [(to or foreign_script(), amount), (change_script, input_value - amount - fee)],
                     change={1: (change_pub, bytes.fromhex(store.fingerprint(HOT)), change_path)})


def eth_payload(to: str, value: int, *, chain_id: int = ANVIL_CHAIN_ID, nonce: int = 0, gas: int = 21_000,
                max_fee: int = 2 * 10**9, tip: int = 10**9, data: bytes = b"") -> bytes:
    return unsigned_transaction(chain_id, nonce, tip, max_fee, gas, to, value, data)


def hot_eth_address(store) -> str:
    return address_of(store.public_key(HOT, HOT_ETH_PATH))


def to_toml(raw: dict) -> str:
    """Enough TOML for signer.toml: tables, arrays of tables, strings, ints, bools, string lists."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out: list[str] = []

    def table(name: str, body: dict, array: bool = False):
        out.append(f"[[{name}]]" if array else f"[{name}]")
        nested = []
        for k, v in body.items():
            if isinstance(v, dict):
                nested.append((f"{name}.{k}", v, False))
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                nested.extend((f"{name}.{k}", item, True) for item in v)
            else:
                out.append(f"{k} = {value(v)}")
        for n, b, a in nested:
            table(n, b, a)

    for k, v in raw.items():
        if isinstance(v, dict):
            table(k, v)
        else:
            for item in v:
                table(k, item, True)
    return "\n".join(out) + "\n"


class SignerProcess:
    """`custody signer serve` in its own process, on a Unix socket or TLS on loopback, and a client for it.

    For TLS, client_tls holds SignerClient's root_cert, client_cert and client_key."""

    def __init__(self, folder: pathlib.Path, raw: dict, env: dict | None = None, client_tls: dict | None = None):
        import os
        import sys
        import time

        from hsm.client import SignerClient

        self.config_path = folder / "signer.toml"
        self.config_path.write_text(to_toml(raw))
        listen = raw["server"]["listen"]
        self.log_path = folder / "signer.out"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "custody.cli", "signer", "serve", "--config", str(self.config_path)],
            env={**os.environ, "TEST_SIGNER_PASS": PASSPHRASE, **(env or {})},
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._listening(listen):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("signer did not start: " + self.log_path.read_text())
            time.sleep(0.05)
        self.target = listen
        self.client = SignerClient(listen, CLIENT_TOKEN, **(client_tls or {}))

    def _listening(self, listen: str) -> bool:
        # Said once the server has started. A unix socket's file appears at bind, before the
        # server listens: a call in between was refused (seen once under load).
        return b"signer listening on" in self.log_path.read_bytes()

    def stop(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # fail the test, but leave no signer running behind
                self.process.kill()
                self.process.wait()
                raise
        self.log.close()
