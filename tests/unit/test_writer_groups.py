"""How the ledger writer cuts what is queued into group commits."""
import queue
import time

from custody.ledger.writer import STOP, cut_groups


def test_groups_take_what_is_waiting_keep_order_and_never_exceed_max_group():
    q = queue.SimpleQueue()
    for batch in ([1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13]):
        q.put(batch)
    q.put(STOP)
    groups = list(cut_groups(q, 4))
    assert all(len(g) <= 4 for g in groups)
    assert [x for g in groups for x in g] == list(range(1, 14))
    assert groups[0] == [1, 2, 3, 4]  # what was waiting is merged, up to max_group


def test_a_batch_larger_than_max_group_is_split_and_stop_ends_after_it():
    q = queue.SimpleQueue()
    q.put(list(range(10)))
    q.put(STOP)
    assert list(cut_groups(q, 3)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def _next_within(groups, seconds: float):
    """next(groups) run on a thread; None if it did not return within seconds."""
    import threading

    out = []
    worker = threading.Thread(target=lambda: out.append(next(groups)), daemon=True)
    worker.start()
    worker.join(seconds)
    return out[0] if out else None


def test_while_callers_are_concurrent_a_group_waits_for_more():
    import threading

    q = queue.SimpleQueue()
    groups = cut_groups(q, 100, wait_s=30.0)
    q.put([1, 2])
    assert next(groups) == [1, 2]  # the first group: nothing says callers are concurrent yet
    q.put([3])
    def later():  # one thread, so the three arrive in this order whatever the machine's load
        for delay, commands in ((0.2, [4]), (0.1, [5, 6]), (0.1, list(range(7, 120)))):
            time.sleep(delay)
            q.put(commands)

    threading.Thread(target=later).start()
    # The last group had two commands: this one waits, and ends when full.
    assert _next_within(groups, 10) == list(range(3, 103))


def test_a_lone_caller_never_waits():
    q = queue.SimpleQueue()
    groups = cut_groups(q, 100, wait_s=30.0)
    q.put([1])
    assert next(groups) == [1]
    q.put([2])
    assert _next_within(groups, 10) == [2], "the last group had one command: no wait"
    q.put([3, 4])
    assert _next_within(groups, 10) == [3, 4]
