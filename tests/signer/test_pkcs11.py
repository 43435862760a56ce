"""PKCS#11 keystore against a real SoftHSM2 token: keys made inside the token and
not extractable, low-S signatures with the right recovery id, clear start failures."""
from __future__ import annotations

import coincurve
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hsm.errors import KeystoreError, UnknownKey, WrongSecret
from hsm.keystores.base import HALF_N
from hsm.keystores.pkcs11 import SECP256K1_PARAMS, Pkcs11Keystore
from hsm.service import Signer
from tests.support import signer as S
from tests.support import softhsm


@pytest.fixture
def token():
    label = softhsm.new_token()
    store = Pkcs11Keystore.open(softhsm.LIBRARY, label, softhsm.PIN)
    yield label, store
    store.close()


def test_key_is_generated_in_the_token_and_cannot_be_extracted(token):
    label, store = token
    pub = store.generate_key("hot-1")
    assert len(pub) == 33 and pub[0] in (2, 3)
    private = store._session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="hot-1")
    assert private[Attribute.SENSITIVE] is True and private[Attribute.EXTRACTABLE] is False
    assert [k.key_id for k in store.list_keys()] == ["hot-1"]
    with pytest.raises(KeystoreError, match="already"):
        store.generate_key("hot-1")


def test_signatures_are_low_s_verify_and_recover_the_key(token):
    _, store = token
    pub = store.generate_key("k")
    high_s_seen_by_token = 0
    for i in range(40):
        digest = (i + 1).to_bytes(32, "big")
        sig = store.sign_digest("k", "", digest)
        assert sig.low_s
        assert coincurve.PublicKey(pub).verify(sig.der(), digest, hasher=None)
        recovered = coincurve.PublicKey.from_signature_and_message(sig.compact() + bytes([sig.recovery_id]), digest,
                                                                   hasher=None)
        assert recovered.format() == pub
        raw = store._keys["k"][0].sign(digest, mechanism=Mechanism.ECDSA)
        high_s_seen_by_token += int.from_bytes(raw[32:], "big") > HALF_N
    # About half of the token's own signatures are high-S, so normalising was exercised.
    # (Its ECDSA is randomised, no RFC 6979: determinism is not available from this backend.)
    assert high_s_seen_by_token > 0


def test_token_keys_have_no_hd_paths(token):
    _, store = token
    store.generate_key("k")
    with pytest.raises(UnknownKey, match="single key"):
        store.public_key("k", "m/0")
    with pytest.raises(UnknownKey, match="no key pair"):
        store.public_key("missing", "")


def test_missing_token_and_wrong_pin_fail_clearly_at_start(token):
    label, _ = token
    with pytest.raises(KeystoreError, match="no PKCS#11 token labelled 'no-such-token'"):
        Pkcs11Keystore.open(softhsm.LIBRARY, "no-such-token", softhsm.PIN)
    unopened = softhsm.new_token()  # a token with no session yet (login state is per token)
    with pytest.raises(WrongSecret, match="wrong PIN"):
        Pkcs11Keystore.open(softhsm.LIBRARY, unopened, "999999")
    with pytest.raises(KeystoreError, match="does not exist"):
        Pkcs11Keystore.open(softhsm.LIBRARY.with_name("nope.so"), label, softhsm.PIN)


def test_signer_with_token_keys_signs_psbt_and_ethereum(token, tmp_path):
    """The whole service on a token key: PSBT input and change recognised by key, EIP-1559 signed."""
    from eth_account import Account

    from hsm.decode.ethereum import address_of

    _, store = token
    pub = store.generate_key("hot-token")
    config = S.make_config(tmp_path)
    signer = Signer(config, store)
    mine = S.p2wpkh_script(pub)
    payload = S.make_psbt([("22" * 32, 1, S.BTC, mine)], [(S.foreign_script(), 10_000), (mine, S.BTC - 11_000)])
    out = signer.sign("bitcoin", payload, [("hot-token", "")], [])
    assert out.signed, out.refused_reason
    assert [t.internal for t in out.transfers] == [False, True]
    eth = signer.sign("ethereum", S.eth_payload("0x" + "22" * 20, S.ETH), [("hot-token", "")], [])
    assert eth.signed and Account.recover_transaction(eth.raw_transaction).lower() == address_of(pub)
    signer.audit.close()
    signer.limits.close()


def test_other_ec_keys_in_the_token_are_ignored(token, tmp_path):
    """A token that also holds P-256 keys (another application's TLS key, even one under our key's label):
    ListKeys shows only the secp256k1 key, and a Bitcoin payment with change is still signed."""
    _, store = token
    pub = store.generate_key("hot-token")
    p256 = store._session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")}, local=True)  # OID prime256v1
    p256.generate_keypair(store=True, label="tls-p256")
    p256.generate_keypair(store=True, label="hot-token")
    assert [(k.key_id, k.public_key) for k in store.list_keys()] == [("hot-token", pub)]
    signer = Signer(S.make_config(tmp_path), store)
    mine = S.p2wpkh_script(pub)
    payload = S.make_psbt([("33" * 32, 0, S.BTC, mine)], [(S.foreign_script(), 10_000), (mine, S.BTC - 11_000)])
    out = signer.sign("bitcoin", payload, [("hot-token", "")], [])
    assert out.signed, out.refused_reason
    assert [t.internal for t in out.transfers] == [False, True]
    signer.audit.close()
    signer.limits.close()


