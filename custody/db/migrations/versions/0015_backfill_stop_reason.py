"""scan_backfills.stop_reason; 0-value deposits left PENDING become BELOW_MINIMUM

A rescan whose blocks the node cannot serve (a pruned node) used to fail
every scanner run before new blocks were applied; now it is stopped with its
reason, as is one cancelled by staff (`custody scan cancel-rescan`). NULL:
still open, or finished. A nullable column without a default: on PostgreSQL
adding it rewrites nothing.

A 0-value output to a deposit address was recorded PENDING (min_deposit 0),
and at its confirmation depth the ledger refused to credit 0 and halted the
scanner. The scanner now records such outputs as BELOW_MINIMUM; one recorded
PENDING before is moved there too, or the scanner would halt on it again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 05:00:00
"""
import sqlalchemy as sa
from alembic import op

import custody.db.types

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('scan_backfills', sa.Column('stop_reason', sa.String(length=200), nullable=True))
    deposits = sa.table('deposits', sa.column('id'), sa.column('asset', sa.String()),
                        sa.column('amount', custody.db.types.Amount()), sa.column('status', sa.String()),
                        sa.column('reason', sa.String()))
    conn = op.get_bind()
    zero = conn.execute(sa.select(deposits.c.id, deposits.c.asset)
                        .where(deposits.c.status == 'PENDING', deposits.c.amount == 0)).all()
    for deposit_id, asset in zero:  # the same reason as custody/deposits/model.py gives
        conn.execute(deposits.update().where(deposits.c.id == deposit_id).values(
            status='BELOW_MINIMUM', reason=f"0 is below the {asset} minimum deposit of 1 base units"))


def downgrade() -> None:
    # The deposits stay BELOW_MINIMUM: PENDING again, they would halt the old scanner.
    # Not in batch mode: SQLite 3.35 or later drops a column in place.
    op.drop_column('scan_backfills', 'stop_reason')
