"""The custody core's use cases, wired to one database. gRPC, the CLI, the demo
and the tests all go through this object; none of it knows about gRPC."""
from __future__ import annotations

import concurrent.futures

from custody import config as config_mod
from custody.accounts import service as accounts
from custody.db.engine import make_engine
from custody.errors import InvalidArgument
from custody.events.journal import EventNotifier, read_after
from custody.ledger.commands import BatchResult, Command, Idempotency, parse_idempotency_key
from custody.ledger.engine import LedgerWriter
from custody.ledger.model import EQUITY, Posting, user_available
from custody.money import parse_amount
from matching_stub.service import MatchingService

MAX_MEMO = 256
MIN_REASON, MAX_REASON = 3, 512


class Custody:
    def __init__(self, config: config_mod.Config):
        self.config = config
        self.engine = make_engine(config.database_url)
        self.notifier = EventNotifier()
        self.writer = LedgerWriter(self.engine, max_group=config.server.max_group_commit)
        self.writer.on_commit(self.notifier.notify)
        # Order books; fills are ledger batches too, so they wake StreamEvents readers.
        self.matching = MatchingService(config, self.engine, on_ledger_commit=self.notifier.notify)

    def close(self) -> None:
        self.matching.close()
        self.writer.close()
        self.engine.dispose()

    # -- accounts -----------------------------------------------------------
    def create_account(self, external_id: str) -> accounts.Account:
        return accounts.create_account(self.engine, external_id)

    def get_balances(self, account_id: str) -> tuple[int, list[accounts.Balance]]:
        account = accounts.parse_account_id(account_id)
        return account, accounts.get_balances(self.engine, account, [a.asset for a in self.config.assets])

    def list_assets(self) -> tuple[config_mod.AssetConfig, ...]:
        return self.config.assets

    # -- ledger -------------------------------------------------------------
    def submit_transfer(
        self, client: str, idempotency_key: str, from_account_id: str, to_account_id: str,
        asset: str, amount: str, memo: str = "",
    ) -> concurrent.futures.Future:
        """Validates, then queues the transfer; the future gives its BatchResult."""
        key = parse_idempotency_key(idempotency_key)
        source = accounts.parse_account_id(from_account_id, "from_account_id")
        target = accounts.parse_account_id(to_account_id, "to_account_id")
        if source == target:
            raise InvalidArgument("from_account_id and to_account_id must differ")
        self.config.asset(asset)
        value = parse_amount(amount)
        if len(memo) > MAX_MEMO:
            raise InvalidArgument(f"memo is longer than {MAX_MEMO} characters")
        command = Command(
            kind="transfer",
            actor=client,
            postings=(Posting(asset, user_available(source), user_available(target), value),),
            idempotency=Idempotency.for_request(client, key, "Transfer", {
                "from": source, "to": target, "asset": asset, "amount": amount, "memo": memo,
            }),
            memo=memo or None,
            not_frozen=(source,),
            must_exist=(target,),
        )
        return self.writer.submit(command)

    def transfer(self, *args, **kwargs) -> BatchResult:
        return self.submit_transfer(*args, **kwargs).result()

    def submit_adjustment(
        self, staff: str, idempotency_key: str, account_id: str, asset: str, amount: str,
        credit: bool, reason: str,
    ) -> concurrent.futures.Future:
        """A manual correction against equity, recorded with the staff identity and reason."""
        key = parse_idempotency_key(idempotency_key)
        account = accounts.parse_account_id(account_id)
        self.config.asset(asset)
        value = parse_amount(amount)
        reason = (reason or "").strip()
        if not MIN_REASON <= len(reason) <= MAX_REASON:
            raise InvalidArgument(f"reason is required: {MIN_REASON} to {MAX_REASON} characters")
        user = user_available(account)
        debit, credit_code = (EQUITY, user) if credit else (user, EQUITY)
        command = Command(
            kind="adjustment",
            actor=staff,
            postings=(Posting(asset, debit, credit_code, value),),
            idempotency=Idempotency.for_request(staff, key, "AdjustBalance", {
                "account": account, "asset": asset, "amount": amount, "credit": credit, "reason": reason,
            }),
            memo=reason,
            must_exist=(account,),
        )
        return self.writer.submit(command)

    def adjust_balance(self, *args, **kwargs) -> BatchResult:
        return self.submit_adjustment(*args, **kwargs).result()

    # -- events -------------------------------------------------------------
    def events_after(self, cursor: int, limit: int = 500):
        return read_after(self.engine, cursor, limit)
