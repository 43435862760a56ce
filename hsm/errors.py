"""The signer's errors, rooted in one base class."""


class SignerError(Exception):
    """Base of every error the signer raises on purpose."""


class ConfigError(SignerError):
    """signer.toml is missing, malformed or inconsistent."""


class KeystoreError(SignerError):
    """A keystore can't be opened or used (missing file, missing token, ...)."""


class WrongSecret(KeystoreError):
    """The passphrase, key file or PIN does not unlock the keystore."""


class KeystoreCorrupted(KeystoreError):
    """The keystore file was changed or damaged: it does not decrypt or parse."""


class LimitsFileMissing(SignerError):
    """limits_db is gone while the audit log says the signer has signed with what it remembered."""


class UnknownKey(SignerError):
    """No key with that id (or that path does not apply to it)."""


class Refused(SignerError):
    """A sign request refused by a named rule; nothing was signed."""

    def __init__(self, rule: str, reason: str):
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


class AuditLogBroken(SignerError):
    """The log fails verification: the signer does not start until an operator has looked."""
