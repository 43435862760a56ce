"""The service's configuration: one TOML file, validated in full at start.

Relative paths in the file (database, TLS files, the signer's files and
socket) are taken relative to the file's own folder, so a config works from
any working directory. Every key is checked: an unknown one (a misspelt
limit would otherwise mean no limit) or a value of the wrong type stops the
service with a ConfigError naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import pathlib
import re
import tomllib

from custody.errors import InvalidArgument
from custody.ledger.commands import SERVICE_SCOPE
from custody.money import MAX_AMOUNT, parse_amount
from custody.text import NAME

SCOPES = frozenset({"accounts", "withdraw", "review", "treasury", "compliance", "admin"})
_ASSET_NAME = re.compile(r"[A-Z0-9]{2,16}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A client's name is its idempotency scope and the actor recorded in events and histories (64
# characters in the database). The service's own actors have a ':' or a space in them or are
# reserved, so a client can neither pose as one nor take an internal command's idempotency key.
# signer and scanner: actors in withdrawal histories (withdrawals/sender.py); matching: the ledger
# actor of the cancels of frozen accounts' orders (matching_stub/engine.py).
RESERVED_CLIENT_NAMES = frozenset({"anonymous", SERVICE_SCOPE, "withdrawal-job", "signer", "scanner", "matching"})
# ListAssets carries confirmations in a uint32.
MAX_CONFIRMATIONS = 2**32 - 1


class ConfigError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class AssetConfig:
    asset: str
    chain: str
    decimals: int
    contract: str = ""
    confirmations: int = 1
    withdrawal_fee: int = 0
    min_withdrawal: int = 1
    max_withdrawal: int = MAX_AMOUNT
    daily_withdrawal_limit: int = MAX_AMOUNT
    # Deposits below this (base units) are recorded as BELOW_MINIMUM and not
    # credited; with deposits_enabled false every new one is ASSET_DISABLED
    # (FAILURE_MODES 25). Decided when a deposit is first seen.
    min_deposit: int = 0
    deposits_enabled: bool = True


@dataclasses.dataclass(frozen=True)
class MarketConfig:
    """An order book: base bought and sold for quote. Every number is an integer.

    quantity: base units of `base`, a multiple of quantity_step, at least min_quantity.
    price: base units of `quote` paid for price_unit base units of `base` (for
    ETH/BTC with price_unit 10^18, satoshi per whole ether), a multiple of price_tick.
    Fees in parts per million of the quote amount of a fill."""

    base: str
    quote: str
    price_unit: int
    price_tick: int
    quantity_step: int
    min_quantity: int
    maker_fee_ppm: int
    taker_fee_ppm: int

    @property
    def name(self) -> str:
        return f"{self.base}/{self.quote}"


MAX_FEE_PPM = 100_000  # 10%: a sell's fee always fits in its proceeds (see docs/matching.md)


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    name: str
    token_sha256: str
    scopes: frozenset[str]


LEDGER_WRITERS = ("process", "thread")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    tls_client_ca: pathlib.Path | None = None
    # Transfers arriving together are committed together, up to this many.
    max_group_commit: int = 1000
    # While calls are concurrent, a group waits this long for more (see _groups in custody/ledger/writer.py).
    group_commit_wait_ms: float = 2.0
    # Where the ledger's group commits run: "process" (a child process, so the
    # writer's work does not compete with the gRPC event loop for the GIL) or
    # "thread" (a thread of this process). See custody/ledger/writer.py.
    ledger_writer: str = "process"
    # Calls the server runs at once, streams included; past it a call gets
    # RESOURCE_EXHAUSTED at once instead of queueing in memory behind a
    # stalled database (see docs/configuration.md).
    max_concurrent_rpcs: int = 10_000
    # Streams (StreamEvents, market data, reflection, health Watch) one client may hold open at
    # once; without a cap one client's leaked streams took every slot of max_concurrent_rpcs.
    max_streams_per_client: int = 100
    # A listener off loopback without TLS sends every bearer token in cleartext: refused unless
    # this says a TLS-terminating proxy or a private network stands in front.
    allow_plaintext: bool = False


@dataclasses.dataclass(frozen=True)
class ChainConfig:
    """A `[chains.<name>]` section: one chain plugin, its node and its keys.

    settings is the whole section as written, handed to the plugin, which
    reads its own keys (rpc_url, network, timeouts...)."""

    name: str
    network: str
    rpc_url: str
    deposit_xpub: str
    hot_xpub: str = ""
    cold_xpub: str = ""
    # Hot and cold receive addresses registered (and so watched) up front.
    wallet_addresses: int = 20
    # First height to scan when no cursor is stored yet; None: the tip at first start.
    start_height: int | None = None
    scan: bool = True
    poll_interval_s: float = 5.0
    # Blocks a scanner applies per database transaction (and fetches per RPC batch).
    blocks_per_commit: int = 16
    # A reorg deeper than this stops the scanner with an alert instead of unwinding.
    max_reorg_depth: int = 100
    settings: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)


@dataclasses.dataclass(frozen=True)
class StaffKeyConfig:
    """A staff member who may approve withdrawals, and the Ed25519 key their approvals verify with."""

    name: str
    public_key: bytes


@dataclasses.dataclass(frozen=True)
class WithdrawalConfig:
    """The `[withdrawals]` section (docs/withdrawals.md)."""

    # At or below: approved without review. Above: one staff approval;
    # above two_approvals_above: two distinct approvers.
    auto_approve_max: int = 0
    two_approvals_above: int = MAX_AMOUNT
    staff: tuple[StaffKeyConfig, ...] = ()
    # Where the signer listens and the token the core uses with it.
    signer_target: str = ""
    signer_token: str = ""
    # Or the name of an environment variable holding the token (keeps it out of the file).
    signer_token_env: str = ""
    # TCP targets use TLS: the CA that signed the signer's certificate, and for mutual TLS our cert and key.
    signer_ca_file: str = ""
    signer_cert_file: str = ""
    signer_key_file: str = ""
    signer_timeout_s: float = 30.0
    signer_key_id: str = "hot"
    # The hot wallet's account path in the signer (its keys sign our inputs).
    hot_account_path: str = "m/84h/1h/1h"
    # The deposit wallet's (deposit_xpub's) account path in the signer: used when
    # include_deposit_wallet lets batches spend deposit coins, which need its keys.
    deposit_account_path: str = "m/84h/1h/0h"
    # sat/vB when the node has no estimate (bcoin never has one).
    fallback_fee_rate: int = 2
    max_fee_rate: int = 500
    max_batch: int = 500
    # The signer's max_per_transaction for the chain's coin: a batch's payments stay at or
    # under it (the rest go in further batches); a withdrawal above it fails.
    signer_max_per_transaction: int = MAX_AMOUNT
    # Batches built per pass of the job (each is signed and sent in the same pass).
    max_batches_per_pass: int = 20
    max_inputs: int = 250
    # Bitcoin's standardness limit (nodes refuse larger transactions); selection stays under it.
    max_tx_vsize: int = 100_000
    # More spendable hot-wallet coins than this (0: never) and a fee rate at or below
    # consolidation_max_fee_rate: the smallest max_inputs of them are merged into one.
    consolidate_above: int = 0
    consolidation_max_fee_rate: int = 2
    # UTXOs below this many satoshi are never selected (attacker dust, FAILURE_MODES 33).
    min_utxo: int = 1000
    include_deposit_wallet: bool = False
    # Unconfirmed this long after broadcast: replaced with a higher fee (RBF).
    replace_after_s: float = 600.0
    replace_fee_multiplier: float = 2.0
    # A transaction the node refuses: "fail" (void the holds) or "requeue" (up to max_requeues times).
    on_node_rejection: str = "fail"
    max_requeues: int = 3
    poll_interval_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class Config:
    database_url: str
    server: ServerConfig
    clients: tuple[ClientConfig, ...]
    assets: tuple[AssetConfig, ...]
    chains: tuple[ChainConfig, ...] = ()
    markets: tuple[MarketConfig, ...] = ()
    withdrawals: WithdrawalConfig = WithdrawalConfig()

    def chain(self, name: str) -> ChainConfig:
        for c in self.chains:
            if c.name == name:
                return c
        raise InvalidArgument(f"unknown chain {name[:32]!r}"
                              + (f"; configured: {', '.join(c.name for c in self.chains)}" if self.chains else ""))

    def asset(self, name: str) -> AssetConfig:
        for a in self.assets:
            if a.asset == name:
                return a
        raise InvalidArgument(f"unknown asset {name[:32]!r}")

    @property
    def asset_names(self) -> frozenset[str]:
        return frozenset(a.asset for a in self.assets)

    def market(self, name: str) -> MarketConfig:
        for m in self.markets:
            if m.name == name:
                return m
        raise InvalidArgument(f"unknown market {name[:32]!r}")


def load(path: str | pathlib.Path) -> Config:
    path = pathlib.Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse(raw, base_dir=path.parent)


def parse(raw: dict, base_dir: pathlib.Path = pathlib.Path(".")) -> Config:
    reject_unknown(raw, "", ("server", "database", "clients", "assets", "chains", "markets", "withdrawals"))
    db = reject_unknown(raw.get("database", {}), "database", ("url",))
    url = db.get("url", "sqlite:///custody.db")
    if not isinstance(url, str) or not url:
        raise ConfigError("database.url must be a database URL: sqlite:///FILE or postgresql://...")
    # custody/db/engine.py refuses these too, but with a traceback at first use.
    if url.startswith("sqlite") and (":memory:" in url or url in ("sqlite://", "sqlite:///")):
        raise ConfigError("database.url: an in-memory SQLite database is not durable; give a file path")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        url = "sqlite:///" + str((base_dir / url.removeprefix("sqlite:///")).resolve())
    srv = reject_unknown(raw.get("server", {}), "server", _keys(ServerConfig))

    def opt_path(key: str) -> pathlib.Path | None:
        value = _string(srv, key, "", "server")
        return (base_dir / value).resolve() if value else None

    server = ServerConfig(
        listen=_string(srv, "listen", ServerConfig.listen, "server"),
        tls_cert=opt_path("tls_cert"),
        tls_key=opt_path("tls_key"),
        tls_client_ca=opt_path("tls_client_ca"),
        max_group_commit=_number(srv, "max_group_commit", ServerConfig.max_group_commit, "server", int, 1),
        group_commit_wait_ms=_number(srv, "group_commit_wait_ms", ServerConfig.group_commit_wait_ms, "server",
                                     float, 0, 100),
        ledger_writer=srv.get("ledger_writer", ServerConfig.ledger_writer),
        max_concurrent_rpcs=_number(srv, "max_concurrent_rpcs", ServerConfig.max_concurrent_rpcs, "server", int, 1),
        max_streams_per_client=_number(srv, "max_streams_per_client", ServerConfig.max_streams_per_client,
                                       "server", int, 1),
        allow_plaintext=_flag(srv, "allow_plaintext", False, "server"),
    )
    if server.ledger_writer not in LEDGER_WRITERS:
        raise ConfigError(f"server: ledger_writer must be one of {', '.join(LEDGER_WRITERS)}, "
                          f"not {server.ledger_writer!r}")
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server: tls_cert and tls_key must be given together")
    if server.tls_client_ca and not server.tls_cert:
        raise ConfigError("server: tls_client_ca needs tls_cert and tls_key")
    if not server.tls_cert and not server.allow_plaintext and not _loopback(server.listen):
        raise ConfigError(f"server: listen = {server.listen!r} is reachable from other hosts and no tls_cert is "
                          "set: bearer tokens would travel in cleartext. Configure tls_cert and tls_key, or set "
                          "allow_plaintext = true if a TLS proxy or a private network stands in front")
    assets = _assets(_tables(raw, "assets"))
    config = Config(
        database_url=url,
        server=server,
        clients=_clients(_tables(raw, "clients")),
        assets=assets,
        chains=_chains(raw.get("chains", {})),
        markets=_markets(_tables(raw, "markets"), assets),
        withdrawals=_withdrawals(raw.get("withdrawals", {}), base_dir),
    )
    if config.withdrawals.signer_target and any(c.name == "bitcoin" for c in config.chains):
        # The withdrawal job reads the Bitcoin chain's native asset as "BTC" (coins.py, sender.py,
        # refusal.py): under another name it would fail at its first run, after withdrawals were taken.
        btc = [a for a in assets if a.asset == "BTC"]
        if not btc or btc[0].chain != "bitcoin" or btc[0].contract:
            raise ConfigError("assets: the withdrawal job needs the bitcoin chain's native asset listed as "
                              "asset = \"BTC\" (chain = \"bitcoin\", no contract)")
    return config


def reject_unknown(table, where: str, keys: tuple[str, ...]) -> dict:
    """table, if every key in it is one of keys: a misspelt limit must stop the service, not
    leave that limit off (daily_withdrawl_limit would mean no daily limit at all)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where or 'the file'}: must be a table")
    for key in table:
        if key not in keys:
            near = difflib.get_close_matches(key, keys, n=1)
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown setting"
                              + (f" (did you mean {near[0]}?)" if near else f"; known: {', '.join(keys)}"))
    return table


