"""The service's configuration: one TOML file, validated in full at start.

Relative paths in the file (database, TLS files) are taken relative to the
file's own folder, so a config works from any working directory.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib

from custody.errors import InvalidArgument
from custody.money import MAX_AMOUNT, parse_amount

SCOPES = frozenset({"accounts", "withdraw", "review", "treasury", "compliance", "admin"})
_ASSET_NAME = re.compile(r"[A-Z0-9]{2,16}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    name: str
    token_sha256: str
    scopes: frozenset[str]


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    tls_client_ca: pathlib.Path | None = None
    # Transfers arriving together are committed together, up to this many.
    max_group_commit: int = 1000


@dataclasses.dataclass(frozen=True)
class Config:
    database_url: str
    server: ServerConfig
    clients: tuple[ClientConfig, ...]
    assets: tuple[AssetConfig, ...]

    def asset(self, name: str) -> AssetConfig:
        for a in self.assets:
            if a.asset == name:
                return a
        raise InvalidArgument(f"unknown asset {name[:32]!r}")

    @property
    def asset_names(self) -> frozenset[str]:
        return frozenset(a.asset for a in self.assets)


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
    db = raw.get("database", {})
    url = db.get("url", "sqlite:///custody.db")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            url = "sqlite:///" + str((base_dir / rel).resolve())
    srv = raw.get("server", {})

    def opt_path(key: str) -> pathlib.Path | None:
        value = srv.get(key)
        return (base_dir / value).resolve() if value else None

    server = ServerConfig(
        listen=srv.get("listen", ServerConfig.listen),
        tls_cert=opt_path("tls_cert"),
        tls_key=opt_path("tls_key"),
        tls_client_ca=opt_path("tls_client_ca"),
        max_group_commit=int(srv.get("max_group_commit", ServerConfig.max_group_commit)),
    )
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError("server: tls_cert and tls_key must be given together")
    if server.tls_client_ca and not server.tls_cert:
        raise ConfigError("server: tls_client_ca needs tls_cert and tls_key")
    return Config(
        database_url=url,
        server=server,
        clients=tuple(_client(c, i) for i, c in enumerate(raw.get("clients", []))),
        assets=_assets(raw.get("assets", [])),
    )


def _client(raw: dict, index: int) -> ClientConfig:
    where = f"clients[{index}]"
    name = raw.get("name", "")
    if not name:
        raise ConfigError(f"{where}: name is required")
    digest = str(raw.get("token_sha256", "")).lower()
    if not _SHA256_HEX.fullmatch(digest):
        raise ConfigError(f"{where} ({name}): token_sha256 must be 64 hex digits")
    scopes = frozenset(raw.get("scopes", []))
    unknown = scopes - SCOPES
    if unknown:
        raise ConfigError(f"{where} ({name}): unknown scopes {sorted(unknown)}")
    return ClientConfig(name=name, token_sha256=digest, scopes=scopes)


def _assets(items: list[dict]) -> tuple[AssetConfig, ...]:
    seen: set[str] = set()
    out = []
    for i, raw in enumerate(items):
        where = f"assets[{i}]"
        name = raw.get("asset", "")
        if not _ASSET_NAME.fullmatch(name):
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
        if not isinstance(decimals, int) or not 0 <= decimals <= 77:
            raise ConfigError(f"{where}: decimals must be an integer from 0 to 77")
        if not raw.get("chain"):
            raise ConfigError(f"{where}: chain is required")
        out.append(
            AssetConfig(
                asset=name,
                chain=raw["chain"],
                decimals=decimals,
                contract=raw.get("contract", ""),
                confirmations=int(raw.get("confirmations", 1)),
                withdrawal_fee=amount("withdrawal_fee", 0),
                min_withdrawal=amount("min_withdrawal", 1),
                max_withdrawal=amount("max_withdrawal", MAX_AMOUNT),
                daily_withdrawal_limit=amount("daily_withdrawal_limit", MAX_AMOUNT),
            )
        )
    return tuple(out)
