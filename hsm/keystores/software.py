"""Software keystore: one HD seed per wallet, encrypted at rest with AES-256-GCM.

File format (JSON):
    {"format": "custody-signer-keystore/1",
     "kdf": {"name": "scrypt", "salt": b64, "n": 65536, "r": 8, "p": 1} | {"name": "key-file"},
     "check": hex HMAC-SHA256(key, "custody keystore key check"),
     "nonce": b64 (12 bytes), "ciphertext": b64}
The header (format, kdf, check) is the GCM associated data, but the key that
checks it comes from the kdf: so the kdf is checked first against what create()
writes (scrypt r=8, p=1, n a power of two in SCRYPT_N_RANGE); an n changed
within that range still reads as a wrong passphrase. `check` lets us tell a
wrong passphrase from a damaged file, which the GCM tag alone can't.
The plaintext is {"wallets": {name: {"seed": hex}}}. Child keys are derived
in memory when first used and kept only in this process.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import pathlib
import secrets
import threading

import coincurve
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from embit import bip39
from embit.bip32 import HDKey

from hsm.errors import KeystoreCorrupted, KeystoreError, UnknownKey, WrongSecret
from hsm.keystores.base import KeyInfo, Keystore, Signature

FORMAT = "custody-signer-keystore/1"
DEFAULT_SCRYPT_N = 2**16  # about 0.2 s and 64 MiB per unlock on a laptop
# The header is read before anything is authenticated: whoever can write the file chooses these. Only what
# create() writes is accepted (tests use 2**10; 2**20 is 1 GiB and seconds per unlock), so an edited header
# can't make an unlock take hours or read as a wrong passphrase.
SCRYPT_N_RANGE = (2**10, 2**20)
SCRYPT_R, SCRYPT_P = 8, 1
_CHECK_LABEL = b"custody keystore key check"
_MAX_CACHED_KEYS = 100_000


@dataclasses.dataclass(frozen=True)
class Passphrase:
    text: str

    def key(self, kdf: dict) -> bytes:
        if kdf.get("name") != "scrypt":
            raise WrongSecret("this keystore is locked with a key file, not a passphrase")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        return hashlib.scrypt(self.text.encode(), salt=base64.b64decode(kdf["salt"]), n=n, r=r, p=p,
                              maxmem=256 * n * r + (1 << 20), dklen=32)


@dataclasses.dataclass(frozen=True)
class KeyFile:
    path: pathlib.Path

    def key(self, kdf: dict) -> bytes:
        if kdf.get("name") != "key-file":
            raise WrongSecret("this keystore is locked with a passphrase, not a key file")
        try:
            key = bytes.fromhex(pathlib.Path(self.path).read_text().strip())
        except FileNotFoundError:
            raise KeystoreError(f"key file {self.path} does not exist") from None
        except ValueError:
            raise KeystoreError(f"key file {self.path} does not hold hex") from None
        if len(key) != 32:
            raise KeystoreError(f"key file {self.path} must hold 32 bytes (64 hex digits), got {len(key)}")
        return key

    @staticmethod
    def generate(path: pathlib.Path) -> "KeyFile":
        # Durable before the keystore it unlocks is written: after a power loss, a keystore on disk whose
        # only key file was still in the page cache could never be opened again.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _sync_folder(pathlib.Path(path).parent)
        return KeyFile(path)


def _kdf_problem(kdf) -> str | None:
    """What is wrong with a keystore's `kdf`, or None if it is one that create() writes."""
    if not isinstance(kdf, dict):
        return f"kdf is {type(kdf).__name__}, not an object"
    if kdf.get("name") == "key-file":
        return None
    if kdf.get("name") != "scrypt":
        return f"unknown kdf {str(kdf.get('name'))[:40]!r}"
    n, r, p = kdf.get("n"), kdf.get("r"), kdf.get("p")
    low, high = SCRYPT_N_RANGE
    # type() is int: not a bool, a float or a string that int() would take
    if type(n) is not int or n & (n - 1) or not low <= n <= high:
        return f"scrypt n must be a power of two from {low} to {high}, got {str(n)[:40]}"
    if type(r) is not int or type(p) is not int or r != SCRYPT_R or p != SCRYPT_P:
        return f"scrypt r and p must be {SCRYPT_R} and {SCRYPT_P}, got {str(r)[:40]} and {str(p)[:40]}"
    return None


def _header_aad(header: dict) -> bytes:
    return json.dumps({k: header[k] for k in ("format", "kdf", "check")}, sort_keys=True).encode()


