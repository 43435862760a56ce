"""Running test work on threads at once."""
from __future__ import annotations

import threading
from collections.abc import Callable


def run_in_threads(work: list[Callable[[], object]], together: bool = False) -> list[BaseException]:
    """Runs each callable on a thread of its own; returns what they raised. together: they all
    wait at a barrier first, so their calls start at the same moment."""
    barrier = threading.Barrier(len(work)) if together else None
    errors: list[BaseException] = []

    def run(f):
        if barrier is not None:
            barrier.wait()
        try:
            f()
        except Exception as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f,)) for f in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