def _keys(cls) -> tuple[str, ...]:
    """The keys of a table read into cls: its fields are named as the file's keys."""
    return tuple(f.name for f in dataclasses.fields(cls))


def _tables(raw: dict, key: str, where: str = "") -> list[dict]:
    """The array of tables raw[key] ([[key]] in the file)."""
    items = raw.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"{where}{key}: must be an array of tables ([[{where}{key}]])")
    return items


def _loopback(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    host = listen.rsplit(":", 1)[0].removeprefix("ipv4:").removeprefix("ipv6:").strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _string(raw: dict, key: str, default: str, where: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _number(raw: dict, key: str, default, where: str, kind: type = int, minimum=0, maximum=None):
    """raw[key], or default when absent: an integer (kind int) or any number (kind float) from
    minimum to maximum. A TOML boolean is not a number here, though Python counts it as one."""
    value = raw.get(key, default)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or kind is int and not isinstance(value, int)
            or isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}")
    if value < minimum or maximum is not None and value > maximum:
        raise ConfigError(f"{where}: {key} must be " + (f"from {minimum} to {maximum}" if maximum is not None
                                                         else f"at least {minimum}"))
    return kind(value)


def _withdrawals(raw: dict, base_dir: pathlib.Path) -> WithdrawalConfig:
    where = "withdrawals"
    reject_unknown(raw, where, _keys(WithdrawalConfig))
    d = WithdrawalConfig()

    def amount(key: str, default: int) -> int:
        if key not in raw:
            return default
        try:
            return parse_amount(str(raw[key]), f"{where}.{key}", allow_zero=True)
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from None

    def number(key, default, kind=int, minimum=0):
        return _number(raw, key, default, where, kind, minimum)

    def string(key: str) -> str:
        return _string(raw, key, getattr(d, key), where)

    def path(key: str) -> str:
        # Relative to the config file's folder, like every other path in it.
        value = string(key)
        return str((base_dir / value).resolve()) if value else ""

    staff = []
    for i, s in enumerate(_tables(raw, "staff", f"{where}.")):
        reject_unknown(s, f"{where}.staff[{i}]", ("name", "ed25519_public_key"))
        name, key_hex = s.get("name"), s.get("ed25519_public_key")
        try:
            key = bytes.fromhex(key_hex) if isinstance(key_hex, str) else b""
        except ValueError:
            key = b""
        if not isinstance(name, str) or not name or len(key) != 32:
            raise ConfigError(f"{where}.staff[{i}]: name and ed25519_public_key (64 hex digits) are required")
        if any(key == other.public_key or name == other.name for other in staff):
            # One key under two names would let one person give both approvals of a four-eyes
            # withdrawal; two keys under one name leave one of them never verifying.
            raise ConfigError(f"{where}.staff[{i}] ({name}): another staff entry has the same name or key; "
                              "one entry per person")
        staff.append(StaffKeyConfig(name, key))
    rule = raw.get("on_node_rejection", d.on_node_rejection)
    if rule not in ("fail", "requeue"):
        raise ConfigError(f"{where}: on_node_rejection must be \"fail\" or \"requeue\"")
    target = string("signer_target")
    if target.startswith("unix:"):
        target = "unix:" + str((base_dir / target.removeprefix("unix:")).resolve())
    return WithdrawalConfig(
        auto_approve_max=amount("auto_approve_max", d.auto_approve_max),
        two_approvals_above=amount("two_approvals_above", d.two_approvals_above),
        staff=tuple(staff),
        signer_target=target,
        signer_token=string("signer_token"),
        signer_token_env=string("signer_token_env"),
        signer_ca_file=path("signer_ca_file"),
        signer_cert_file=path("signer_cert_file"),
        signer_key_file=path("signer_key_file"),
        signer_timeout_s=number("signer_timeout_s", d.signer_timeout_s, float, 0.1),
        signer_key_id=string("signer_key_id"),
        hot_account_path=string("hot_account_path"),
        deposit_account_path=string("deposit_account_path"),
        fallback_fee_rate=number("fallback_fee_rate", d.fallback_fee_rate, int, 1),
        max_fee_rate=number("max_fee_rate", d.max_fee_rate, int, 1),
        max_batch=number("max_batch", d.max_batch, int, 1),
        signer_max_per_transaction=amount("signer_max_per_transaction", d.signer_max_per_transaction),
        max_batches_per_pass=number("max_batches_per_pass", d.max_batches_per_pass, int, 1),
        max_inputs=number("max_inputs", d.max_inputs, int, 1),
        max_tx_vsize=number("max_tx_vsize", d.max_tx_vsize, int, 1000),
        consolidate_above=number("consolidate_above", d.consolidate_above, int, 0),
        consolidation_max_fee_rate=number("consolidation_max_fee_rate", d.consolidation_max_fee_rate, int, 1),
        min_utxo=number("min_utxo", d.min_utxo, int, 0),
        include_deposit_wallet=_flag(raw, "include_deposit_wallet", d.include_deposit_wallet, where),
        replace_after_s=number("replace_after_s", d.replace_after_s, float, 0),
        replace_fee_multiplier=number("replace_fee_multiplier", d.replace_fee_multiplier, float, 1.0),
        on_node_rejection=rule,
        max_requeues=number("max_requeues", d.max_requeues, int, 0),
        poll_interval_s=number("poll_interval_s", d.poll_interval_s, float, 0.01),
    )


def _clients(raw: list) -> tuple[ClientConfig, ...]:
    clients = tuple(_client(c, i) for i, c in enumerate(raw))
    for field in ("name", "token_sha256"):
        seen = set()
        for i, c in enumerate(clients):
            value = getattr(c, field)
            if value in seen:
                # Two clients with one name would share idempotency keys and actor; with one
                # token, the later would silently take every call of the earlier.
                raise ConfigError(f"clients[{i}] ({c.name}): another client has the same {field}")
            seen.add(value)
    return clients


def _client(raw: dict, index: int) -> ClientConfig:
    where = f"clients[{index}]"
    reject_unknown(raw, where, _keys(ClientConfig))
    name = raw.get("name", "")
    if not name:
        raise ConfigError(f"{where}: name is required")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must be 1-64 letters, digits and . _ @ -, starting with a letter or digit")
    if name in RESERVED_CLIENT_NAMES:
        raise ConfigError(f"{where}: name {name!r} is reserved for the service itself")
    digest = raw.get("token_sha256", "")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
        raise ConfigError(f"{where} ({name}): token_sha256 must be 64 hex digits")
    digest = digest.lower()
    scopes = raw.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
        raise ConfigError(f"{where} ({name}): scopes must be a list of strings")
    scopes = frozenset(scopes)
    unknown = scopes - SCOPES
    if unknown:
        raise ConfigError(f"{where} ({name}): unknown scopes {sorted(unknown)}")
    return ClientConfig(name=name, token_sha256=digest, scopes=scopes)


def _assets(items: list[dict]) -> tuple[AssetConfig, ...]:
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(items):
        where = f"assets[{i}]"
        reject_unknown(raw, where, _keys(AssetConfig))
        name = raw.get("asset", "")
        if not isinstance(name, str) or not _ASSET_NAME.fullmatch(name):
            raise ConfigError(f"{where}: asset must be 2-16 upper-case letters or digits")
        if name in seen:
            raise ConfigError(f"{where}: asset {name} is listed twice")
        seen.add(name)

        def amount(key: str, default: int) -> int:
            if key not in raw:
                return default
            try:
                return parse_amount(str(raw[key]), f"{where}.{key}", allow_zero=True)
            except InvalidArgument as exc:
                raise ConfigError(str(exc)) from None

        decimals = raw.get("decimals")
        if type(decimals) is not int or not 0 <= decimals <= 77:
            raise ConfigError(f"{where}: decimals must be an integer from 0 to 77")
        if not isinstance(raw.get("chain"), str) or not raw["chain"]:
            raise ConfigError(f"{where}: chain is required")
        out.append(
            AssetConfig(
                asset=name,
                chain=raw["chain"],
                decimals=decimals,
                contract=_string(raw, "contract", "", where),
                # At least 1: the scanner credits from blocks only, so 0 would promise what never happens.
                confirmations=_number(raw, "confirmations", 1, where, int, 1, MAX_CONFIRMATIONS),
                withdrawal_fee=amount("withdrawal_fee", 0),
                min_withdrawal=amount("min_withdrawal", 1),
                max_withdrawal=amount("max_withdrawal", MAX_AMOUNT),
                daily_withdrawal_limit=amount("daily_withdrawal_limit", MAX_AMOUNT),
                min_deposit=amount("min_deposit", 0),
                deposits_enabled=_flag(raw, "deposits_enabled", True, where),
            )
        )
    return tuple(out)


def _flag(raw: dict, key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false")
    return value


# The keys of a [chains.<name>] section the core reads; the plugin declares its own (chains/base.py).
CORE_CHAIN_KEYS = tuple(f.name for f in dataclasses.fields(ChainConfig) if f.name not in ("name", "settings"))


def _chains(section: dict) -> tuple[ChainConfig, ...]:
    if not isinstance(section, dict):
        raise ConfigError("chains: must be a table of [chains.<name>] sections")
    out = []
    for name, raw in section.items():
        # The whole section is also the chain plugin's settings (rpc_timeout_s, ...): its unknown
        # keys are refused once the plugin says which are its own (custody/app.py, _make_plugin).
        where = f"chains.{name}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: must be a table")
        for key in ("network", "rpc_url", "deposit_xpub"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"{where}: {key} is required")

        def number(key, default, kind=int, minimum=0):
            return _number(raw, key, default, where, kind, minimum)

        out.append(ChainConfig(
            name=name,
            network=raw["network"],
            rpc_url=raw["rpc_url"],
            deposit_xpub=raw["deposit_xpub"],
            hot_xpub=_string(raw, "hot_xpub", "", where),
            cold_xpub=_string(raw, "cold_xpub", "", where),
            wallet_addresses=number("wallet_addresses", 20),
            start_height=number("start_height", None),
            scan=_flag(raw, "scan", True, where),
            poll_interval_s=number("poll_interval_s", 5.0, float, 0.01),
            blocks_per_commit=number("blocks_per_commit", 16, int, 1),
            max_reorg_depth=number("max_reorg_depth", 100, int, 1),
            settings=dict(raw),
        ))
    return tuple(out)


def _markets(items: list[dict], assets: tuple[AssetConfig, ...]) -> tuple[MarketConfig, ...]:
    decimals = {a.asset: a.decimals for a in assets}
    out: list[MarketConfig] = []
    for i, raw in enumerate(items):
        where = f"markets[{i}]"
        reject_unknown(raw, where, _keys(MarketConfig))
        base, quote = raw.get("base", ""), raw.get("quote", "")
        for key, name in (("base", base), ("quote", quote)):
            if not isinstance(name, str) or name not in decimals:
                raise ConfigError(f"{where}: {key} {name!r} is not a configured asset")
        if base == quote:
            raise ConfigError(f"{where}: base and quote must differ")
        where = f"{where} ({base}/{quote})"

        def amount(key: str, default: int | None = None) -> int:
            if key not in raw:
                if default is None:
                    raise ConfigError(f"{where}: {key} is required")
                return default
            try:
                return parse_amount(str(raw[key]), f"{where}.{key}")
            except InvalidArgument as exc:
                raise ConfigError(str(exc)) from None

        def fee(key: str) -> int:
            value = raw.get(key, 0)
            if type(value) is not int or not 0 <= value <= MAX_FEE_PPM:
                raise ConfigError(f"{where}: {key} must be an integer from 0 to {MAX_FEE_PPM} (parts per million)")
            return value

        market = MarketConfig(
            base=base, quote=quote,
            # Default: the price of one whole base coin, the way people quote it.
            price_unit=amount("price_unit", 10 ** decimals[base]),
            price_tick=amount("price_tick"),
            quantity_step=amount("quantity_step"),
            min_quantity=amount("min_quantity"),
            maker_fee_ppm=fee("maker_fee_ppm"),
            taker_fee_ppm=fee("taker_fee_ppm"),
        )
        if market.min_quantity % market.quantity_step:
            raise ConfigError(f"{where}: min_quantity must be a multiple of quantity_step")
        if any(m.name == market.name for m in out):
            raise ConfigError(f"{where}: market {market.name} is listed twice")
        out.append(market)
    return tuple(out)
