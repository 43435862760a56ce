"""The Bitcoin plugin's block fetcher process, against the real bcoin node."""
from __future__ import annotations

import os
import signal

import pytest

from chains.base import NodeError, NodeUnavailable, Watch
from chains.bitcoin.fetcher import BlockFetcher
from chains.bitcoin.plugin import PIPELINE_CHUNK, BitcoinChain


@pytest.fixture
def plugin(chain):
    p = BitcoinChain({"rpc_url": chain.rpc.url, "network": "regtest", "rpc_retries": 1, "rpc_backoff_s": 0.01})
    yield p
    p.close()


def one_by_one(plugin: BitcoinChain, start: int, count: int) -> list[tuple[str, str]]:
    """(hash, parent) per height, fetched without the fetcher process."""
    return [(b.hash, b.parent_hash) for b in (plugin.fetch_block(h, Watch(set())) for h in range(start, start + count))]


def test_a_large_batch_comes_from_the_fetcher_process_and_equals_blocks_fetched_one_by_one(chain, plugin):
    chain.mine(20)
    start = chain.height() - 19
    blocks = plugin.fetch_blocks(start, 12, Watch(set()))
    assert plugin.fetcher_pid is not None
    # The next batch was requested ahead; asked for, it is the right blocks.
    assert plugin._ahead[:2] == (start + 12, 12)
    more = plugin.fetch_blocks(start + 12, 8, Watch(set()))
    assert [(b.hash, b.parent_hash) for b in blocks + more] == one_by_one(plugin, start, 20)


def test_blocks_fetched_ahead_for_another_start_are_dropped_not_returned(chain, plugin):
    chain.mine(30)
    start = chain.height() - 29
    plugin.fetch_blocks(start, 10, Watch(set()))  # start+10.. requested ahead
    blocks = plugin.fetch_blocks(start + 3, 10, Watch(set()))
    assert [b.hash for b in blocks] == [h for h, _ in one_by_one(plugin, start + 3, 10)]


def test_a_batch_past_the_tip_stops_at_the_tip(chain, plugin):
    chain.mine(6)
    start = chain.height() - 5
    blocks = plugin.fetch_blocks(start, 16, Watch(set()))
    assert [b.hash for b in blocks] == [h for h, _ in one_by_one(plugin, start, 6)]


def test_small_batches_are_fetched_here_without_a_child(chain, plugin):
    chain.mine(PIPELINE_CHUNK)
    blocks = plugin.fetch_blocks(chain.height() - PIPELINE_CHUNK + 1, PIPELINE_CHUNK, Watch(set()))
    assert len(blocks) == PIPELINE_CHUNK
    assert plugin.fetcher_pid is None


def test_a_killed_fetcher_is_node_unavailable_then_replaced(chain, plugin):
    chain.mine(20)
    start = chain.height() - 19
    plugin.fetch_blocks(start, 8, Watch(set()))
    first = plugin.fetcher_pid
    os.kill(first, signal.SIGKILL)
    with pytest.raises(NodeUnavailable, match="fetcher process exited"):
        plugin.fetch_blocks(start + 8, 8, Watch(set()))
    blocks = plugin.fetch_blocks(start + 8, 8, Watch(set()))
    assert plugin.fetcher_pid not in (None, first)
    assert [b.hash for b in blocks] == [h for h, _ in one_by_one(plugin, start + 8, 8)]


def test_an_unreachable_node_is_node_unavailable_after_the_childs_retries(dead_port):
    fetcher = BlockFetcher(dict(url=f"http://u:p@127.0.0.1:{dead_port}", timeout_s=1, retries=2, backoff_s=0.01), 4)
    try:
        with pytest.raises(NodeUnavailable, match="unreachable after 3 attempts"):
            list(fetcher.chunks(fetcher.request(1, 8)))
        assert fetcher.pid is not None, "a node error is an answer: the child stays"
    finally:
        fetcher.close()
    assert fetcher.pid is None


def test_a_refusal_by_the_node_comes_back_as_the_nodes_error(chain):
    host = chain.rpc.url.rsplit("@", 1)[1]
    fetcher = BlockFetcher(dict(url=f"http://custody:wrong-key@{host}", retries=0), 4)
    try:
        with pytest.raises(NodeError) as refused:
            list(fetcher.chunks(fetcher.request(1, 8)))
        assert not isinstance(refused.value, NodeUnavailable)
    finally:
        fetcher.close()


def test_a_block_gone_with_a_reorg_is_block_not_found_on_bcoin(chain, plugin):
    """bcoin drops a reorged-away block and says "Block not found" with code -1, not Core's -5:
    the scanner's re-read of the tip (the race between getblockhash and getblock) did not catch
    it, and the run failed with a traceback and a back-off (found by the chain plugin review)."""
    from chains.base import BlockNotFound
    from chains.bitcoin.fetcher import raw_blocks

    chain.mine(2)
    height = chain.height()
    gone = plugin.block_hash(height)
    chain.reorg(height, 2)
    with pytest.raises(BlockNotFound):
        raw_blocks(plugin.rpc, [gone])
    with pytest.raises(BlockNotFound):
        plugin.block_hash(chain.height() + 1)
