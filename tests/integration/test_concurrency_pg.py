"""Concurrent transfers on PostgreSQL through two server instances sharing one database."""
import collections
import json
import random
import threading

import grpc

from custody.app import Custody
from custody.v1 import custody_pb2 as pb
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread, bearer

ACCOUNTS = 50
CLIENTS = 8
TRANSFERS_PER_CLIENT = 1000
FUNDING = 20_000


def test_eight_clients_thousand_transfers_each_equal_a_sequential_replay(pg_url):
    # Two core instances on one database: one with its ledger writer in a
    # thread, one with it in a child process (what `custody serve` runs).
    apps = [Custody(make_config(pg_url)), Custody(make_config(pg_url, ledger_writer="process"))]
    servers = [ServerThread(app.config, app) for app in apps]
    try:
        ids = [apps[0].create_account(f"user-{i}").account_id for i in range(ACCOUNTS)]
        for i in ids:
            apps[0].adjust_balance("admin", f"fund-{i}", str(i), "BTC", str(FUNDING), True, "test funding")
        first_transfer_cursor = apps[0].events_after(0, limit=10_000)[-1].cursor + 1

        accepted: list[str] = []
        rejected = collections.Counter()
        lock = threading.Lock()

        def client(n: int) -> None:
            rng = random.Random(n)
            c = Clients(servers[n % 2].address)
            mine, refused = [], collections.Counter()
            for k in range(TRANSFERS_PER_CLIENT):
                a, b = rng.sample(ids, 2)
                try:
                    reply = c.custody.Transfer(pb.TransferRequest(
                        idempotency_key=f"c{n}-{k}", from_account_id=str(a), to_account_id=str(b),
                        asset="BTC", amount=str(rng.randint(1, 3_000))), metadata=bearer("exchange"), timeout=60)
                    mine.append(reply.transfer_id)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
                    refused[exc.code()] += 1
            c.close()
            with lock:
                accepted.extend(mine)
                rejected.update(refused)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

        assert len(accepted) + sum(rejected.values()) == CLIENTS * TRANSFERS_PER_CLIENT
        assert rejected, "the amounts were chosen so that some transfers must be refused"
        assert len(set(accepted)) == len(accepted)

        # Replay the journal's transfers one by one in cursor order.
        journal = [e for e in apps[0].events_after(first_transfer_cursor - 1, limit=100_000)]
        assert [e.cursor for e in journal] == list(range(first_transfer_cursor, first_transfer_cursor + len(journal)))
        replay = {i: FUNDING for i in ids}
        batch_ids = []
        for event in journal:
            payload = json.loads(event.payload)
            batch_ids.append(payload["batch_id"])
            (posting,) = payload["postings"]
            src = int(posting["debit"].split(":")[1])
            dst = int(posting["credit"].split(":")[1])
            replay[src] -= int(posting["amount"])
            replay[dst] += int(posting["amount"])
            assert replay[src] >= 0, f"replay went negative at cursor {event.cursor}"
        assert sorted(batch_ids) == sorted(accepted)

        for i in ids:
            _, (btc, *_) = apps[1].get_balances(str(i))
            assert (btc.available, btc.held) == (replay[i], 0)
        assert sum(replay.values()) == FUNDING * ACCOUNTS
    finally:
        for s in servers:
            s.stop()
        for app in apps:
            app.close()
