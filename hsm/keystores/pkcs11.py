"""PKCS#11 keystore (python-pkcs11): secp256k1 keys generated inside a token.

Keys never leave the token (sensitive, not extractable); a key's id is its
label. Tested against SoftHSM2; any token offering CKM_ECDSA on secp256k1
works the same way. The token returns raw r||s, about half of them high-S:
we normalise to low-S and find Ethereum's recovery id by trial (base.normalise).
Token keys are single keys, not HD wallets: their path is empty.
"""
from __future__ import annotations

import hashlib
import pathlib
import threading

import coincurve
import pkcs11
from embit.hashes import hash160
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.errors import KeystoreError, UnknownKey, WrongSecret
from hsm.keystores.base import KeyInfo, Keystore, Signature, normalise

SECP256K1_PARAMS = bytes.fromhex("06052b8104000a")  # DER OID 1.3.132.0.10


def _load(library: pathlib.Path):
    if not pathlib.Path(library).exists():
        raise KeystoreError(f"PKCS#11 library {library} does not exist (for SoftHSM2: apt-get install softhsm2)")
    try:
        return pkcs11.lib(str(library))
    except Exception as exc:
        raise KeystoreError(f"PKCS#11 library {library} does not load: {exc}") from None


class Pkcs11Keystore(Keystore):
    kind = "pkcs11"

    def __init__(self, session, token_label: str):
        self._session = session
        self.token_label = token_label
        self._lock = threading.Lock()  # one session: PKCS#11 sessions are not for concurrent use
        self._keys: dict[str, tuple[object, bytes]] = {}

    @classmethod
    def open(cls, library: pathlib.Path, token_label: str, pin: str) -> "Pkcs11Keystore":
        lib = _load(library)
        try:
            token = lib.get_token(token_label=token_label)
        except pkcs11.exceptions.NoSuchToken:
            raise KeystoreError(f"no PKCS#11 token labelled {token_label!r} (library {library})") from None
        except pkcs11.exceptions.MultipleTokensReturned:
            raise KeystoreError(f"more than one PKCS#11 token labelled {token_label!r}") from None
        try:
            session = token.open(user_pin=pin, rw=True)
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinLenRange):
            raise WrongSecret(f"wrong PIN for PKCS#11 token {token_label!r}") from None
        except pkcs11.exceptions.PinLocked:
            raise WrongSecret(f"the PIN of PKCS#11 token {token_label!r} is locked") from None
        return cls(session, token_label)

    def generate_key(self, label: str) -> bytes:
        """A new secp256k1 key pair inside the token; returns its compressed public key."""
        if not label:
            raise KeystoreError("a token key needs a label")
        with self._lock:
            if self._find(ObjectClass.PRIVATE_KEY, label) is not None:
                raise KeystoreError(f"the token has a key labelled {label!r} already")
            params = self._session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: SECP256K1_PARAMS}, local=True)
            params.generate_keypair(
                store=True, label=label,
                public_template={Attribute.VERIFY: True},
                private_template={Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                  Attribute.SIGN: True})
        return self.public_key(label, "")

    # -- Keystore interface ------------------------------------------------------------------
    def list_keys(self) -> list[KeyInfo]:
        with self._lock:
            labels = sorted({k.label for k in self._session.get_objects(
                {**_template(ObjectClass.PRIVATE_KEY), **_MADE_IN_THE_TOKEN})})
        out = []
        for label in labels:
            pub = self.public_key(label, "")
            out.append(KeyInfo(label, self.kind, _hash160(pub)[:4].hex(), pub))
        return out

    def public_key(self, key_id: str, path: str) -> bytes:
        return self._key(key_id, path)[1]

    def sign_digest(self, key_id: str, path: str, digest: bytes) -> Signature:
        private, public = self._key(key_id, path)
        with self._lock:
            raw = private.sign(digest, mechanism=Mechanism.ECDSA)
        return normalise(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"), digest, public)

    def close(self) -> None:
        try:
            self._session.close()
        except Exception:
            pass

    # -- objects --------------------------------------------------------------------------------
    def _key(self, key_id: str, path: str):
        if path not in ("", "m"):
            raise UnknownKey(f"token key {key_id[:64]!r} is a single key, not an HD wallet: path must be empty")
        found = self._keys.get(key_id)
        if found:
            return found
        with self._lock:
            private = self._find(ObjectClass.PRIVATE_KEY, key_id)
            publics = list(self._session.get_objects({**_template(ObjectClass.PUBLIC_KEY), Attribute.LABEL: key_id}))
            if private is not None and publics:
                raw = private.sign(_PAIRING_DIGEST, mechanism=Mechanism.ECDSA)
        if private is None or not publics:
            raise UnknownKey(f"no key pair labelled {key_id[:64]!r} in token {self.token_label!r}")
        # The two halves are separate objects found by label, and a public key object can be
        # created or replaced without the PIN: a swapped one made the signer count payments to
        # someone else's key as our own (internal, no limits). The public key is the one a
        # signature of the private key proves; another one under the label is ignored.
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        for public in publics:
            try:  # a point that does not parse is someone else's object too
                compressed = _compressed(public[Attribute.EC_POINT])
                normalise(r, s, _PAIRING_DIGEST, compressed)
            except ValueError:
                continue
            self._keys[key_id] = (private, compressed)
            return private, compressed
        raise KeystoreError(f"token {self.token_label!r}: the public key labelled {key_id[:64]!r} is not the "
                            "private key's: the token's objects were changed; the key is not used")

    def _find(self, object_class, label: str):
        template = {**_template(object_class), Attribute.LABEL: label}
        if object_class == ObjectClass.PRIVATE_KEY:
            template.update(_MADE_IN_THE_TOKEN)
        found = list(self._session.get_objects(template))
        if len(found) > 1:
            raise KeystoreError(f"token {self.token_label!r} has several keys labelled {label!r}")
        return found[0] if found else None


_PAIRING_DIGEST = hashlib.sha256(b"custody-signer/pkcs11-key-pairing/v1").digest()

# A private key is ours only if the token generated it and it never left: objects can be created
# without the PIN (CKA_PRIVATE false), and a key pair planted so, whose secret someone else knows,
# was listed as ours, and payments to it counted as internal: no limits, allow-list or approvals.
# The token sets LOCAL, ALWAYS_SENSITIVE and NEVER_EXTRACTABLE itself; no caller can.
_MADE_IN_THE_TOKEN = {Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.ALWAYS_SENSITIVE: True,
                      Attribute.NEVER_EXTRACTABLE: True, Attribute.LOCAL: True}


def _compressed(point: bytes) -> bytes:
    # EC_POINT is DER-wrapped: OCTET STRING (04 41) around the 65-byte uncompressed point.
    if len(point) == 67 and point[:2] == b"\x04\x41":
        point = point[2:]
    return coincurve.PublicKey(bytes(point)).format(compressed=True)


def _template(object_class) -> dict:
    """Our keys only: a token may also hold other EC keys (a P-256 TLS key, another application's),
    which coincurve can't parse and we must not list or use."""
    return {Attribute.CLASS: object_class, Attribute.KEY_TYPE: KeyType.EC, Attribute.EC_PARAMS: SECP256K1_PARAMS}


def _hash160(data: bytes) -> bytes:
    return hash160(data)
