"""matching_stub: orders, trades and the market-data journal

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import custody.db.types


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('market_data',
    sa.Column('cursor', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('market', sa.String(length=40), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('cursor')
    )
    with op.batch_alter_table('market_data', schema=None) as batch_op:
        batch_op.create_index('ix_market_data_market_cursor', ['market', 'cursor'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('market', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('type', sa.String(length=8), nullable=False),
    sa.Column('time_in_force', sa.String(length=3), nullable=False),
    sa.Column('post_only', sa.Boolean(), nullable=False),
    sa.Column('price', custody.db.types.Amount(), nullable=False),
    sa.Column('quantity', custody.db.types.Amount(), nullable=False),
    sa.Column('filled_quantity', custody.db.types.Amount(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('fill_value', custody.db.types.Amount(), nullable=False),
    sa.Column('fee_value', custody.db.types.Amount(), nullable=False),
    sa.Column('quote_filled', custody.db.types.Amount(), nullable=False),
    sa.Column('fee', custody.db.types.Amount(), nullable=False),
    sa.Column('hold_id', sa.String(length=32), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('client', sa.String(length=64), nullable=False),
    sa.Column('client_key', sa.String(length=128), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['hold_id'], ['ledger_holds.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('client', 'client_key', name='uq_orders_client_key'),
    sa.UniqueConstraint('market', 'sequence', name='uq_orders_market_sequence')
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_account_id', ['account_id'], unique=False)
        batch_op.create_index('ix_orders_market_status', ['market', 'status'], unique=False)

    op.create_table('trades',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('market', sa.String(length=40), nullable=False),
    sa.Column('price', custody.db.types.Amount(), nullable=False),
    sa.Column('quantity', custody.db.types.Amount(), nullable=False),
    sa.Column('taker_order_id', sa.String(length=32), nullable=False),
    sa.Column('maker_order_id', sa.String(length=32), nullable=False),
    sa.Column('taker_side', sa.String(length=4), nullable=False),
    sa.Column('buyer_account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seller_account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('buyer_paid', custody.db.types.Amount(), nullable=False),
    sa.Column('buyer_fee', custody.db.types.Amount(), nullable=False),
    sa.Column('seller_gross', custody.db.types.Amount(), nullable=False),
    sa.Column('seller_fee', custody.db.types.Amount(), nullable=False),
    sa.Column('rounding', custody.db.types.Amount(), nullable=False),
    sa.Column('batch_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['ledger_batches.id'], ),
    sa.ForeignKeyConstraint(['buyer_account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['maker_order_id'], ['orders.id'], ),
    sa.ForeignKeyConstraint(['seller_account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['taker_order_id'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.create_index('ix_trades_market_id', ['market', 'id'], unique=False)
        batch_op.create_index('ix_trades_taker_order_id', ['taker_order_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index('ix_trades_taker_order_id')
        batch_op.drop_index('ix_trades_market_id')

    op.drop_table('trades')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_market_status')
        batch_op.drop_index('ix_orders_account_id')

    op.drop_table('orders')
    with op.batch_alter_table('market_data', schema=None) as batch_op:
        batch_op.drop_index('ix_market_data_market_cursor')

    op.drop_table('market_data')
