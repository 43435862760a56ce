"""The custody core's use cases, wired to one database. gRPC, the CLI, the demo
and the tests all go through this object; none of it knows about gRPC."""
from __future__ import annotations

import concurrent.futures
import logging
import time

from custody import config as config_mod
from custody import config_pins
from chains import registry
from chains.base import ChainError, ChainPlugin
from custody.accounts import service as accounts
from custody.db.engine import make_engine
from custody.errors import ConfigChanged, InvalidArgument, Unavailable
from custody.deposits import service as deposits
from custody.deposits.model import Deposit
from custody.deposits.scanner import Scanner
from custody.events.journal import EventNotifier, digest_at, last_cursor, read_after
from custody.ledger.commands import BatchResult, Command, Idempotency, parse_idempotency_key
from custody.ledger.process_writer import ProcessLedgerWriter
from custody.ledger.writer import LedgerWriter
from custody.ledger.model import EQUITY, Posting, user_available
from custody.money import parse_amount
from custody.paging import parse_page
from custody.text import parse_memo, parse_reason
from matching_stub.service import MatchingService



log = logging.getLogger(__name__)

# How long a check of a chain's config pins holds for deposit_address (one query each time).
PINS_RECHECK_S = 60.0


class Custody:
    def __init__(self, config: config_mod.Config):
        self.config = config
        self.engine = make_engine(config.database_url)
        self.notifier = EventNotifier()
        grouping = dict(max_group=config.server.max_group_commit,
                        group_wait_s=config.server.group_commit_wait_ms / 1000)
        if config.server.ledger_writer == "process":
            self.writer = ProcessLedgerWriter(config.database_url, **grouping)
        else:
            self.writer = LedgerWriter(self.engine, **grouping)
        self.writer.on_commit(self.notifier.notify)
        self.chains: dict[str, ChainPlugin] = {c.name: _make_plugin(c) for c in config.chains}
        self._scanners: dict[str, Scanner] = {}
        self._pins_verified: dict[str, float] = {}  # chain -> when deposit_address last checked its pins
        self._jobs = None
        self._signer = None
        # Order books; fills are ledger batches too, so they wake StreamEvents readers.
        self.matching = MatchingService(config, self.engine, on_ledger_commit=self.notifier.notify)
        from custody.withdrawals.service import Withdrawals

        self.withdrawals = Withdrawals(config, self.engine, self.plugin, self.notifier.notify)

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.stop()
        if self._signer is not None:
            self._signer.close()
        self.matching.close()
        for plugin in self.chains.values():
            plugin.close()
        self.writer.close()
        self.engine.dispose()

    # -- chains and deposits -------------------------------------------------
    def plugin(self, chain: str) -> ChainPlugin:
        if chain not in self.chains:
            self.config.chain(chain)  # raises InvalidArgument naming the configured chains
        return self.chains[chain]

    def deposit_address(self, account_id: str, chain: str, new: bool = False, *, client: str = "",
                        idempotency_key: str = "") -> tuple[int, str]:
        """(account id, its current address on chain). new issues another one, once per
        idempotency key of the client: a retry with the key gets the same address back."""
        account = accounts.parse_account_id(account_id)
        if not chain:
            raise InvalidArgument("chain is required")
        idempotency = None
        if new:
            if not idempotency_key:
                raise InvalidArgument("idempotency_key is required with new_address: a retry must not issue "
                                      "another address")
            idempotency = Idempotency.for_request(client, parse_idempotency_key(idempotency_key),
                                                  "GetDepositAddress", {"account": account, "chain": chain})
        elif idempotency_key:
            parse_idempotency_key(idempotency_key)
        plugin = self.plugin(chain)
        # An instance whose config differs from the chain's pins (another deposit_xpub: a typo, a stale
        # config in a rolling deploy) handed out addresses that another instance's scanner credited:
        # coins the signer's keys can't spend.
        if time.monotonic() - self._pins_verified.get(chain, -PINS_RECHECK_S) >= PINS_RECHECK_S:
            try:
                self.verify_config(chain)
            except ConfigChanged as exc:
                # The differences name the old and new wallet xpubs: for the operator (the log and
                # `custody admin config`), not for a client, who could list every address with them.
                log.error("deposit address refused: %s", exc)
                raise ConfigChanged(f"{chain}: this instance's configuration differs from the one its data was "
                                    "read with; no deposit address is handed out (see the server log)") from None
            self._pins_verified[chain] = time.monotonic()
        xpub = self.config.chain(chain).deposit_xpub
        try:
            return account, deposits.deposit_address(self.engine, plugin, chain, xpub, account, new, idempotency)
        except deposits.ChainNotScannedYet:
            # First address of the chain, before its scanner's first run: start the scan cursor now
            # (at the node's tip), so that the address is watched from a height at or below where it
            # could first be paid. Without it the scanner started above that payment, never read it.
            try:
                self.scanner(chain).ensure_cursor()
            except ChainError as exc:  # the node's address and words: for the log, not the client
                log.warning("deposit address refused: %s: the node can't be used: %s", chain, exc)
                raise Unavailable(f"{chain}: the chain is not scanned yet and its node can't be used now (the server "
                                  "log says why); no deposit address is handed out before it is; retry later") from None
            return account, deposits.deposit_address(self.engine, plugin, chain, xpub, account, new, idempotency)

    def list_deposits(self, account_id: str, page_size: int = 0, page_token: str = "") -> tuple[int, list[Deposit], str]:
        """(account id, a page of its deposits newest first, the token for the next page or "")."""
        account = accounts.parse_account_id(account_id)
        page = parse_page(page_size, page_token, f"deposits:{account}")
        return account, *deposits.list_deposits(self.engine, account, page)

    def scanner_names(self, only=None) -> list[str]:
        names = [c.name for c in self.config.chains if c.scan]
        if only:
            unknown = set(only) - set(names)
            if unknown:
                raise config_mod.ConfigError(f"no scanned chain named {', '.join(sorted(unknown))}")
            names = [n for n in names if n in only]
        return names

    def scanner(self, chain: str) -> Scanner:
        """The one scanner of this process for chain (hot/cold addresses registered first)."""
        if chain not in self._scanners:
            cfg = self.config.chain(chain)
            plugin = self.plugin(chain)
            self.verify_config(chain)
            deposits.ensure_wallet_addresses(self.engine, plugin, chain, "hot", cfg.hot_xpub, cfg.wallet_addresses)
            deposits.ensure_wallet_addresses(self.engine, plugin, chain, "cold", cfg.cold_xpub, cfg.wallet_addresses)
            self._scanners[chain] = Scanner(self.engine, plugin, cfg, self.config.assets, notify=self.notifier.notify)
        return self._scanners[chain]

    def verify_config(self, chain: str) -> None:
        """Raises ConfigChanged if chain's or its assets' pinned config differs (custody/config_pins.py)."""
        config_pins.verify(self.engine, self.config, chain)

    def withdrawal_sender(self):
        """The Bitcoin withdrawal job, or None when no signer or no bitcoin chain is configured."""
        rules = self.config.withdrawals
        if not rules.signer_target or "bitcoin" not in self.chains:
            return None
        from custody.withdrawals.sender import BitcoinSender

        self.verify_config("bitcoin")
        if self._signer is None:
            self._signer = signer_client(rules)
        return BitcoinSender(self.config, self.engine, self.plugin("bitcoin"), self._signer, self.notifier.notify)

    def start_jobs(self, only=None) -> None:
        """Starts the background jobs (the scanners of every chain with scan = true)."""
        from custody.jobs.runner import JobRunner

        if self._jobs is not None:
            return
        runner = JobRunner()
        for name in self.scanner_names(only):
            runner.add_scanner(self.scanner(name), self.config.chain(name).poll_interval_s,
                               guard=lambda name=name: self.verify_config(name))
        sender = self.withdrawal_sender()
        if sender is not None and (not only or sender.chain in only):
            runner.add_withdrawals(sender, self.config.withdrawals.poll_interval_s,
                                   guard=lambda: self.verify_config(sender.chain))
        runner.start()
        self._jobs = runner

    # -- accounts -----------------------------------------------------------
    def create_account(self, external_id: str) -> accounts.Account:
        return accounts.create_account(self.engine, external_id)

    def get_balances(self, account_id: str) -> tuple[int, list[accounts.Balance]]:
        """Available and held from the ledger; pending: deposits seen, not yet credited."""
        account = accounts.parse_account_id(account_id)
        return account, accounts.get_balances(self.engine, account, [a.asset for a in self.config.assets])

    def list_assets(self) -> tuple[config_mod.AssetConfig, ...]:
        return self.config.assets

    # -- ledger -------------------------------------------------------------
    def submit_transfer(self, *args, **kwargs) -> concurrent.futures.Future:
        """Validates, then queues the transfer; the future gives its BatchResult."""
        return self.writer.submit(self._transfer_command(*args, **kwargs))

    async def transfer_async(self, *args, **kwargs) -> BatchResult:
        return await self.writer.submit_async(self._transfer_command(*args, **kwargs))

    def _transfer_command(
        self, client: str, idempotency_key: str, from_account_id: str, to_account_id: str,
        asset: str, amount: str, memo: str = "",
    ) -> Command:
        key = parse_idempotency_key(idempotency_key)
        source = accounts.parse_account_id(from_account_id, "from_account_id")
        target = accounts.parse_account_id(to_account_id, "to_account_id")
        if source == target:
            raise InvalidArgument("from_account_id and to_account_id must differ")
        self.config.asset(asset)
        value = parse_amount(amount)
        memo = parse_memo(memo)
        return Command(
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
        reason = parse_reason(reason)
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

    def set_frozen(self, staff: str, account_id: str, frozen: bool, reason: str) -> tuple[accounts.Account, bool, int]:
        """A staff freeze or unfreeze with a mandatory reason: (the account now, changed, event cursor or 0)."""
        account = accounts.parse_account_id(account_id)
        reason = parse_reason(reason)
        now, changed, cursor = accounts.set_frozen(self.engine, account, frozen, staff, reason)
        if cursor:
            self.notifier.notify(cursor)
        return now, changed, cursor

    # -- events -------------------------------------------------------------
    def events_after(self, cursor: int, limit: int = 500):
        return read_after(self.engine, cursor, limit)

    def last_event_cursor(self) -> int:
        return last_cursor(self.engine)

    def event_digest_at(self, cursor: int) -> str | None:
        return digest_at(self.engine, cursor)


def _make_plugin(chain: config_mod.ChainConfig) -> ChainPlugin:
    """The plugin for a [chains.<name>] section, its keys checked now so a bad
    config stops the server at start (exit 2), not at the first deposit."""
    where = f"chains.{chain.name}"
    try:
        plugin_class = registry.load(chain.name)
        if plugin_class.settings_keys is not None:
            config_mod.reject_unknown(chain.settings, where, config_mod.CORE_CHAIN_KEYS + plugin_class.settings_keys)
        plugin = plugin_class(chain.settings)
    except registry.UnknownChain as exc:
        raise config_mod.ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise config_mod.ConfigError(f"{where}: {exc}") from None
    for key in ("deposit_xpub", "hot_xpub", "cold_xpub"):
        xpub = getattr(chain, key)
        if xpub:
            try:
                plugin.derive_address(xpub, 0)
            except ChainError as exc:
                raise config_mod.ConfigError(f"{where}.{key}: {exc}") from None
    return plugin


def signer_client(rules: config_mod.WithdrawalConfig):
    """The client of the signer process, from the [withdrawals] section."""
    import os
    import pathlib

    from hsm.client import SignerClient

    token = rules.signer_token
    if rules.signer_token_env:
        token = os.environ.get(rules.signer_token_env, "")
        if not token:
            raise config_mod.ConfigError(f"withdrawals.signer_token_env: {rules.signer_token_env} is not set")
    if not token:
        raise config_mod.ConfigError("withdrawals: signer_target needs signer_token or signer_token_env")

    def read(path: str) -> bytes | None:
        return pathlib.Path(path).read_bytes() if path else None

    if not rules.signer_target.startswith("unix:") and not rules.signer_ca_file:
        raise config_mod.ConfigError("withdrawals: a TCP signer_target needs signer_ca_file (TLS)")
    return SignerClient(rules.signer_target, token, root_cert=read(rules.signer_ca_file),
                        client_cert=read(rules.signer_cert_file), client_key=read(rules.signer_key_file),
                        timeout_s=rules.signer_timeout_s)
