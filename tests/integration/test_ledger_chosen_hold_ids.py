"""Holds under a caller-chosen id, posted and voided by later commands of the same group.

The matching engine settles a whole group of orders in one transaction: an
order's hold and the fills that post to it are commands of one apply_commands call."""
import pytest
from sqlalchemy import select

from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.errors import InvalidArgument, NotFound
from custody.ledger.commands import BatchResult, Command, HoldCreate, HoldPost, HoldVoid
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import FEES_REVENUE, Posting, new_id, user_available


@pytest.fixture
def users(app):
    a = app.create_account("alice").account_id
    b = app.create_account("bob").account_id
    app.adjust_balance("admin", "fund-a", str(a), "BTC", "1000", True, "test funding")
    return a, b


def run(app, commands):
    ids = AccountIds()
    with write_transaction(app.engine) as conn:
        results = apply_commands(conn, commands, ids)
    ids.commit()
    return results


def balance(app, account):
    _, rows = app.get_balances(str(account))
    return next((b.available, b.held) for b in rows if b.asset == "BTC")


def hold_row(app, hold_id):
    with app.engine.connect() as conn:
        return conn.execute(select(t.ledger_holds).where(t.ledger_holds.c.id == hold_id)).first()


def test_create_post_and_close_in_one_group(app, users):
    a, b = users
    hold = new_id()
    results = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 600, "order-1", hold_id=hold),)),
        Command(kind="trade", actor="t", hold_posts=(HoldPost(hold, ((user_available(b), 200), (FEES_REVENUE, 1))),)),
        Command(kind="trade", actor="t", hold_posts=(HoldPost(hold, ((user_available(b), 100),), close=True),)),
    ])
    assert all(isinstance(r, BatchResult) for r in results), results
    assert results[0].hold_ids == (hold,)
    assert balance(app, a) == (1000 - 301, 0)
    assert balance(app, b) == (300, 0)
    row = hold_row(app, hold)
    assert (row.amount, row.remaining, row.status, row.reference) == (600, 0, "CLOSED", "order-1")


def test_void_in_the_same_group_returns_everything(app, users):
    a, _ = users
    hold = new_id()
    results = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 999, hold_id=hold),)),
        Command(kind="order_cancel", actor="t", hold_voids=(HoldVoid(hold),)),
    ])
    assert all(isinstance(r, BatchResult) for r in results), results
    assert balance(app, a) == (1000, 0)
    assert hold_row(app, hold).status == "CLOSED"


def test_a_failed_create_leaves_no_hold_for_later_commands(app, users):
    a, b = users
    hold = new_id()
    results = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 5000, hold_id=hold),)),  # too much
        Command(kind="trade", actor="t", hold_posts=(HoldPost(hold, ((user_available(b), 1),)),)),
    ])
    assert "insufficient" in str(results[0])
    assert isinstance(results[1], NotFound)
    assert hold_row(app, hold) is None
    assert balance(app, a) == (1000, 0)


def test_a_taken_hold_id_is_refused(app, users):
    a, _ = users
    hold = new_id()
    first = run(app, [Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 10, hold_id=hold),))])
    assert isinstance(first[0], BatchResult)
    again = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 10, hold_id=hold),)),
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 10, hold_id=hold),)),
    ])
    assert all(isinstance(r, InvalidArgument) for r in again), again
    twice = new_id()
    in_group = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 10, hold_id=twice),)),
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 10, hold_id=twice),)),
    ])
    assert isinstance(in_group[0], BatchResult) and isinstance(in_group[1], InvalidArgument)
    assert balance(app, a) == (980, 20)


@pytest.mark.parametrize("first_fails", [False, True])
def test_one_id_created_twice_in_a_group_is_the_first_creator_that_succeeds(app, users, first_fails):
    """Whichever creator gets the id, the later posts and the rest of the group go through."""
    a, b = users
    app.adjust_balance("admin", "fund-b", str(b), "ETH", "1000", True, "test funding")
    hold = new_id()
    results = run(app, [
        Command(kind="order", actor="t", hold_creates=(HoldCreate(a, "BTC", 5000 if first_fails else 10, hold_id=hold),)),
        Command(kind="order", actor="t", hold_creates=(HoldCreate(b, "ETH", 10, hold_id=hold),)),
        Command(kind="fill", actor="t", hold_posts=(HoldPost(hold, ((FEES_REVENUE, 4),)),)),
        Command(kind="transfer", actor="t", postings=(Posting("BTC", user_available(a), user_available(b), 1),)),
    ])
    assert [type(r).__name__ for r in results] == (
        ["InsufficientFunds", "BatchResult", "BatchResult", "BatchResult"] if first_fails
        else ["BatchResult", "InvalidArgument", "BatchResult", "BatchResult"])
    row = hold_row(app, hold)
    assert (row.account_id, row.asset, row.remaining) == ((b, "ETH", 6) if first_fails else (a, "BTC", 6))
