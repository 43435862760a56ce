"""withdrawals: batch kind (withdrawals | consolidation), attempt kind (payment | cancel)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 06:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('withdrawal_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='withdrawals', nullable=False))
    with op.batch_alter_table('withdrawal_attempts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='payment', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('withdrawal_attempts', schema=None) as batch_op:
        batch_op.drop_column('kind')
    with op.batch_alter_table('withdrawal_batches', schema=None) as batch_op:
        batch_op.drop_column('kind')