def _sync_folder(folder: pathlib.Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # a new name or a rename is durable only once its folder is
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_for_change(path: pathlib.Path):
    """Held by a command that changes the keystore at path, from before it reads the file until it has saved it.

    Each command saves the wallets it read plus its own: two at once each saved their copy and the first one's
    wallet was lost, though both said "created". The lock is <keystore>.lock, left in place (removing it
    would let a third command lock a new file while the second still holds the old one)."""
    path = pathlib.Path(path)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeystoreError(f"keystore {path} is being changed by another command; nothing was written; "
                                "run this one again once that one has finished") from None
        yield
    finally:
        os.close(fd)  # releases the lock


class SoftwareKeystore(Keystore):
    kind = "software-hd"

    def __init__(self, path: pathlib.Path, key: bytes, kdf: dict, seeds: dict[str, bytes]):
        self.path = pathlib.Path(path)
        self._key = key
        self._kdf = kdf
        self._roots = {name: HDKey.from_seed(seed) for name, seed in seeds.items()}
        self._seeds = seeds
        self._children: dict[tuple[str, str], coincurve.PrivateKey] = {}
        self._lock = threading.Lock()

    # -- creating, opening, saving ----------------------------------------------------
    @classmethod
    def create(cls, path: pathlib.Path, secret: Passphrase | KeyFile,
               scrypt_n: int = DEFAULT_SCRYPT_N) -> "SoftwareKeystore":
        path = pathlib.Path(path)
        if path.exists():
            raise KeystoreError(f"{path} exists already; a keystore is never overwritten")
        if isinstance(secret, Passphrase):
            if len(secret.text) < 8:
                raise KeystoreError("the passphrase must have at least 8 characters")
            kdf = {"name": "scrypt", "salt": base64.b64encode(secrets.token_bytes(16)).decode(),
                   "n": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P}
        else:
            kdf = {"name": "key-file"}
        problem = _kdf_problem(kdf)
        if problem:  # a keystore that open() would refuse
            raise KeystoreError(f"can't create {path}: {problem}")
        store = cls(path, secret.key(kdf), kdf, {})
        # os.link, unlike a rename, fails if the name exists: a keystore made since the check above (another
        # command's, perhaps under another passphrase) or a dangling symlink is never replaced.
        try:
            store._write(os.link)
        except FileExistsError:
            raise KeystoreError(f"{path} exists already; a keystore is never overwritten") from None
        return store

    @classmethod
    def open(cls, path: pathlib.Path, secret: Passphrase | KeyFile) -> "SoftwareKeystore":
        """Reads and decrypts; WrongSecret or KeystoreCorrupted say which went wrong."""
        path = pathlib.Path(path)
        try:
            header = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeystoreError(f"no keystore at {path}") from None
        except (ValueError, UnicodeDecodeError):
            raise KeystoreCorrupted(f"keystore {path} is not valid JSON: damaged or not a keystore") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise KeystoreCorrupted(f"keystore {path}: unknown format {header.get('format') if isinstance(header, dict) else None!r}")
        kdf = header.get("kdf")
        problem = _kdf_problem(kdf)
        if problem:  # checked before scrypt runs: its cost is in these parameters
            raise KeystoreCorrupted(f"keystore {path}: KDF parameters changed or damaged ({problem}); "
                                    "restore it from a backup")
        try:
            key = secret.key(kdf)
            nonce, ciphertext = base64.b64decode(header["nonce"]), base64.b64decode(header["ciphertext"])
            check = bytes.fromhex(header["check"])
        except (KeyError, TypeError, ValueError) as exc:
            raise KeystoreCorrupted(f"keystore {path}: header damaged ({exc})") from None
        if not hmac.compare_digest(hmac.new(key, _CHECK_LABEL, hashlib.sha256).digest(), check):
            raise WrongSecret(f"keystore {path}: wrong passphrase or key file")
        try:
            plain = AESGCM(key).decrypt(nonce, ciphertext, _header_aad(header))
            wallets = json.loads(plain)["wallets"]
            seeds = {name: bytes.fromhex(w["seed"]) for name, w in wallets.items()}
        except InvalidTag:
            raise KeystoreCorrupted(f"keystore {path}: the passphrase is right but the contents were changed "
                                    "or damaged (authentication failed); restore it from a backup") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeystoreCorrupted(f"keystore {path}: contents unreadable ({exc})") from None
        return cls(path, key, kdf, seeds)

    def save(self) -> None:
        """Writes a fresh encryption (new nonce) atomically: a crash leaves the old or the new file."""
        self._write(os.replace)

    def _write(self, publish) -> None:
        """Writes the keystore to a new temporary file and gives it the keystore's name with publish(tmp, path)."""
        header = {"format": FORMAT, "kdf": self._kdf,
                  "check": hmac.new(self._key, _CHECK_LABEL, hashlib.sha256).hexdigest()}
        plain = json.dumps({"wallets": {n: {"seed": s.hex()} for n, s in self._seeds.items()}}).encode()
        nonce = secrets.token_bytes(12)
        header["nonce"] = base64.b64encode(nonce).decode()
        header["ciphertext"] = base64.b64encode(AESGCM(self._key).encrypt(nonce, plain, _header_aad(header))).decode()
        # A new file under a random name: a leftover or planted one (another mode, a symlink) is never reused.
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(header, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            publish(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)  # after os.link, a second name; after os.replace, gone already
        _sync_folder(self.path.parent)

    # -- wallets ----------------------------------------------------------------------------
    def generate_wallet(self, name: str, words: int = 24) -> str:
        """A fresh seed from the OS's randomness; returns its mnemonic to write down once."""
        mnemonic = new_mnemonic(words)
        self.import_wallet(name, mnemonic)
        return mnemonic

    def import_wallet(self, name: str, mnemonic: str, bip39_passphrase: str = "") -> None:
        mnemonic = " ".join(mnemonic.split())
        if not bip39.mnemonic_is_valid(mnemonic):
            raise KeystoreError("not a valid BIP39 mnemonic (unknown word or bad checksum)")
        if not name or name in self._seeds:
            raise KeystoreError(f"wallet {name!r} exists already or has no name")
        seed = bip39.mnemonic_to_seed(mnemonic, password=bip39_passphrase)
        root = HDKey.from_seed(seed)
        # One seed under two names (cold words typed into the hot keystore) would put cold funds a hot key
        # away; PSBTs name a wallet by this fingerprint too, so two wallets can't share one.
        for other, other_root in self._roots.items():
            if other_root.my_fingerprint == root.my_fingerprint:
                raise KeystoreError(f"this seed (fingerprint {root.my_fingerprint.hex()}) is wallet {other!r} "
                                    "already; nothing was written")
        self._seeds[name] = seed
        self._roots[name] = root
        self.save()

    # -- Keystore interface --------------------------------------------------------------------
    def list_keys(self) -> list[KeyInfo]:
        return [KeyInfo(name, self.kind, root.my_fingerprint.hex()) for name, root in sorted(self._roots.items())]

    def fingerprint(self, key_id: str) -> str:
        return self._root(key_id).my_fingerprint.hex()

    def public_key(self, key_id: str, path: str) -> bytes:
        return self._child(key_id, path).public_key.format(compressed=True)

    def extended_public_key(self, key_id: str, path: str, version: bytes | None = None) -> str:
        node = self._root(key_id).derive(path).to_public()
        return node.to_base58(version=version) if version else node.to_base58()

    def sign_digest(self, key_id: str, path: str, digest: bytes) -> Signature:
        # libsecp256k1 signs deterministically (RFC 6979) and always low-S.
        sig = self._child(key_id, path).sign_recoverable(digest, hasher=None)
        return Signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64])

    def sign_digest_der(self, key_id: str, path: str, digest: bytes) -> bytes:
        # The same RFC 6979, low-S signature, serialised to DER by libsecp256k1 in the same call.
        return self._child(key_id, path).sign(digest, hasher=None)

    # -- derivation ------------------------------------------------------------------------------
    def _root(self, key_id: str) -> HDKey:
        try:
            return self._roots[key_id]
        except KeyError:
            raise UnknownKey(f"no wallet {key_id[:64]!r} in this keystore") from None

    def _child(self, key_id: str, path: str) -> coincurve.PrivateKey:
        cached = self._children.get((key_id, path))
        if cached is not None:
            return cached
        root = self._root(key_id)
        try:
            node = root.derive(path) if path not in ("", "m") else root
        except Exception:
            raise UnknownKey(f"not a BIP32 path: {path[:100]!r}") from None
        child = coincurve.PrivateKey(node.key.secret)
        with self._lock:
            if len(self._children) >= _MAX_CACHED_KEYS:
                self._children.clear()
            self._children[(key_id, path)] = child
        return child


def new_mnemonic(words: int = 24) -> str:
    """A fresh BIP39 mnemonic from the OS's randomness (12 or 24 words)."""
    return bip39.mnemonic_from_bytes(secrets.token_bytes(words * 4 // 3))
