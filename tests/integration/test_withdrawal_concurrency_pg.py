"""200 concurrent withdrawal requests from 20 accounts on PostgreSQL, through two gRPC
server instances sharing one database: no over-spend, holds exact, idempotent replays."""
from __future__ import annotations

import collections
import random
import threading

import grpc

from custody.app import Custody
from custody.v1 import custody_pb2 as S
from tests.support.servers import Clients, ServerThread
from tests.support.withdrawals import PAYEE, WITHDRAWAL_FEE, fund, withdrawal_config

ACCOUNTS = 20
THREADS = 20
PER_THREAD = 10
FUNDING = 60_000_000  # each account's requests add up to about twice this: many must be refused


def test_two_hundred_concurrent_requests_never_overspend(pg_url):
    config = withdrawal_config(pg_url)
    apps = [Custody(config), Custody(config)]
    servers = [ServerThread(config, app) for app in apps]
    try:
        ids = [str(apps[0].create_account(f"user-{i}").account_id) for i in range(ACCOUNTS)]
        for i in ids:
            fund(apps[0], i, FUNDING)
        rng = random.Random(5)
        # Thread n asks for accounts n, n+1, ... : every account is hit by 10 threads at once.
        plan = [[(ids[(n + k) % ACCOUNTS], f"t{n}-{k}", rng.randint(5_000_000, 20_000_000))
                 for k in range(PER_THREAD)] for n in range(THREADS)]
        accepted: dict[str, tuple[str, int, str]] = {}
        refused: collections.Counter = collections.Counter()
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        errors: list[BaseException] = []

        def send(n: int, replay: bool = False) -> None:
            try:
                _send(n, replay)
            except BaseException as exc:  # an assertion in a thread must fail the test
                errors.append(exc)

        def _send(n: int, replay: bool) -> None:
            c = Clients(servers[n % 2].address)
            start.wait()
            for account, key, amount in plan[n]:
                try:
                    reply = c.custody.RequestWithdrawal(S.RequestWithdrawalRequest(
                        idempotency_key=key, account_id=account, asset="BTC", to_address=PAYEE,
                        amount=str(amount)), metadata=Clients.md("wallet-service"), timeout=60)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                    assert "insufficient" in exc.details(), exc.details()
                    with lock:
                        refused[account] += 1
                    continue
                with lock:
                    if replay:
                        assert not reply.created and accepted[key][2] == reply.withdrawal.withdrawal_id
                    else:
                        assert reply.created
                        accepted[key] = (account, amount, reply.withdrawal.withdrawal_id)
            c.close()

        def run(replay: bool) -> None:
            threads = [threading.Thread(target=send, args=(n, replay)) for n in range(THREADS)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            assert not errors, errors[0]

        run(False)
        assert len(accepted) + sum(refused.values()) == THREADS * PER_THREAD
        assert sum(refused.values()) > 0 and len(accepted) > ACCOUNTS
        assert len({w for _, _, w in accepted.values()}) == len(accepted)

        def check() -> None:
            for account in ids:
                mine = [(amount, wid) for a, amount, wid in accepted.values() if a == account]
                held = sum(amount + WITHDRAWAL_FEE for amount, _ in mine)
                _, (b, *_) = apps[1].get_balances(account)
                assert (b.available, b.held) == (FUNDING - held, held)  # never below zero: no over-spend
                # A refused request for this account was refused because it did not fit.
                rows, _ = apps[0].withdrawals.list_for_account(account, page_size=1000)
                assert sorted(w["id"] for w, _ in rows) == sorted(wid for _, wid in mine)
                assert all(w["status"] in ("PENDING_REVIEW", "APPROVED") for w, _ in rows)

        check()
        # Replaying every key concurrently returns the same withdrawals and holds nothing more
        # (a refused key may now be refused again or, never, accepted twice).
        refused.clear()
        before = dict(accepted)
        run(True)
        assert accepted == before
        check()
    finally:
        for s in servers:
            s.stop()
        for app in apps:
            app.close()


def test_a_retry_waiting_for_the_first_request_answers_with_its_withdrawal(pg_url):
    """A client's retry (same key) arrives while its first request waits for the account's
    row lock: once the first commits, the retry answers with that withdrawal, not with an
    error from checking its amount against the first's hold (exactly one withdrawal's funds)."""
    import time

    from sqlalchemy import text

    app = Custody(withdrawal_config(pg_url))
    try:
        acct = app.create_account("payer").account_id
        amount = 500_000
        fund(app, acct, amount + WITHDRAWAL_FEE)
        results: dict[str, object] = {}

        def call(name):
            try:
                results[name] = app.withdrawals.request("wallet-service", "same-key", str(acct), "BTC", PAYEE,
                                                        str(amount))
            except Exception as exc:  # noqa: BLE001  (checked below)
                results[name] = exc

        # Another transaction holds the account's row, as a request in flight does.
        with app.engine.connect() as blocker:
            with blocker.begin():
                blocker.execute(text("SELECT id FROM accounts WHERE id = :a FOR UPDATE"), {"a": int(acct)})
                threads = [threading.Thread(target=call, args=(name,)) for name in ("first", "retry")]
                for th in threads:
                    th.start()
                    time.sleep(0.3)  # both are waiting for the row lock
        for th in threads:
            th.join(30)
        (first, created), (again, created_again) = results["first"], results["retry"]
        assert sorted([created, created_again]) == [False, True] and first["id"] == again["id"]
    finally:
        app.close()
