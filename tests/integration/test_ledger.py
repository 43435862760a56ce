"""The ledger through its use cases, on SQLite and PostgreSQL."""
import pytest
from sqlalchemy import func, select

from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.errors import FailedPrecondition, IdempotencyConflict, InsufficientFunds, NotFound
from custody.ledger.commands import Command, HoldCreate, HoldPost, HoldVoid
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import EQUITY, FEES_REVENUE, Posting, user_available
from custody.money import MAX_AMOUNT


def balances(app, account):
    _, rows = app.get_balances(str(account))
    return {b.asset: (b.available, b.held) for b in rows}


def counts(app):
    with app.engine.connect() as conn:
        return tuple(conn.execute(select(func.count()).select_from(table)).scalar_one()
                     for table in (t.ledger_batches, t.ledger_transfers, t.events, t.ledger_holds, t.idempotency_keys))


@pytest.fixture
def users(app):
    a = app.create_account("alice").account_id
    b = app.create_account("bob").account_id
    app.adjust_balance("admin", "fund-a", str(a), "BTC", "1000", True, "test funding")
    return a, b


def test_transfer_moves_funds_and_emits_one_event(app, users):
    a, b = users
    result = app.transfer("exchange", "t1", str(a), str(b), "BTC", "300", "rent")
    assert balances(app, a)["BTC"] == (700, 0)
    assert balances(app, b)["BTC"] == (300, 0)
    events = app.events_after(0)
    assert [e.type for e in events] == ["ledger.adjustment", "ledger.transfer"]
    assert events[-1].cursor == result.event_cursor
    assert result.batch_id in events[-1].payload


def test_balance_of_two_to_the_256_minus_one_is_exact(app):
    a = app.create_account("whale-a").account_id
    b = app.create_account("whale-b").account_id
    app.adjust_balance("admin", "max-a", str(a), "ETH", str(MAX_AMOUNT), True, "exactness")
    app.adjust_balance("admin", "max-b", str(b), "ETH", str(MAX_AMOUNT - 1), True, "exactness")
    app.transfer("exchange", "move", str(b), str(a), "ETH", str(MAX_AMOUNT - 2), "")
    assert balances(app, a)["ETH"] == (2 * MAX_AMOUNT - 2, 0)  # above 2^256-1: sums stay exact too
    assert balances(app, b)["ETH"] == (1, 0)
    with app.engine.connect() as conn:
        equity = conn.execute(select(t.ledger_accounts.c.debits)
                              .where(t.ledger_accounts.c.code == EQUITY, t.ledger_accounts.c.asset == "ETH")).scalar_one()
    assert equity == 2 * MAX_AMOUNT - 1


def test_same_key_same_request_returns_first_result_and_changes_nothing(app, users):
    a, b = users
    first = app.transfer("exchange", "k", str(a), str(b), "BTC", "10", "")
    before = counts(app)
    again = app.transfer("exchange", "k", str(a), str(b), "BTC", "10", "")
    assert (again.batch_id, again.event_cursor) == (first.batch_id, first.event_cursor)
    assert counts(app) == before
    assert balances(app, b)["BTC"] == (10, 0)


def test_same_key_different_request_is_a_conflict_and_changes_nothing(app, users):
    a, b = users
    app.transfer("exchange", "k", str(a), str(b), "BTC", "10", "")
    before = counts(app)
    with pytest.raises(IdempotencyConflict):
        app.transfer("exchange", "k", str(a), str(b), "BTC", "11", "")
    assert counts(app) == before


def test_keys_are_scoped_to_the_client(app, users):
    a, b = users
    one = app.transfer("exchange", "k", str(a), str(b), "BTC", "10", "")
    two = app.transfer("other-service", "k", str(a), str(b), "BTC", "10", "")
    assert one.batch_id != two.batch_id


def test_same_key_twice_in_one_group(app, users):
    a, b = users
    futures = [app.submit_transfer("exchange", "dup", str(a), str(b), "BTC", "5", "") for _ in range(20)]
    results = [f.result() for f in futures]
    assert len({r.batch_id for r in results}) == 1
    assert balances(app, b)["BTC"] == (5, 0)


