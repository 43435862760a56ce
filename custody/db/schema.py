"""Tables. Migrations in db/migrations must produce exactly this schema."""
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from custody.db.types import Amount

metadata = MetaData()

# SQLite auto-increments only an "INTEGER PRIMARY KEY" (the rowid).
Id = BigInteger().with_variant(Integer, "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("external_id", String(128), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("frozen", Boolean, nullable=False, default=False),
    Column("frozen_reason", Text, nullable=True),
)
# The few frozen accounts, read by the matching engine once per group (a
# frozen account's resting orders never trade; docs/matching.md): a partial
# index holds only them.
# The conditions are written as each dialect renders `WHERE accounts.frozen`, so that the query matches them.
Index("ix_accounts_frozen", accounts.c.id, sqlite_where=text("frozen = 1"), postgresql_where=text("frozen"))

# One row per (ledger account code, asset): user:<id>:available, user:<id>:held,
# wallet:<chain>:<deposit|hot|cold>, inflight:withdrawals, fees:network,
# fees:revenue, equity, suspense. debits and credits are running totals, so a
# balance is credits - debits for liabilities (users, fees, equity) and
# debits - credits for assets (wallets).
ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("code", String(96), nullable=False),
    Column("asset", String(16), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=True),
    Column("debits", Amount, nullable=False),
    Column("credits", Amount, nullable=False),
    # User accounts may never have debits above credits (no overdraft).
    Column("no_overdraft", Boolean, nullable=False),
    UniqueConstraint("code", "asset", name="uq_ledger_accounts_code_asset"),
    Index("ix_ledger_accounts_account_id", "account_id"),
    postgresql_with={"fillfactor": 50},  # as migration 0001 sets it: balance updates stay HOT
)

