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
