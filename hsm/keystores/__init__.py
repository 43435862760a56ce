"""Keystores behind one interface (base.Keystore): software HD seeds and PKCS#11 tokens."""
from hsm.keystores.base import KeyInfo, Keystore, Signature

__all__ = ["KeyInfo", "Keystore", "Signature", "open_keystore"]


def open_keystore(config, environ=None):
    """Opens and unlocks the keystore signer.toml names; fails clearly at start."""
    import os

    from hsm.errors import KeystoreError

    environ = os.environ if environ is None else environ
    ks = config.keystore
    if ks.kind == "software":
        from hsm.keystores.software import KeyFile, Passphrase, SoftwareKeystore

        if ks.key_file:
            secret = KeyFile(ks.key_file)
        else:
            if ks.passphrase_env not in environ:
                raise KeystoreError(f"the keystore passphrase is not set: environment variable {ks.passphrase_env}")
            secret = Passphrase(environ[ks.passphrase_env])
        return SoftwareKeystore.open(ks.path, secret)
    from hsm.keystores.pkcs11 import Pkcs11Keystore

    if ks.pin_env not in environ:
        raise KeystoreError(f"the token PIN is not set: environment variable {ks.pin_env}")
    return Pkcs11Keystore.open(ks.library, ks.token_label, environ[ks.pin_env])
