"""The `custody` command.

Exit codes: 0 done; 1 the operation failed (a chain node unreachable, a file it
could not read or write, a check that found a problem); 2 a bad argument, config
or database (unreachable, or its schema newer than this code). `custody signer`
has its own (hsm/cli.py).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import secrets
import sys

import structlog
from alembic.util import CommandError
from sqlalchemy.exc import InterfaceError, OperationalError

from chains.base import ChainError
from custody import config as config_mod
from custody import logs
from custody.errors import CustodyError, ScannerHalted, driver_reason
from matching_stub.engine import RecoveryError


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
    check.add_argument("--node", action="store_true",
                       help="also ask each scanned UTXO chain's node whether every output the service holds "
                            "unspent is unspent there (one call per output)")
    check.add_argument("--config", required=True)
    check.set_defaults(run=_admin_check)
    prune = admin_sub.add_parser("prune-keys", help="forget client idempotency keys older than the retry window")
    prune.add_argument("--config", required=True)
    prune.add_argument("--older-than", required=True, type=_days, metavar="DAYS",
                       help="keys created more than DAYS days ago (1 to 36,500): a retry with one is a new request")
    prune.set_defaults(run=_admin_prune_keys)
    pins = admin_sub.add_parser("config", help="the pinned chain and asset config (FAILURE_MODES 34)")
    pins_sub = pins.add_subparsers(dest="config_command", required=True)
    show = pins_sub.add_parser("show", help="list each chain's pinned config and where the config file differs")
    show.add_argument("--config", required=True)
    show.set_defaults(run=_config_show)
    accept = pins_sub.add_parser("accept", help="accept a changed chain/asset config: move its pins, record why")
    accept.add_argument("--config", required=True)
    accept.add_argument("--chain", required=True)
    accept.add_argument("--staff", required=True, help="who accepts the change (recorded)")
    accept.add_argument("--reason", required=True, help="why (recorded)")
    accept.set_defaults(run=_config_accept)

    nodes = sub.add_parser("nodes", help="local regtest/dev chain nodes (bcoin, anvil) for development and tests")
    nodes_sub = nodes.add_subparsers(dest="nodes_command", required=True)
    for name, help_text in (("up", "start the nodes that are not running"), ("down", "stop the nodes"),
                            ("status", "show which nodes run, their heights and RPC URLs")):
        p = nodes_sub.add_parser(name, help=help_text)
        p.add_argument("--dir", default=None, help="folder for node data and logs (default var/nodes)")
        p.add_argument("--only", choices=["bitcoin", "ethereum"], action="append",
                       help="act on this node only (repeatable)")
        if name == "up":
            p.add_argument("--bitcoin-port", type=int, default=None, help="bcoin JSON-RPC port (default 18443)")
            p.add_argument("--ethereum-port", type=int, default=None, help="anvil JSON-RPC port (default 8545)")
            p.add_argument("--fresh", action="store_true", help="wipe the nodes' data first")
        p.set_defaults(run=_nodes)

    scan = sub.add_parser("scan", help="run the chain scanners without the gRPC server")
    scan.add_argument("--config", help="the config file (required)")
    scan.add_argument("--chain", action="append", help="scan this chain only (repeatable)")
    scan.add_argument("--once", action="store_true", help="catch up to the tip once, then exit")
    scan.set_defaults(run=_scan)
    scan_sub = scan.add_subparsers(dest="scan_command")
    rescan = scan_sub.add_parser("rescan", help="rescan past blocks for payments to watched addresses "
                                                "(late registration, restore); the cursor never moves back")
    rescan.add_argument("--config", required=True)
    rescan.add_argument("--chain", required=True)
    rescan.add_argument("--from-height", type=_height, required=True, help="first block to rescan")
    rescan.add_argument("--queue", action="store_true",
                        help="only record the request; the running service's scanner does it")
    rescan.add_argument("--staff", required=True, help="who asks for it (recorded: a rescan can credit deposits)")
    rescan.set_defaults(run=_rescan)
    cancel = scan_sub.add_parser("cancel-rescan", help="end an open rescan request (e.g. one whose blocks the node "
                                                       "cannot serve); what it found stays recorded")
    cancel.add_argument("--config", required=True)
    cancel.add_argument("--chain", required=True)
    cancel.add_argument("--id", type=int, required=True, help="the rescan's id (printed by rescan, in its alerts)")
    cancel.add_argument("--staff", required=True, help="who cancels it (recorded)")
    cancel.add_argument("--reason", required=True, help="why (recorded)")
    cancel.set_defaults(run=_cancel_rescan)

    token = sub.add_parser("token", help="make a new client token and the SHA-256 to put in the config")
    token.set_defaults(run=_token)

    from hsm import cli as signer_cli

    signer_cli.register(sub)

    args = parser.parse_args(argv)
    logs.configure()
    # Files this service creates (the SQLite database, the signer's audit log and limits_db, its
    # socket, PSBTs) hold balances, addresses and decisions: readable by their owner only.
    os.umask(os.umask(0o077) | 0o077)
    if args.command == "signer":
        return signer_cli.run(args)
    try:
        return args.run(args)
    except config_mod.ConfigError as exc:
        print(f"custody: configuration error: {exc}", file=sys.stderr)
        return 2
    except CustodyError as exc:  # e.g. ConfigChanged: a chain's pinned config differs
        print(f"custody: {exc}", file=sys.stderr)
        return 2
    except (OperationalError, InterfaceError) as exc:  # a clear line, not a driver traceback
        print(f"custody: cannot use the database: {driver_reason(exc)}\n"
              f"custody: check [database] url in the config and that the database server is running",
              file=sys.stderr)
        return 2
    except CommandError as exc:  # e.g. "Can't locate revision": a newer custody migrated the database
        print(f"custody: database schema: {exc} (was the database upgraded by a newer custody?)", file=sys.stderr)
        return 2
    except RecoveryError as exc:  # the stored order books disagree with [[markets]]
        print(f"custody: the order books can't be restored: {exc}", file=sys.stderr)
        return 2
    except ChainError as exc:
        print(f"custody: chain node: {exc}", file=sys.stderr)
        return 1
    except ScannerHalted as exc:  # e.g. the node serves another network than the config names
        print(f"custody: scanner halted: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"custody: {exc.filename}: {exc.strerror}" if exc.filename else f"custody: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"custody: {exc}", file=sys.stderr)
        return 1


def _load(path: str) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except OSError as exc:  # a directory given as --config
        raise config_mod.ConfigError(f"{path}: {exc.strerror}") from None


def _existing(path, migrating: bool = False) -> config_mod.Config:
    """The config, for a command that works on a custody database: it must exist. Only `db upgrade`
    creates one: a mistyped path would otherwise get a fresh, empty database, served as if it were
    the real one (its deposit addresses starting again at index 0, already given to other users).
    And unless the command migrates it first, its schema must be the one this code needs: on an
    older one a command failed half way with a driver error (PostgreSQL: a traceback, exit 1)."""
    from custody.db.migrate import current, has_schema, head

    config = _load(path)
    if not has_schema(config.database_url):
        raise config_mod.ConfigError(f"no custody database at {_shown(config.database_url)}: check [database] url, "
                                     f"or create it with `custody db upgrade --config {path}`")
    if not migrating and (at := current(config.database_url)) != (needed := head()):
        raise config_mod.ConfigError(f"the database at {_shown(config.database_url)} is at schema revision {at}, "
                                     f"this custody needs {needed}: run `custody db upgrade --config {path}` "
                                     "(or use the custody that upgraded it, if it is newer)")
    return config


def _shown(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).render_as_string(hide_password=True)


def _serve(args) -> int:
    from custody.api.server import serve
    from custody.db.migrate import upgrade

    config = _existing(args.config, migrating=not args.no_migrate)
    if not args.no_migrate:
        log = structlog.get_logger("custody.db")
        upgrade(config.database_url, progress=lambda step: log.info("migration", step=step))
    asyncio.run(serve(config))
    return 0


def _db_upgrade(args) -> int:
    from custody.db.migrate import current, upgrade

    config = _load(args.config)
    upgrade(config.database_url, progress=lambda step: print(f"db upgrade: {step}", file=sys.stderr, flush=True))
    print(f"database at revision {current(config.database_url)}")
    return 0


def _admin_check(args) -> int:
    from custody.db.engine import make_engine
    from custody.ledger.invariants import check

    config = _existing(args.config)
    engine = make_engine(config.database_url)

    def progress(message: str) -> None:
        print(f"admin check: {message}", file=sys.stderr, flush=True)

    try:
        report = check(engine, progress=progress)
        if args.node:
            report.findings += _node_findings(config, engine, progress)
    finally:
        engine.dispose()
    print(report.render())
    return 0 if report.ok else 1


def _node_findings(config, engine, progress) -> list:
    """Invariant 4's UTXO set checked against each scanned UTXO chain's node (--node)."""
    from custody.app import _make_plugin
    from custody.errors import Unavailable
    from custody.ledger.invariants import MAX_LISTED, Finding
    from custody.reconciliation.node import check_outputs

    findings = []
    for chain in config.chains:
        plugin = _make_plugin(chain)
        try:
            if not (chain.scan and plugin.reconciled_by_outputs):
                continue
            found = check_outputs(engine, plugin, chain.name, progress)
        except ChainError as exc:  # exit 2, "could not check", not 1, "violations"
            raise Unavailable(f"{chain.name}: the node did not answer ({exc}); nothing was checked against it") \
                from None
        finally:
            plugin.close()
        said = (f"{chain.name}: {found.checked} unspent outputs asked of the node (scanned to "
                f"{found.scanned_to}, node at {found.node_tip})")
        if not found.gone:
            findings.append(Finding("4", "info", f"{said}: all unspent there"))
            continue
        # With the node ahead, a spend may be in a block the scanner has not applied yet.
        severity = "flagged" if found.node_ahead else "violation"
        findings.append(Finding("4", severity, f"{said}: {len(found.gone)} spent or absent on the node"
                                + ("; the node is ahead of the scanner: check again once it has caught up"
                                   if found.node_ahead else "")))
        findings += [Finding("4", severity, f"{chain.name}: {txid}:{index} ({amount}) is unspent in the service's "
                                            f"UTXO set, spent or absent on the node; block {height}, address {address}")
                     for txid, index, amount, height, address in found.gone[:MAX_LISTED]]
        if len(found.gone) > MAX_LISTED:
            findings.append(Finding("4", severity, f"{chain.name}: and {len(found.gone) - MAX_LISTED} more"))
    return findings


def _height(text: str) -> int:
    height = int(text)
    if not 0 <= height < 2**63:  # the database's BIGINT
        raise argparse.ArgumentTypeError(f"{height} is not a block height")
    return height


def _days(text: str) -> int:
    days = int(text)
    if not 0 <= days <= 36_500:  # a century: beyond it the date arithmetic overflows
        raise argparse.ArgumentTypeError(f"{days} is not from 0 to 36,500 days")
    return days


def _admin_prune_keys(args) -> int:
    from custody.db.engine import make_engine
    from custody.ledger.key_retention import prune

    config = _existing(args.config)
    engine = make_engine(config.database_url)
    try:
        done = prune(engine, datetime.timedelta(days=args.older_than), progress=lambda p: print(
            f"prune-keys: {p.scanned} keys looked at, {p.deleted} deleted so far", file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"custody: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"{done.deleted} of {done.scanned} client idempotency keys were older than {args.older_than} days "
          "and are deleted; the service's own keys are kept")
    return 0


def _config_show(args) -> int:
    from custody import config_pins
    from custody.db.engine import make_engine

    config = _existing(args.config)
    engine = make_engine(config.database_url)
    try:
        for chain in config.chains:
            diffs = config_pins.differences(engine, config, chain.name)
            for name, value in config_pins.pinned_fields(config, chain.name).items():
                diff = next((d for d in diffs if d[0] == name), None)
                state = "ok" if diff is None else ("not pinned yet" if diff[1] is None else "CHANGED")
                print(f"{name:24} {state:15} {json.dumps(value if diff is None else diff[1], sort_keys=True)}")
                if diff is not None and diff[1] is not None:
                    print(f"{'':24} {'config file':15} {json.dumps(diff[2], sort_keys=True)}")
    finally:
        engine.dispose()
    return 0


def _config_accept(args) -> int:
    from custody import config_pins
    from custody.db.engine import make_engine

    config = _existing(args.config)
    engine = make_engine(config.database_url)
    try:
        changed = config_pins.accept(engine, config, args.chain, args.staff, args.reason)
    except ValueError as exc:
        print(f"custody: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if not changed:
        print(f"chain {args.chain}: the config already matches its pins; nothing changed")
    for name, old, new in changed:
        print(f"{name}: {json.dumps(old, sort_keys=True)} -> {json.dumps(new, sort_keys=True)} "
              f"(accepted by {args.staff})")
    return 0


def _nodes(args) -> int:
    from chains.nodes import DEFAULT_DIR, KINDS, NodeStartError, Nodes

    ports = {}
    if getattr(args, "bitcoin_port", None):
        ports["bitcoin"] = args.bitcoin_port
    if getattr(args, "ethereum_port", None):
        ports["ethereum"] = args.ethereum_port
    nodes = Nodes(args.dir or DEFAULT_DIR, ports)
    kinds = tuple(args.only or KINDS)
    try:
        if args.nodes_command == "up":
            statuses = nodes.up(kinds, fresh=args.fresh)
        elif args.nodes_command == "down":
            statuses = nodes.down(kinds)
        else:
            statuses = nodes.status(kinds)
    except NodeStartError as exc:
        print(f"custody: {exc}", file=sys.stderr)
        return 1
    for status in statuses:
        print(status.render())
    return 0


def _scan(args) -> int:
    from custody.app import Custody
    from custody.db.migrate import upgrade

    if not args.config:
        raise config_mod.ConfigError("scan: --config is required")
    config = _existing(args.config, migrating=True)  # it upgrades the schema first, as serve does
    upgrade(config.database_url)
    app = Custody(config)
    try:
        if args.once:
            for name in app.scanner_names(args.chain):
                app.scanner(name).catch_up()
            return 0
        app.start_jobs(args.chain)
        import signal
        import threading

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        # Woken twice a second: a signal the kernel hands to a job's thread
        # runs its handler only once the main thread runs (hsm/api/server.py).
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        app.close()


def _rescan(args) -> int:
    from custody.app import Custody
    from custody.db.migrate import upgrade
    from custody.deposits import service as deposits
    from custody.text import parse_staff

    staff = parse_staff(args.staff)  # before anything is done
    config = _existing(args.config, migrating=True)  # it upgrades the schema first, as serve does
    config.chain(args.chain)  # an unknown chain is refused here
    upgrade(config.database_url)
    app = Custody(config)
    try:
        app.verify_config(args.chain)  # before the request: a command refused for changed config changes nothing
        request_id, created = deposits.request_rescan(
            app.engine, args.chain, args.from_height,
            f"{staff}: custody scan rescan --from-height {args.from_height}")
        if created:
            print(f"rescan {request_id}: {args.chain} from height {args.from_height} requested")
        else:  # a re-run (the node was down) adds no second identical request
            print(f"rescan {request_id}: {args.chain} from height {args.from_height} was requested already "
                  "and is still open")
        if args.queue:
            return 0
        try:
            result = app.scanner(args.chain).catch_up()
        except ChainError as exc:
            print(f"custody: rescan {request_id} is queued but the {args.chain} node is unreachable ({exc}); "
                  "the running service's scanner will do it", file=sys.stderr)
            return 1
        state = deposits.backfill_state(app.engine, request_id)
        outcome = state["stop_reason"] or ("finished" if state["finished_at"] else "not finished")
        print(f"rescan {request_id}: {result.backfilled} blocks rescanned, heights {state['from_height']}.."
              f"{state['to_height']}, {outcome}; cursor at {result.height}")
        return 0 if state["finished_at"] and not state["stop_reason"] else 1
    finally:
        app.close()


def _cancel_rescan(args) -> int:
    from custody.db.engine import make_engine
    from custody.db.migrate import upgrade
    from custody.deposits import service as deposits

    config = _existing(args.config, migrating=True)  # it upgrades the schema first, as serve does
    config.chain(args.chain)  # an unknown chain is refused here
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    try:
        deposits.cancel_rescan(engine, args.chain, args.id, args.staff, args.reason)
        print(f"rescan {args.id}: cancelled by {args.staff}")
        return 0
    finally:
        engine.dispose()


def _token(args) -> int:
    from custody.api.auth import token_digest

    token = secrets.token_urlsafe(32)
    print(f"token        {token}")
    print(f"token_sha256 {token_digest(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
