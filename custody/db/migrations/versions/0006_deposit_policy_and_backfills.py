"""deposit policy and backfills: deposits.reason, longer deposit statuses, scan_backfills

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=12), type_=sa.String(length=16),
                              existing_nullable=False)
        batch_op.add_column(sa.Column('reason', sa.String(length=200), nullable=True))

    op.create_table('scan_backfills',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('chain', sa.String(length=32), nullable=False),
    sa.Column('from_height', sa.BigInteger(), nullable=False),
    sa.Column('to_height', sa.BigInteger(), nullable=True),
    sa.Column('next_height', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('scan_backfills', schema=None) as batch_op:
        batch_op.create_index('ix_scan_backfills_chain_finished', ['chain', 'finished_at'], unique=False)


def downgrade() -> None:
    # Statuses this revision added (BELOW_MINIMUM, ASSET_DISABLED) don't fit the old column, and
    # the old code has no word for them: refused with a reason rather than a driver error half-way.
    longer = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM deposits WHERE LENGTH(status) > 12")).scalar()
    if longer:
        raise RuntimeError(f"cannot downgrade below 0006: {longer} deposits have a status (BELOW_MINIMUM, "
                           "ASSET_DISABLED) that revisions before it do not know")
    with op.batch_alter_table('scan_backfills', schema=None) as batch_op:
        batch_op.drop_index('ix_scan_backfills_chain_finished')
    op.drop_table('scan_backfills')
    with op.batch_alter_table('deposits', schema=None) as batch_op:
        batch_op.drop_column('reason')
        batch_op.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=12),
                              existing_nullable=False)
