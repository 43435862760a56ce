"""Software keystore: encryption at rest, unlock failures that say what is wrong,
deterministic low-S signatures."""
from __future__ import annotations

import base64
import json

import coincurve
import pytest

from hsm.errors import KeystoreCorrupted, KeystoreError, WrongSecret
from hsm.keystores.base import HALF_N, SECP256K1_N, normalise
from hsm.keystores.software import KeyFile, Passphrase, SoftwareKeystore
from tests.support import signer as S


def test_seed_is_not_stored_in_clear_and_reopens_with_the_passphrase(tmp_path, keystore):
    text = (tmp_path / "keystore.json").read_text()
    seed_hex = keystore._seeds[S.HOT].hex()
    assert seed_hex not in text and "abandon" not in text
    again = SoftwareKeystore.open(tmp_path / "keystore.json", Passphrase(S.PASSPHRASE))
    assert again.public_key(S.HOT, S.HOT_BTC_PATH) == keystore.public_key(S.HOT, S.HOT_BTC_PATH)
    # The master fingerprint of the BIP84 test mnemonic "abandon ... about".
    assert keystore.fingerprint(S.HOT) == "73c5da0a"


def test_wrong_passphrase_fails_clearly(tmp_path, keystore):
    with pytest.raises(WrongSecret, match="wrong passphrase"):
        SoftwareKeystore.open(tmp_path / "keystore.json", Passphrase("not the passphrase"))


@pytest.mark.parametrize("damage", ["ciphertext", "kdf", "truncate", "garbage"])
def test_corrupted_keystore_fails_clearly(tmp_path, keystore, damage):
    path = tmp_path / "keystore.json"
    data = json.loads(path.read_text())
    if damage == "ciphertext":
        ct = bytearray(base64.b64decode(data["ciphertext"]))
        ct[5] ^= 1
        data["ciphertext"] = base64.b64encode(bytes(ct)).decode()
        path.write_text(json.dumps(data))
        error, message = KeystoreCorrupted, "changed or damaged"
    elif damage == "kdf":
        data["kdf"]["n"] = data["kdf"]["n"] * 2  # a different key comes out: reads as a wrong passphrase
        path.write_text(json.dumps(data))
        error, message = WrongSecret, "wrong passphrase"
    elif damage == "truncate":
        path.write_text(path.read_text()[:100])
        error, message = KeystoreCorrupted, "not valid JSON"
    else:
        path.write_bytes(b"\x00\xff" * 50)
        error, message = KeystoreCorrupted, "not valid JSON"
    with pytest.raises(error, match=message):
        SoftwareKeystore.open(path, Passphrase(S.PASSPHRASE))


def test_missing_keystore_and_key_file_mismatch(tmp_path):
    with pytest.raises(KeystoreError, match="no keystore at"):
        SoftwareKeystore.open(tmp_path / "nope.json", Passphrase(S.PASSPHRASE))
    key_file = KeyFile.generate(tmp_path / "ks.key")
    store = SoftwareKeystore.create(tmp_path / "k.json", key_file)
    mnemonic = store.generate_wallet("cold")
    assert len(mnemonic.split()) == 24
    reopened = SoftwareKeystore.open(tmp_path / "k.json", key_file)
    assert reopened.fingerprint("cold") == store.fingerprint("cold")
    with pytest.raises(WrongSecret, match="key file, not a passphrase"):
        SoftwareKeystore.open(tmp_path / "k.json", Passphrase(S.PASSPHRASE))
    other = KeyFile.generate(tmp_path / "other.key")
    with pytest.raises(WrongSecret):
        SoftwareKeystore.open(tmp_path / "k.json", other)


def test_invalid_mnemonic_is_refused(keystore):
    with pytest.raises(KeystoreError, match="BIP39"):
        keystore.import_wallet("bad", "abandon " * 12)


def test_signatures_are_deterministic_low_s_and_verify(keystore):
    digest = bytes(range(32))
    first = keystore.sign_digest(S.HOT, S.HOT_BTC_PATH, digest)
    assert first == keystore.sign_digest(S.HOT, S.HOT_BTC_PATH, digest)  # RFC 6979
    pub = coincurve.PublicKey(keystore.public_key(S.HOT, S.HOT_BTC_PATH))
    for i in range(64):
        d = i.to_bytes(32, "big")
        sig = keystore.sign_digest(S.HOT, S.HOT_BTC_PATH, d)
        assert sig.low_s
        assert pub.verify(sig.der(), d, hasher=None)
        recovered = coincurve.PublicKey.from_signature_and_message(sig.compact() + bytes([sig.recovery_id]), d,
                                                                   hasher=None)
        assert recovered.format() == pub.format()


def test_normalise_turns_high_s_into_low_s_with_the_right_recovery_id():
    key = coincurve.PrivateKey(b"\x01" * 32)
    digest = b"\x02" * 32
    sig = key.sign_recoverable(digest, hasher=None)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    high = SECP256K1_N - s
    assert high > HALF_N
    fixed = normalise(r, high, digest, key.public_key.format())
    assert (fixed.r, fixed.s, fixed.recovery_id) == (r, s, sig[64])


from hypothesis import given, settings, strategies as st  # noqa: E402


@given(r=st.integers(1, 2**256 - 1), s=st.integers(1, 2**256 - 1))
@settings(max_examples=500, deadline=None)
def test_der_encoding_matches_libsecp256k1(r, s):
    import coincurve

    from hsm.keystores.base import SECP256K1_N, Signature

    r, s = r % SECP256K1_N or 1, s % SECP256K1_N or 1
    sig = Signature(r, s, 0)
    assert sig.der() == coincurve.ecdsa.cdata_to_der(coincurve.ecdsa.deserialize_compact(sig.compact()))


def test_der_encoding_of_small_and_top_bit_values():
    from hsm.keystores.base import Signature

    assert Signature(1, 0x80, 0).der() == bytes.fromhex("3007020101020200" "80")
    assert Signature(0x7F, 2**255, 0).der() == bytes.fromhex("3026" "02017f" "022100") + (2**255).to_bytes(32, "big")


@given(digest=st.binary(min_size=32, max_size=32))
@settings(max_examples=200, deadline=None)
def test_software_der_signature_is_the_same_low_s_signature(software_store, digest):
    """The Bitcoin path asks for DER directly; it must be exactly sign_digest's signature, low-S."""
    sig = software_store.sign_digest("hot", "m/84h/1h/1h/0/0", digest)
    assert sig.low_s
    assert software_store.sign_digest_der("hot", "m/84h/1h/1h/0/0", digest) == sig.der()


@pytest.fixture(scope="module")
def software_store(tmp_path_factory):
    return S.make_keystore(tmp_path_factory.mktemp("der"))
