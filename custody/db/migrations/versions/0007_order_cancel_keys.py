"""matching_stub: CancelOrder idempotency keys; the matching engine's epoch (one writer at a time);
a partial index of frozen accounts

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('order_cancels',
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('client_key', sa.String(length=128), nullable=False),
    sa.Column('order_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('client', 'client_key')
    )
    op.create_table('matching_engine',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('epoch', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    matching_engine = sa.table('matching_engine', sa.column('id', sa.Integer), sa.column('epoch', sa.BigInteger))
    op.bulk_insert(matching_engine, [{'id': 1, 'epoch': 0}])
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.create_index('ix_accounts_frozen', ['id'], unique=False, sqlite_where=sa.text('frozen = 1'),
                              postgresql_where=sa.text('frozen'))


def downgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_index('ix_accounts_frozen')
    op.drop_table('matching_engine')
    op.drop_table('order_cancels')
