"""The `custody` command as an operator runs it."""
import datetime
import pathlib
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import update

from custody import config as config_mod
from custody.api.auth import token_digest
from custody.app import Custody
from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.v1 import custody_pb2 as pb
from custody.v1 import custody_pb2_grpc
from tests.support.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]
CUSTODY = [sys.executable, "-m", "custody.cli"]


def run(*args, **kw):
    return subprocess.run([*CUSTODY, *args], capture_output=True, text=True, cwd=ROOT, timeout=60, **kw)



def test_token_prints_a_token_and_its_digest():
    out = run("token").stdout.split()
    token, digest = out[1], out[3]
    assert digest == token_digest(token) and len(token) >= 32


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[clients]]\nname = "x"\ntoken_sha256 = "nothex"\n')
    result = run("admin", "check", "--config", str(bad))
    assert result.returncode == 2
    assert "token_sha256 must be 64 hex digits" in result.stderr
    assert run("db", "upgrade", "--config", str(tmp_path / "missing.toml")).returncode == 2


def test_an_unreachable_database_is_a_clear_error(tmp_path, dead_port):
    config = tmp_path / "custody.toml"
    config.write_text(f'[database]\nurl = "postgresql://custody:secret@127.0.0.1:{dead_port}/custody"\n')
    for command in (("admin", "check"), ("db", "upgrade"), ("serve",)):
        result = run(*command, "--config", str(config))
        assert result.returncode == 2, command
        assert "custody: cannot use the database: connection failed" in result.stderr, command
        assert "Traceback" not in result.stderr and "secret" not in result.stderr, command


def write_config(path: pathlib.Path, port: int, database: str) -> pathlib.Path:
    """A small server config: one client ("exchange", token "secret-token", scope accounts), asset BTC."""
    path.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
