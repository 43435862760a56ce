"""Software keystore: encryption at rest, unlock failures that say what is wrong,
deterministic low-S signatures."""
from __future__ import annotations

import base64
import json
import os
import stat

import coincurve
import pytest

from hsm.errors import KeystoreCorrupted, KeystoreError, WrongSecret
from hsm.keystores.base import HALF_N, SECP256K1_N, normalise
from hsm.keystores.software import DEFAULT_SCRYPT_N, KeyFile, Passphrase, SoftwareKeystore
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
        # Still a power of two in range, so scrypt runs: a different key comes out, read as a wrong passphrase.
        data["kdf"]["n"] = data["kdf"]["n"] * 2
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


@pytest.mark.parametrize("kdf", [
    "scrypt", None, ["scrypt"],  # not an object: was an AttributeError traceback
    {"name": "argon2"}, {"name": None},
    {"n": 2}, {"n": 1000}, {"n": 2**21}, {"n": 2**40}, {"n": "1024"}, {"n": 1024.0}, {"n": None},
    {"p": 40}, {"p": 2}, {"p": True}, {"r": 1}, {"r": 8000}, {"r": "8"},
], ids=json.dumps)
def test_edited_kdf_header_is_refused_as_damaged_without_running_scrypt(tmp_path, keystore, monkeypatch, kdf):
    """Whoever can write the file chooses the scrypt cost (p=40: 40 times the unlock; larger hangs the start)
    and an edited n read as a wrong passphrase: only what create() writes is run."""
    from hsm.keystores import software

    path = tmp_path / "keystore.json"
    data = json.loads(path.read_text())
    data["kdf"] = {**data["kdf"], **kdf} if isinstance(kdf, dict) else kdf  # a dict: fields changed
    path.write_text(json.dumps(data))

    def no_scrypt(*args, **kwargs):
        raise AssertionError("scrypt ran on an unchecked header")

    monkeypatch.setattr(software.hashlib, "scrypt", no_scrypt)
    with pytest.raises(KeystoreCorrupted, match="KDF parameters changed or damaged"):
        SoftwareKeystore.open(path, Passphrase(S.PASSPHRASE))


def test_create_makes_only_keystores_that_open(tmp_path):
    for n in (2, 1000, 2**21):  # open() would refuse these
        with pytest.raises(KeystoreError, match="scrypt n must be a power of two"):
            SoftwareKeystore.create(tmp_path / "bad.json", Passphrase(S.PASSPHRASE), scrypt_n=n)
        assert not (tmp_path / "bad.json").exists()
    for n in (2**10, 2**14, DEFAULT_SCRYPT_N):  # the tests' --scrypt-n, the review's, the default
        SoftwareKeystore.create(tmp_path / f"{n}.json", Passphrase(S.PASSPHRASE), scrypt_n=n)
        assert SoftwareKeystore.open(tmp_path / f"{n}.json", Passphrase(S.PASSPHRASE)).list_keys() == []


def test_save_does_not_reuse_a_leftover_temporary_file(tmp_path, keystore):
    """save() wrote <keystore>.tmp with O_TRUNC: a leftover 0644 one kept its mode, and the saved keystore
    became world-readable."""
    path, leftover = tmp_path / "keystore.json", tmp_path / "keystore.json.tmp"
    leftover.write_text("")
    os.chmod(leftover, 0o644)
    keystore.import_wallet("second", S.OTHER_MNEMONIC)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(SoftwareKeystore.open(path, Passphrase(S.PASSPHRASE))._seeds) == [S.HOT, "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keystore.json", "keystore.json.tmp"]


def test_save_does_not_follow_a_planted_symlink(tmp_path, keystore):
    """A symlink planted at <keystore>.tmp was followed: the keystore was written where it pointed and the
    keystore itself replaced by the link."""
    path, elsewhere = tmp_path / "keystore.json", tmp_path / "elsewhere.json"
    (tmp_path / "keystore.json.tmp").symlink_to(elsewhere)
    keystore.import_wallet("second", S.OTHER_MNEMONIC)
    assert not path.is_symlink() and not elsewhere.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(SoftwareKeystore.open(path, Passphrase(S.PASSPHRASE))._seeds) == [S.HOT, "second"]


def test_a_failed_save_leaves_the_old_keystore_and_no_temporary_file(tmp_path, keystore, monkeypatch):
    path = tmp_path / "keystore.json"
    before = path.read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        keystore.import_wallet("second", S.OTHER_MNEMONIC)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["keystore.json"]


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
