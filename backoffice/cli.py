"""Staff review of withdrawals over BackofficeService:

  python -m backoffice.cli --server HOST:PORT list
  python -m backoffice.cli --server HOST:PORT approve WITHDRAWAL_ID --key FILE [--yes]
  python -m backoffice.cli --server HOST:PORT reject WITHDRAWAL_ID --reason TEXT
  python -m backoffice.cli --server HOST:PORT batches [--status NEEDS_STAFF]
  python -m backoffice.cli --server HOST:PORT resolve-batch BATCH_ID --txid TXID --reason TEXT
  python -m backoffice.cli --server HOST:PORT freeze|unfreeze ACCOUNT_ID --reason TEXT

The bearer token (review scope) is read from the environment variable named by
--token-env (default CUSTODY_STAFF_TOKEN); the server knows the staff member by
it. --key is a file holding the staff member's Ed25519 private key (64 hex
digits of the raw key, or PEM). Approve prints exactly what is signed and asks
before signing unless --yes. resolve-batch (admin scope) settles a batch held
for staff on chain proof: TXID must be the confirmed spend of its inputs. freeze and
unfreeze (admin scope) set an account's frozen state, with a reason.
TLS: --ca FILE (and --cert/--client-key for mutual TLS); a server that is not on
this host (loopback or unix:) needs --ca, or --insecure to send the token in the
clear anyway. Each call waits at most --timeout seconds (default 30).
Exit codes: 0 done; 1 refused or failed by the server, not approved; 2 a bad
argument (no token, a key or TLS file missing or unreadable, no --ca).
"""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import pathlib
import sys

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody.money import MAX_AMOUNT
from custody.v1 import backoffice_pb2 as bo
from custody.v1 import backoffice_pb2_grpc
from custody.v1 import custody_pb2 as pb
from custody.withdrawals.service import BATCH_STATUSES


class BadArgument(Exception):
    """An operator mistake found before anything is sent: exit 2."""


def load_key(path: str) -> Ed25519PrivateKey:
    data = pathlib.Path(path).read_bytes().strip()
    try:
        if data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(data.decode()))
    except (ValueError, TypeError):  # not hex, not PEM, a passphrase-protected PEM
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadArgument(f"{path}: expected 64 hex digits or a PEM Ed25519 private key")
    return key


def is_local(server: str) -> bool:
    """A unix socket or a loopback address: the token does not cross a network."""
    if server.startswith("unix:"):
        return True
    host, _, port = server.rpartition(":")
    host = host.strip("[]") if port.isdigit() else server
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_channel(args) -> grpc.Channel:
    if (args.cert or args.client_key) and not args.ca:
        raise BadArgument("--cert/--client-key need --ca (mutual TLS)")
    if not args.ca:
        if not is_local(args.server) and not args.insecure:
            raise BadArgument(f"{args.server} is not on this host: give --ca (TLS), or --insecure to send the "
                              "staff token in the clear")
        return grpc.insecure_channel(args.server)
    read = lambda p: pathlib.Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.secure_channel(args.server, grpc.ssl_channel_credentials(
        read(args.ca), read(args.client_key), read(args.cert)))


def status_name(status: int) -> str:
    return pb.WithdrawalStatus.Name(status).removeprefix("WITHDRAWAL_STATUS_")


PAGE_SIZE = 1000  # the largest page the server gives


def every_page(call, request, field: str, rpc: dict) -> list:
    """Every item of a list RPC that answers in pages (custody/paging.py), following next_page_token.
    rpc: the keyword arguments of each call (metadata, timeout)."""
    items = []
    request.page_size = PAGE_SIZE
    while True:
        reply = call(request, **rpc)
        items += getattr(reply, field)
        if not reply.next_page_token:
            return items
        request.page_token = reply.next_page_token


def pending(stub, rpc: dict) -> list:
    return every_page(stub.ListWithdrawals, bo.BackofficeServiceListWithdrawalsRequest(
        status=pb.WITHDRAWAL_STATUS_PENDING_REVIEW), "items", rpc)


def coins(base_units: str, decimals: int) -> str:
    """Base units as coins, exactly (integers only, never a float): "30000000", 8 -> "0.30000000"."""
    if int(base_units) == MAX_AMOUNT:  # a limit left at its default
        return "no limit"
    whole, part = divmod(int(base_units), 10**decimals)
    return f"{whole:,}.{part:0{decimals}d}" if decimals else f"{whole:,}"


def show(item, out) -> None:
    w, f = item.withdrawal, item.facts
    d = f.asset_decimals
    print(f"{w.withdrawal_id}  account {w.account_id}  {coins(w.amount, d)} {w.asset} ({w.amount} base units; "
          f"+ fee {coins(w.fee, d)}) -> {w.to_address}", file=out)
    print(f"    requested by {f.requested_by}; account age {f.account_age_days} days; {f.credited_deposits} "
          f"credited deposits ({coins(f.deposited_amount, d)} {w.asset}); paid to this address before: "
          f"{f.destination_seen_before}; 24h {coins(f.withdrawn_24h, d)} of {coins(f.daily_limit, d)}; "
          f"max {coins(f.max_withdrawal, d)}; approvals "
          f"{len(f.approvers)}/{f.approvals_needed} {list(f.approvers)}"
          + ("; ACCOUNT FROZEN: not sent until unfrozen" if f.account_frozen else ""), file=out)


def show_batch(batch, out) -> None:
    print(f"{batch.batch_id}  {batch.chain} {batch.kind} {batch.status}: {batch.reason}", file=out)
    print(f"    withdrawals {list(batch.withdrawal_ids)}; inputs spent by {list(batch.spent_by)}"
          + (f"; settled by {batch.txid}" if batch.txid else ""), file=out)


