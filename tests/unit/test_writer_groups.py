"""How the ledger writer cuts what is queued into group commits."""
import queue

from custody.ledger.writer import _STOP, _groups


def test_groups_take_what_is_waiting_keep_order_and_never_exceed_max_group():
    q = queue.SimpleQueue()
    for batch in ([1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11], [12, 13]):
        q.put(batch)
    q.put(_STOP)
    groups = list(_groups(q, 4))
    assert all(len(g) <= 4 for g in groups)
    assert [x for g in groups for x in g] == list(range(1, 14))
    assert groups[0] == [1, 2, 3, 4]  # what was waiting is merged, up to max_group


def test_a_batch_larger_than_max_group_is_split_and_stop_ends_after_it():
    q = queue.SimpleQueue()
    q.put(list(range(10)))
    q.put(_STOP)
    assert list(_groups(q, 3)) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
