"""Custody core: accounts, ledger, deposits, withdrawals, treasury, reconciliation, events.

Domain modules (ledger/, accounts/, events/) import neither grpc nor the
generated code; api/ translates between gRPC and the domain.
"""
