"""JournalTail on an in-memory journal (narrow unit tests; the real server's streams are in
tests/integration/test_event_stream.py and test_grpc_streams.py): every follower gets every
item after its cursor once and in order, whether it starts inside the memory window or far
behind it, and whether it wants every item or one market's."""
import asyncio
import dataclasses

import pytest

from custody.events.journal import EventNotifier
from custody.events.tail import JournalTail


@dataclasses.dataclass(frozen=True)
class Item:
    cursor: int
    market: str


class Journal:
    def __init__(self):
        self.items: list[Item] = []
        self.reads = 0
        self.fail: Exception | None = None
        self.waiters: list[asyncio.Event] = []

    def add(self, market="A"):
        self.items.append(Item(len(self.items) + 1, market))
        for event in self.waiters:
            event.set()

    def read_after(self, cursor, limit, market=None):
        self.reads += 1
        if self.fail:
            raise self.fail
        return [i for i in self.items if i.cursor > cursor and market in (None, i.market)][:limit]

    # the notifier's interface
    def subscribe(self):
        event = asyncio.Event()
        self.waiters.append(event)
        return event

    def unsubscribe(self, event):
        self.waiters.remove(event)


async def take(stream, n, timeout=5):
    got = []
    async with asyncio.timeout(timeout):
        async for item in stream:
            got.append(item.cursor)
            if len(got) == n:
                return got
    return got


def test_followers_inside_and_behind_the_window_get_everything_once_in_order():
    async def main():
        journal = Journal()
        for _ in range(30):
            journal.add()
        tail = JournalTail(journal.read_after, journal, poll_s=0.05, page=4, keep=5)
        live = tail.follow(30, head=30)  # starts the reader at the head
        live_task = asyncio.create_task(take(live, 20))
        await asyncio.sleep(0.1)
        for _ in range(20):  # more than the window holds: it slides past where `behind` starts
            journal.add()
            await asyncio.sleep(0.01)
        behind = await take(tail.follow(3, head=len(journal.items)), 47)
        assert behind == list(range(4, 51))
        assert await live_task == list(range(31, 51))

    asyncio.run(main())


def test_a_follower_of_one_market_skips_the_others_without_missing_its_own():
    async def main():
        journal = Journal()
        for n in range(12):
            journal.add("B" if n % 4 else "A")  # A at cursors 1, 5, 9
        tail = JournalTail(journal.read_after, journal, poll_s=0.05, page=2, keep=3)
        stream = tail.follow(0, head=12, wanted=lambda i: i.market == "A",
                             read_wanted=lambda after, limit: journal.read_after(after, limit, "A"))
        task = asyncio.create_task(take(stream, 5))
        await asyncio.sleep(0.1)
        for market in ("B", "A", "B", "B", "A"):  # cursors 13..17: A at 14 and 17
            journal.add(market)
            await asyncio.sleep(0.01)
        assert await task == [1, 5, 9, 14, 17]

    asyncio.run(main())


def test_many_followers_make_one_reader_not_one_each():
    async def main():
        journal = Journal()
        tail = JournalTail(journal.read_after, journal, poll_s=10, page=100)
        tasks = [asyncio.create_task(take(tail.follow(0, head=0), 10)) for _ in range(50)]
        await asyncio.sleep(0.1)
        reads_before = journal.reads
        for _ in range(10):
            journal.add()
            await asyncio.sleep(0.01)
        assert [await t for t in tasks] == [list(range(1, 11))] * 50
        # One read per commit by the reader, at most; each follower alone would make 500.
        assert journal.reads - reads_before <= 10

    asyncio.run(main())


def test_a_failing_journal_ends_every_stream_with_its_error_and_a_new_stream_starts_afresh():
    async def main():
        journal = Journal()
        journal.add()
        tail = JournalTail(journal.read_after, journal, poll_s=0.05, page=10)
        streams = [asyncio.create_task(take(tail.follow(1, head=1), 1)) for _ in range(3)]
        await asyncio.sleep(0.1)
        journal.fail = ConnectionError("database went away")
        journal.add()
        for stream in streams:
            with pytest.raises(ConnectionError):
                await stream
        journal.fail = None
        assert await take(tail.follow(1, head=2), 1) == [2]
        await tail.stop()

    asyncio.run(main())


def test_a_stalled_follower_holds_at_most_a_page_of_items():
    """A stream whose client stops reading waits at a yield, holding the batch it took. It took
    everything from its cursor to the head, the whole window (10,000 items on the server), and
    kept it after the window moved on: 20 stalled streams held 200,000 items (a review measured
    700 MB for one client's 100 streams). Now a page at a time."""
    import gc
    import weakref

    async def main():
        journal = Journal()
        # The window's items are the reader's own objects, not the journal's, so what outlives
        # the window is what a follower holds.
        def read_copies(after, limit):
            return [dataclasses.replace(i) for i in journal.read_after(after, limit)]

        tail = JournalTail(read_copies, journal, poll_s=0.05, page=3, keep=20)
        live = asyncio.create_task(take(tail.follow(0, head=0), 140))
        await asyncio.sleep(0.05)
        for _ in range(20):
            journal.add()
        await asyncio.sleep(0.2)
        stalled = tail.follow(0, head=20)
        assert (await anext(stalled)).cursor == 1
        window = [weakref.ref(i) for i in tail._items]
        assert [ref().cursor for ref in window] == list(range(1, 21))
        for _ in range(120):  # the window moves past all of them
            journal.add()
            await asyncio.sleep(0.001)
        assert await live == list(range(1, 141))
        gc.collect()
        held = [ref().cursor for ref in window if ref() is not None]
        assert held == [1, 2, 3]  # its page; before: all 20
        assert [(await anext(stalled)).cursor for _ in range(139)] == list(range(2, 141))  # and it goes on
        await stalled.aclose()

    asyncio.run(main())


def test_a_waiter_whose_loop_was_closed_is_dropped_not_raised_to_the_committer():
    """notify runs on the ledger writer's thread: a RuntimeError from a closed loop ended it."""
    notifier = EventNotifier()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(_subscribe(notifier))
    loop.close()
    alive = asyncio.new_event_loop()
    woken = alive.run_until_complete(_subscribe(notifier))
    notifier.notify(7)
    notifier.notify(8)
    alive.run_until_complete(asyncio.wait_for(woken.wait(), 5))
    alive.close()
    assert notifier.last_cursor == 8
    assert len(notifier._waiters) == 1


async def _subscribe(notifier):
    return notifier.subscribe()
