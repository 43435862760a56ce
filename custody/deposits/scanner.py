"""One scanner per chain: follows the chain block by block from a stored cursor.

Per run: read the node's tip, refresh the watched set (so every address
issued before that tip is watched), then fetch blocks after the cursor and
apply them. Applying a group of blocks is one database transaction: deposits
and UTXOs recorded, due deposits credited through the ledger, the blocks
remembered and the cursor moved (compare-and-set), all or nothing. A crash
at any moment leaves the cursor at the last group that committed; the next
run continues from there with no gap and no double credit (FAILURE_MODES 16,
18).

A block whose parent is not the cursor (or a cursor no longer on the best
chain) means a reorg: walk back through the remembered blocks to the fork,
then in one transaction orphan the pending deposits above it, reverse the
credited ones (flagged ledger correction, account frozen, alert event), and
unwind the UTXO set (FAILURE_MODES 6).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time

import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from chains.base import Block, BlockNotFound, ChainError, ChainPlugin, NodeUnavailable, Watch, WrongNetwork
from custody.config import AssetConfig, ChainConfig
from custody.db.engine import read_transaction, write_transaction
from custody.deposits import store
from custody.deposits.model import (
    CREDITED,
    DEPOSIT_WALLET,
    ON_CHAIN,
    ORPHANED,
    REVERSED,
    confirmations,
    credit_due,
    decided_before,
    policy_status,
    required_confirmations,
)
from custody.deposits.store import Cursor
from custody.errors import ScannerHalted
from custody.jobs import locks
from custody.ledger.commands import BatchResult, Command
from custody.ledger.engine import AccountIds, apply_commands
from custody.ledger.model import Posting, user_available, wallet

log = structlog.get_logger("custody.scanner")
stdlog = logging.getLogger(__name__)


# Loading more watched keys than this at once freezes them out of the garbage collector.
FREEZE_AFTER = 10_000
# Blocks below the starting cursor remembered when a scanner first starts.
START_HISTORY = 6
# How long an address id skipped by a refresh is looked for again (an issuing
# transaction that has not committed by then has rolled back).
GAP_WAIT_S = 600.0
MAX_GAP = 1_000
# Blocks of backfill requests rescanned per run, so new blocks are not held up for long.
BACKFILL_BLOCKS_PER_RUN = 2_000
# Times in a row a run reads the tip again because the node's blocks did not match it (a reorg
# under us) before it gives up until the next tick: a node that keeps announcing a tip it cannot
# serve would otherwise keep the run spinning on it, holding the scan lock.
MAX_REREADS_PER_RUN = 5
# Reorgs unwound back to back in a run, with no block applied on top, before it backs off.
MAX_UNWINDS_IN_A_ROW = 2


@dataclasses.dataclass(frozen=True)
class RunResult:
    applied: int = 0
    reorgs: int = 0
    height: int | None = None
    busy: bool = False
    backfilled: int = 0  # blocks below the cursor rescanned for backfill requests


@dataclasses.dataclass(frozen=True)
class TickResult:
    status: str  # "ok", "busy", "waiting", "node unavailable", "halted", "error"
    applied: int = 0
    detail: str = ""


class Scanner:
    # Backoff between failed runs: base * 2^failures, capped.
    BACKOFF_BASE_S = 1.0
    BACKOFF_MAX_S = 60.0

    def __init__(self, engine: Engine, plugin: ChainPlugin, config: ChainConfig, assets: tuple[AssetConfig, ...],
                 notify=None, clock=time.monotonic):
        self.engine = engine
        self.plugin = plugin
        self.config = config
        self.chain = config.name
        native = [a for a in assets if a.chain == self.chain and not a.contract]
        if not native:
            raise ValueError(f"no [[assets]] entry for the native asset of chain {self.chain!r} (chain = "
                             f"\"{self.chain}\", no contract)")
        self.asset = native[0]
        self.notify = notify
        self.clock = clock
        self.ids = AccountIds()
        self.keys: dict[bytes, int] = {}  # watch key -> chain_addresses.id
        self._last_address_id = 0
        self._halt_alerted: tuple[int, str] | None = None
        self._network_alerted = False  # alert.node_wrong_network sent for the current mismatch
        self._gaps: dict[int, float] = {}  # address ids skipped by a refresh -> when first missed
        self.outpoints: set[tuple[str, int]] | None = None  # unspent outputs we own
        # The cursor row's stamp as this instance last wrote it (_check_cursor): another means another
        # instance recorded since, and the outpoints are read again.
        self._stamp = self._pending_stamp = None
        self._mutex = threading.Lock()
        self.failures = 0
        self.next_attempt = 0.0

    # -- entry points --------------------------------------------------------------------
    def tick(self, max_blocks: int | None = None) -> TickResult:
        """One scheduled run: never raises; after a failure it waits longer each time."""
        if self.clock() < self.next_attempt:
            return TickResult("waiting")
        try:
            result = self.run_once(max_blocks)
        except NodeUnavailable as exc:
            return self._failed("node unavailable", exc, logging.WARNING)
        except ScannerHalted as exc:
            return self._failed("halted", exc, logging.ERROR)
        except Exception as exc:  # a bug or a database outage: keep the job alive, retry later
            stdlog.exception("scanner %s failed", self.chain)
            return self._failed("error", exc, logging.ERROR)
        self.failures = 0
        self.next_attempt = 0.0
        return TickResult("busy" if result.busy else "ok", result.applied)

    def catch_up(self) -> RunResult:
        """Runs until the cursor is at the node's tip (raises on failure)."""
        total = RunResult()
        while True:
            result = self.run_once()
            total = RunResult(total.applied + result.applied, total.reorgs + result.reorgs, result.height,
                              backfilled=total.backfilled + result.backfilled)
            if result.busy or result.applied == result.backfilled == 0:
                return total

    def run_once(self, max_blocks: int | None = None) -> RunResult:
        """Applies blocks from the cursor up to the tip read at the start (or max_blocks)."""
        if not self._mutex.acquire(blocking=False):
            return RunResult(busy=True)
        try:
            with self._exclusive() as mine:
                if not mine:
                    return RunResult(busy=True)
                return self._run(max_blocks)
        finally:
            self._mutex.release()

    # -- the loop --------------------------------------------------------------------------
    def _run(self, max_blocks: int | None) -> RunResult:
        try:
            self.plugin.check_network()
        except WrongNetwork as exc:
            self._alert_wrong_network(str(exc))
            raise ScannerHalted(f"{self.chain}: {exc}") from None
        self._network_alerted = False
        cursor = self._cursor()
        with read_transaction(self.engine) as conn:
            stamp = store.cursor_stamp(conn, self.chain)
        if stamp != self._stamp:
            # Another instance recorded blocks or a rescan since this one did (the scan lock passes
            # between instances): our unspent outputs in memory miss what it recorded, and a spend
            # of one of them would go unseen. Read them again; every recording transaction of this
            # run checks that the stamp is still this one (_check_cursor).
            self.outpoints, self._stamp = None, stamp
        applied = reorgs = rereads = unwound = 0
        backfilled = self._backfill(cursor, BACKFILL_BLOCKS_PER_RUN)

        def read_again(why: str) -> int:
            if rereads + 1 >= MAX_REREADS_PER_RUN:
                raise NodeUnavailable(f"{why}, {MAX_REREADS_PER_RUN} times in a row: the node does not serve "
                                      f"the chain it announces (tip {tip.height}, cursor {cursor.height})")
            return rereads + 1

        while max_blocks is None or applied < max_blocks:
            tip = self.plugin.tip()
            self._refresh_watch()  # after the tip: every address issued before it is watched
            if cursor.height > tip.height and self._node_behind(tip):
                log.warning("node is behind the scan cursor on the same chain; waiting for it", chain=self.chain,
                            cursor=cursor.height, node_tip=tip.height)
                break
            if cursor.height >= tip.height and (cursor.height, cursor.hash) != (tip.height, tip.hash):
                if cursor.height > tip.height or self.plugin.block_hash(cursor.height) != cursor.hash:
                    unwound = self._unwind_again(unwound, cursor, tip)
                    cursor = self._unwind(cursor, tip)
                    reorgs += 1
                    continue
            if cursor.height >= tip.height:
                break
            count = min(self.config.blocks_per_commit, tip.height - cursor.height)
            if max_blocks is not None:
                count = min(count, max_blocks - applied)
            try:
                blocks = self.plugin.fetch_blocks(cursor.height + 1, count, Watch(self.keys, self.outpoints))
            except BlockNotFound:
                rereads = read_again("a block below the node's tip was not found")
                continue  # the chain changed under us: read the tip again
            linked = _linked(cursor, blocks)
            if not linked:
                if blocks:
                    unwound = self._unwind_again(unwound, cursor, tip)
                    cursor = self._unwind(cursor, tip)
                    reorgs += 1
                else:
                    rereads = read_again("the node returned no blocks below its tip")
                continue
            if not self._on_best_chain(linked[-1]) or not self._tip_still_best(tip, linked[-1]):
                # Fetched ahead, then replaced by a reorg: applied, they would count confirmations on
                # a branch the node has left, credit deposits and then reverse them and freeze the
                # accounts. Their last block still on the best chain vouches for all of them. And the
                # tip read before the watched set was refreshed must still be on it: a block a reorg
                # brought in after that read may pay an address issued after the refresh, which this
                # run does not watch (no block older than an address can pay it).
                log.warning("blocks fetched are no longer on the best chain; fetching again", chain=self.chain,
                            heights=f"{linked[0].height}..{linked[-1].height}")
                rereads = read_again("blocks fetched were no longer on the node's best chain")
                continue
            cursor = self._apply(cursor, linked)
            applied += len(linked)
            rereads = unwound = 0
        return RunResult(applied, reorgs, cursor.height, backfilled=backfilled)

    def _unwind_again(self, unwound: int, cursor: Cursor, tip) -> int:
        """Unwinds in a row in this run, this one included. A node whose best chain flips back and
        forth (two nodes behind a round-robin proxy during a stale-block race) would otherwise have
        the run unwind and re-apply without end, crediting and reversing deposits each time."""
        if unwound >= MAX_UNWINDS_IN_A_ROW:
            raise NodeUnavailable(f"{self.chain}: the node's best chain changed {unwound} times in a row "
                                  f"(cursor {cursor.height}, tip {tip.height}); waiting for it to settle")
        return unwound + 1

    def _tip_still_best(self, tip, last: Block) -> bool:
        if last.height == tip.height:  # the common case, a group ending at the tip: no call
            return last.hash == tip.hash
        return self._on_best_chain(tip)

    def _on_best_chain(self, block: Block) -> bool:
        try:
            return self.plugin.block_hash(block.height) == block.hash
        except BlockNotFound:
            return False

    def _node_behind(self, tip) -> bool:
        """The node's tip is a block we applied: the node is behind on our chain (restarting,
        syncing, a failover to another node), not on another branch, since a prefix of our chain
        has less work and cannot be the best one. Unwinding to it would orphan and reverse
        deposits still on chain and freeze their accounts."""
        with read_transaction(self.engine) as conn:
            return store.remembered_hash(conn, self.chain, tip.height) == tip.hash

    def ensure_cursor(self) -> Cursor:
        """The scan cursor, created at the node's tip (or start_height) if there is none yet; the
        node must serve the configured network (WrongNetwork)."""
        self.plugin.check_network()
        try:
            return self._cursor()
        except IntegrityError:  # another instance created it at the same moment
            return self._cursor()

    def _cursor(self) -> Cursor:
        with read_transaction(self.engine) as conn:
            cursor = store.load_cursor(conn, self.chain)
        if cursor is not None:  # read under today's settings: the config pins (custody/config_pins.py) say so
            return cursor
        if self.config.start_height is not None:
            height = max(0, self.config.start_height - 1)
            start = Cursor(height, self.plugin.block_hash(height))
        else:
            tip = self.plugin.tip()
            start = Cursor(tip.height, tip.hash)
        # Remember a few blocks below the start too, so that a reorg of the
        # starting block itself can be unwound like any other.
        below = [(h, self.plugin.block_hash(h), "") for h in range(max(0, start.height - START_HISTORY), start.height)]
        with write_transaction(self.engine) as conn:
            if store.load_cursor(conn, self.chain) is None:
                store.create_cursor(conn, self.chain, start)
                store.record_blocks(conn, self.chain, [*below, (start.height, start.hash, "")],
                                    self.config.max_reorg_depth)
                log.info("scan cursor created", chain=self.chain, height=start.height, hash=start.hash)
        return self._cursor()

    def _refresh_watch(self) -> None:
        """Loads addresses registered since the last refresh. On PostgreSQL ids
        are handed out before commit, so an id below the newest one seen may
        commit later: such gaps are asked for again for GAP_WAIT_S, and an
        address found that way gets a backfill from its creation height
        (FAILURE_MODES 23: registered, yet never watched)."""
        late = []
        with read_transaction(self.engine) as conn:
            new = store.addresses_after(conn, self.chain, self._last_address_id)
            if self._gaps:
                late = store.addresses_by_id(conn, self.chain, self._gaps)
            if self.outpoints is None:
                self.outpoints = store.unspent_outpoints(conn, self.chain)
        now = self.clock()
        expected = self._last_address_id + 1
        for address_id, key in new:
            self.keys[key] = address_id
            # Ids skipped may belong to transactions still open (at most a few at once).
            self._gaps.update(dict.fromkeys(range(max(expected, address_id - MAX_GAP), address_id), now))
            expected = address_id + 1
            self._last_address_id = address_id
        for address_id, key, created_height in late:
            self.keys[key] = address_id
            del self._gaps[address_id]
            self._backfill_late_address(address_id, created_height)
        oldest = self._last_address_id - MAX_GAP  # ids in flight are among the newest (and other chains' ids too)
        for address_id, since in list(self._gaps.items()):
            if now - since > GAP_WAIT_S or address_id <= oldest:
                del self._gaps[address_id]
        if len(new) > FREEZE_AFTER:
            # A million watched keys would otherwise be traversed by every
            # full garbage collection while blocks are parsed; they live as
            # long as the process, so take them out of the collector's view.
            gc.freeze()

    def _backfill_late_address(self, address_id: int, created_height: int | None) -> None:
        with write_transaction(self.engine) as conn:
            cursor = store.load_cursor(conn, self.chain)
            if cursor is None or created_height is None or created_height >= cursor.height:
                return
            store.request_backfill(conn, self.chain, created_height + 1,
                                   f"address {address_id} committed after the scanner had passed height "
                                   f"{created_height}")
        log.warning("address watched late; backfill requested", chain=self.chain, address_id=address_id,
                    from_height=created_height + 1)

    # -- applying blocks -----------------------------------------------------------------------
    def _apply(self, cursor: Cursor, blocks: list[Block]) -> Cursor:
        new_cursor = Cursor(blocks[-1].height, blocks[-1].hash)
        with self._recording() as conn:
            self._check_cursor(conn, cursor, self._stamp)
            events, created, spent = self._record_blocks(conn, blocks, new_cursor.height, backfill=False)
            store.record_blocks(conn, self.chain, [(b.height, b.hash, b.parent_hash) for b in blocks],
                                self.config.max_reorg_depth)
            store.move_cursor(conn, self.chain, cursor, new_cursor)
            last_event = store.emit_events(conn, events)
        self.outpoints.update(created)
        self.outpoints.difference_update(spent)
        self._notify(last_event)
        return new_cursor

    @contextlib.contextmanager
    def _recording(self):
        """The write transaction that records blocks. If it fails, the outputs it
        created and spent may be committed or not (a connection lost during the
        commit), so the set of our unspent outputs kept in memory is dropped and
        read again before the next fetch: a stale one would miss our own spends."""
        self._pending_stamp = None
        try:
            with self.ids.write_transaction(self.engine) as conn:
                yield conn
        except BaseException:
            self.outpoints = None
            raise
        self._stamp = self._pending_stamp  # committed: the cursor row now says this instance wrote last

    def _check_cursor(self, conn, cursor: Cursor, stamp=None) -> None:
        """First in every transaction that records: the cursor is still where this run read it
        (and, given its stamp, nothing was recorded since); then the row is stamped, so a run can
        tell whether anyone else recorded since (_run)."""
        current = store.load_cursor(conn, self.chain, for_update=True)
        if current is None or (current.height, current.hash) != (cursor.height, cursor.hash):
            raise store.CursorMoved(f"{self.chain}: cursor moved by another scanner")
        if stamp is not None and store.cursor_stamp(conn, self.chain) != stamp:
            raise store.CursorMoved(f"{self.chain}: another scanner recorded blocks meanwhile")
        self._pending_stamp = store.stamp_cursor(conn, self.chain)

    def _record_blocks(self, conn, blocks: list[Block], view: int, backfill: bool):
        """Records the blocks' receipts (UTXOs, deposits) and spends, credits
        what is due at view; returns (events, outpoints created, outpoints spent).
        backfill: blocks the scanner applied before; outputs and deposits
        already recorded are left as they are (the deposit key dedupes)."""
        events: list[tuple[str, dict]] = []
        created, spent = [], []
        receipts = [(b, r) for b in blocks for r in b.receipts]
        keys = [(r.txid, r.index) for _, r in receipts]
        owners = store.address_rows(conn, {self.keys[r.watch_key] for _, r in receipts})
        existing = store.deposits_by_key(conn, self.chain, keys)
        known = store.known_utxos(conn, self.chain, keys) if backfill else set()
        utxo_rows, spends = [], []
        for block, r in receipts:
            owner = owners[self.keys[r.watch_key]]
            if (r.txid, r.index) not in known:
                utxo_rows.append({
                    "chain": self.chain, "txid": r.txid, "output_index": r.index, "address_id": owner["id"],
                    "wallet": owner["wallet"], "amount": r.amount, "coinbase": r.coinbase,
                    "block_height": block.height, "block_hash": block.hash})
                created.append((r.txid, r.index))
            if owner["wallet"] == DEPOSIT_WALLET and not r.asset_contract:
                before = existing.get((r.txid, r.index))
                if backfill and before is not None and before["status"] in ON_CHAIN:
                    continue  # seen by the scanner already: one deposit per key (FAILURE_MODES 16)
                if before is not None and before["status"] == CREDITED and before["block_hash"] == block.hash:
                    continue  # kept across a reorg by _unwind, which moved it to this block
                events.append(self._record_deposit(conn, block, r, owner, before, view))
        for block in blocks:
            for sp in block.spends:
                spends.append((sp.spent_txid, sp.spent_index, sp.txid, block.height))
                spent.append((sp.spent_txid, sp.spent_index))
        store.add_utxos(conn, utxo_rows)
        store.spend_utxos(conn, self.chain, spends)
        events += self._credit_due(conn, view)
        return events, created, spent

    # -- backfills: rescans of blocks below the cursor (FAILURE_MODES 23) -------------------------
    def _backfill(self, cursor: Cursor, budget: int) -> int:
        """Works through the open backfill requests, up to `budget` blocks; returns
        the blocks rescanned. Each chunk is one transaction (its deposits, UTXOs,
        credits and the request's progress); the cursor is checked, never moved.
        A chunk that is not on the cursor's chain (a reorg under way) stops the
        backfill for this run: the main loop unwinds first, the backfill goes on
        next run. A request whose blocks the node cannot serve is stopped for
        good, with an alert (_fail_backfill)."""
        with read_transaction(self.engine) as conn:
            requests = store.open_backfills(conn, self.chain)
        if not requests:
            return 0
        # Again after reading the requests: an address registered together with
        # its request is then surely watched.
        self._refresh_watch()
        done = 0
        for req in requests:
            # Up to the cursor as it is now, even if it moved since an earlier run
            # of this backfill: an output found here and spent in a block the
            # main loop applied before it was known is then seen spent too.
            start, end = req["next_height"], cursor.height
            while start <= end and done < budget:
                count = min(self.config.blocks_per_commit, end - start + 1, budget - done)
                try:
                    blocks = self.plugin.fetch_blocks(start, count, Watch(self.keys, self.outpoints))
                except NodeUnavailable:
                    raise  # the node is down: the whole run backs off
                except ChainError as exc:
                    if self._on_best_chain(cursor):  # and so every block below it: the node can't serve them
                        self._fail_backfill(req, start, exc)
                        break
                    blocks = []  # a reorg under way: paused below
                if len(blocks) != count or not self._on_cursor_chain(blocks, cursor):
                    log.warning("backfill paused: the chain changed under it", chain=self.chain,
                                backfill_id=req["id"], height=start)
                    return done
                start = blocks[-1].height + 1
                with self._recording() as conn:
                    self._check_cursor(conn, cursor, self._stamp)
                    events, created, spent = self._record_blocks(conn, blocks, cursor.height, backfill=True)
                    still_open = store.set_backfill(conn, req["id"], next_height=start, to_height=end)
                    last_event = store.emit_events(conn, events)
                self.outpoints.update(created)
                self.outpoints.difference_update(spent)
                self._notify(last_event)
                done += len(blocks)
                log.info("backfill chunk applied", chain=self.chain, backfill_id=req["id"],
                         heights=f"{blocks[0].height}..{blocks[-1].height}",
                         deposit_events=sum(1 for kind, _ in events if kind.startswith("deposit.")))
                if not still_open:  # cancelled by staff meanwhile (what it found stays recorded)
                    log.warning("backfill cancelled while running", chain=self.chain, backfill_id=req["id"])
                    break
            if start > end:  # caught up with the cursor: the main loop scans what comes next
                with write_transaction(self.engine) as conn:
                    store.set_backfill(conn, req["id"], to_height=end, finished_at=store.now())
            if done >= budget:
                break
        return done

    def _on_cursor_chain(self, blocks: list[Block], cursor: Cursor) -> bool:
        """True if the blocks link up and the last is an ancestor of the cursor:
        the node has both at their heights on its best chain (one batch)."""
        if _linked(Cursor(blocks[0].height - 1, blocks[0].parent_hash), blocks) != blocks:
            return False
        return self._on_best_chain(blocks[-1]) and self._on_best_chain(cursor)

    def _fail_backfill(self, req: dict, height: int, exc: ChainError) -> None:
        """Stops a request whose blocks the node cannot serve while the cursor is on its best
        chain (a pruned node: "Block not available"), with one alert. Left open, it would fail
        every run before the main loop and no new block would ever be applied."""
        reason = f"failed at height {height}: {exc}"
        with write_transaction(self.engine) as conn:
            if not store.stop_backfill(conn, req["id"], reason):
                return  # cancelled meanwhile
            last_event = store.emit_events(conn, [("alert.rescan_failed", {
                "chain": self.chain, "backfill_id": str(req["id"]), "from_height": req["from_height"],
                "height": height, "error": str(exc)[:200],
                "action": f"blocks from {height} not rescanned; once the node serves them: custody scan rescan "
                          f"--from-height {height}"})])
        log.error("ALERT backfill stopped: the node cannot serve its blocks", chain=self.chain,
                  backfill_id=req["id"], height=height, error=str(exc))
        self._notify(last_event)

    def _record_deposit(self, conn, block: Block, receipt, owner: dict, existing: dict | None,
                        view: int) -> tuple[str, dict]:
        """PENDING, or BELOW_MINIMUM / ASSET_DISABLED with the reason (never credited).
        The asset's policy decides when the transaction is first seen; mined again after a reorg,
        the deposit keeps that decision."""
        if existing is None:
            status, reason = policy_status(receipt.amount, self.asset.asset, self.asset.min_deposit,
                                           self.asset.deposits_enabled)
        else:
            status, reason = decided_before(existing["reason"], receipt.amount, self.asset.asset)
        where = {"status": status, "reason": reason, "block_height": block.height, "block_hash": block.hash}
        if existing is None:
            deposit_id = store.insert_deposit(
                conn, chain=self.chain, txid=receipt.txid, output_index=receipt.index, address_id=owner["id"],
                account_id=owner["account_id"], asset=self.asset.asset, amount=receipt.amount,
                coinbase=receipt.coinbase, **where)
            row = {"id": deposit_id, "account_id": owner["account_id"], "amount": receipt.amount}
        elif existing["status"] in (ORPHANED, REVERSED):  # re-mined after a reorg: same key, same deposit
            store.set_deposit(conn, existing["id"], **where)
            row = existing
        else:
            raise ScannerHalted(f"{self.chain}: deposit {receipt.txid}:{receipt.index} is {existing['status']} "
                                f"in block {existing['block_hash']} yet appears again in {block.hash}")
        if reason:
            log.warning("deposit outside policy: recorded, not credited", chain=self.chain, deposit_id=row["id"],
                        account_id=row["account_id"], amount=str(receipt.amount), txid=receipt.txid,
                        index=receipt.index, status=status, reason=reason)
        return f"deposit.{status.lower()}", self._payload(
            row["id"], row["account_id"], receipt.txid, receipt.index, row["amount"], status, block.height,
            block.hash, view, **({"reason": reason} if reason else {}))

    def _credit_due(self, conn, view: int) -> list[tuple[str, dict]]:
        due = [d for d in store.pending_deposits(conn, self.chain)
               if credit_due(d["block_height"], view, required_confirmations(
                   self.asset.confirmations, d["coinbase"], self.plugin.params.coinbase_maturity))]
        if not due:
            return []
        commands = [Command(
            kind="deposit", actor=f"scanner:{self.chain}",
            postings=(Posting(d["asset"], wallet(self.chain, DEPOSIT_WALLET), user_available(d["account_id"]),
                              d["amount"]),),
            reference=f"deposit:{d['id']}", memo=f"{d['txid']}:{d['output_index']}",
            must_exist=(d["account_id"],)) for d in due]
        results = apply_commands(conn, commands, self.ids)
        events = []
        for d, result in zip(due, results):
            if not isinstance(result, BatchResult):
                raise ScannerHalted(f"{self.chain}: crediting deposit {d['id']} failed: {result}")
            store.set_deposit(conn, d["id"], status=CREDITED, credit_batch_id=result.batch_id)
            events.append(("deposit.credited", self._payload(
                d["id"], d["account_id"], d["txid"], d["output_index"], d["amount"], CREDITED, d["block_height"],
                d["block_hash"], view, batch_id=result.batch_id)))
            log.info("deposit credited", chain=self.chain, deposit_id=d["id"], account_id=d["account_id"],
                     amount=str(d["amount"]), txid=d["txid"], index=d["output_index"])
        return events

    # -- reorgs ----------------------------------------------------------------------------------
    def _unwind(self, cursor: Cursor, tip) -> Cursor:
        with read_transaction(self.engine) as conn:
            remembered = store.recent_blocks(conn, self.chain, self.config.max_reorg_depth + 1)
        fork = None
        for height, block_hash in remembered:
            if height <= tip.height and self.plugin.block_hash(height) == block_hash:
                fork = Cursor(height, block_hash)
                break
        if fork is None:
            log.error("ALERT reorg deeper than the scanner can unwind", chain=self.chain, cursor=cursor.height,
                      max_reorg_depth=self.config.max_reorg_depth)
            self._alert_halted(cursor, tip)
            raise ScannerHalted(f"{self.chain}: no block remembered below height {cursor.height} is on the best "
                                f"chain any more (reorg deeper than {self.config.max_reorg_depth}); halting")
        events: list[tuple[str, dict]] = []
        new_cursor = fork
        # The new branch is applied in the same transaction as the unwind, so a credited deposit it
        # holds again (a stale tip replaced by a block with the same transactions) is kept, not
        # reversed with its account frozen and credited again a moment later. Its blocks are read
        # first, with our outputs as the unwind will leave them, so no lock is held while the node
        # answers; the stamp says nothing was recorded between that read and the transaction.
        with read_transaction(self.engine) as conn:
            stamp = store.cursor_stamp(conn, self.chain)
            outpoints = store.unspent_outpoints_at(conn, self.chain, fork.height)
        replacement = self._replacement(fork, cursor, tip, outpoints)
        view = replacement[-1].height if replacement else fork.height
        with self._recording() as conn:
            # The cursor row first, as every transaction that acts on what the scanner recorded
            # takes it first (the withdrawal sender's completion): no deadlock between the two.
            self._check_cursor(conn, cursor, stamp)
            store.unwind_utxos(conn, self.chain, fork.height)
            again = {(r.txid, r.index): b for b in replacement for r in b.receipts}
            reversals = []
            for d in store.deposits_above(conn, self.chain, fork.height):
                block = again.get((d["txid"], d["output_index"]))
                if d["status"] == CREDITED and block is not None and credit_due(block.height, view, required_confirmations(
                        self.asset.confirmations, d["coinbase"], self.plugin.params.coinbase_maturity)):
                    store.set_deposit(conn, d["id"], block_height=block.height, block_hash=block.hash)
                    events.append(("deposit.remined", self._payload(
                        d["id"], d["account_id"], d["txid"], d["output_index"], d["amount"], CREDITED,
                        block.height, block.hash, view)))
                elif d["status"] == CREDITED:
                    reversals.append(d)
                else:  # PENDING, or outside policy: nothing was credited, nothing to take back
                    store.set_deposit(conn, d["id"], status=ORPHANED)
                    events.append(("deposit.orphaned", self._payload(
                        d["id"], d["account_id"], d["txid"], d["output_index"], d["amount"], ORPHANED,
                        d["block_height"], d["block_hash"], fork.height)))
            events += self._reverse(conn, reversals, cursor, fork)
            store.move_cursor(conn, self.chain, cursor, fork)
            if replacement:
                new_cursor = Cursor(view, replacement[-1].hash)
                applied, _, _ = self._record_blocks(conn, replacement, view, backfill=False)
                events += applied
                store.record_blocks(conn, self.chain, [(b.height, b.hash, b.parent_hash) for b in replacement],
                                    self.config.max_reorg_depth)
                store.move_cursor(conn, self.chain, fork, new_cursor)
            last_event = store.emit_events(conn, events)
        self.outpoints = None  # reloaded from the unwound UTXO set on the next refresh
        self._refresh_watch()
        log.warning("reorg unwound", chain=self.chain, from_height=cursor.height, from_hash=cursor.hash,
                    fork_height=fork.height, fork_hash=fork.hash, depth=cursor.height - fork.height,
                    applied_to=new_cursor.height,
                    orphaned=sum(1 for e in events if e[0] == "deposit.orphaned"),
                    remined=sum(1 for e in events if e[0] == "deposit.remined"),
                    reversed=sum(1 for e in events if e[0] == "deposit.reversed"))
        self._notify(last_event)
        return new_cursor

    def _replacement(self, fork: Cursor, cursor: Cursor, tip, outpoints) -> list[Block]:
        """The new branch's blocks above the fork (at least as many as were unwound, if the node has
        them), read for the unwind's own transaction; outpoints: our unspent outputs as of the fork."""
        count = min(tip.height - fork.height, max(self.config.blocks_per_commit, cursor.height - fork.height))
        if count <= 0:
            return []
        try:
            blocks = self.plugin.fetch_blocks(fork.height + 1, count, Watch(self.keys, outpoints))
        except BlockNotFound:
            blocks = []
        if (not blocks or _linked(fork, blocks) != blocks or not self._on_best_chain(blocks[-1])
                or not self._tip_still_best(tip, blocks[-1])):
            # The chain moved again while we read it: roll back, the next run starts over. The tip
            # read before the watched set was refreshed must still be on it, as in the main loop: a
            # reorg after that read may bring in a block paying an address issued after the refresh,
            # which these blocks were read without (the payment was never recorded).
            raise NodeUnavailable(f"{self.chain}: the node's best chain changed while a reorg was unwound")
        return blocks

    def _alert_wrong_network(self, reason: str) -> None:
        """One alert event while the node serves another network (staff need one page, not one a minute)."""
        if self._network_alerted:
            return
        with write_transaction(self.engine) as conn:
            last_event = store.emit_events(conn, [("alert.node_wrong_network", {
                "chain": self.chain, "reason": reason,
                "action": "scanner halted; nothing read or credited until the node and the config agree"})])
        self._network_alerted = True
        self._notify(last_event)

    def _alert_halted(self, cursor: Cursor, tip) -> None:
        """One alert event per halt (the scheduler retries; staff need one page, not one a minute)."""
        if self._halt_alerted == (cursor.height, cursor.hash):
            return
        with write_transaction(self.engine) as conn:
            last_event = store.emit_events(conn, [("alert.reorg_too_deep", {
                "chain": self.chain, "cursor_height": cursor.height, "cursor_hash": cursor.hash,
                "node_tip_height": tip.height, "node_tip_hash": tip.hash,
                "max_reorg_depth": self.config.max_reorg_depth,
                "action": "scanner halted; nothing was unwound or credited (docs/deposits.md, deep reorgs)"})])
        self._halt_alerted = (cursor.height, cursor.hash)
        self._notify(last_event)

    def _reverse(self, conn, credited: list[dict], cursor: Cursor, fork: Cursor) -> list[tuple[str, dict]]:
        """Credited deposits whose block is gone: a flagged compensating transfer,
        the account frozen for withdrawals, an alert."""
        if not credited:
            return []
        reason = (f"reorg at {self.chain} height {fork.height + 1}..{cursor.height} dropped credited deposits")
        commands = [Command(
            kind="deposit_reversal", actor=f"scanner:{self.chain}",
            postings=(Posting(d["asset"], user_available(d["account_id"]), wallet(self.chain, DEPOSIT_WALLET),
                              d["amount"]),),
            reference=f"deposit:{d['id']}", memo=f"{d['txid']}:{d['output_index']}: {reason}",
            flagged=True) for d in credited]
        for d in credited:
            store.freeze_account(conn, d["account_id"], f"deposit {d['id']} reversed: {reason}")
        results = apply_commands(conn, commands, self.ids)
        events = []
        for d, result in zip(credited, results):
            if not isinstance(result, BatchResult):
                raise ScannerHalted(f"{self.chain}: reversing deposit {d['id']} failed: {result}")
            store.set_deposit(conn, d["id"], status=REVERSED, reversal_batch_id=result.batch_id)
            payload = self._payload(d["id"], d["account_id"], d["txid"], d["output_index"], d["amount"], REVERSED,
                                    d["block_height"], d["block_hash"], fork.height, batch_id=result.batch_id)
            events.append(("deposit.reversed", payload))
            events.append(("alert.deposit_reversed", {**payload, "account_frozen": True, "reason": reason}))
            log.error("ALERT credited deposit reversed by a reorg; account frozen", chain=self.chain,
                      deposit_id=d["id"], account_id=d["account_id"], amount=str(d["amount"]), txid=d["txid"],
                      index=d["output_index"], batch_id=result.batch_id)
        return events

    # -- helpers ------------------------------------------------------------------------------------
    def _payload(self, deposit_id, account_id, txid, index, amount, status, block_height, block_hash, view,
                 **extra) -> dict:
        return {"deposit_id": str(deposit_id), "account_id": str(account_id), "chain": self.chain,
                "asset": self.asset.asset, "txid": txid, "index": index, "amount": str(amount), "status": status,
                "block_height": block_height, "block_hash": block_hash,
                "confirmations": confirmations(view, block_height) if status in ON_CHAIN else 0,
                **extra}

    def _notify(self, last_event: int | None) -> None:
        if last_event is not None and self.notify is not None:
            self.notify(last_event)

    def _failed(self, status: str, exc: Exception, level: int) -> TickResult:
        self.failures += 1
        delay = min(self.BACKOFF_BASE_S * 2 ** (self.failures - 1), self.BACKOFF_MAX_S)
        self.next_attempt = self.clock() + delay
        log.log(level, "scanner run failed", chain=self.chain, status=status, error=str(exc),
                failures=self.failures, retry_in_s=delay)
        return TickResult(status, 0, str(exc))

    def _exclusive(self):
        """One scanner per chain runs, across all instances (DESIGN 6); the cursor's compare-and-set
        protects either way."""
        return locks.exclusive(self.engine, f"custody.scan.{self.chain}")


def _linked(cursor: Cursor, blocks: list[Block]) -> list[Block]:
    """The leading blocks that extend the cursor one parent at a time."""
    out, parent = [], cursor.hash
    for block in blocks:
        if block.parent_hash != parent:
            break
        out.append(block)
        parent = block.hash
    return out


__all__ = ["Scanner", "ScannerHalted", "RunResult", "TickResult", "ChainError"]
