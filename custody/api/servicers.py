"""Thin servicers: parse the message, call the use case, build the reply."""
from __future__ import annotations

import asyncio

import structlog

from custody.api.auth import current_client
from custody.app import Custody
from custody.errors import InvalidArgument
from custody.money import format_amount
from custody.v1 import backoffice_pb2, backoffice_pb2_grpc, custody_pb2, custody_pb2_grpc

log = structlog.get_logger("custody.api")
EVENT_PAGE = 500
# Events committed by another instance are seen within this many seconds.
EVENT_POLL_S = 1.0


class CustodyServicer(custody_pb2_grpc.CustodyServiceServicer):
    def __init__(self, app: Custody):
        self.app = app

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
        future = self.app.submit_transfer(
            current_client(), request.idempotency_key, request.from_account_id, request.to_account_id,
            request.asset, request.amount, request.memo)
        result = await asyncio.wrap_future(future)
        return custody_pb2.TransferResponse(transfer_id=result.batch_id, event_cursor=result.event_cursor)

    async def ListAssets(self, request, context):
        return custody_pb2.ListAssetsResponse(assets=[
            custody_pb2.Asset(
                asset=a.asset, chain=a.chain, decimals=a.decimals, contract=a.contract,
                confirmations=a.confirmations, withdrawal_fee=format_amount(a.withdrawal_fee),
                min_withdrawal=format_amount(a.min_withdrawal), max_withdrawal=format_amount(a.max_withdrawal),
                daily_withdrawal_limit=format_amount(a.daily_withdrawal_limit))
            for a in self.app.list_assets()])

    async def StreamEvents(self, request, context):
        cursor = request.after_cursor
        wake = self.app.notifier.subscribe()
        try:
            while True:
                wake.clear()
                events = await asyncio.to_thread(self.app.events_after, cursor, EVENT_PAGE)
                for e in events:
                    yield custody_pb2.StreamEventsResponse(
                        cursor=e.cursor, type=e.type, payload=e.payload, created_at=e.created_at)
                    cursor = e.cursor
                if len(events) < EVENT_PAGE:
                    try:
                        await asyncio.wait_for(wake.wait(), timeout=EVENT_POLL_S)
                    except asyncio.TimeoutError:
                        pass
        finally:
            self.app.notifier.unsubscribe(wake)


    async def GetDepositAddress(self, request, context):
        account_id, address = await asyncio.to_thread(
            self.app.deposit_address, request.account_id, request.chain, request.new_address)
        return custody_pb2.GetDepositAddressResponse(account_id=str(account_id), chain=request.chain, address=address)

    async def ListDeposits(self, request, context):
        account_id, deposits = await asyncio.to_thread(self.app.list_deposits, request.account_id)
        return custody_pb2.ListDepositsResponse(account_id=str(account_id), deposits=[
            custody_pb2.Deposit(
                deposit_id=str(d.deposit_id), chain=d.chain, asset=d.asset, txid=d.txid, index=d.index,
                address=d.address, amount=format_amount(d.amount), confirmations=d.confirmations,
                status=custody_pb2.DepositStatus.Value(f"DEPOSIT_STATUS_{d.status}"),
                block_height=d.block_height or 0, block_hash=d.block_hash or "", coinbase=d.coinbase)
            for d in deposits])


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
