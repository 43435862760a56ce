"""orders: the fee rate each order's hold was sized with (held_fee_ppm)

A buy order holds its fee at the higher of its market's two fee rates. The
rate was not stored, so a start after an operator changed that rate
recomputed every resting buy's hold at the new rate, found it differed from
the ledger's and refused to start (RecoveryError) until the old rates were
put back. Now each order keeps the rate its hold was sized with; its hold
and its fees follow that rate (docs/matching.md, "Changing fee rates").

Rows written before this migration have NULL: they are read as sized with
the market's current higher rate, which they were unless the rates were
changed while they rested; the matching engine stores that rate on them
when it first writes (matching_stub/engine.py). A nullable column without a
default: on PostgreSQL adding it rewrites nothing.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 03:30:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('orders', sa.Column('held_fee_ppm', sa.Integer(), nullable=True))


def downgrade() -> None:
    # The stored rates are lost: the old code recomputes resting buys' holds at the configured rates.
    # Not in batch mode: on SQLite (3.35 or later drops a column in place) a batch copy of the
    # table drops the old one, which foreign_keys=ON refuses while order_cancels refer to orders.
    op.drop_column('orders', 'held_fee_ppm')
