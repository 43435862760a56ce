"""Ports for servers a test starts in another process and must name in advance (chain nodes,
`custody serve`, the signer).

A port found by binding port 0 and closing the socket comes from the kernel's ephemeral range,
which the other pytest worker draws from too: each server it binds to port 0 and each outgoing
connection. Between the pick and the bind, seconds later in the new process, one of those could
take it. These ports come from below that range instead, each worker from its own share, so
nothing else in the suite is handed them; a port something else holds is skipped. Within the
share the pick is random: another test run on the same machine (or a script using these helpers)
has the same shares, and counting up from the same start, both handed out the same ports."""
from __future__ import annotations

import os
import random
import socket

LOWEST = 20_000


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _share() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw") or 0)
    end = max(_ephemeral_start(), LOWEST + 1_000)
    size = (end - LOWEST) // max(workers, 1)
    return range(LOWEST + index * size, LOWEST + (index + 1) * size)


_SHARE = _share()
_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()  # seeded from the system's randomness: each process its own sequence


def free_port() -> int:
    """A port nothing listens on now, not handed out again in this process."""
    for _ in range(1_000):
        port = _RANDOM.randrange(_SHARE.start, _SHARE.stop)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # held by something else, or in TIME_WAIT from an earlier server
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port from {_SHARE.start} to {_SHARE.stop - 1}")