def test_insufficient_funds_changes_nothing(app, users):
    a, b = users
    before = counts(app)
    with pytest.raises(InsufficientFunds):
        app.transfer("exchange", "big", str(a), str(b), "BTC", "1001", "")
    assert counts(app) == before
    assert balances(app, a)["BTC"] == (1000, 0)


def test_unknown_target_account(app, users):
    a, _ = users
    with pytest.raises(NotFound):
        app.transfer("exchange", "t", str(a), "999999", "BTC", "1", "")


def test_one_failing_command_does_not_sink_its_group(app, users):
    a, b = users
    cmds = [
        Command(kind="transfer", actor="t", postings=(Posting("BTC", user_available(a), user_available(b), 600),)),
        Command(kind="transfer", actor="t", postings=(Posting("BTC", user_available(a), user_available(b), 600),)),
        Command(kind="transfer", actor="t", postings=(Posting("BTC", user_available(b), user_available(a), 100),)),
    ]
    with write_transaction(app.engine) as conn:
        results = apply_commands(conn, cmds, AccountIds())
    assert isinstance(results[1], InsufficientFunds)
    assert [r.event_cursor for r in (results[0], results[2])] == [2, 3]  # no gap where the failed one was
    assert balances(app, a)["BTC"] == (500, 0)
    assert balances(app, b)["BTC"] == (500, 0)


def test_groups_touching_more_accounts_than_the_writer_keeps_ids_for(app):
    """AccountIds forgets the oldest ids past its bound; forgotten ones are looked up again, never created twice."""
    accounts = [app.create_account(f"many-{i}").account_id for i in range(12)]
    ids = AccountIds(max_committed=8)
    for amount in (1, 2, 3):
        commands = [Command(kind="transfer", actor="t", postings=(Posting("BTC", EQUITY, user_available(a), amount),))
                    for a in accounts]
        with ids.write_transaction(app.engine) as conn:
            results = apply_commands(conn, commands, ids)
        assert [type(r).__name__ for r in results] == ["BatchResult"] * len(accounts)
        assert ids.committed_count() <= 8
    assert all(balances(app, a)["BTC"] == (6, 0) for a in accounts)
    with app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.ledger_accounts)
                            .where(t.ledger_accounts.c.asset == "BTC")).scalar_one() == 12 + 1  # and equity


def test_ids_forgotten_by_another_threads_commit_during_a_group_are_not_lost(app, monkeypatch):
    """A group looks up the ids it does not know; meanwhile another thread's commit makes the
    shared AccountIds forget the ones it did know: the group still finds every account."""
    import threading

    from custody.ledger import engine

    known = [app.create_account(f"known-{i}").account_id for i in range(3)]
    new = app.create_account("new").account_id
    ids = AccountIds(max_committed=4)
    with ids.write_transaction(app.engine) as conn:  # equity and the three known accounts get ids
        apply_commands(conn, [Command(kind="transfer", actor="t", postings=(
            Posting("BTC", EQUITY, user_available(a), 5),)) for a in known], ids)
    assert all(ids.get((user_available(a), "BTC")) for a in known)

    def other_thread_commits():
        for i in range(8):
            ids.add_pending((f"elsewhere:{i}", "BTC"), 10_000 + i)
        ids.commit()

    find_or_create = engine._Group._find_or_create

    def find_then_forget(self, keys):
        find_or_create(self, keys)
        thread = threading.Thread(target=other_thread_commits)
        thread.start()
        thread.join()

    monkeypatch.setattr(engine._Group, "_find_or_create", find_then_forget)
    with ids.write_transaction(app.engine) as conn:
        results = apply_commands(conn, [Command(kind="transfer", actor="t", postings=(
            Posting("BTC", user_available(a), user_available(new), 5),)) for a in known], ids)
    assert all(ids.get((user_available(a), "BTC")) is None for a in known)  # forgotten meanwhile
    assert [type(r).__name__ for r in results] == ["BatchResult"] * 3
    assert balances(app, new)["BTC"] == (15, 0)
    assert all(balances(app, a)["BTC"] == (0, 0) for a in known)


def hold(app, account, amount, asset="BTC"):
    return app.writer.execute(Command(
        kind="hold", actor="t", hold_creates=(HoldCreate(account, asset, amount, "order-1"),))).hold_ids[0]


