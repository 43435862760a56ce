"""Thin servicers: parse the message, call the use case, build the reply."""
from __future__ import annotations

import asyncio
import datetime

import structlog

from custody.api.auth import current_client
from custody.app import Custody
from custody.db.types import as_utc
from custody.errors import InvalidArgument
from custody.events.journal import checked_resume
from custody.events.tail import JournalTail
from custody.money import format_amount
from custody.v1 import backoffice_pb2, backoffice_pb2_grpc, custody_pb2, custody_pb2_grpc

log = structlog.get_logger("custody.api")
EVENT_PAGE = 500
# Events committed by another instance are seen within this many seconds.
EVENT_POLL_S = 1.0


class CustodyServicer(custody_pb2_grpc.CustodyServiceServicer):
    def __init__(self, app: Custody):
        self.app = app
        self.events = JournalTail(app.events_after, app.notifier, EVENT_POLL_S, EVENT_PAGE)

    async def CreateAccount(self, request, context):
        account = await asyncio.to_thread(self.app.create_account, request.external_id)
        return custody_pb2.CreateAccountResponse(
            account_id=str(account.account_id), external_id=account.external_id,
            created=account.created, frozen=account.frozen)

    async def GetBalances(self, request, context):
        account_id, balances = await asyncio.to_thread(self.app.get_balances, request.account_id)
        return custody_pb2.GetBalancesResponse(
            account_id=str(account_id),
            balances=[custody_pb2.Balance(asset=b.asset, available=format_amount(b.available),
                                          held=format_amount(b.held), pending=format_amount(b.pending))
                      for b in balances])

    async def Transfer(self, request, context):
        result = await self.app.transfer_async(
            current_client(), request.idempotency_key, request.from_account_id, request.to_account_id,
            request.asset, request.amount, request.memo)
        return custody_pb2.TransferResponse(transfer_id=result.batch_id, event_cursor=result.event_cursor)

    async def ListAssets(self, request, context):
        return custody_pb2.ListAssetsResponse(assets=[
            custody_pb2.Asset(
                asset=a.asset, chain=a.chain, decimals=a.decimals, contract=a.contract,
                confirmations=a.confirmations, withdrawal_fee=format_amount(a.withdrawal_fee),
                min_withdrawal=format_amount(a.min_withdrawal), max_withdrawal=format_amount(a.max_withdrawal),
                daily_withdrawal_limit=format_amount(a.daily_withdrawal_limit),
                min_deposit=format_amount(a.min_deposit), deposits_enabled=a.deposits_enabled)
            for a in self.app.list_assets()])

    async def StreamEvents(self, request, context):
        cursor, head = await checked_resume(request.after_cursor, request.after_digest, self.app.last_event_cursor,
                                            self.app.event_digest_at, "event", "event")
        async for e in self.events.follow(cursor, head):
            yield custody_pb2.StreamEventsResponse(cursor=e.cursor, type=e.type, payload=e.payload,
                                                   created_at=e.created_at, digest=e.digest)


    async def GetDepositAddress(self, request, context):
        account_id, address = await asyncio.to_thread(
            self.app.deposit_address, request.account_id, request.chain, request.new_address,
            client=current_client(), idempotency_key=request.idempotency_key)
        return custody_pb2.GetDepositAddressResponse(account_id=str(account_id), chain=request.chain, address=address)

    async def ListDeposits(self, request, context):
        account_id, deposits, token = await asyncio.to_thread(
            self.app.list_deposits, request.account_id, request.page_size, request.page_token)
        return custody_pb2.ListDepositsResponse(account_id=str(account_id), next_page_token=token, deposits=[
            custody_pb2.Deposit(
                deposit_id=str(d.deposit_id), chain=d.chain, asset=d.asset, txid=d.txid, index=d.index,
                address=d.address, amount=format_amount(d.amount), confirmations=d.confirmations,
                status=custody_pb2.DepositStatus.Value(f"DEPOSIT_STATUS_{d.status}"),
                block_height=d.block_height or 0, block_hash=d.block_hash or "", coinbase=d.coinbase,
                reason=d.reason or "")
            for d in deposits])


    async def RequestWithdrawal(self, request, context):
        w, created = await asyncio.to_thread(
            self.app.withdrawals.request, current_client(), request.idempotency_key, request.account_id,
            request.asset, request.to_address, request.amount)
        return custody_pb2.RequestWithdrawalResponse(withdrawal=withdrawal_message(w, []), created=created)

    async def GetWithdrawal(self, request, context):
        w, history = await asyncio.to_thread(self.app.withdrawals.get, request.withdrawal_id)
        return custody_pb2.GetWithdrawalResponse(withdrawal=withdrawal_message(w, history))

    async def ListWithdrawals(self, request, context):
        rows, token = await asyncio.to_thread(self.app.withdrawals.list_for_account, request.account_id,
                                              request.page_size, request.page_token)
        return custody_pb2.ListWithdrawalsResponse(withdrawals=[withdrawal_message(w, h) for w, h in rows],
                                                   next_page_token=token)

    async def CancelWithdrawal(self, request, context):
        w = await asyncio.to_thread(self.app.withdrawals.cancel, current_client(), request.withdrawal_id)
        return custody_pb2.CancelWithdrawalResponse(withdrawal=withdrawal_message(w, []))


