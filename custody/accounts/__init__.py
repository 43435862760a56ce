"""Custody accounts: one per exchange user, keyed by the exchange's external id."""
