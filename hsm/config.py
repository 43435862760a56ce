"""signer.toml: the signer's own configuration, validated in full at start.

The signer trusts nothing the core says about policy: limits, lists, staff
keys and chain ids all come from this file, which lives on the signer's
machine. Relative paths are taken from the file's own folder.
"""
from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re
import tomllib

from hsm.errors import ConfigError

_HEX64 = re.compile(r"[0-9a-f]{64}")  # a SHA-256 digest, an Ed25519 public key
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_DIGITS = re.compile(r"[0-9]+")
NO_LIMIT = 2**256 - 1


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    # "unix:/path/signer.sock" or "127.0.0.1:PORT" (TCP needs TLS).
    listen: str
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    tls_client_ca: pathlib.Path | None = None


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    name: str
    token_sha256: str


@dataclasses.dataclass(frozen=True)
class KeystoreConfig:
    kind: str  # "software" or "pkcs11"
    path: pathlib.Path | None = None  # software
    passphrase_env: str = ""  # software: the passphrase comes from this environment variable
    key_file: pathlib.Path | None = None  # software: or a 32-byte key file
    library: pathlib.Path | None = None  # pkcs11
    token_label: str = ""
    pin_env: str = ""


@dataclasses.dataclass(frozen=True)
class AssetPolicy:
    asset: str
    chain: str
    contract: str = ""  # ERC-20 contract (lower case); empty for the chain's native coin
    max_per_transaction: int = NO_LIMIT
    max_per_24h: int = NO_LIMIT
    max_fee: int = NO_LIMIT  # for the chain's native asset: the fee one transaction may pay
    max_fees_per_24h: int = NO_LIMIT  # for the chain's native asset: all fees over the last 24 hours
    approval_above: int = NO_LIMIT  # external amounts above this need the approval quorum


@dataclasses.dataclass(frozen=True)
class StaffKey:
    name: str
    public_key: bytes  # Ed25519, 32 bytes


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    assets: tuple[AssetPolicy, ...]
    # Destinations (addresses, normalised) refused always, and if allow is not
    # None, the only external destinations allowed.
    deny: frozenset[str] = frozenset()
    allow: frozenset[str] | None = None
    # Wallets of the exchange itself (cold wallet, other hot wallets): always allowed.
    internal: frozenset[str] = frozenset()
    # Bitcoin account xpubs whose addresses are internal (checked by derivation).
    internal_xpubs: tuple[str, ...] = ()
    staff: tuple[StaffKey, ...] = ()
    approval_quorum: int = 1

    def asset(self, chain: str, contract: str = "") -> AssetPolicy | None:
        for a in self.assets:
            if a.chain == chain and a.contract == contract.lower():
                return a
        return None


@dataclasses.dataclass(frozen=True)
class Config:
    server: ServerConfig
    clients: tuple[ClientConfig, ...]
    keystore: KeystoreConfig
    audit_log: pathlib.Path
    limits_db: pathlib.Path
    bitcoin_network: str
    ethereum_chain_id: int
    policy: PolicyConfig
    # fsync the audit log and the limits database on every sign (off only for benchmarks).
    durable: bool = True


def load(path: str | pathlib.Path) -> Config:
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse(raw, base_dir=path.parent)


def normalise_address(chain: str, address: str) -> str:
    """Ethereum addresses compare case-insensitively; bech32 too (lower case)."""
    address = address.strip()
    if chain == "ethereum" or address.lower().startswith(("bc1", "tb1", "bcrt1")):
        return address.lower()
    return address