# An atomic group of transfers, with what caused it.
ledger_batches = Table(
    "ledger_batches",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("reference", String(128), nullable=True),
    Column("actor", String(64), nullable=False),
    Column("memo", Text, nullable=True),
    # A correction that broke a normal rule on purpose (reported by the check).
    Column("flagged", Boolean, nullable=False, default=False),
    Column("event_cursor", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# No foreign keys here or on trades, though the columns are references: these
# are the two highest-volume tables, and a foreign key is a per-row lookup that
# cost more than the row itself on PostgreSQL (migration 0009 has the numbers).
# What they point at is never deleted, and `custody admin check` reports any
# dangling reference (ledger/invariants.py, REFERENCES).
ledger_transfers = Table(
    "ledger_transfers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("batch_id", String(32), nullable=False),  # ledger_batches.id
    Column("asset", String(16), nullable=False),
    Column("debit_account_id", Id, nullable=False),  # ledger_accounts.id
    Column("credit_account_id", Id, nullable=False),  # ledger_accounts.id
    Column("amount", Amount, nullable=False),
    Index("ix_ledger_transfers_batch_id", "batch_id"),
)

# Two-phase holds: funds moved from user:<id>:available to user:<id>:held,
# later posted (fully or in parts) or voided.
ledger_holds = Table(
    "ledger_holds",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("remaining", Amount, nullable=False),
    Column("status", String(12), nullable=False),  # OPEN, CLOSED
    Column("reference", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    # Updates (posts, closes) change remaining, status and closed_at: none of
    # them is indexed, and pages are half empty on PostgreSQL, so an update
    # stays on its page without new index entries (HOT; migration 0010).
    Index("ix_ledger_holds_account_id", "account_id"),
    postgresql_with={"fillfactor": 50},
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(64), nullable=False),
    Column("key", String(128), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("result", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
)

events = Table(
    "events",
    metadata,
    Column("cursor", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# One row. Taking the next cursors by UPDATE holds its row lock until commit,
# so cursors become visible in commit order and a reader never skips a cursor
# that commits late.
event_sequence = Table(
    "event_sequence",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_cursor", BigInteger, nullable=False),
)

# -- chains and deposits (issue 3) ---------------------------------------------------------

# Every address the service owns on a chain: user deposit addresses and the
# exchange's hot and cold wallet addresses. An address is never reassigned.
# watch_key is what the scanner matches in blocks (Bitcoin: the scriptPubKey).
chain_addresses = Table(
    "chain_addresses",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("chain", String(32), nullable=False),
    Column("wallet", String(16), nullable=False),  # deposit, hot, cold
    # BIP32 path under the wallet's account key: <branch>/<key_index>, branch 0 receive, 1 change.
    Column("branch", Integer, nullable=False),
    Column("key_index", BigInteger, nullable=False),
    Column("address", String(128), nullable=False),
    Column("watch_key", LargeBinary, nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=True),  # deposit addresses only
    # The scanner's height when the address was issued; blocks above it are scanned with it watched.
    Column("created_height", BigInteger, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("chain", "address", name="uq_chain_addresses_chain_address"),
    UniqueConstraint("chain", "wallet", "branch", "key_index", name="uq_chain_addresses_chain_wallet_path"),
    Index("ix_chain_addresses_account_chain", "account_id", "chain"),
)

# A payment to a deposit address, one per (chain, txid, output or log index).
# PENDING -> CREDITED at the asset's confirmations; ORPHANED if its block is
# dropped before that (PENDING again if re-mined); REVERSED if dropped after.
# Outside policy (FAILURE_MODES 25): BELOW_MINIMUM or ASSET_DISABLED, never
# credited, with the reason in words.
deposits = Table(
    "deposits",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("chain", String(32), nullable=False),
    Column("txid", String(80), nullable=False),
    Column("output_index", Integer, nullable=False),
    Column("address_id", Id, ForeignKey("chain_addresses.id"), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("coinbase", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("block_height", BigInteger, nullable=True),
    Column("block_hash", String(80), nullable=True),
    Column("credit_batch_id", String(32), nullable=True),
    Column("reversal_batch_id", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("chain", "txid", "output_index", name="uq_deposits_chain_txid_index"),
    Index("ix_deposits_account_id", "account_id", "id"),  # and the account's pages (custody/paging.py)
    Index("ix_deposits_chain_status", "chain", "status"),
)

# The service's own UTXO set (UTXO chains): every output paying an address in
# chain_addresses, and the transaction that spent it. Rows of blocks dropped
# by a reorg are deleted (outputs) or un-spent (spends).
utxos = Table(
    "utxos",
    metadata,
    Column("chain", String(32), nullable=False),
    Column("txid", String(80), nullable=False),
    Column("output_index", Integer, nullable=False),
    Column("address_id", Id, ForeignKey("chain_addresses.id"), nullable=False),
    Column("wallet", String(16), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("coinbase", Boolean, nullable=False),
    Column("block_height", BigInteger, nullable=False),
    Column("block_hash", String(80), nullable=False),
    Column("spent_txid", String(80), nullable=True),
    Column("spent_height", BigInteger, nullable=True),
    PrimaryKeyConstraint("chain", "txid", "output_index", name="pk_utxos"),
    Index("ix_utxos_chain_wallet_spent", "chain", "wallet", "spent_txid"),
)

# Where each chain's scanner is: the last block it applied. The settings that
# decide what a block means are guarded by the config pins (FAILURE_MODES 34).
scan_cursors = Table(
    "scan_cursors",
    metadata,
    Column("chain", String(32), primary_key=True),
    Column("height", BigInteger, nullable=False),
    Column("hash", String(80), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Rescans of past blocks (FAILURE_MODES 23): an address registered late or a
# restore. Blocks from from_height up to the scan cursor are scanned again with
# the current watched set; next_height moves with each committed chunk,
# to_height is the cursor the backfill has run up to (NULL before it starts).
# stop_reason: why it ended before catching up (the node could not serve its
# blocks, or cancelled by staff); NULL while open and when it finished.
scan_backfills = Table(
    "scan_backfills",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("chain", String(32), nullable=False),
    Column("from_height", BigInteger, nullable=False),
    Column("to_height", BigInteger, nullable=True),
    Column("next_height", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("stop_reason", String(200), nullable=True),
    Index("ix_scan_backfills_chain_finished", "chain", "finished_at"),
)

# The recent blocks each scanner applied, to find the fork point of a reorg.
scanned_blocks = Table(
    "scanned_blocks",
    metadata,
    Column("chain", String(32), nullable=False),
    Column("height", BigInteger, nullable=False),
    Column("hash", String(80), nullable=False),
    Column("parent_hash", String(80), nullable=False),
    PrimaryKeyConstraint("chain", "height", name="pk_scanned_blocks"),
)

# -- matching_stub: orders, trades and the market-data journal -------------------
# Units (docs/matching.md): quantities are base units of the market's base
# asset; prices are quote base units per the market's price_unit of base.

orders = Table(
    "orders",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("market", String(40), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("side", String(4), nullable=False),  # BUY, SELL
    Column("type", String(8), nullable=False),  # LIMIT, MARKET (price is then the protective limit)
    Column("time_in_force", String(3), nullable=False),  # GTC, IOC, FOK
    Column("post_only", Boolean, nullable=False),
    Column("price", Amount, nullable=False),
    Column("quantity", Amount, nullable=False),
    Column("filled_quantity", Amount, nullable=False),
    Column("status", String(16), nullable=False),  # OPEN, PARTIALLY_FILLED, FILLED, CANCELLED, EXPIRED
    Column("reason", String(32), nullable=True),  # why it was cancelled or expired
    # Settlement so far; the next fill's rounding depends on them (matching_stub/amounts.py).
    Column("fill_value", Amount, nullable=False),  # sum of quantity x price (quote base units x price_unit)
    Column("fee_value", Amount, nullable=False),  # sum of quantity x price x fee ppm
    Column("quote_filled", Amount, nullable=False),  # quote paid (buy) or received (sell), before fees
    Column("fee", Amount, nullable=False),  # quote charged as fees
    # The fee rate (ppm) the order's hold was sized with: the market's higher rate when it was
    # placed. A buy's hold and its later fees follow it, not the rates in force since (a buy is
    # charged at most this rate); a sell's are not affected (recorded all the same). NULL: written
    # before migration 0014, read as the market's current higher rate (and then stored,
    # matching_stub/engine.py).
    Column("held_fee_ppm", Integer, nullable=True),
    Column("hold_id", String(32), ForeignKey("ledger_holds.id"), nullable=False),
    # Time priority within the market: the order rests behind every lower sequence.
    Column("sequence", BigInteger, nullable=False),
    # Idempotency: the client's key, scoped to the client, and a digest of the request.
    Column("client", String(64), nullable=False),
    Column("client_key", String(128), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("client", "client_key", name="uq_orders_client_key"),
    UniqueConstraint("market", "sequence", name="uq_orders_market_sequence"),
    Index("ix_orders_account_id", "account_id"),
    # A fill changes only unindexed columns and pages are half empty on
    # PostgreSQL, so its update stays on the page without new index entries
    # (HOT). Hence no index on status: rebuilding the books reads the table
    # sequentially (migration 0011).
    postgresql_with={"fillfactor": 50},
)

# References without foreign keys, as on ledger_transfers (see there).
trades = Table(
    "trades",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("market", String(40), nullable=False),
    Column("price", Amount, nullable=False),
    Column("quantity", Amount, nullable=False),
    Column("taker_order_id", String(32), nullable=False),  # orders.id
    Column("maker_order_id", String(32), nullable=False),  # orders.id
    Column("taker_side", String(4), nullable=False),
    Column("buyer_account_id", Id, nullable=False),  # accounts.id
    Column("seller_account_id", Id, nullable=False),  # accounts.id
    # Quote base units: the buyer paid buyer_paid + buyer_fee, the seller got
    # seller_gross - seller_fee; rounding = buyer_paid - seller_gross (0 or 1)
    # went to fees:revenue with both fees.
    Column("buyer_paid", Amount, nullable=False),
    Column("buyer_fee", Amount, nullable=False),
    Column("seller_gross", Amount, nullable=False),
    Column("seller_fee", Amount, nullable=False),
    Column("rounding", Amount, nullable=False),
    Column("batch_id", String(32), nullable=False),  # ledger_batches.id
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_trades_market_id", "market", "id"),
    Index("ix_trades_taker_order_id", "taker_order_id"),
)

# StreamMarketData reads this journal by cursor: trades and book-level changes,
# in commit order (one matching writer per database assigns the cursors).
market_data = Table(
    "market_data",
    metadata,
    Column("cursor", BigInteger, primary_key=True, autoincrement=False),
    Column("market", String(40), nullable=False),
    Column("type", String(16), nullable=False),  # trade, book
    Column("payload", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_market_data_market_cursor", "market", "cursor"),
)

# One matching engine writes to a database at a time (docs/matching.md): each
# engine takes the next epoch when it starts, and every one of its group
# transactions first checks that the epoch is still its own. An engine started
# later fences the earlier one out instead of both writing from stale books.
matching_engine = Table(
    "matching_engine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("epoch", BigInteger, nullable=False),
)

# CancelOrder's idempotency keys: (client, client_key) names one cancel of one
# order. Written only when the cancel succeeds (now or because the order was
# already cancelled), so a refused cancel does not use up its key.
order_cancels = Table(
    "order_cancels",
    metadata,
    Column("client", String(64), primary_key=True),
    Column("client_key", String(128), primary_key=True),
    Column("order_id", String(32), ForeignKey("orders.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# -- withdrawals (docs/withdrawals.md) ---------------------------------------------
# One row per RequestWithdrawal. (client, client_key) is the idempotency key;
# request_hash tells a retry from a different request under the same key.
withdrawals = Table(
    "withdrawals",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("client", String(64), nullable=False),
    Column("client_key", String(128), nullable=False),
    Column("request_hash", String(64), nullable=False),
    Column("account_id", Id, ForeignKey("accounts.id"), nullable=False),
    Column("asset", String(16), nullable=False),
    Column("chain", String(32), nullable=False),
    Column("to_address", String(128), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("fee", Amount, nullable=False),  # the asset's withdrawal fee, charged to the user
    Column("network_fee", Amount, nullable=True),  # this withdrawal's share of its transaction's fee
    Column("status", String(16), nullable=False),
    Column("reason", Text, nullable=True),  # why it was rejected, failed or refused
    Column("hold_id", String(32), ForeignKey("ledger_holds.id"), nullable=False),
    Column("batch_id", String(32), nullable=True),  # the transaction batch paying it
    Column("txid", String(80), nullable=True),  # the transaction that paid it, once known
    Column("requeues", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("client", "client_key", name="uq_withdrawals_client_key"),
    Index("ix_withdrawals_status", "status", "id"),  # and the pages of one status (custody/paging.py)
    Index("ix_withdrawals_account_created", "account_id", "created_at"),
    Index("ix_withdrawals_account_id", "account_id", "id"),  # the account's pages
    Index("ix_withdrawals_batch_id", "batch_id"),
)

# Every state change of a withdrawal: who, when, why.
withdrawal_history = Table(
    "withdrawal_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("withdrawal_id", String(32), ForeignKey("withdrawals.id"), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_withdrawal_history_withdrawal_id", "withdrawal_id"),
)

# Staff approvals: Ed25519 over the withdrawal's content (hsm/approvals.py format).
withdrawal_approvals = Table(
    "withdrawal_approvals",
    metadata,
    Column("withdrawal_id", String(32), ForeignKey("withdrawals.id"), nullable=False),
    Column("approver", String(64), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("withdrawal_id", "approver", name="pk_withdrawal_approvals"),
)

# One on-chain payment of a group of withdrawals (UTXO chains: one transaction
# with many outputs). Its identity is the set of outpoints it reserves, not a
# txid: every attempt (a fee bump) spends exactly the same inputs.
withdrawal_batches = Table(
    "withdrawal_batches",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("chain", String(32), nullable=False),
    # QUEUED, SIGNING, SIGNED, BROADCAST, CONFIRMING, COMPLETED, FAILED; CANCELLING / CANCELLED (a refused
    # batch's inputs spent back to the hot wallet); NEEDS_STAFF (inputs spent by a transaction not ours).
    Column("status", String(16), nullable=False),
    # "withdrawals" (pays withdrawals) or "consolidation" (hot-wallet coins merged into one).
    Column("kind", String(16), nullable=False, server_default="withdrawals"),
    Column("reason", Text, nullable=True),
    Column("psbt", LargeBinary, nullable=False),  # the unsigned transaction of the latest attempt
    Column("fee_rate", BigInteger, nullable=False),
    Column("fee", Amount, nullable=False),
    Column("txid", String(80), nullable=True),  # the attempt that confirmed
    Column("confirm_height", BigInteger, nullable=True),
    Column("broadcast_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_withdrawal_batches_status", "status", "id"),  # and the pages of one status
)

# Each signed transaction of a batch, stored before it is first broadcast.
withdrawal_attempts = Table(
    "withdrawal_attempts",
    metadata,
    Column("txid", String(80), primary_key=True),
    Column("batch_id", String(32), ForeignKey("withdrawal_batches.id"), nullable=False),
    # "payment" (pays the batch's outputs) or "cancel" (spends its inputs back to the hot wallet).
    Column("kind", String(16), nullable=False, server_default="payment"),
    Column("raw", LargeBinary, nullable=False),
    Column("fee", Amount, nullable=False),
    Column("fee_rate", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_withdrawal_attempts_batch_id", "batch_id"),
)

# UTXO reservations (FAILURE_MODES 7): an outpoint belongs to at most one
# batch, ever; taken in the same transaction as the batch's QUEUED state.
utxo_reservations = Table(
    "utxo_reservations",
    metadata,
    Column("chain", String(32), nullable=False),
    Column("txid", String(80), nullable=False),
    Column("output_index", Integer, nullable=False),
    Column("batch_id", String(32), ForeignKey("withdrawal_batches.id"), nullable=False),
    PrimaryKeyConstraint("chain", "txid", "output_index", name="pk_utxo_reservations"),
    Index("ix_utxo_reservations_batch_id", "batch_id"),
)

# The config that decides how chain data is read (FAILURE_MODES 34): one row
# per chain and per asset, pinned when first used. A job refuses to run while
# the config differs from its pin; `custody admin config accept` moves the pin
# and records the change in config_pin_changes (append-only).
config_pins = Table(
    "config_pins",
    metadata,
    Column("name", String(64), primary_key=True),  # "chain:bitcoin", "asset:BTC"
    Column("value", Text, nullable=False),  # JSON of the pinned fields
    Column("pinned_at", DateTime(timezone=True), nullable=False),
)

config_pin_changes = Table(
    "config_pin_changes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)
