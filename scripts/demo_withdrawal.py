"""The withdrawal part of `make demo`: a signer process started here, a user's
withdrawal, a reviewer's Ed25519-signed approval, the job under `custody serve`
sending it, confirmation on regtest, balances and fees. Used by scripts/demo.py."""
from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import time

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from embit import bip39
from embit.bip32 import HDKey

from custody.v1 import backoffice_pb2 as bo
from custody.v1 import backoffice_pb2_grpc, custody_pb2_grpc
from custody.v1 import custody_pb2 as pb

# The public BIP84 test mnemonic: the demo's hot wallet (account 1). Never for real money.
MNEMONIC = "abandon " * 11 + "about"
VPUB = bytes.fromhex("045f1cf6")
ROOT_KEY = HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
HOT_VPUB = ROOT_KEY.derive("m/84h/1h/1h").to_public().to_base58(version=VPUB)
PASSPHRASE_ENV = "DEMO_SIGNER_PASSPHRASE"
TOKEN_ENV = "CUSTODY_SIGNER_TOKEN"
REVIEWER = "rita-reviewer"


class Signer:
    """`custody signer serve` on a Unix socket, with a software keystore made here."""

    def __init__(self, folder: pathlib.Path, custody_cmd: list[str], root: pathlib.Path):
        from hsm.api.auth import token_digest
        from hsm.keystores.software import Passphrase, SoftwareKeystore

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.token = secrets.token_urlsafe(24)
        passphrase = secrets.token_urlsafe(16)
        store = SoftwareKeystore.create(folder / "keystore.json", Passphrase(passphrase), scrypt_n=2**12)
        store.import_wallet("hot", MNEMONIC)
        store.close()
        self.socket = folder / "signer.sock"
        (folder / "signer.toml").write_text(f"""# Written by scripts/demo_withdrawal.py
[server]
listen = "unix:{self.socket}"

[[clients]]
name = "custody-core"
token_sha256 = "{token_digest(self.token)}"

[keystore]
kind = "software"
path = "{folder / 'keystore.json'}"
passphrase_env = "{PASSPHRASE_ENV}"

[state]
audit_log = "{folder / 'audit.log'}"
limits_db = "{folder / 'limits.sqlite'}"

[chains.bitcoin]
network = "regtest"

[chains.ethereum]
chain_id = 31337

[policy]
internal_xpubs = ["{HOT_VPUB}"]

[[policy.assets]]
asset = "BTC"
chain = "bitcoin"
max_per_transaction = "100000000"
max_per_24h = "300000000"
max_fee = "100000"
max_fees_per_24h = "1000000"
""")
        self.log = open(folder / "signer.log", "w")
        self.process = subprocess.Popen([*custody_cmd, "signer", "serve", "--config", str(folder / "signer.toml")],
                                        cwd=root, env={**os.environ, PASSPHRASE_ENV: passphrase},
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        # Said once it listens (the socket's file appears a moment before).
        while b"signer listening on" not in (folder / "signer.log").read_bytes():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the signer did not start; see {folder / 'signer.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def reviewer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def config_section(signer: Signer, reviewer: Ed25519PrivateKey) -> str:
    """The custody.toml lines: the hot wallet, the signer, review rules and the reviewer's key."""
    return f"""
[withdrawals]
auto_approve_max = "10000000"
two_approvals_above = "100000000"
signer_target = "unix:{signer.socket}"
signer_token_env = "{TOKEN_ENV}"
poll_interval_s = 0.3

[[withdrawals.staff]]
name = "{REVIEWER}"
ed25519_public_key = "{public_hex(reviewer)}"
"""


def btc(sats) -> str:
    whole, frac = divmod(int(sats), 10**8)
    return f"{whole}.{frac:08d} BTC"


def wait_status(custody, wid: str, metadata, status: int, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        w = custody.GetWithdrawal(pb.GetWithdrawalRequest(withdrawal_id=wid), metadata=metadata).withdrawal
        if w.status == status:
            return w
        if w.status in (pb.WITHDRAWAL_STATUS_FAILED, pb.WITHDRAWAL_STATUS_REJECTED):
            raise SystemExit(f"the withdrawal became {pb.WithdrawalStatus.Name(w.status)}: {w.reason}")
        time.sleep(0.1)
    raise SystemExit(f"the withdrawal did not become {pb.WithdrawalStatus.Name(status)} within {timeout_s:.0f}s")


def ledger_fees(database_url: str) -> dict[str, int]:
    """fees:revenue, fees:network and the hot wallet, read from the ledger (display only)."""
    from sqlalchemy import select

    from custody.db import schema as t
    from custody.db.engine import make_engine

    engine = make_engine(database_url)
    try:
        a = t.ledger_accounts.c
        with engine.connect() as conn:
            rows = conn.execute(select(a.code, a.debits, a.credits).where(
                a.asset == "BTC", a.code.in_(["fees:revenue", "fees:network", "wallet:bitcoin:hot"]))).all()
    finally:
        engine.dispose()
    return {r.code: (r.debits - r.credits if r.code.startswith("wallet:") else r.credits - r.debits) for r in rows}


def story(step, address: str, tokens: dict, miner, ann_id: str, database_url: str,
          reviewer: Ed25519PrivateKey) -> None:
    from chains.bitcoin.addresses import p2wpkh_address, script_to_address
    from chains.bitcoin.params import network
    from custody.withdrawals.model import content_digest
    from hsm.approvals import approval_message

    regtest = network("regtest")
    channel = grpc.insecure_channel(address)
    custody = custody_pb2_grpc.CustodyServiceStub(channel)
    backoffice = backoffice_pb2_grpc.BackofficeServiceStub(channel)
    exchange = [("authorization", f"Bearer {tokens['exchange'][0]}")]
    rita = [("authorization", f"Bearer {tokens[REVIEWER][0]}")]

    step("The hot wallet gets 0.5 BTC from the regtest miner (address 0/1 of its vpub); two blocks, the depth "
         "at which the sender spends a coin (BTC's confirmations)")
    hot = ROOT_KEY.derive("m/84h/1h/1h/0/1").to_public().key.sec()
    miner.pay([(p2wpkh_address(hot, regtest)[1], 50_000_000)])
    miner.mine(2)
    time.sleep(1.0)  # the scanner (every 0.3 s) records the hot wallet's new coin

    step("RequestWithdrawal: Ann withdraws 0.3 BTC to an outside address")
    outside = script_to_address(p2wpkh_address(ROOT_KEY.derive("m/84h/1h/9h/0/0").to_public().key.sec(),
                                               regtest)[1], regtest)
    amount = 30_000_000
    w = custody.RequestWithdrawal(pb.RequestWithdrawalRequest(
        idempotency_key="demo-w1", account_id=ann_id, asset="BTC", to_address=outside, amount=str(amount)),
        metadata=exchange).withdrawal
    assert w.status == pb.WITHDRAWAL_STATUS_PENDING_REVIEW, w
    print(f"  withdrawal {w.withdrawal_id}: {pb.WithdrawalStatus.Name(w.status)} (above the 0.1 BTC auto-approval); "
          f"fee {btc(w.fee)}")
    b = [x for x in custody.GetBalances(pb.GetBalancesRequest(account_id=ann_id), metadata=exchange).balances
         if x.asset == "BTC"][0]
    print(f"  Ann: available {btc(b.available)}, held {btc(b.held)} (amount + fee held)")
    start_available = int(b.available) + int(b.held)
    fees_before = ledger_fees(database_url)

    step(f"Review: {REVIEWER} lists pending withdrawals with the facts, then signs an approval (Ed25519)")
    (item,) = backoffice.ListWithdrawals(bo.BackofficeServiceListWithdrawalsRequest(), metadata=rita).items
    f = item.facts
    print(f"  account age {f.account_age_days} days, {f.credited_deposits} credited deposits "
          f"({btc(f.deposited_amount)}), destination seen before: {f.destination_seen_before}, "
          f"24h: {btc(f.withdrawn_24h)} of {btc(f.daily_limit)}, approvals needed: {f.approvals_needed}")
    digest = content_digest(w.withdrawal_id, int(ann_id), "BTC", "bitcoin", outside, amount, int(w.fee))
    signature = reviewer.sign(approval_message("bitcoin", digest))
    approved = backoffice.ApproveWithdrawal(bo.ApproveWithdrawalRequest(
        withdrawal_id=w.withdrawal_id, signature=signature), metadata=rita).withdrawal
    print(f"  {pb.WithdrawalStatus.Name(approved.status)}: {approved.reason}")

    step("The withdrawal job (inside custody serve) batches it, the signer process checks and signs, it is sent")
    sent = wait_status(custody, w.withdrawal_id, exchange, pb.WITHDRAWAL_STATUS_BROADCAST)
    print(f"  BROADCAST: transaction {sent.txid}")

    step("Two blocks: it confirms and completes")
    for _ in range(2):
        miner.mine(1)
        time.sleep(0.2)
    done = wait_status(custody, w.withdrawal_id, exchange, pb.WITHDRAWAL_STATUS_COMPLETED)
    print("  history: " + " -> ".join(f"{pb.WithdrawalStatus.Name(h.to_status).removeprefix('WITHDRAWAL_STATUS_')}"
                                      f" ({h.actor})" for h in done.history))
    print(f"  txid {done.txid}; network fee {btc(done.network_fee)}; withdrawal fee {btc(done.fee)}")

    step("Balances and fees after the withdrawal")
    b = [x for x in custody.GetBalances(pb.GetBalancesRequest(account_id=ann_id), metadata=exchange).balances
         if x.asset == "BTC"][0]
    assert (int(b.available), int(b.held)) == (start_available - amount - int(done.fee), 0), b
    print(f"  Ann: available {btc(b.available)}, held {btc(b.held)}")
    fees = ledger_fees(database_url)
    assert fees["fees:revenue"] - fees_before.get("fees:revenue", 0) == int(done.fee), (fees_before, fees)
    assert fees["fees:network"] == -int(done.network_fee), fees
    print(f"  ledger fees:revenue {btc(fees['fees:revenue'])} (trading fees + this withdrawal fee); fees:network "
          f"-{btc(-fees['fees:network'])} (what the exchange paid miners); wallet:bitcoin:hot "
          f"-{btc(-fees['wallet:bitcoin:hot'])} (amount + network fee out of the hot wallet)")