def _known(table, where: str, keys: tuple[str, ...]) -> dict:
    """table, if every key in it is one of keys: a misspelt limit must stop the signer, not leave
    that limit off."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where or 'the file'}: expected a table")
    for key in table:
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown setting"
                              + (f" (did you mean {near[0]}?)" if near else f"; known: {', '.join(keys)}"))
    return table


# One helper per shape of value. TOML has types but Python's conversions paper over them: a string
# where a list belongs iterated as single characters (a deny list of letters, silently off), true read
# as 1 (mainnet's chain id), 1.9 cut to 1. A value of another type is refused, naming the setting.
def _setting(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _text(table: dict, where: str, key: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{_setting(where, key)}: a string, got {value!r}")
    return value


def _name_and_hex(table: dict, where: str, key: str) -> tuple[str, str]:
    """(name, key's 64 hex digits in lower case) of a [[clients]] or [[policy.staff]] entry."""
    _known(table, where, ("name", key))
    name, value = _text(table, where, "name"), _text(table, where, key).lower()
    if not name or not _HEX64.fullmatch(value):
        raise ConfigError(f"{where}: name and {key} (64 hex digits) are required")
    return name, value


def _texts(table: dict, where: str, key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{_setting(where, key)}: a list of strings ([\"...\", ...]), got {value!r}")
    return tuple(value)


def _tables(table: dict, where: str, key: str) -> list[dict]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{_setting(where, key)}: a list of tables ([[{_setting(where, key)}]]), got {value!r}")
    return value


def _whole(table: dict, where: str, key: str, default: int) -> int:
    value = table.get(key, default)
    if type(value) is not int:  # not bool (an int in Python), not float
        raise ConfigError(f"{_setting(where, key)}: a whole number, got {value!r}")
    return value


def _flag(table: dict, where: str, key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):  # bool("false") is True
        raise ConfigError(f"{_setting(where, key)}: true or false, got {value!r}")
    return value


def parse(raw: dict, base_dir: pathlib.Path = pathlib.Path(".")) -> Config:
    def rel(value) -> pathlib.Path | None:
        return (base_dir / value).resolve() if value else None

    _known(raw, "", ("server", "clients", "keystore", "state", "chains", "policy"))
    srv = _known(raw.get("server", {}), "server", ("listen", "tls_cert", "tls_key", "tls_client_ca"))
    listen = _text(srv, "server", "listen")
    if not listen:
        raise ConfigError("server.listen is required: unix:/path/to/signer.sock or 127.0.0.1:PORT")
    if listen.startswith("unix:"):
        sock = listen.removeprefix("unix:")
        listen = "unix:" + str(rel(sock))
    server = ServerConfig(listen, *(rel(_text(srv, "server", key)) for key in ("tls_cert", "tls_key", "tls_client_ca")))
    if listen.startswith("unix:") and (server.tls_cert or server.tls_key or server.tls_client_ca):
        # Served in plain over the socket (its file permissions guard it): a tls_client_ca here
        # read as "client certificates required" while nothing checked one.
        raise ConfigError("server: tls_cert, tls_key and tls_client_ca apply to a TCP listener only; a unix "
                          "socket is guarded by its file permissions: remove them, or listen on 127.0.0.1:PORT")
    if not listen.startswith("unix:"):
        host = listen.rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise ConfigError(f"server.listen: the signer listens on loopback only, not {host}")
        if not (server.tls_cert and server.tls_key):
            raise ConfigError("server: a TCP listener needs tls_cert and tls_key (or use unix:PATH)")
    clients = []
    for i, c in enumerate(_tables(raw, "", "clients")):
        where = f"clients[{i}]"
        name, digest = _name_and_hex(c, where, "token_sha256")
        if any(digest == k.token_sha256 or name == k.name for k in clients):
            # With one token, the later client would silently take the earlier's calls.
            raise ConfigError(f"{where} ({name}): another client has the same name or token_sha256")
        clients.append(ClientConfig(name, digest))
    if not clients:
        raise ConfigError("clients: at least one client (the custody core) must be configured")

    ks = _known(raw.get("keystore", {}), "keystore",
                ("kind", "path", "passphrase_env", "key_file", "library", "token_label", "pin_env"))
    kind = _text(ks, "keystore", "kind")
    if kind == "software":
        keystore = KeystoreConfig("software", path=rel(_text(ks, "keystore", "path")),
                                  passphrase_env=_text(ks, "keystore", "passphrase_env"),
                                  key_file=rel(_text(ks, "keystore", "key_file")))
        if not keystore.path:
            raise ConfigError("keystore.path is required for a software keystore")
        if bool(keystore.passphrase_env) == bool(keystore.key_file):
            raise ConfigError("keystore: give exactly one of passphrase_env and key_file")
    elif kind == "pkcs11":
        keystore = KeystoreConfig("pkcs11", library=rel(_text(ks, "keystore", "library")),
                                  token_label=_text(ks, "keystore", "token_label"),
                                  pin_env=_text(ks, "keystore", "pin_env"))
        if not (keystore.library and keystore.token_label and keystore.pin_env):
            raise ConfigError("keystore: a pkcs11 keystore needs library, token_label and pin_env")
    else:
        raise ConfigError(f"keystore.kind must be 'software' or 'pkcs11', got {kind!r}")

    state = _known(raw.get("state", {}), "state", ("audit_log", "limits_db", "durable"))
    chains = _known(raw.get("chains", {}), "chains", ("bitcoin", "ethereum"))
    bitcoin = _known(chains.get("bitcoin", {}), "chains.bitcoin", ("network",))
    ethereum = _known(chains.get("ethereum", {}), "chains.ethereum", ("chain_id",))
    network = _text(bitcoin, "chains.bitcoin", "network", "regtest")
    if network not in ("mainnet", "testnet", "signet", "regtest"):
        raise ConfigError(f"chains.bitcoin.network: unknown network {network!r}")
    chain_id = _whole(ethereum, "chains.ethereum", "chain_id", 0)
    if chain_id <= 0:
        raise ConfigError("chains.ethereum.chain_id is required (a positive integer): "
                          "the signer refuses transactions for any other chain")
    audit_log = _text(state, "state", "audit_log", "signer-audit.log")
    limits_db = _text(state, "state", "limits_db", "signer-limits.sqlite")
    if not (audit_log and limits_db):
        raise ConfigError("state: audit_log and limits_db can't be empty (leave one out for its default)")
    return Config(
        server=server, clients=tuple(clients), keystore=keystore,
        audit_log=rel(audit_log), limits_db=rel(limits_db),
        bitcoin_network=network, ethereum_chain_id=chain_id,
        policy=_policy(raw.get("policy", {})),
        durable=_flag(state, "state", "durable", True),
    )


def _amount(raw: dict, key: str, where: str) -> int:
    if key not in raw:
        return NO_LIMIT
    value = raw[key]
    # Only ASCII digits: str.isdigit() passed "²", which int() then refused with its own message.
    if not (type(value) is int and value >= 0 or isinstance(value, str) and _DIGITS.fullmatch(value)):
        raise ConfigError(f"{where}.{key}: an amount in base units (a whole number, as a string), got {value!r}")
    return int(value)


def _policy(raw: dict) -> PolicyConfig:
    _known(raw, "policy", ("approval_quorum", "deny", "allow", "internal", "internal_xpubs", "staff", "assets"))
    assets, seen = [], set()
    for i, a in enumerate(_tables(raw, "policy", "assets")):
        where = f"policy.assets[{i}]"
        _known(a, where, ("asset", "chain", "contract", "max_per_transaction", "max_per_24h", "max_fee",
                          "max_fees_per_24h", "approval_above"))
        asset, chain = _text(a, where, "asset"), _text(a, where, "chain")
        if not asset or chain not in ("bitcoin", "ethereum"):
            raise ConfigError(f"{where}: asset and chain ('bitcoin' or 'ethereum') are required")
        contract = _text(a, where, "contract").lower()
        if contract and not _ETH_ADDRESS.fullmatch(contract):
            raise ConfigError(f"{where}.contract: not an Ethereum address")
        if (chain, contract) in seen:
            raise ConfigError(f"{where}: a second policy for {chain} {contract or 'native coin'}")
        seen.add((chain, contract))
        if contract and ("max_fee" in a or "max_fees_per_24h" in a):
            raise ConfigError(f"{where}: fees are paid in the chain's native coin; set max_fee and "
                              "max_fees_per_24h on its policy (no contract)")
        assets.append(AssetPolicy(asset, chain, contract, _amount(a, "max_per_transaction", where),
                                  _amount(a, "max_per_24h", where), _amount(a, "max_fee", where),
                                  _amount(a, "max_fees_per_24h", where), _amount(a, "approval_above", where)))
    staff, keys_seen = [], set()
    for i, s in enumerate(_tables(raw, "policy", "staff")):
        where = f"policy.staff[{i}]"
        name, key = _name_and_hex(s, where, "ed25519_public_key")
        if key in keys_seen:
            raise ConfigError(f"{where} ({name}): this public key is listed twice; "
                              "one person must not count as two approvers")
        if any(name == other.name for other in staff):
            # Approvals name their approver: two keys under one name would make one of them
            # never verify, and a quorum counted over the entries could never be met.
            raise ConfigError(f"{where} ({name}): this name is listed twice")
        keys_seen.add(key)
        staff.append(StaffKey(name, bytes.fromhex(key)))
    quorum = _whole(raw, "policy", "approval_quorum", 1)
    if quorum < 1:
        raise ConfigError("policy.approval_quorum must be at least 1")
    if staff and quorum > len(staff):
        raise ConfigError(f"policy.approval_quorum {quorum} is more than the {len(staff)} staff keys listed")

    def addresses(key: str) -> frozenset[str]:
        return frozenset(normalise_address("ethereum" if a.startswith("0x") else "bitcoin", a)
                         for a in _texts(raw, "policy", key))

    return PolicyConfig(
        assets=tuple(assets), deny=addresses("deny"),
        allow=addresses("allow") if "allow" in raw else None,
        internal=addresses("internal"), internal_xpubs=_texts(raw, "policy", "internal_xpubs"),
        staff=tuple(staff), approval_quorum=quorum,
    )