[database]
url = "{database}"
[[clients]]
name = "exchange"
token_sha256 = "{token_digest('secret-token')}"
scopes = ["accounts"]
[[assets]]
asset = "BTC"
chain = "bitcoin"
decimals = 8
""")
    return path


def test_serve_with_a_market_removed_under_open_orders_says_what_to_do(tmp_path):
    """Open orders rest in a market the config no longer lists: their holds can't be checked, so
    nothing starts; staff get one line naming the order and what to do, not a traceback."""
    from custody.app import Custody
    from custody.db.migrate import upgrade
    from tests.support.config import make_config
    from tests.support.matching import ETH, accounts, place

    database = f"sqlite:///{tmp_path / 'custody.db'}"
    upgrade(database)
    app = Custody(make_config(database))
    try:
        (buyer,) = accounts(app, 1, btc=10**8, eth=0)
        order_id = place(app, buyer, "BUY", 100_000, ETH).order.order_id
    finally:
        app.close()
    config = write_config(tmp_path / "custody.toml", free_port(), database)  # no [[markets]]
    result = run("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert (f"custody: the order books can't be restored: open order {order_id} is in market ETH/BTC, which is "
            "not configured: put the market back in [[markets]], cancel its open orders, then remove it") \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_database_that_does_not_exist(tmp_path):
    """Only `db upgrade` creates a database: serve on a mistyped path made a fresh, empty one and
    served from it, handing out deposit addresses from index 0 again (already other users')."""
    config = write_config(tmp_path / "custody.toml", free_port(), "sqlite:///data/typo.db")
    (tmp_path / "data").mkdir()
    for command in (("serve",), ("scan", "--once"), ("admin", "check")):
        r = subprocess.run([*CUSTODY, *command, "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and "no custody database at sqlite:///" in r.stderr, (command, r.stderr)
        assert "custody db upgrade --config" in r.stderr
    assert not (tmp_path / "data" / "typo.db").exists()


def test_serve_migrates_serves_and_stops_on_sigterm(tmp_path):
    port = free_port()
    config = write_config(tmp_path / "custody.toml", port, "sqlite:///data/custody.db")
    (tmp_path / "data").mkdir()
    upgraded = subprocess.run([*CUSTODY, "db", "upgrade", "--config", str(config)], cwd=ROOT, check=True,
                              capture_output=True, text=True)
    # Each migration is said as it starts (one can take minutes on a large database), once.
    steps = [line for line in upgraded.stderr.splitlines() if line.startswith("db upgrade: Running upgrade")]
    shipped = list((ROOT / "custody" / "db" / "migrations" / "versions").glob("0*.py"))
    assert len(steps) == len(shipped) and steps[0].startswith("db upgrade: Running upgrade -> 0001"), upgraded.stderr
    assert len(upgraded.stderr.splitlines()) == len(steps), upgraded.stderr
    server = subprocess.Popen([*CUSTODY, "serve", "--config", str(config)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.2)
        stub = custody_pb2_grpc.CustodyServiceStub(channel)
        reply = stub.CreateAccount(pb.CreateAccountRequest(external_id="e2e"),
                                   metadata=[("authorization", "Bearer secret-token")])
        assert reply.account_id == "1"
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert '"event": "listening"' in output and '"event": "stopped"' in output
    assert (tmp_path / "data" / "custody.db").exists()  # relative to the config file
    for made in (tmp_path / "data").iterdir():  # the database, its -wal and -shm: balances, addresses
        assert made.stat().st_mode & 0o077 == 0, made
    check = run("admin", "check", "--config", str(config))
    assert check.returncode == 0 and "RESULT: OK" in check.stdout


def test_a_second_serve_on_the_same_port_is_refused(tmp_path):
    """gRPC binds with SO_REUSEPORT by default: a second `custody serve` on the same port started
    without a word and the kernel shared the callers between the two servers."""
    port = free_port()
    config = write_config(tmp_path / "custody.toml", port, "sqlite:///data/custody.db")
    (tmp_path / "data").mkdir()
    subprocess.run([*CUSTODY, "db", "upgrade", "--config", str(config)], cwd=ROOT, check=True, capture_output=True)
    first = subprocess.Popen([*CUSTODY, "serve", "--config", str(config)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        channel.close()
        second = subprocess.run([*CUSTODY, "serve", "--config", str(config)], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)


def test_the_quick_start_demo_runs_and_checks_itself():
    result = subprocess.run([sys.executable, "scripts/demo.py"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RESULT: OK" in result.stdout
    assert "Demo finished" in result.stdout
    # The withdrawal story: reviewed, signed by the signer process, confirmed, everything stopped.
    assert "WITHDRAWAL_STATUS_APPROVED: approved by rita-reviewer" in result.stdout
    assert "-> CONFIRMING (scanner) -> COMPLETED (withdrawal-job)" in result.stdout
    assert "signer stopped" in result.stdout and "bitcoin stopped, ethereum stopped" in result.stdout


def test_prune_keys_deletes_client_keys_past_the_window_and_refuses_less_than_a_day(tmp_path):
    config = write_config(tmp_path / "custody.toml", free_port(), "sqlite:///custody.db")
    assert run("db", "upgrade", "--config", str(config)).returncode == 0
    app = Custody(config_mod.load(config))
    try:
        a, b = (str(app.create_account(name).account_id) for name in ("alice", "bob"))
        app.adjust_balance("admin", "fund", a, "BTC", "100", True, "test funding")
        app.transfer("exchange", "old", a, b, "BTC", "1")
        with write_transaction(app.engine) as conn:
            conn.execute(update(t.idempotency_keys).where(t.idempotency_keys.c.key == "old")
                         .values(created_at=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)))
    finally:
        app.close()
    refused = run("admin", "prune-keys", "--config", str(config), "--older-than", "0")
    assert refused.returncode == 2 and "younger than 1 day are never pruned" in refused.stderr
    for days in ("1000000000", "-1", "ten"):
        out_of_range = run("admin", "prune-keys", "--config", str(config), "--older-than", days)
        assert out_of_range.returncode == 2 and "Traceback" not in out_of_range.stderr, out_of_range.stderr
    pruned = run("admin", "prune-keys", "--config", str(config), "--older-than", "30")
    assert pruned.returncode == 0, pruned.stderr
    assert "1 of 2 client idempotency keys were older than 30 days and are deleted" in pruned.stdout
    again = run("admin", "prune-keys", "--config", str(config), "--older-than", "30")
    assert "0 of 1 client idempotency keys" in again.stdout


def test_upgrades_started_together_take_turns_on_sqlite(tmp_path):
    """Alembic committed after each SQLite migration with the revision read once, so a second
    upgrade could read it between two migrations and run one again (found in review; here four
    start at the same moment and must all finish on the one schema)."""
    config = write_config(tmp_path / "custody.toml", free_port(), "sqlite:///data/custody.db")
    (tmp_path / "data").mkdir()
    upgrades = [subprocess.Popen([*CUSTODY, "db", "upgrade", "--config", str(config)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outcomes = [(u.wait(timeout=120), *u.communicate()) for u in upgrades]
    assert all(code == 0 for code, _, _ in outcomes), outcomes
    ran = [line for _, _, err in outcomes for line in err.splitlines() if "Running upgrade" in line]
    shipped = list((ROOT / "custody" / "db" / "migrations" / "versions").glob("0*.py"))
    assert len(ran) == len(shipped), ran  # each migration ran once, in one of the four
    check = run("admin", "check", "--config", str(config))
    assert check.returncode == 0 and "RESULT: OK" in check.stdout


def test_commands_refuse_a_database_whose_schema_is_behind_the_code(db_url, tmp_path):
    """A command on a database one migration behind ran until a query met the missing column: on
    PostgreSQL `admin check` died with a driver traceback and exit 1, which says 'violations'."""
    from alembic import command

    from custody.db.migrate import alembic_config, current, head, upgrade

    previous = sorted(p.name[:4] for p in (ROOT / "custody" / "db" / "migrations" / "versions").glob("0*.py"))[-2]
    command.downgrade(alembic_config(db_url), previous)
    config = write_config(tmp_path / "custody.toml", free_port(), db_url)
    # (serve, scan and the rescan commands upgrade the schema first, unless serve is told not to.)
    for args in (("admin", "check"), ("serve", "--no-migrate"), ("admin", "prune-keys", "--older-than", "30")):
        r = subprocess.run([*CUSTODY, *args, "--config", str(config)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert f"is at schema revision {previous}, this custody needs {head()}: run `custody db upgrade" in r.stderr, \
            (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert current(db_url) == previous, "nothing was migrated or changed"
    upgrade(db_url)
    r = subprocess.run([*CUSTODY, "admin", "check", "--config", str(config)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