def main(argv=None, out=sys.stdout, confirm=input) -> int:
    parser = argparse.ArgumentParser(prog="backoffice", description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--token-env", default="CUSTODY_STAFF_TOKEN")
    parser.add_argument("--ca"), parser.add_argument("--cert"), parser.add_argument("--client-key")
    parser.add_argument("--insecure", action="store_true",
                        help="allow no TLS to a server that is not on this host (the token is sent in the clear)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each call may take (default 30)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="withdrawals waiting for review, with the facts")
    a = sub.add_parser("approve", help="sign and send an approval")
    a.add_argument("withdrawal_id")
    a.add_argument("--key", required=True)
    a.add_argument("--chain", default="bitcoin", help="the asset's chain (part of what is signed)")
    a.add_argument("--yes", action="store_true")
    r = sub.add_parser("reject", help="reject with a reason (releases the hold)")
    r.add_argument("withdrawal_id")
    r.add_argument("--reason", required=True)
    b = sub.add_parser("batches", help="withdrawal batches in a status (held for staff by default)")
    b.add_argument("--status", default="NEEDS_STAFF", choices=BATCH_STATUSES)
    rb = sub.add_parser("resolve-batch", help="settle a batch held for staff on chain proof")
    rb.add_argument("batch_id")
    rb.add_argument("--txid", required=True, help="the confirmed transaction that spent its inputs")
    rb.add_argument("--reason", required=True)
    for name, text in (("freeze", "stop an account sending, withdrawing and trading"),
                       ("unfreeze", "let a frozen account send, withdraw and trade again")):
        f = sub.add_parser(name, help=text + " (admin scope)")
        f.add_argument("account_id")
        f.add_argument("--reason", required=True)
    args = parser.parse_args(argv)

    token = os.environ.get(args.token_env)
    if not token:
        print(f"backoffice: set {args.token_env} to your staff token", file=sys.stderr)
        return 2
    if not (token.isascii() and token.isprintable()):  # gRPC refuses such metadata with INTERNAL
        print(f"backoffice: {args.token_env} holds something that is not a token (printable ASCII only)",
              file=sys.stderr)
        return 2
    if not (math.isfinite(args.timeout) and args.timeout > 0):  # nan and inf timed every call out
        parser.error("--timeout must be a number of seconds more than 0")
    rpc = {"metadata": [("authorization", f"Bearer {token}")], "timeout": args.timeout}
    try:
        channel = open_channel(args)
    except (BadArgument, OSError) as exc:
        return bad_argument(exc)
    stub = backoffice_pb2_grpc.BackofficeServiceStub(channel)
    try:
        if args.command == "list":
            items = pending(stub, rpc)
            for item in items:
                show(item, out)
            print(f"{len(items)} pending", file=out)
            return 0
        if args.command == "reject":
            w = stub.RejectWithdrawal(bo.RejectWithdrawalRequest(withdrawal_id=args.withdrawal_id,
                                                                 reason=args.reason), **rpc).withdrawal
            print(f"{w.withdrawal_id} {status_name(w.status)}: {w.reason}", file=out)
            return 0
        if args.command == "batches":
            found = every_page(stub.ListWithdrawalBatches, bo.ListWithdrawalBatchesRequest(status=args.status),
                               "batches", rpc)
            for batch in found:
                show_batch(batch, out)
            print(f"{len(found)} {args.status}", file=out)
            return 0
        if args.command in ("freeze", "unfreeze"):
            done = stub.SetAccountFrozen(bo.SetAccountFrozenRequest(
                account_id=args.account_id, frozen=args.command == "freeze", reason=args.reason), **rpc)
            state = "frozen" if done.frozen else "not frozen"
            print(f"account {done.account_id} {state}" + ("" if done.changed else " already: nothing changed"),
                  file=out)
            return 0
        if args.command == "resolve-batch":
            done = stub.ResolveWithdrawalBatch(bo.ResolveWithdrawalBatchRequest(
                batch_id=args.batch_id, txid=args.txid, reason=args.reason), **rpc)
            show_batch(done.batch, out)
            for w in done.withdrawals:
                print(f"{w.withdrawal_id} {status_name(w.status)}: {w.reason}", file=out)
            return 0
        try:
            key = load_key(args.key)
        except (BadArgument, OSError) as exc:
            return bad_argument(exc)
        item = next((i for i in pending(stub, rpc) if i.withdrawal.withdrawal_id == args.withdrawal_id), None)
        if item is None:
            print(f"backoffice: {args.withdrawal_id} is not pending review", file=sys.stderr)
            return 1
        from custody.withdrawals.model import content_digest
        from hsm.approvals import approval_message

        w = item.withdrawal
        show(item, out)
        digest = content_digest(w.withdrawal_id, int(w.account_id), w.asset, args.chain, w.to_address,
                                int(w.amount), int(w.fee))
        print(f"signing approval of content SHA-256 {digest.hex()} on {args.chain}", file=out)
        if not args.yes and answer(confirm, "approve? [y/N] ") != "y":
            print("not approved", file=out)
            return 1
        done = stub.ApproveWithdrawal(bo.ApproveWithdrawalRequest(
            withdrawal_id=w.withdrawal_id, signature=key.sign(approval_message(args.chain, digest))),
            **rpc).withdrawal
        print(f"{done.withdrawal_id} {status_name(done.status)}" + (f": {done.reason}" if done.reason else ""),
              file=out)
        return 0
    except grpc.RpcError as exc:
        print(f"backoffice: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()


def answer(confirm, prompt: str) -> str:
    try:
        return confirm(prompt).strip().lower()
    except EOFError:  # stdin closed: no
        return ""


def bad_argument(exc: Exception) -> int:
    text = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else str(exc)
    print(f"backoffice: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
