"""scan_cursors: no config_digest; the config pins guard the scanner's settings

The digest fingerprinted a chain's network and native asset so that a scanner
would not go on under other settings. The config pins (0005) guard the same
and more (plugin, keys, asset decimals and contracts) with a staff accept path,
and now pin the chain's native asset too. A pin stored before that field
existed gets it on first use (custody/config_pins.py).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25 10:40:00
"""
import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('scan_cursors', schema=None) as batch_op:
        batch_op.drop_column('config_digest')


def downgrade() -> None:
    # The old check compares digests: an empty one halts the scanner until settings are restored by hand.
    with op.batch_alter_table('scan_cursors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config_digest', sa.String(length=64), nullable=False, server_default=''))