def test_a_public_key_object_swapped_in_the_token_is_refused(token):
    """The two halves of a token key are separate objects found by label, and a public key object
    can be replaced without the PIN. A swapped one made the signer report someone else's key as
    ours and count payments to it as internal: no allow list, limits or approvals (a review
    reproduced 3.9999 BTC signed against a 2 BTC limit). The pair is now proven by a signature."""
    _, store = token
    store.generate_key("hot-a")
    genuine = store.generate_key("hot-b")
    (public,) = store._session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "hot-b"})
    public.destroy()
    attacker = coincurve.PrivateKey(b"\x42" * 32).public_key
    store._session.create_object({
        Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC, Attribute.TOKEN: True,
        Attribute.PRIVATE: False, Attribute.LABEL: "hot-b", Attribute.EC_PARAMS: SECP256K1_PARAMS,
        Attribute.EC_POINT: b"\x04\x41" + attacker.format(compressed=False), Attribute.VERIFY: True})
    store._keys.clear()  # as a signer started afterwards: the objects are read again
    with pytest.raises(KeystoreError, match="'hot-b' is not the private key's"):
        store.public_key("hot-b", "")
    with pytest.raises(KeystoreError, match="not the private key's"):
        store.list_keys()
    assert store.public_key("hot-a", "")  # the untouched pair still proves itself
    assert genuine != attacker.format()


_PLANT = """
import sys, coincurve, pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
SECP = bytes.fromhex("06052b8104000a")
library, token_label, label, secret = sys.argv[1:5]
secret = bytes.fromhex(secret)
point = b"\\x04\\x41" + coincurve.PrivateKey(secret).public_key.format(compressed=False)
with pkcs11.lib(library).get_token(token_label=token_label).open(rw=True) as session:  # no PIN: a public session
    session.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC,
                           Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.SENSITIVE: False,
                           Attribute.LABEL: label, Attribute.EC_PARAMS: SECP, Attribute.VALUE: secret,
                           Attribute.SIGN: True})
    session.create_object({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
                           Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: label,
                           Attribute.EC_PARAMS: SECP, Attribute.EC_POINT: point, Attribute.VERIFY: True})
"""


def _plant_without_pin(token_label: str, label: str, secret: bytes) -> None:
    """What anyone who can reach the token can do without its PIN, from another process."""
    import os
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", _PLANT, str(softhsm.LIBRARY), token_label, label, secret.hex()],
                   check=True, capture_output=True, env=os.environ)


def test_a_key_pair_planted_without_the_pin_is_not_ours(tmp_path):
    """Objects can be created in a token without its PIN (CKA_PRIVATE false). A secp256k1 pair
    planted so, whose secret the planter knows, was listed as one of the signer's keys, and a
    payment to it counted as internal: a review signed 4.9999 BTC to it against a 2 BTC limit,
    past the allow-list and approvals. Only keys the token generated and never let out are ours;
    a public object planted under our own key's label is ignored too."""
    label = softhsm.new_token()
    first = Pkcs11Keystore.open(softhsm.LIBRARY, label, softhsm.PIN)
    pub = first.generate_key("hot-token")
    first.close()
    secret = (0x4242).to_bytes(32, "big")
    _plant_without_pin(label, "maintenance", secret)
    _plant_without_pin(label, "hot-token", (0x4343).to_bytes(32, "big"))  # a second pair under our label

    store = Pkcs11Keystore.open(softhsm.LIBRARY, label, softhsm.PIN)
    try:
        assert [(k.key_id, k.public_key) for k in store.list_keys()] == [("hot-token", pub)]
        with pytest.raises(UnknownKey, match="no key pair labelled 'maintenance'"):
            store.public_key("maintenance", "")
        signer = Signer(S.make_config(tmp_path), store)
        planted = S.p2wpkh_script(coincurve.PrivateKey(secret).public_key.format())
        payload = S.make_psbt([("44" * 32, 0, 5 * S.BTC, S.p2wpkh_script(pub))], [(planted, 5 * S.BTC - 10_000)])
        refused = signer.sign("bitcoin", payload, [("hot-token", ""), ("maintenance", "")], [])
        assert (refused.signed, refused.refused_rule) == (False, "keys"), refused.refused_reason
        out = signer.sign("bitcoin", payload, [("hot-token", "")], [])
        assert (out.signed, out.refused_rule) == (False, "max_per_transaction"), out.refused_reason
        signer.audit.close()
        signer.limits.close()
    finally:
        store.close()
