"""Withdrawals: requests, review, batching, signing, broadcast, confirmation (docs/withdrawals.md)."""
