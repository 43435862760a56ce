"""Scanning cost against the physical limit (issue 3), self-contained.

    .venv/bin/python -m benchmarks.scanning            # 50 blocks, 1,000,000 watched; writes SCANNING_RESULTS.md
    .venv/bin/python -m benchmarks.scanning --quick    # smoke run: 5 blocks, 100,000 watched; writes nothing

Starts its own bcoin regtest node (the code behind `custody nodes up`) under
var/bench-nodes/, fills N blocks with at least 2,000 outputs each (half to
watched scripts, half to others), then, in the same run and interleaved:
- bare fetch: the same RPC batches the plugin sends (getblockhash, then
  getblock <hash> false for up to 16 blocks), answers decoded from JSON, nothing else;
- scan: the Bitcoin plugin's fetch_blocks with the scanner's watched set
  (a dict of 1,000,000 scriptPubKeys -> address ids) and 100,000 owned
  outpoints: the same RPCs plus hex decoding, parsing and matching.
Also: the parser alone on blocks in memory (outputs/s), and the process's
peak memory with the watched set built. Timings are reported, never asserted.

The machine is shared, so wall times swing with the load. Besides the wall
ratio (medians), the run reports the CPU ratio: CPU seconds used by this
process, the plugin's block fetcher process and the node (from /proc) during
all scan passes over those used during all bare fetches. One scan pass runs
before the timed rounds (it starts the fetcher process). Together they say what the scan costs on top of the
fetch whatever else runs; on an idle machine with a core for the node, the
wall ratio is lower than the CPU ratio (fetching overlaps parsing).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import pathlib
import platform
import resource
import statistics
import sys
import time

from chains.base import Watch
from chains.bitcoin.blocks import parse_block
from chains.bitcoin.plugin import FETCH_BATCH, BitcoinChain
from chains.bitcoin.regtest import RegtestMiner
from chains.bitcoin.rpc import BitcoinRPC
from chains.nodes import Nodes

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = pathlib.Path(__file__).resolve().parent / "SCANNING_RESULTS.md"
OUTPUTS_PER_TX = 520
TXS_PER_BLOCK = 4  # 2,080 outputs + change + coinbase per block
_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of this process (all threads) or of another one."""
    if pid is None:
        return time.process_time()
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(pids: list[int], run) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the other pids) of run()."""
    def total() -> float:
        return cpu_s() + sum(cpu_s(pid) for pid in pids)

    wall, cpu = time.perf_counter(), total()
    run()
    return time.perf_counter() - wall, total() - cpu


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def script(i: int, salt: bytes) -> bytes:
    return b"\x00\x14" + (salt + i.to_bytes(8, "big")).rjust(20, b"\x00")[-20:]


def build_blocks(miner: RegtestMiner, blocks: int) -> tuple[int, int, list[bytes]]:
    """Mines `blocks` blocks of >= 2,000 outputs; returns (first height, last height, watched scripts used)."""
    miner.ensure_ready(spendable=blocks * TXS_PER_BLOCK + 5)
    watched = []
    first = miner.height() + 1
    n = 0
    for b in range(blocks):
        for _ in range(TXS_PER_BLOCK):
            outputs = []
            for k in range(OUTPUTS_PER_TX):
                n += 1
                if k % 2 == 0:
                    s = script(n, b"watched")
                    watched.append(s)
                else:
                    s = script(n, b"other--")
                outputs.append((s, 1_000))
            miner.pay(outputs)
        miner.mine(1)
        if (b + 1) % 10 == 0:
            progress(f"  mined {b + 1}/{blocks} full blocks")
    return first, miner.height(), watched


def bare_fetch(rpc: BitcoinRPC, first: int, last: int) -> int:
    size = 0
    for start in range(first, last + 1, FETCH_BATCH):
        heights = range(start, min(start + FETCH_BATCH, last + 1))
        hashes = rpc.batch([("getblockhash", h) for h in heights])
        raws = rpc.batch([("getblock", h, False) for h in hashes])
        size += sum(len(r) for r in raws)
    return size


def scan(plugin: BitcoinChain, first: int, last: int, watch: Watch) -> tuple[int, int]:
    receipts = outputs = 0
    for start in range(first, last + 1, FETCH_BATCH):
        for block in plugin.fetch_blocks(start, min(FETCH_BATCH, last + 1 - start), watch):
            receipts += len(block.receipts)
            outputs += block.output_count
    return receipts, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run; does not write the results file")
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--watched", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n_blocks = args.blocks or (5 if args.quick else 50)
    n_watched = args.watched or (100_000 if args.quick else 1_000_000)

    baseline_rss = current_rss_mb()
    load_at_start = os.getloadavg()
    nodes = Nodes(ROOT / "var" / "bench-nodes", {"bitcoin": _free_port()})
    progress("starting bcoin regtest (custody nodes up)")
    (status,) = nodes.up(("bitcoin",), fresh=True)
    node_pid = status.pid
    try:
        url = nodes.rpc_url("bitcoin")
        rpc = BitcoinRPC(url, timeout_s=120)
        miner = RegtestMiner(rpc)
        progress(f"filling {n_blocks} blocks with {OUTPUTS_PER_TX * TXS_PER_BLOCK:,} payment outputs each")
        first, last, used = build_blocks(miner, n_blocks)

        progress(f"building the watched set: {n_watched:,} scriptPubKeys (dict, as the scanner keeps it)")
        gc.collect()
        before_watch = current_rss_mb()
        keys: dict[bytes, int] = {s: i for i, s in enumerate(used)}
        i = len(keys)
        while len(keys) < n_watched:
            keys[script(i, b"filler-")] = i
            i += 1
        outpoints = {(os.urandom(32).hex(), k % 4) for k in range(100_000)}
        gc.collect()
        gc.freeze()  # as the scanner does after loading a large watched set
        watch_mb = current_rss_mb() - before_watch
        # Same blocks, two mixes: half of each block's outputs are ours (the
        # worst case: a Receipt per match), or one in ten (the other half's
        # "watched" scripts left out of the set, so they count as foreign).
        sparse = dict(keys)
        for n_used, s in enumerate(used):
            if n_used % 5:
                del sparse[s]
        while len(sparse) < n_watched:
            sparse[script(i, b"filler-")] = i
            i += 1
        mixes = {"50% ours": (Watch(keys, outpoints), len(used)),
                 "10% ours": (Watch(sparse, outpoints), len(used[::5]))}
        plugin = BitcoinChain({"rpc_url": url, "network": "regtest", "rpc_timeout_s": 120})
        scan(plugin, first, last, mixes["50% ours"][0])  # starts the plugin's block fetcher process
        pids = [node_pid, plugin.fetcher_pid]

        progress("timing bare fetch and scan, interleaved")
        fetch_s, scan_s = [], {name: [] for name in mixes}
        fetch_cpu, scan_cpu = [], {name: [] for name in mixes}
        outputs = size = 0
        counted = {}
        for _ in range(args.rounds):
            for name, (watch, expected_receipts) in mixes.items():
                wall, cpu = timed(pids, lambda: counted.update(size=bare_fetch(rpc, first, last)))
                fetch_s.append(wall)
                fetch_cpu.append(cpu)
                wall, cpu = timed(pids, lambda: counted.update(zip(("receipts", "outputs"),
                                                                       scan(plugin, first, last, watch))))
                scan_s[name].append(wall)
                scan_cpu[name].append(cpu)
                assert counted["receipts"] == expected_receipts, \
                    f"found {counted['receipts']} watched outputs, expected {expected_receipts}"
        size, outputs = counted["size"], counted["outputs"]
        expected_receipts = len(used)

        progress("timing the parser alone on blocks in memory")
        raws = []
        for start in range(first, last + 1, FETCH_BATCH):
            heights = range(start, min(start + FETCH_BATCH, last + 1))
            hashes = rpc.batch([("getblockhash", h) for h in heights])
            raws += [bytes.fromhex(r) for r in rpc.batch([("getblock", h, False) for h in hashes])]
        parse_s = []  # CPU seconds: the parser's own rate, whatever else runs
        for _ in range(args.rounds):
            t = time.process_time()
            for height, raw in enumerate(raws, start=first):
                parse_block(raw, height, keys, outpoints, {})
            parse_s.append(time.process_time() - t)
        peak = peak_rss_mb()
        fetcher_mb = rss_mb(plugin.fetcher_pid)
        plugin.close()
    finally:
        nodes.down()

    fetch, parse = statistics.median(fetch_s), min(parse_s)
    rows = [
        ("blocks", f"{n_blocks} (heights {first}-{last})"),
        ("outputs scanned", f"{outputs:,} ({outputs / n_blocks:,.0f} per block; {expected_receipts:,} watched)"),
        ("raw block data fetched", f"{size / 2 / 2**20:.1f} MiB per pass (hex over JSON-RPC: {size / 2**20:.1f} MiB)"),
        ("watched addresses", f"{len(keys):,} scriptPubKeys + {len(outpoints):,} owned outpoints"),
        ("bare fetch (median of {})".format(len(fetch_s)), f"{fetch:.3f} s ({n_blocks / fetch:,.0f} blocks/s)"),
    ]
    rows.append(("bare fetch CPU, processes + node (mean)", f"{statistics.mean(fetch_cpu):.3f} s per pass"))
    for name, times in scan_s.items():
        scanned = statistics.median(times)
        ratio = scanned / fetch
        cpu_ratio = statistics.mean(scan_cpu[name]) / statistics.mean(fetch_cpu)
        rows += [
            (f"scan, {name} (median of {len(times)})", f"{scanned:.3f} s ({outputs / scanned:,.0f} outputs/s end to end)"),
            (f"scan / bare fetch, {name}, wall", f"{ratio:.2f}x (target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'})"),
            (f"scan / bare fetch, {name}, CPU", f"{cpu_ratio:.2f}x (target <= 1.5x: "
                                               f"{'met' if cpu_ratio <= 1.5 else 'MISSED'})"),
        ]
    rows += [
        ("parser alone, CPU, 50% ours (best of {})".format(args.rounds), f"{outputs / parse:,.0f} outputs/s "
                                                                    f"({parse / n_blocks * 1000:.2f} ms per block)"),
        ("watched set in memory", f"{watch_mb:,.0f} MB"),
        ("peak RSS of the process", f"{peak:,.0f} MB (target < 500 MB: {'met' if peak < 500 else 'MISSED'}; "
                                    f"Python and libraries alone: {baseline_rss:,.0f} MB)"),
        ("RSS of the block fetcher process", f"{fetcher_mb:,.0f} MB"),
    ]
    print()
    for name, value in rows:
        print(f"{name:32} {value}")
    if not args.quick:
        write_results(rows, fetch_s, scan_s, load_at_start)
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


def write_results(rows, fetch_s, scan_s, load_at_start) -> None:
    lines = [
        "# Scanning benchmark",
        "",
        "`.venv/bin/python -m benchmarks.scanning` (see its docstring for what is measured).",
        f"Run {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, bcoin 1.0.2 (regtest, Node {_node_version()}), "
        "the node on the same machine; load average at the start "
        f"{', '.join(f'{x:.1f}' for x in load_at_start)}, at the end "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| measure | result |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in rows],
        "",
        f"Each round, bare fetch: {', '.join(f'{s:.3f}' for s in fetch_s)} s; "
        + "; ".join(f"scan {name}: {', '.join(f'{s:.3f}' for s in times)} s" for name, times in scan_s.items())
        + ".",
        "",
        "CPU is that of this process, the plugin's block fetcher process and the node, from /proc.",
        "Where the time goes: the bare fetch is almost all the node's work (bcoin serialising",
        "blocks to hex, about 1.5 ms per block); the fetching process spends about 0.2 ms per",
        "block on HTTP and JSON. The scan adds hex decoding (0.05 ms per block) and the parser:",
        "about 0.3 ms per block to walk 2,086 outputs and look each script up in the",
        "1,000,000-key dict, plus about 1 us per matching output (the dict hit, the value, the",
        "Receipt, the txid hash of its transaction). At 50% ours that is 1,043 receipts per block,",
        "so the parser alone costs about as much CPU as the node does to serve the block: the CPU",
        "ratio cannot reach 1.5x in pure Python with half the outputs ours. The wall ratio is",
        "lower: the plugin's child process (chains/bitcoin/fetcher.py) fetches and hex-decodes",
        "the raw blocks, 4 per request, with the next batch requested right behind the current",
        "one, while this process parses, so parsing runs beside the node's work instead of after",
        "it. A prefetch thread did the same before and the scan took 1.64 to 1.71 times the bare",
        "fetch: receiving an answer took dozens of socket reads, each waiting for the GIL that",
        "the parsing thread held.",
        "",
        "Not included: database writes. Blocks with no payment to us cost the scanner one",
        "small transaction per `blocks_per_commit` blocks; deposits cost a few rows and a",
        "ledger batch each (see benchmarks/RESULTS.md for ledger throughput).",
    ]
    RESULTS.write_text("\n".join(lines) + "\n")


def _node_version() -> str:
    import subprocess

    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
