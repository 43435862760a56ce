"""The double-entry ledger: accounts, append-only transfers in atomic batches, holds.

model.py   pure rules: account codes, postings, in-memory balance checks
commands.py what a caller asks the ledger to do (one command = one atomic batch)
engine.py  runs commands against the database, many per transaction (group commit)
invariants.py  the checks behind `custody admin check`
"""
