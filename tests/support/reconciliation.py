"""For tests that spend the service's coins themselves, with its keys, outside the service (the
scanner's tests sweep deposits so; sweeps are not built): invariant 4 must name exactly those
spends as booked by nobody, and nothing else."""
from __future__ import annotations

import re

from custody.ledger.invariants import check


def only_outside_spends(engine, request, spends: dict[str, int]) -> None:
    """spends: txid -> what it took from our wallets. The after-test check is then skipped: what it
    would find is these spends, the test's own doing."""
    report = check(engine)
    # Each is named with its block and an address it spent from (FAILURE_MODES 31).
    found = sorted(re.sub(r"; block \d+, address \w+( and \d+ more)?$", "", f.message)
                   for f in report.findings if f.severity == "violation")
    assert found == sorted(f"bitcoin: {txid}: spent our coins and is none of our transactions; not booked "
                           f"({-amount})" for txid, amount in spends.items()), report.render()
    assert all(re.search(r"; block \d+, address \w+", f.message)
               for f in report.findings if f.severity == "violation"), report.render()
    request.node.skip_invariants = True