def _status(name: str | None) -> int:
    return custody_pb2.WithdrawalStatus.Value(f"WITHDRAWAL_STATUS_{name}") if name else 0


def _iso(value) -> str:
    if value is None:
        return ""
    return as_utc(value).astimezone(datetime.timezone.utc).isoformat()


def withdrawal_message(w: dict, history: list[dict]) -> custody_pb2.Withdrawal:
    return custody_pb2.Withdrawal(
        withdrawal_id=w["id"], account_id=str(w["account_id"]), asset=w["asset"], to_address=w["to_address"],
        amount=format_amount(w["amount"]), fee=format_amount(w["fee"]), status=_status(w["status"]),
        txid=w.get("txid") or "", reason=w.get("reason") or "",
        network_fee=format_amount(w["network_fee"]) if w.get("network_fee") is not None else "",
        created_at=_iso(w["created_at"]),
        history=[custody_pb2.WithdrawalHistoryEntry(
            from_status=_status(h["from_status"]), to_status=_status(h["to_status"]), actor=h["actor"],
            reason=h["reason"] or "", at=_iso(h["created_at"])) for h in history])


class BackofficeServicer(backoffice_pb2_grpc.BackofficeServiceServicer):
    def __init__(self, app: Custody):
        self.app = app

    async def AdjustBalance(self, request, context):
        directions = {
            backoffice_pb2.ADJUSTMENT_DIRECTION_CREDIT: True,
            backoffice_pb2.ADJUSTMENT_DIRECTION_DEBIT: False,
        }
        if request.direction not in directions:
            raise InvalidArgument("direction must be ADJUSTMENT_DIRECTION_CREDIT or ADJUSTMENT_DIRECTION_DEBIT")
        future = self.app.submit_adjustment(
            current_client(), request.idempotency_key, request.account_id, request.asset, request.amount,
            directions[request.direction], request.reason)
        result = await asyncio.wrap_future(future)
        log.info("balance adjusted", staff=current_client(), account_id=request.account_id, asset=request.asset,
                 amount=request.amount, direction=backoffice_pb2.AdjustmentDirection.Name(request.direction),
                 reason=request.reason, batch_id=result.batch_id, replayed=result.replayed)
        return backoffice_pb2.AdjustBalanceResponse(adjustment_id=result.batch_id, event_cursor=result.event_cursor)

    async def ListWithdrawals(self, request, context):
        if request.status not in custody_pb2.WithdrawalStatus.values():
            raise InvalidArgument(f"status {request.status} is not a WithdrawalStatus")
        status = (custody_pb2.WithdrawalStatus.Name(request.status).removeprefix("WITHDRAWAL_STATUS_")
                  if request.status else "PENDING_REVIEW")
        items, token = await asyncio.to_thread(self.app.withdrawals.review_list, status, request.page_size,
                                               request.page_token)
        return backoffice_pb2.BackofficeServiceListWithdrawalsResponse(next_page_token=token, items=[
            backoffice_pb2.ReviewItem(withdrawal=withdrawal_message(w, []), facts=backoffice_pb2.ReviewFacts(
                account_age_days=f["account_age_days"], credited_deposits=f["credited_deposits"],
                deposited_amount=format_amount(f["deposited_amount"]),
                destination_seen_before=f["destination_seen_before"],
                withdrawn_24h=format_amount(f["withdrawn_24h"]), daily_limit=format_amount(f["daily_limit"]),
                max_withdrawal=format_amount(f["max_withdrawal"]), approvals_needed=f["approvals_needed"],
                approvers=f["approvers"], requested_by=f["requested_by"], account_frozen=f["account_frozen"],
                asset_decimals=self.app.config.asset(w["asset"]).decimals))
            for w, f in items])

    async def ApproveWithdrawal(self, request, context):
        w = await asyncio.to_thread(self.app.withdrawals.approve, current_client(), request.withdrawal_id,
                                    request.signature)
        log.info("withdrawal approval", staff=current_client(), withdrawal_id=request.withdrawal_id,
                 status=w["status"])
        return backoffice_pb2.ApproveWithdrawalResponse(withdrawal=withdrawal_message(w, []))

    async def RejectWithdrawal(self, request, context):
        w = await asyncio.to_thread(self.app.withdrawals.reject, current_client(), request.withdrawal_id,
                                    request.reason)
        log.info("withdrawal rejected", staff=current_client(), withdrawal_id=request.withdrawal_id,
                 reason=request.reason)
        return backoffice_pb2.RejectWithdrawalResponse(withdrawal=withdrawal_message(w, []))

    async def ListWithdrawalBatches(self, request, context):
        rows, token = await asyncio.to_thread(self.app.withdrawals.batches, request.status or "NEEDS_STAFF",
                                              request.page_size, request.page_token)
        return backoffice_pb2.ListWithdrawalBatchesResponse(batches=[batch_message(b) for b in rows],
                                                            next_page_token=token)

    async def ResolveWithdrawalBatch(self, request, context):
        batch, done = await asyncio.to_thread(self.app.withdrawals.resolve_batch, current_client(), request.batch_id,
                                              request.txid, request.reason)
        log.info("withdrawal batch resolved", staff=current_client(), batch_id=request.batch_id, txid=request.txid,
                 status=batch["status"], reason=request.reason)
        return backoffice_pb2.ResolveWithdrawalBatchResponse(
            batch=batch_message({**batch, "withdrawal_ids": [w["id"] for w in done]}),
            withdrawals=[withdrawal_message(w, []) for w in done])


    async def SetAccountFrozen(self, request, context):
        account, changed, cursor = await asyncio.to_thread(
            self.app.set_frozen, current_client(), request.account_id, request.frozen, request.reason)
        log.info("account frozen" if account.frozen else "account unfrozen", staff=current_client(),
                 account_id=account.account_id, reason=request.reason, changed=changed)
        return backoffice_pb2.SetAccountFrozenResponse(account_id=str(account.account_id), frozen=account.frozen,
                                                      changed=changed, event_cursor=cursor)


def batch_message(b: dict) -> backoffice_pb2.WithdrawalBatch:
    return backoffice_pb2.WithdrawalBatch(
        batch_id=b["id"], chain=b["chain"], status=b["status"], kind=b["kind"], reason=b["reason"] or "",
        txid=b["txid"] or "", withdrawal_ids=b["withdrawal_ids"], spent_by=b["spent_by"])
