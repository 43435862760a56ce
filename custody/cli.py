"""The `custody` command."""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys

from custody import config as config_mod
from custody import logs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="custody", description="Custody and wallet-group service")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--config", required=True)
    serve.add_argument("--no-migrate", action="store_true", help="do not upgrade the database schema first")
    serve.set_defaults(run=_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply Alembic migrations up to the newest")
    upgrade.add_argument("--config", required=True)
    upgrade.set_defaults(run=_db_upgrade)

    admin = sub.add_parser("admin", help="operator tools")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    check = admin_sub.add_parser("check", help="verify the ledger invariants; exits 1 on a violation")
    check.add_argument("--config", required=True)
    check.set_defaults(run=_admin_check)

    token = sub.add_parser("token", help="make a new client token and the SHA-256 to put in the config")
    token.set_defaults(run=_token)

    args = parser.parse_args(argv)
    logs.configure()
    try:
        return args.run(args)
    except config_mod.ConfigError as exc:
        print(f"custody: configuration error: {exc}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    from custody.api.server import serve
    from custody.db.migrate import upgrade

    config = config_mod.load(args.config)
    if not args.no_migrate:
        upgrade(config.database_url)
    asyncio.run(serve(config))
    return 0


def _db_upgrade(args) -> int:
    from custody.db.migrate import current, upgrade

    config = config_mod.load(args.config)
    upgrade(config.database_url)
    print(f"database at revision {current(config.database_url)}")
    return 0


def _admin_check(args) -> int:
    from custody.db.engine import make_engine
    from custody.ledger.invariants import check

    config = config_mod.load(args.config)
    engine = make_engine(config.database_url)
    try:
        report = check(engine)
    finally:
        engine.dispose()
    print(report.render())
    return 0 if report.ok else 1


def _token(args) -> int:
    from custody.api.auth import token_digest

    token = secrets.token_urlsafe(32)
    print(f"token        {token}")
    print(f"token_sha256 {token_digest(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
