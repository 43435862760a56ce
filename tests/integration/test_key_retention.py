"""Pruning old idempotency keys (`custody admin prune-keys`), on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime

import pytest
from sqlalchemy import insert, select, update

from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.ledger.commands import SERVICE_SCOPE
from custody.ledger import key_retention
from custody.ledger.key_retention import prune

NOW = datetime.datetime.now(datetime.timezone.utc)
MONTH = datetime.timedelta(days=30)


def stored_keys(app) -> set[tuple[str, str]]:
    with app.engine.connect() as conn:
        return {(r.scope, r.key) for r in conn.execute(select(t.idempotency_keys.c.scope, t.idempotency_keys.c.key))}


def age(app, scope: str, keys: list[str], days: int) -> None:
    with write_transaction(app.engine) as conn:
        conn.execute(update(t.idempotency_keys)
                     .where(t.idempotency_keys.c.scope == scope, t.idempotency_keys.c.key.in_(keys))
                     .values(created_at=NOW - datetime.timedelta(days=days)))


@pytest.fixture
def keyed(app):
    """Seven client keys over two scopes (three of them 40 days old) and two old service keys."""
    a, b = (str(app.create_account(name).account_id) for name in ("alice", "bob"))
    app.adjust_balance("admin", "fund", a, "BTC", "1000", True, "test funding")
    for i in range(6):
        app.transfer("exchange", f"t{i}", a, b, "BTC", "10")
    age(app, "exchange", ["t0", "t2", "t4"], 40)
    with write_transaction(app.engine) as conn:
        for key in ("release:old", "complete:old"):
            conn.execute(insert(t.idempotency_keys).values(scope=SERVICE_SCOPE, key=key, request_hash="x" * 64,
                                                           result="{}", created_at=NOW - datetime.timedelta(days=400)))
    return a, b


@pytest.mark.parametrize("step", [2, 10_000])
def test_old_client_keys_go_young_ones_and_the_services_own_stay(app, keyed, step, monkeypatch):
    monkeypatch.setattr(key_retention, "PROGRESS_EVERY_S", 0)
    before = stored_keys(app)
    heard = []
    done = prune(app.engine, MONTH, step=step, progress=lambda p: heard.append(p.scanned))
    assert (done.scanned, done.deleted) == (7, 3)
    assert heard == ([2, 4, 6] if step == 2 else []), "progress after each full step"
    assert stored_keys(app) == before - {("exchange", "t0"), ("exchange", "t2"), ("exchange", "t4")}
    assert {(SERVICE_SCOPE, "release:old"), (SERVICE_SCOPE, "complete:old"), ("admin", "fund")} <= stored_keys(app)
    assert prune(app.engine, MONTH, step=step).deleted == 0, "a second pass finds nothing more"


def test_a_young_key_still_replays_and_a_pruned_one_is_a_new_request(app, keyed):
    a, b = keyed
    first_kept = app.transfer("exchange", "t1", a, b, "BTC", "10")
    prune(app.engine, MONTH)
    assert app.transfer("exchange", "t1", a, b, "BTC", "10").batch_id == first_kept.batch_id
    _, balances = app.get_balances(a)
    before = next(x.available for x in balances if x.asset == "BTC")
    again = app.transfer("exchange", "t0", a, b, "BTC", "10")
    _, balances = app.get_balances(a)
    assert next(x.available for x in balances if x.asset == "BTC") == before - 10, "past the window, a new transfer"
    assert ("exchange", "t0") in stored_keys(app) and again.batch_id != first_kept.batch_id


@pytest.mark.parametrize("older_than", [datetime.timedelta(hours=23), datetime.timedelta(0), -MONTH])
def test_less_than_a_day_is_refused_with_nothing_deleted(app, keyed, older_than):
    before = stored_keys(app)
    with pytest.raises(ValueError, match="never pruned"):
        prune(app.engine, older_than)
    assert stored_keys(app) == before
