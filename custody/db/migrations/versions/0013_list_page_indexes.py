"""Indexes for the pages of the list RPCs

ListDeposits, ListWithdrawals and the backoffice lists return pages that
start after the last id of the previous page (custody/paging.py). An index on
(filter, id) makes each page an index range scan, however many deposits an
account or withdrawals a status has gathered; an index on the filter alone
made PostgreSQL sort all of them for every page.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 00:10:00
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# (index, table, columns before, columns after)
_CHANGED = [
    ('ix_deposits_account_id', 'deposits', ['account_id'], ['account_id', 'id']),
    ('ix_withdrawals_status', 'withdrawals', ['status'], ['status', 'id']),
    ('ix_withdrawal_batches_status', 'withdrawal_batches', ['status'], ['status', 'id']),
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild_concurrently([(name, table, after) for name, table, _before, after in _CHANGED], add=True)
        return
    for name, table, _before, after in _CHANGED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, after)
    op.create_index('ix_withdrawals_account_id', 'withdrawals', ['account_id', 'id'])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _rebuild_concurrently([(name, table, before) for name, table, before, _after in _CHANGED], add=False)
        return
    op.drop_index('ix_withdrawals_account_id', table_name='withdrawals')
    for name, table, before, _after in _CHANGED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, before)


def _rebuild_concurrently(indexes, add: bool) -> None:
    """On PostgreSQL the indexes are built without taking the lock that blocks writes: on a
    live exchange deposits and withdrawals go on being recorded while a large table is
    indexed. Each new index is built under a temporary name before the old one is dropped,
    so the queries always have one. CONCURRENTLY cannot run inside a transaction, so a run may
    be interrupted between any two steps; running the migration again finishes the job: a
    valid new index whose old one is gone is only renamed, anything else is built again."""
    with op.get_context().autocommit_block():
        for name, table, columns in indexes:
            state = dict(op.get_bind().exec_driver_sql(
                "SELECT c.relname, i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                f"WHERE c.relname IN ('{name}', '{name}_new')").all())
            if state.get(f"{name}_new") and name not in state:
                op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")
                continue
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_new")
            op.create_index(f"{name}_new", table, columns, postgresql_concurrently=True)
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")
        if add:
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_withdrawals_account_id")
            op.create_index('ix_withdrawals_account_id', 'withdrawals', ['account_id', 'id'],
                            postgresql_concurrently=True)
        else:
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_withdrawals_account_id")
