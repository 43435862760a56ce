"""Comparing the ledger with the chains (DESIGN 3, invariant 4; DESIGN 4, reconciliation)."""
