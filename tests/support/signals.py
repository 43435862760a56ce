"""Signals sent the way the kernel may deliver them: to a thread other than the main one.

`kill` sends a signal to a process, and the kernel hands it to any thread
that does not block it, often not the main one (gRPC's threads, a job's
thread). Python runs the handler only in the main thread, so a process that
waits in its main thread without a timeout may never run it. tgkill aims the
signal at one thread, which makes that case happen every time."""
from __future__ import annotations

import ctypes
import os
import pathlib
import platform
import signal
import time

_TGKILL = {"x86_64": 234, "aarch64": 131}  # Linux syscall numbers


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has installed a handler for sig (SigCgt in /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    raise RuntimeError(f"no SigCgt line for process {pid}")


def wait_until_catching(pid: int, sig: signal.Signals, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not catches(pid, sig):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not install a handler for {sig.name}")
        time.sleep(0.05)


def send_to_another_thread(pid: int, sig: signal.Signals) -> int:
    """Sends sig to one of the process's threads other than its main thread; returns that thread's id."""
    others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
    if not others:
        raise RuntimeError(f"process {pid} has no thread besides its main one")
    number = _TGKILL.get(platform.machine())
    if number is None:
        raise RuntimeError(f"tgkill's syscall number on {platform.machine()} is not known here")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, others[-1], int(sig)) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")
    return others[-1]
