"""BackofficeService.SetAccountFrozen: staff freeze and unfreeze accounts, with a reason, through the real server."""
import json

import grpc
import pytest

from custody.ledger.commands import Command
from custody.ledger.model import Posting, user_available
from custody.v1 import backoffice_pb2 as bo
from custody.v1 import custody_pb2 as pb
from tests.integration.test_grpc_api import adjust, balances, create, event_count
from tests.support.servers import bearer


def set_frozen(clients, account_id, frozen, reason="suspicious activity reported", who="alice-admin"):
    return clients.backoffice.SetAccountFrozen(bo.SetAccountFrozenRequest(
        account_id=account_id, frozen=frozen, reason=reason), metadata=bearer(who))


def transfer(clients, source, target, amount, key):
    return clients.custody.Transfer(pb.TransferRequest(
        idempotency_key=key, from_account_id=source, to_account_id=target, asset="BTC", amount=amount),
        metadata=bearer("exchange"))


def test_a_frozen_account_can_receive_but_not_send_until_unfrozen(app, clients):
    ann, ben = create(clients, "ann").account_id, create(clients, "ben").account_id
    adjust(clients, ann, "100", "fund-ann")
    adjust(clients, ben, "100", "fund-ben")

    frozen = set_frozen(clients, ann, True)
    assert (frozen.account_id, frozen.frozen, frozen.changed) == (ann, True, True) and frozen.event_cursor
    (event,) = app.events_after(frozen.event_cursor - 1, limit=1)
    assert event.type == "account.frozen"
    assert json.loads(event.payload) == {"account_id": int(ann), "actor": "alice-admin",
                                         "reason": "suspicious activity reported"}
    assert create(clients, "ann").frozen, "CreateAccount reports the account frozen"
    with pytest.raises(grpc.RpcError) as err:
        transfer(clients, ann, ben, "10", "out-1")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "frozen" in err.value.details()
    transfer(clients, ben, ann, "10", "in-1")  # incoming transfers still arrive
    assert balances(clients, ann)["BTC"][0] == "110"

    events = event_count(app)
    again = set_frozen(clients, ann, True, reason="asked twice")
    assert (again.frozen, again.changed, again.event_cursor) == (True, False, 0)
    assert event_count(app) == events, "the same state again records nothing"

    thawed = set_frozen(clients, ann, False, reason="identity checked by compliance")
    assert (thawed.frozen, thawed.changed) == (False, True)
    (event,) = app.events_after(thawed.event_cursor - 1, limit=1)
    assert event.type == "account.unfrozen" and json.loads(event.payload)["reason"] == "identity checked by compliance"
    transfer(clients, ann, ben, "10", "out-2")
    assert balances(clients, ann)["BTC"][0] == "100"


@pytest.mark.parametrize("account, reason, who, code, detail", [
    (None, "", "alice-admin", grpc.StatusCode.INVALID_ARGUMENT, "reason is required"),
    (None, "ab", "alice-admin", grpc.StatusCode.INVALID_ARGUMENT, "reason is required"),
    (None, "frozen\x1b[2K", "alice-admin", grpc.StatusCode.INVALID_ARGUMENT, "control characters"),
    ("999", "a good reason", "alice-admin", grpc.StatusCode.NOT_FOUND, "does not exist"),
    ("x", "a good reason", "alice-admin", grpc.StatusCode.INVALID_ARGUMENT, "account_id"),
    (None, "a good reason", "reviewer", grpc.StatusCode.PERMISSION_DENIED, ""),
    (None, "a good reason", "exchange", grpc.StatusCode.PERMISSION_DENIED, ""),
])
def test_bad_freeze_requests_change_nothing(app, clients, account, reason, who, code, detail):
    ann = create(clients, "ann").account_id
    events = event_count(app)
    with pytest.raises(grpc.RpcError) as err:
        set_frozen(clients, account or ann, True, reason=reason, who=who)
    assert err.value.code() == code and detail in err.value.details()
    assert not create(clients, "ann").frozen and event_count(app) == events


def test_an_account_with_a_negative_balance_stays_frozen_until_settled(app, clients):
    """A deposit reversed after its coins were spent leaves the balance negative; unfrozen, the
    account would break the ledger's invariants, so unfreezing waits until staff settle it."""
    ann = create(clients, "ann").account_id
    adjust(clients, ann, "100", "fund-ann")
    set_frozen(clients, ann, True, reason="deposit reversed by a reorg")
    # As the scanner books a reorged deposit (docs/deposits.md), without a deposit or a chain: against
    # suspense, since a wallet account moved with nothing on chain behind it fails invariant 4.
    app.writer.submit(Command(
        kind="correction", actor="scanner", flagged=True, reference="reorg-test",
        postings=(Posting("BTC", user_available(int(ann)), "suspense", 250),))).result()
    assert balances(clients, ann)["BTC"][0] == "-150"

    events = event_count(app)
    with pytest.raises(grpc.RpcError) as err:
        set_frozen(clients, ann, False, reason="looked at it")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "negative BTC balance" in err.value.details()
    assert create(clients, "ann").frozen and event_count(app) == events

    adjust(clients, ann, "150", "settle", reason="loss written off by finance")
    assert set_frozen(clients, ann, False, reason="settled by finance").changed


