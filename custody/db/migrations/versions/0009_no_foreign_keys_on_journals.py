"""ledger_transfers and trades: foreign keys replaced by the invariant check's reference check

Each foreign key is a per-row trigger that looks the referenced row up (and
locks it FOR KEY SHARE). These two tables take several rows per transfer or
fill, all written by COPY: on PostgreSQL the three keys of ledger_transfers
made a COPY of 25,000 rows cost 11.0 us a row against 2.0 without them, and
the five of trades doubled the server's time per fill together with them
(86 -> 43 us of server CPU per settled fill in benchmarks/matching.py). The
rows they point at (batches, ledger accounts, orders, custody accounts) are
never deleted, and `custody admin check` reports any dangling reference
(custody/ledger/invariants.py). Lower-volume tables keep their keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25 09:30:00
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# PostgreSQL's default names for these keys; SQLite's are unnamed, and batch
# mode names them by the same convention when it reflects the table.
NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}
KEYS = {
    'ledger_transfers': [('batch_id', 'ledger_batches'), ('debit_account_id', 'ledger_accounts'),
                         ('credit_account_id', 'ledger_accounts')],
    'trades': [('taker_order_id', 'orders'), ('maker_order_id', 'orders'), ('buyer_account_id', 'accounts'),
               ('seller_account_id', 'accounts'), ('batch_id', 'ledger_batches')],
}


def upgrade() -> None:
    for table, keys in KEYS.items():
        with op.batch_alter_table(table, schema=None, naming_convention=NAMING) as batch_op:
            for column, _ in keys:
                batch_op.drop_constraint(f'{table}_{column}_fkey', type_='foreignkey')


def downgrade() -> None:
    for table, keys in KEYS.items():
        with op.batch_alter_table(table, schema=None, naming_convention=NAMING) as batch_op:
            for column, referred in keys:
                batch_op.create_foreign_key(f'{table}_{column}_fkey', referred, [column], ['id'])