def test_hold_then_partial_posts_then_close_returns_the_rest(app, users):
    a, b = users
    h = hold(app, a, 400)
    assert balances(app, a)["BTC"] == (600, 400)
    app.writer.execute(Command(kind="fill", actor="t",
                               hold_posts=(HoldPost(h, ((user_available(b), 100), (FEES_REVENUE, 1))),)))
    assert balances(app, a)["BTC"] == (600, 299)
    app.writer.execute(Command(kind="fill", actor="t", hold_posts=(HoldPost(h, ((user_available(b), 50),), close=True),)))
    assert balances(app, a)["BTC"] == (849, 0)
    assert balances(app, b)["BTC"] == (150, 0)
    with pytest.raises(FailedPrecondition, match="closed"):
        app.writer.execute(Command(kind="void", actor="t", hold_voids=(HoldVoid(h),)))


def test_void_releases_everything_once(app, users):
    a, _ = users
    h = hold(app, a, 250)
    app.writer.execute(Command(kind="void", actor="t", hold_voids=(HoldVoid(h),)))
    assert balances(app, a)["BTC"] == (1000, 0)
    with pytest.raises(FailedPrecondition):
        app.writer.execute(Command(kind="void", actor="t", hold_voids=(HoldVoid(h),)))
    assert balances(app, a)["BTC"] == (1000, 0)


def test_held_funds_cannot_be_spent(app, users):
    a, b = users
    hold(app, a, 900)
    with pytest.raises(InsufficientFunds):
        app.transfer("exchange", "t", str(a), str(b), "BTC", "101", "")
    with pytest.raises(InsufficientFunds):
        hold(app, a, 101)


def test_posting_more_than_the_hold_fails_and_changes_nothing(app, users):
    a, b = users
    h = hold(app, a, 100)
    before = counts(app)
    with pytest.raises(FailedPrecondition, match="has 100 left"):
        app.writer.execute(Command(kind="fill", actor="t", hold_posts=(HoldPost(h, ((user_available(b), 101),)),)))
    assert counts(app) == before
    assert balances(app, a)["BTC"] == (900, 100)


def test_unknown_hold(app, users):
    with pytest.raises(NotFound):
        app.writer.execute(Command(kind="void", actor="t", hold_voids=(HoldVoid("nope"),)))


def test_frozen_account_cannot_pay(app, users):
    a, b = users
    with app.engine.begin() as conn:
        conn.execute(t.accounts.update().where(t.accounts.c.id == a).values(frozen=True))
    with pytest.raises(FailedPrecondition, match="frozen"):
        app.transfer("exchange", "t", str(a), str(b), "BTC", "1", "")


def test_a_key_whose_first_request_in_a_group_failed_is_still_unused(app):
    """One key three times in one group (a client's retries racing each other): the first fails, so
    the key is unused (docs/api.md) and the second runs; the third is the second's replay. It was
    answered ALREADY_EXISTS, as if the failed request had taken the key."""
    from custody.ledger.commands import BatchResult

    a, b = (app.create_account(name).account_id for name in ("a", "b"))
    app.adjust_balance("admin", "fund", str(b), "BTC", "100", True, "funding")
    empty = app._transfer_command("exchange", "K", str(a), str(b), "BTC", "5")  # a has nothing
    ok = app._transfer_command("exchange", "K", str(b), str(a), "BTC", "5")
    other = app._transfer_command("exchange", "K", str(b), str(a), "BTC", "6")
    with write_transaction(app.engine) as conn:
        failed, first, again, conflict = apply_commands(conn, [empty, ok, ok, other], AccountIds())
    assert isinstance(failed, InsufficientFunds)
    assert isinstance(first, BatchResult) and not first.replayed
    assert isinstance(again, BatchResult) and again.replayed and again.batch_id == first.batch_id
    assert isinstance(conflict, IdempotencyConflict)
    assert {x.asset: x.available for x in app.get_balances(str(a))[1]}["BTC"] == 5  # applied once
    assert app.transfer("exchange", "K", str(b), str(a), "BTC", "5").replayed
    empty = app._transfer_command("exchange", "K2", str(a), str(b), "BTC", "500")
    with write_transaction(app.engine) as conn:  # two failures: each answers for itself
        assert [type(r) for r in apply_commands(conn, [empty, empty], AccountIds())] == [InsufficientFunds] * 2
