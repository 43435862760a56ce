"""PostgreSQL sessions get a lock timeout and an idle-in-transaction timeout: an instance paused or
killed in the middle of a group (or a host gone without closing its socket) held the event
sequence row, and every instance's ledger writes waited on it with no end. Now a write waiting on
such a lock fails with UNAVAILABLE (the caller retries with its key), and the server ends the
stuck session."""
import time
import urllib.parse

import pytest
from sqlalchemy import text

from custody import errors
from custody.app import Custody
from custody.db.engine import PG_SESSION_DEFAULTS, make_engine
from tests.support.config import make_config


def settings(url: str, **engine_options) -> tuple[str, str]:
    engine = make_engine(url, **engine_options)
    try:
        with engine.connect() as conn:
            return (conn.execute(text("SHOW lock_timeout")).scalar(),
                    conn.execute(text("SHOW idle_in_transaction_session_timeout")).scalar())
    finally:
        engine.dispose()


def with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + "options=" + urllib.parse.quote(options)


def test_sessions_get_the_timeouts_unless_something_else_set_them(pg_url):
    assert PG_SESSION_DEFAULTS == {"lock_timeout": "10s", "idle_in_transaction_session_timeout": "60s"}
    assert settings(pg_url) == ("10s", "1min")
    assert settings(with_options(pg_url, "-c lock_timeout=2s")) == ("2s", "1min")  # the operator's own
    assert settings(pg_url, session_timeouts=False) == ("0", "0")  # migrations wait as they always did


def test_a_ledger_write_behind_a_stuck_session_fails_then_applies_once_the_session_is_gone(pg_url):
    url = with_options(pg_url, "-c lock_timeout=500ms")
    app = Custody(make_config(url))
    stuck = make_engine(pg_url).connect()
    try:
        a, b = (app.create_account(name).account_id for name in ("a", "b"))
        app.adjust_balance("admin", "fund", str(a), "BTC", "100", True, "test funding")
        # A paused instance, mid group: it holds the row every group takes, and does nothing more.
        stuck.begin()
        stuck.execute(text("UPDATE event_sequence SET last_cursor = last_cursor WHERE id = 1"))
        started = time.monotonic()
        with pytest.raises(errors.DatabaseUnavailable):
            app.transfer("exchange", "t1", str(a), str(b), "BTC", "10", "")
        assert time.monotonic() - started < 10, "it failed after the lock timeout, not after a long wait"
        stuck.rollback()  # the server ends the session (idle timeout)
        app.transfer("exchange", "t1", str(a), str(b), "BTC", "10", "")  # the caller's retry: applied once
        app.transfer("exchange", "t1", str(a), str(b), "BTC", "10", "")
        assert {x.asset: x.available for x in app.get_balances(str(b))[1]}["BTC"] == 10
    finally:
        stuck.close()
        app.close()
