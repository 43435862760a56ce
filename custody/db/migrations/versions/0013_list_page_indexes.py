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
    for name, table, _before, after in _CHANGED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, after)
    op.create_index('ix_withdrawals_account_id', 'withdrawals', ['account_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_withdrawals_account_id', table_name='withdrawals')
    for name, table, before, _after in _CHANGED:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, before)
