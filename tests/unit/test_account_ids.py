"""AccountIds shared by threads that each run their own transaction."""
import threading

from custody.ledger.engine import AccountIds


def _in_thread(fn) -> None:
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join()


def test_a_commit_in_one_thread_does_not_publish_ids_of_another_threads_open_transaction():
    """Thread A creates an account id in a transaction; thread B commits its own; A rolls back: the id is gone."""
    ids = AccountIds()
    key = ("user:7:available", "BTC")
    ids.add_pending(key, 41)  # this thread's transaction, not committed yet
    _in_thread(ids.commit)  # another thread's transaction commits meanwhile
    ids.rollback()  # ours rolls back: the row with id 41 never existed
    assert ids.get(key) is None


def test_pending_ids_are_seen_by_their_own_thread_only_until_commit_publishes_them():
    ids = AccountIds()
    key = ("fees:revenue", "ETH")
    ids.add_pending(key, 5)
    seen_elsewhere = []
    _in_thread(lambda: seen_elsewhere.append(ids.get(key)))
    assert ids.get(key) == 5 and seen_elsewhere == [None]
    ids.commit()
    _in_thread(lambda: seen_elsewhere.append(ids.get(key)))
    assert seen_elsewhere == [None, 5]


def test_past_its_bound_the_oldest_ids_are_forgotten_first():
    ids = AccountIds(max_committed=8)
    for i in range(10):
        ids.add_pending((f"user:{i}:available", "BTC"), i)
        ids.commit()
    assert ids.committed_count() <= 8
    assert ids.get(("user:9:available", "BTC")) == 9
    assert ids.get(("user:0:available", "BTC")) is None


def test_threads_committing_past_the_bound_while_others_read():
    ids = AccountIds(max_committed=100)
    errors = []

    def committer(t):
        try:
            for i in range(3000):
                ids.add_pending((f"user:{t}-{i}:available", "BTC"), i)
                ids.commit()
        except Exception as exc:  # noqa: BLE001 - any error fails the test below
            errors.append(exc)

    def reader():
        try:
            for i in range(3000):
                ids.get_all([(f"user:0-{i}:available", "BTC"), (f"user:1-{i}:available", "BTC")])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=committer, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ids.committed_count() <= 100
    # Any thread's last commit may have been forgotten since (others went on committing);
    # what is still known must be right, and the newest commit is always kept.
    for t in range(4):
        for i in range(3000):
            assert ids.get((f"user:{t}-{i}:available", "BTC")) in (None, i)
    ids.add_pending(("user:last:available", "BTC"), 7)
    ids.commit()
    assert ids.get(("user:last:available", "BTC")) == 7
