"""chains and deposits: owned addresses, deposits, the UTXO set, scan cursors

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa
import custody.db.types


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('scan_cursors',
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('height', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=80), nullable=False),
    sa.Column('config_digest', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('chain')
    )
    op.create_table('scanned_blocks',
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('height', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=80), nullable=False),
    sa.Column('parent_hash', sa.String(length=80), nullable=False),
    sa.PrimaryKeyConstraint('chain', 'height', name='pk_scanned_blocks')
    )
    op.create_table('chain_addresses',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('wallet', sa.String(length=16), nullable=False),
    sa.Column('branch', sa.Integer(), nullable=False),
    sa.Column('key_index', sa.BigInteger(), nullable=False),
    sa.Column('address', sa.String(length=128), nullable=False),
    sa.Column('watch_key', sa.LargeBinary(), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_height', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chain', 'address', name='uq_chain_addresses_chain_address'),
    sa.UniqueConstraint('chain', 'wallet', 'branch', 'key_index', name='uq_chain_addresses_chain_wallet_path')
    )
    with op.batch_alter_table('chain_addresses', schema=None) as batch_op:
        batch_op.create_index('ix_chain_addresses_account_chain', ['account_id', 'chain'], unique=False)

    op.create_table('deposits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('txid', sa.String(length=80), nullable=False),
    sa.Column('output_index', sa.Integer(), nullable=False),
    sa.Column('address_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('account_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('amount', custody.db.types.Amount(length=79), nullable=False),
    sa.Column('coinbase', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('block_height', sa.BigInteger(), nullable=True),
    sa.Column('block_hash', sa.String(length=80), nullable=True),
    sa.Column('credit_batch_id', sa.String(length=32), nullable=True),
    sa.Column('reversal_batch_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.id'], ),
    sa.ForeignKeyConstraint(['address_id'], ['chain_addresses.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('chain', 'txid', 'output_index', name='uq_deposits_chain_txid_index')
    )
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.create_index('ix_deposits_account_id', ['account_id'], unique=False)
        batch_op.create_index('ix_deposits_chain_status', ['chain', 'status'], unique=False)

    op.create_table('utxos',
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('txid', sa.String(length=80), nullable=False),
    sa.Column('output_index', sa.Integer(), nullable=False),
    sa.Column('address_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('wallet', sa.String(length=16), nullable=False),
    sa.Column('amount', custody.db.types.Amount(length=79), nullable=False),
    sa.Column('coinbase', sa.Boolean(), nullable=False),
    sa.Column('block_height', sa.BigInteger(), nullable=False),
    sa.Column('block_hash', sa.String(length=80), nullable=False),
    sa.Column('spent_txid', sa.String(length=80), nullable=True),
    sa.Column('spent_height', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['address_id'], ['chain_addresses.id'], ),
    sa.PrimaryKeyConstraint('chain', 'txid', 'output_index', name='pk_utxos')
    )
    with op.batch_alter_table('utxos', schema=None) as batch_op:
        batch_op.create_index('ix_utxos_chain_wallet_spent', ['chain', 'wallet', 'spent_txid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('utxos', schema=None) as batch_op:
        batch_op.drop_index('ix_utxos_chain_wallet_spent')

    op.drop_table('utxos')
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.drop_index('ix_deposits_chain_status')
        batch_op.drop_index('ix_deposits_account_id')

    op.drop_table('deposits')
    with op.batch_alter_table('chain_addresses', schema=None) as batch_op:
        batch_op.drop_index('ix_chain_addresses_account_chain')

    op.drop_table('chain_addresses')
    op.drop_table('scanned_blocks')
    op.drop_table('scan_cursors')
