"""Deposits: addresses issued to users, block scanning, PENDING -> CREDITED, reorgs."""
