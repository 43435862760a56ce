"""The jobs' one-holder locks across processes, on both databases: a job (a chain's scanner, the
withdrawal sender) runs in one process at a time, and a holder that dies lets the next one in."""
from __future__ import annotations

import signal
import subprocess
import sys

from custody.db.engine import make_engine
from custody.jobs import locks

HOLDER = """
import sys, time
from custody.db.engine import make_engine
from custody.jobs import locks
with locks.exclusive(make_engine(sys.argv[1]), sys.argv[2]) as got:
    print("held" if got else "busy", flush=True)
    time.sleep(600)
"""


def hold_in_another_process(url: str, name: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, name], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_job_lock_has_one_holder_across_processes_and_a_dead_holder_releases_it(db_url):
    """On SQLite the lock was always granted: `custody serve` and `custody scan` on one database
    file both ran the scanners and the withdrawal sender at once."""
    engine = make_engine(db_url)
    holder = hold_in_another_process(db_url, "custody.scan.bitcoin")
    try:
        with locks.exclusive(engine, "custody.scan.bitcoin") as got:
            assert got is False
        with locks.exclusive(engine, "custody.withdrawals.bitcoin") as got:
            assert got is True, "another job's lock is another lock"
        holder.send_signal(signal.SIGKILL)  # dies holding it, without any clean-up
        holder.wait(timeout=10)
        with locks.exclusive(engine, "custody.scan.bitcoin") as got:
            assert got is True
            with locks.exclusive(engine, "custody.scan.bitcoin") as again:
                assert again is False, "one holder within a process too"
        with locks.exclusive(engine, "custody.scan.bitcoin") as got:
            assert got is True, "released when its holder left the block"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        engine.dispose()


def test_a_held_lock_outlives_the_servers_idle_session_timeout(pg_url):
    """PostgreSQL: the lock's session sits idle while the job runs; with idle_session_timeout set
    (by a DBA, for the database or role) the server ended it mid pass and the lock went with it,
    so another instance took the lock while this one was still at work (a database review)."""
    import time

    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from tests.support.databases import _on_the_server

    _on_the_server(f"ALTER DATABASE {make_url(pg_url).database} SET idle_session_timeout = '1s'")
    engine, other = make_engine(pg_url), make_engine(pg_url)
    try:
        with locks.exclusive(engine, "custody.withdrawals.bitcoin") as got:
            assert got
            time.sleep(2.5)  # a long pass
            with other.connect() as conn:
                taken = conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                     {"k": locks.lock_key("custody.withdrawals.bitcoin")}).scalar()
            assert taken is False, "the lock was lost with its idle session"
    finally:
        engine.dispose()
        other.dispose()
