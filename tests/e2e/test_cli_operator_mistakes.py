"""`custody` as an operator mistypes it or runs it while a node is down: one line on stderr, the documented
exit code, no traceback, nothing changed."""
import sqlite3
import subprocess
import sys

from tests.e2e.test_cli import ROOT

DEPOSIT_XPUB = ("vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8Z"
                "hDYe2jWAqvZVnsc")


def custody(*args):
    return subprocess.run([sys.executable, "-m", "custody.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def one_line(result, code: int) -> str:
    assert result.returncode == code and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    return result.stderr


def config_with_a_dead_node(tmp_path, port):
    """Bitcoin regtest whose node (a port nobody listens on) is down."""
    path = tmp_path / "custody.toml"
    path.write_text(f"""
[database]
url = "sqlite:///custody.db"
[[assets]]
asset = "BTC"
chain = "bitcoin"
decimals = 8
[chains.bitcoin]
network = "regtest"
rpc_url = "http://u:p@127.0.0.1:{port}/"
deposit_xpub = "{DEPOSIT_XPUB}"
rpc_retries = 0
rpc_timeout_s = 2
""")
    return path


def rescans(tmp_path) -> list[tuple]:
    with sqlite3.connect(tmp_path / "custody.db") as db:
        return db.execute("select id, chain, from_height, finished_at from scan_backfills").fetchall()


def test_a_rescan_with_the_node_down_is_queued_once_and_said_in_one_line(tmp_path, dead_port):
    config = config_with_a_dead_node(tmp_path, dead_port)
    assert custody("db", "upgrade", "--config", config).returncode == 0
    rescan = ("scan", "rescan", "--config", config, "--chain", "bitcoin", "--from-height", 5, "--staff", "carol")
    first = custody(*rescan)
    assert "rescan 1 is queued but the bitcoin node is unreachable" in one_line(first, 1)
    assert "rescan 1: bitcoin from height 5 requested" in first.stdout
    again = custody(*rescan)  # the operator tries again: no second identical request
    assert "rescan 1 is queued" in one_line(again, 1) and "still open" in again.stdout
    queued = custody(*rescan, "--queue")
    assert queued.returncode == 0 and "rescan 1:" in queued.stdout
    assert rescans(tmp_path) == [(1, "bitcoin", 5, None)]
    other = custody("scan", "rescan", "--config", config, "--chain", "bitcoin", "--from-height", 6, "--queue",
                    "--staff", "carol")
    assert other.returncode == 0 and "rescan 2: bitcoin from height 6 requested" in other.stdout

    once = custody("scan", "--config", config, "--once")
    assert "unreachable" in one_line(once, 1)


def test_mistakes_are_one_line_and_change_nothing(tmp_path, dead_port):
    config = config_with_a_dead_node(tmp_path, dead_port)
    assert custody("db", "upgrade", "--config", config).returncode == 0
    assert "Is a directory" in one_line(custody("admin", "check", "--config", tmp_path), 2)
    too_high = custody("scan", "rescan", "--config", config, "--chain", "bitcoin", "--from-height",
                       "99999999999999999999", "--queue", "--staff", "carol")
    assert too_high.returncode == 2 and "is not a block height" in too_high.stderr
    assert "Traceback" not in too_high.stderr and rescans(tmp_path) == []
    nameless = custody("scan", "rescan", "--config", config, "--chain", "bitcoin", "--from-height", "5", "--queue",
                       "--staff", "carol\u202eadmin")
    assert "staff name" in one_line(nameless, 2) and rescans(tmp_path) == []

    with sqlite3.connect(tmp_path / "custody.db") as db:  # as if a newer custody had migrated it
        db.execute("update alembic_version set version_num = '0099'")
    for command in (("db", "upgrade"), ("scan", "--once")):
        newer = custody(*command, "--config", config)
        assert "Can't locate revision identified by '0099'" in one_line(newer, 2), command
    with sqlite3.connect(tmp_path / "custody.db") as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("0099",)]


def test_admin_check_against_an_unreachable_node_could_not_check(tmp_path, dead_port):
    """Exit 1 means violations: a node that does not answer is 'could not check' (2), one line."""
    config = config_with_a_dead_node(tmp_path, dead_port)
    assert custody("db", "upgrade", "--config", config).returncode == 0
    assert custody("admin", "check", "--config", config).returncode == 0  # the database alone is fine
    checked = custody("admin", "check", "--node", "--config", config)
    said = checked.stderr.strip().splitlines()[-1]  # after the progress lines
    assert checked.returncode == 2 and "Traceback" not in checked.stderr, checked.stderr
    assert said.startswith("custody: bitcoin: the node did not answer") and said.endswith("nothing was checked "
                                                                                          "against it"), said