def test_no_debit_is_ordered_after_the_freeze_that_stopped_it(pg_url):
    """PostgreSQL: the writer read `frozen` unlocked when a group began and took the event cursors
    at its end. A freeze committing in between came first in the journal, and staff were told
    "frozen", yet the group's debit from that account committed after it (found by a review
    helper). Big groups with one debit from the account, a freeze while they are applied; the
    debit must either come before the freeze or be refused."""
    import time

    from custody.app import Custody
    from custody.errors import FailedPrecondition
    from tests.support.config import make_config

    app = Custody(make_config(pg_url, max_group_commit=5000))
    try:
        victim, sink = app.create_account("victim").account_id, app.create_account("sink").account_id
        others = [app.create_account(f"other-{i}").account_id for i in range(20)]
        for account in (victim, *others):
            app.adjust_balance("alice-admin", f"fund-{account}", str(account), "BTC", str(10**12), True, "fund")
        orders = []
        for attempt in range(30):
            crowd = [app.writer.submit(Command(
                kind="transfer", actor="exchange",
                postings=(Posting("BTC", user_available(others[i % 20]), user_available(others[(i + 1) % 20]), 1),),
                not_frozen=(others[i % 20],), must_exist=(others[(i + 1) % 20],))) for i in range(3000)]
            debit = app.writer.submit(Command(
                kind="transfer", actor="exchange", postings=(Posting("BTC", user_available(victim),
                                                                     user_available(sink), 1),),
                not_frozen=(victim,), must_exist=(sink,)))
            time.sleep(0.004 + 0.001 * (attempt % 10))  # the freeze lands while the group is applied
            _, changed, freeze_cursor = app.set_frozen("alice-admin", str(victim), True, "incident")
            assert changed
            for future in crowd:
                future.result()
            try:
                orders.append((debit.result().event_cursor, freeze_cursor))
            except FailedPrecondition as refused:
                assert "frozen" in str(refused)
                orders.append((None, freeze_cursor))
            app.set_frozen("alice-admin", str(victim), False, "next attempt")
        after = [(cursor, freeze) for cursor, freeze in orders if cursor is not None and cursor > freeze]
        assert not after, f"debits committed after the freeze that came first: {after}"
    finally:
        app.close()


def test_a_freeze_racing_an_order_of_the_same_account_does_not_deadlock(pg_url, monkeypatch):
    """PostgreSQL: the freeze locked the account row, then waited for the event sequence row; a
    matching group holding that row inserted the order's hold, whose foreign key needs a key-share
    lock on the account row. Deadlock: PostgreSQL aborted one side, usually the freeze."""
    import threading
    import time

    from custody.accounts.service import set_frozen
    from custody.app import Custody
    from custody.ledger import engine as ledger_mod
    from tests.support.config import make_config
    from tests.support.matching import ETH, accounts, place

    app = Custody(make_config(pg_url))
    try:
        (x,) = accounts(app, 1, btc=10**8, eth=10 * ETH)
        warm = place(app, x, "BUY", 50_000, ETH).order  # its held BTC ledger account exists
        app.matching.cancel("exchange", "warm", warm.order_id)
        real_insert, outcome, started = ledger_mod.insert_rows, {}, []

        def freeze():
            try:
                outcome["freeze"] = set_frozen(app.engine, x, True, "alice-admin", "incident")[1]
            except Exception as exc:
                outcome["freeze"] = f"{type(exc).__name__}: {exc}"

        def insert_rows(conn, table, columns, rows):
            if table.name == "ledger_holds" and rows and not started:
                started.append(threading.Thread(target=freeze))
                started[0].start()
                time.sleep(0.5)  # the freeze takes the account row, then waits for the sequence row
            return real_insert(conn, table, columns, rows)

        monkeypatch.setattr(ledger_mod, "insert_rows", insert_rows)
        placed = place(app, x, "BUY", 100_000, ETH)
        started[0].join()
        assert outcome["freeze"] is True, outcome
        assert placed.order.status == "OPEN"
    finally:
        app.close()
