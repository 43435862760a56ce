"""RequestWithdrawal / Get / List / Cancel and staff review through the real gRPC server."""
from __future__ import annotations

import grpc
import pytest

from custody.app import Custody
from custody.deposits.service import ensure_wallet_addresses
from custody.errors import InvalidArgument
from custody.v1 import backoffice_pb2, custody_pb2
from tests.support.bitcoin import HOT_XPUB, random_script
from tests.support.paging import every_page
from tests.support.servers import Clients, ServerThread
from tests.support.signer import address_for
from tests.support.withdrawals import BTC, PAYEE, TESTNET_PAYEE, WITHDRAWAL_FEE, approve_signature, fund, \
    withdrawal_config

S = custody_pb2


@pytest.fixture
def wapp(db_url):
    app = Custody(withdrawal_config(db_url))
    yield app
    app.close()


@pytest.fixture
def wclients(wapp):
    server = ServerThread(wapp.config, wapp)
    c = Clients(server.address)
    yield c
    c.close()
    server.stop()


def account(app, name="user-1", amount=5 * BTC) -> str:
    a = app.create_account(name)
    if amount:
        fund(app, a.account_id, amount)
    return str(a.account_id)


def balances(app, account_id):
    _, bs = app.get_balances(account_id)
    b = next(b for b in bs if b.asset == "BTC")
    return b.available, b.held


def request(clients, account_id, amount, key="k1", to=PAYEE, asset="BTC", who="wallet-service"):
    return clients.custody.RequestWithdrawal(S.RequestWithdrawalRequest(
        idempotency_key=key, account_id=account_id, asset=asset, to_address=to, amount=str(amount)),
        metadata=Clients.md(who)).withdrawal


def test_request_holds_amount_plus_fee_and_is_idempotent(wapp, wclients):
    acct = account(wapp)
    w = request(wclients, acct, BTC // 2)
    assert w.status == S.WITHDRAWAL_STATUS_PENDING_REVIEW and w.fee == str(WITHDRAWAL_FEE)
    assert balances(wapp, acct) == (5 * BTC - BTC // 2 - WITHDRAWAL_FEE, BTC // 2 + WITHDRAWAL_FEE)
    again = wclients.custody.RequestWithdrawal(S.RequestWithdrawalRequest(
        idempotency_key="k1", account_id=acct, asset="BTC", to_address=PAYEE, amount=str(BTC // 2)),
        metadata=Clients.md("wallet-service"))
    assert again.withdrawal.withdrawal_id == w.withdrawal_id and not again.created
    assert balances(wapp, acct) == (5 * BTC - BTC // 2 - WITHDRAWAL_FEE, BTC // 2 + WITHDRAWAL_FEE)
    got = wclients.custody.GetWithdrawal(S.GetWithdrawalRequest(withdrawal_id=w.withdrawal_id),
                                         metadata=Clients.md("wallet-service")).withdrawal
    assert [h.to_status for h in got.history] == [S.WITHDRAWAL_STATUS_PENDING_REVIEW]
    assert got.history[0].actor == "wallet-service"
    listed = wclients.custody.ListWithdrawals(S.ListWithdrawalsRequest(account_id=acct),
                                              metadata=Clients.md("wallet-service")).withdrawals
    assert [x.withdrawal_id for x in listed] == [w.withdrawal_id]


def test_an_accounts_list_carries_each_withdrawals_own_history(wapp, wclients):
    acct = account(wapp)
    kept = request(wclients, acct, BTC // 2, key="kept")
    rejected = request(wclients, acct, BTC // 2, key="rejected")
    wclients.backoffice.RejectWithdrawal(backoffice_pb2.RejectWithdrawalRequest(
        withdrawal_id=rejected.withdrawal_id, reason="destination on a sanctions list"), metadata=Clients.md("alice"))
    listed = {w.withdrawal_id: w for w in wclients.custody.ListWithdrawals(
        S.ListWithdrawalsRequest(account_id=acct), metadata=Clients.md("wallet-service")).withdrawals}
    for w in (kept, rejected):
        one = wclients.custody.GetWithdrawal(S.GetWithdrawalRequest(withdrawal_id=w.withdrawal_id),
                                             metadata=Clients.md("wallet-service")).withdrawal
        assert list(listed[w.withdrawal_id].history) == list(one.history)
    assert [h.to_status for h in listed[rejected.withdrawal_id].history] == [
        S.WITHDRAWAL_STATUS_PENDING_REVIEW, S.WITHDRAWAL_STATUS_REJECTED]
    assert [h.to_status for h in listed[kept.withdrawal_id].history] == [S.WITHDRAWAL_STATUS_PENDING_REVIEW]


def test_small_amount_is_auto_approved(wapp, wclients):
    acct = account(wapp)
    w = request(wclients, acct, BTC // 10)
    assert w.status == S.WITHDRAWAL_STATUS_APPROVED


@pytest.mark.parametrize("case, fields, code, message", [
    ("unknown asset", {"asset": "DOGE"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown asset"),
    ("wrong network", {"to": TESTNET_PAYEE}, grpc.StatusCode.INVALID_ARGUMENT, "not regtest"),
    ("bad checksum", {"to": PAYEE[:-1] + "q"}, grpc.StatusCode.INVALID_ARGUMENT, "bad checksum"),
    ("bitcoin cash address", {"to": "bchreg:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Bitcoin Cash address"),
    ("below minimum", {"amount": 9_999}, grpc.StatusCode.INVALID_ARGUMENT, "below the minimum"),
    ("above maximum", {"amount": 10 * BTC + 1}, grpc.StatusCode.INVALID_ARGUMENT, "above the maximum"),
    ("fraction", {"amount": "0.5"}, grpc.StatusCode.INVALID_ARGUMENT, "not a fraction"),
    ("above balance", {"amount": 5 * BTC}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient"),
    # Not parsed at all: base58 decoding of a message-sized address took minutes of server CPU.
    ("address of a megabyte", {"to": "9" * 1_000_000}, grpc.StatusCode.INVALID_ARGUMENT,
     "to_address: at most 128 characters, got 1000000"),
])
def test_bad_requests_are_refused_and_hold_nothing(wapp, wclients, case, fields, code, message):
    acct = account(wapp)
    args = {"amount": BTC, **fields}
    with pytest.raises(grpc.RpcError) as err:
        request(wclients, acct, args.pop("amount"), **args)
    assert err.value.code() == code and message in err.value.details(), err.value.details()
    assert balances(wapp, acct) == (5 * BTC, 0)
    assert wapp.withdrawals.list_for_account(acct) == ([], "")


def test_frozen_account_and_reused_key_are_refused(wapp, wclients):
    acct = account(wapp)
    request(wclients, acct, BTC // 2, key="same")
    with pytest.raises(grpc.RpcError) as err:
        request(wclients, acct, BTC // 2 + 1, key="same")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert balances(wapp, acct) == (5 * BTC - BTC // 2 - WITHDRAWAL_FEE, BTC // 2 + WITHDRAWAL_FEE)
    from custody.db.engine import write_transaction
    from custody.deposits.store import freeze_account

    with write_transaction(wapp.engine) as conn:
        freeze_account(conn, int(acct), "test: reversed deposit")
    with pytest.raises(grpc.RpcError) as err:
        request(wclients, acct, BTC // 2, key="after-freeze")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "frozen" in err.value.details()
    assert balances(wapp, acct) == (5 * BTC - BTC // 2 - WITHDRAWAL_FEE, BTC // 2 + WITHDRAWAL_FEE)
    # A retry of the request made before the freeze still answers with its first result.
    first, created = wapp.withdrawals.request("wallet-service", "same", acct, "BTC", PAYEE, str(BTC // 2))
    assert not created and first["amount"] == BTC // 2
    assert balances(wapp, acct) == (5 * BTC - BTC // 2 - WITHDRAWAL_FEE, BTC // 2 + WITHDRAWAL_FEE)


def test_daily_limit(wapp, wclients):
    acct = account(wapp, amount=30 * BTC)
    request(wclients, acct, 10 * BTC, key="a")
    request(wclients, acct, 10 * BTC, key="b")
    with pytest.raises(grpc.RpcError) as err:
        request(wclients, acct, BTC, key="c")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "daily withdrawal limit" in err.value.details()


def test_withdraw_scope_is_required(wapp, wclients):
    acct = account(wapp)
    with pytest.raises(grpc.RpcError) as err:
        request(wclients, acct, BTC, who="exchange")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def approve(clients, app, wid, staff, signature=None):
    return clients.backoffice.ApproveWithdrawal(backoffice_pb2.ApproveWithdrawalRequest(
        withdrawal_id=wid, signature=signature if signature is not None else approve_signature(app, wid, staff)),
        metadata=Clients.md(staff)).withdrawal


def test_four_eyes(wapp, wclients):
    acct = account(wapp, amount=15 * BTC)
    one = request(wclients, acct, BTC // 2, key="one")  # one approval
    two = request(wclients, acct, 2 * BTC, key="two")  # two approvals
    own = request(wclients, acct, BTC // 2, key="own", who="carol")  # carol asked: carol can't approve
    # A bad signature, another approver's signature, the requester approving: refused.
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, one.withdrawal_id, "alice", signature=b"\0" * 64)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, one.withdrawal_id, "alice", signature=approve_signature(wapp, one.withdrawal_id, "bob"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, own.withdrawal_id, "carol")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "can't approve" in err.value.details()
    # A signature for one withdrawal does not approve another.
    with pytest.raises(grpc.RpcError):
        approve(wclients, wapp, two.withdrawal_id, "alice", signature=approve_signature(wapp, one.withdrawal_id, "alice"))
    assert approve(wclients, wapp, one.withdrawal_id, "alice").status == S.WITHDRAWAL_STATUS_APPROVED
    assert approve(wclients, wapp, two.withdrawal_id, "alice").status == S.WITHDRAWAL_STATUS_PENDING_REVIEW
    # Alice retries (her first reply was lost): the withdrawal as it is, her approval counted once.
    assert approve(wclients, wapp, two.withdrawal_id, "alice").status == S.WITHDRAWAL_STATUS_PENDING_REVIEW
    assert approve(wclients, wapp, one.withdrawal_id, "alice").status == S.WITHDRAWAL_STATUS_APPROVED
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, two.withdrawal_id, "alice", signature=b"\0" * 64)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "a retry's signature is checked too"
    items = wclients.backoffice.ListWithdrawals(backoffice_pb2.BackofficeServiceListWithdrawalsRequest(),
                                                metadata=Clients.md("bob")).items
    facts = {i.withdrawal.withdrawal_id: i.facts for i in items}
    assert set(facts) == {two.withdrawal_id, own.withdrawal_id}
    assert facts[two.withdrawal_id].approvals_needed == 2 and list(facts[two.withdrawal_id].approvers) == ["alice"]
    assert facts[two.withdrawal_id].destination_seen_before == 0, "none paid yet"
    assert facts[own.withdrawal_id].requested_by == "carol"
    assert facts[two.withdrawal_id].withdrawn_24h == str(2 * BTC + BTC // 2), "up to its own request"
    assert approve(wclients, wapp, two.withdrawal_id, "bob").status == S.WITHDRAWAL_STATUS_APPROVED
    assert approve(wclients, wapp, own.withdrawal_id, "bob").status == S.WITHDRAWAL_STATUS_APPROVED
    # The exchange's token can't review.
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, own.withdrawal_id, "wallet-service", signature=b"x")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_repeated_rejection_by_the_same_staff_member_answers_as_the_first(wapp, wclients):
    acct = account(wapp, amount=15 * BTC)
    w = request(wclients, acct, 2 * BTC, key="r")

    def reject(staff, reason="not this one"):
        return wclients.backoffice.RejectWithdrawal(backoffice_pb2.RejectWithdrawalRequest(
            withdrawal_id=w.withdrawal_id, reason=reason), metadata=Clients.md(staff)).withdrawal

    first = reject("alice")
    assert first.status == S.WITHDRAWAL_STATUS_REJECTED
    events = len(wapp.events_after(0, limit=10_000))
    assert reject("alice") == first, "the retry changes nothing and answers the same"
    assert len(wapp.events_after(0, limit=10_000)) == events
    with pytest.raises(grpc.RpcError) as err:
        reject("bob")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is REJECTED" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, w.withdrawal_id, "bob")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_each_review_item_carries_its_own_facts(wapp, wclients):
    """The facts of a review page are read for the whole page at once: each item must still get its own."""
    ann, bob = account(wapp, "ann", amount=15 * BTC), account(wapp, "bob", amount=15 * BTC)
    elsewhere = address_for(random_script())
    a1 = request(wclients, ann, 2 * BTC, key="a1")
    a2 = request(wclients, ann, BTC // 2, key="a2")
    b1 = request(wclients, bob, 3 * BTC, key="b1", to=elsewhere)
    b2 = request(wclients, bob, BTC // 2, key="b2")
    rejected = request(wclients, bob, BTC, key="b3")
    wclients.backoffice.RejectWithdrawal(backoffice_pb2.RejectWithdrawalRequest(
        withdrawal_id=rejected.withdrawal_id, reason="not this one"), metadata=Clients.md("alice"))
    assert approve(wclients, wapp, a1.withdrawal_id, "alice").status == S.WITHDRAWAL_STATUS_PENDING_REVIEW
    assert approve(wclients, wapp, b1.withdrawal_id, "bob").status == S.WITHDRAWAL_STATUS_PENDING_REVIEW
    wapp.set_frozen("alice-admin", bob, True, "under investigation")
    items = wclients.backoffice.ListWithdrawals(backoffice_pb2.BackofficeServiceListWithdrawalsRequest(),
                                                metadata=Clients.md("carol")).items
    facts = {i.withdrawal.withdrawal_id: i.facts for i in items}
    got = {w.withdrawal_id: (f.destination_seen_before, f.withdrawn_24h, list(f.approvers), f.approvals_needed,
                             f.requested_by, f.account_age_days, f.credited_deposits, f.deposited_amount,
                             f.account_frozen)
           for w, f in ((w, facts[w.withdrawal_id]) for w in (a1, a2, b1, b2))}
    # Each as of its own request: the day's amount up to it; nothing paid to any address yet.
    assert got == {
        a1.withdrawal_id: (0, str(2 * BTC), ["alice"], 2, "wallet-service", 0, 0, "0", False),
        a2.withdrawal_id: (0, str(2 * BTC + BTC // 2), [], 1, "wallet-service", 0, 0, "0", False),
        b1.withdrawal_id: (0, str(3 * BTC), ["bob"], 2, "wallet-service", 0, 0, "0", True),
        b2.withdrawal_id: (0, str(3 * BTC + BTC // 2), [], 1, "wallet-service", 0, 0, "0", True),
    }
    assert set(facts) == {a1.withdrawal_id, a2.withdrawal_id, b1.withdrawal_id, b2.withdrawal_id}


def test_reject_and_cancel_release_the_hold(wapp, wclients):
    acct = account(wapp)
    rejected = request(wclients, acct, BTC // 2, key="r")
    cancelled = request(wclients, acct, BTC // 2, key="c")
    for bad_reason in ("", "sanctions\x00", "ok\x1b[1A"):  # missing, NUL (PostgreSQL cannot store it), escape
        with pytest.raises(grpc.RpcError) as err:
            wclients.backoffice.RejectWithdrawal(backoffice_pb2.RejectWithdrawalRequest(
                withdrawal_id=rejected.withdrawal_id, reason=bad_reason), metadata=Clients.md("alice"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    r = wclients.backoffice.RejectWithdrawal(backoffice_pb2.RejectWithdrawalRequest(
        withdrawal_id=rejected.withdrawal_id, reason="destination on a sanctions list"),
        metadata=Clients.md("alice")).withdrawal
    assert r.status == S.WITHDRAWAL_STATUS_REJECTED and r.reason == "destination on a sanctions list"
    c = wclients.custody.CancelWithdrawal(S.CancelWithdrawalRequest(withdrawal_id=cancelled.withdrawal_id),
                                          metadata=Clients.md("wallet-service")).withdrawal
    assert c.status == S.WITHDRAWAL_STATUS_CANCELLED
    assert balances(wapp, acct) == (5 * BTC, 0)
    # Neither can be approved or cancelled again.
    with pytest.raises(grpc.RpcError) as err:
        approve(wclients, wapp, rejected.withdrawal_id, "bob")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    got = wclients.custody.GetWithdrawal(S.GetWithdrawalRequest(withdrawal_id=rejected.withdrawal_id),
                                         metadata=Clients.md("wallet-service")).withdrawal
    assert [(h.to_status, h.actor) for h in got.history] == [
        (S.WITHDRAWAL_STATUS_PENDING_REVIEW, "wallet-service"), (S.WITHDRAWAL_STATUS_REJECTED, "alice")]
    # Every state change is on the event stream.
    types = [e.type for e in wapp.events_after(0, 1000)]
    assert types.count("withdrawal.pending_review") == 2
    assert "withdrawal.rejected" in types and "withdrawal.cancelled" in types
    assert types.count("ledger.withdrawal_release") == 2


def test_withdrawal_lists_come_in_pages(wapp, wclients):
    ann, bob = account(wapp, "ann"), account(wapp, "bob")
    ids = [request(wclients, ann, BTC // 2, key=f"ann-{i}").withdrawal_id for i in range(5)]
    ids.append(request(wclients, bob, BTC // 2, key="bob-0").withdrawal_id)
    wallet, reviewer = Clients.md("wallet-service"), Clients.md("alice")

    sizes, listed = every_page(wclients.custody.ListWithdrawals, S.ListWithdrawalsRequest(account_id=ann, page_size=2),
                               "withdrawals", wallet)
    assert sizes == [2, 2, 1]
    assert [w.withdrawal_id for w in listed] == ids[4::-1], "the account's own, newest first"
    assert all([h.to_status for h in w.history] == [S.WITHDRAWAL_STATUS_PENDING_REVIEW] for w in listed)

    sizes, queue = every_page(wclients.backoffice.ListWithdrawals,
                              backoffice_pb2.BackofficeServiceListWithdrawalsRequest(page_size=4), "items", reviewer)
    assert sizes == [4, 2]
    assert [item.withdrawal.withdrawal_id for item in queue] == ids, "the review queue, oldest first"

    # A token goes only with the request it came from.
    first = wclients.custody.ListWithdrawals(S.ListWithdrawalsRequest(account_id=ann, page_size=2), metadata=wallet)
    for call, req in [
        (wclients.custody.ListWithdrawals, S.ListWithdrawalsRequest(account_id=bob, page_token=first.next_page_token)),
        (wclients.backoffice.ListWithdrawals,
         backoffice_pb2.BackofficeServiceListWithdrawalsRequest(page_token=first.next_page_token)),
        (wclients.custody.ListWithdrawals, S.ListWithdrawalsRequest(account_id=ann, page_size=1001)),
        (wclients.backoffice.ListWithdrawalBatches, backoffice_pb2.ListWithdrawalBatchesRequest(page_token="x")),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            call(req, metadata=reviewer if call != wclients.custody.ListWithdrawals else wallet)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


def test_a_payment_below_the_dust_limit_of_its_address_is_refused(db_url):
    """One output below its script's dust limit makes the batch's transaction non-standard: Bitcoin
    Core refuses it (bcoin is laxer), and with it every withdrawal of the batch."""
    import dataclasses

    from chains.bitcoin.addresses import script_to_address
    from chains.bitcoin.params import network

    config = withdrawal_config(db_url)
    low = dataclasses.replace(config.asset("BTC"), min_withdrawal=1)
    app = Custody(dataclasses.replace(config, assets=tuple(low if a.asset == "BTC" else a for a in config.assets)))
    try:
        acct = account(app)
        regtest = network("regtest")
        p2wpkh = script_to_address(bytes([0, 20]) + bytes(20), regtest)
        p2pkh = script_to_address(b"\x76\xa9\x14" + bytes(20) + b"\x88\xac", regtest)
        for address, dust in ((p2wpkh, 294), (p2pkh, 546)):
            with pytest.raises(InvalidArgument, match=f"below {dust}, the least the network relays"):
                app.withdrawals.request("wallet-service", f"k{dust}", acct, "BTC", address, str(dust - 1))
            assert balances(app, acct) == (5 * BTC, 0)
        created = app.withdrawals.request("wallet-service", "ok", acct, "BTC", p2wpkh, "294")[0]
        assert created["amount"] == 294
    finally:
        app.close()


def test_a_withdrawal_to_one_of_our_own_addresses_is_refused(wapp):
    """On chain to ourselves would be credited as a deposit while the resolve path reads the output as
    our own: internal moves go through Transfer."""
    from custody.deposits import store as deposit_store
    from custody.deposits.store import Cursor

    payer, payee = account(wapp), account(wapp, "user-2", amount=0)
    with wapp.engine.begin() as conn:  # as if scanned (no node here): the chain's addresses may be handed out
        deposit_store.create_cursor(conn, "bitcoin", Cursor(100, "00" * 32))
    deposit = wapp.deposit_address(payee, "bitcoin")[1]
    hot = wapp.plugin("bitcoin").derive_address(HOT_XPUB, 1).address
    ensure_wallet_addresses(wapp.engine, wapp.plugin("bitcoin"), "bitcoin", "hot", HOT_XPUB, 2)
    for address, whose in ((deposit, f"account {payee}'s deposit"), (hot, "the hot wallet's")):
        with pytest.raises(InvalidArgument, match=f"is {whose} address at this exchange"):
            wapp.withdrawals.request("wallet-service", f"k-{address}", payer, "BTC", address, str(BTC // 10))
    assert balances(wapp, payer) == (5 * BTC, 0)
    assert wapp.withdrawals.list_for_account(payer) == ([], "")


def test_a_retry_after_the_minimum_was_raised_answers_with_its_withdrawal(db_url):
    """A rolling config change raises min_withdrawal: a retry of an existing withdrawal's key
    reaching an instance with the new minimum answers with that withdrawal; the same key with
    another request is still a conflict, and a new request is checked against the new minimum."""
    from custody.errors import IdempotencyConflict

    old, new = Custody(withdrawal_config(db_url)), Custody(withdrawal_config(db_url, btc={"min_withdrawal": "50000"}))
    try:
        acct = account(old)
        first, created = old.withdrawals.request("wallet-service", "k1", acct, "BTC", PAYEE, "20000")
        again, created_again = new.withdrawals.request("wallet-service", "k1", acct, "BTC", PAYEE, "20000")
        assert created and not created_again and again["id"] == first["id"]
        with pytest.raises(IdempotencyConflict):
            new.withdrawals.request("wallet-service", "k1", acct, "BTC", PAYEE, "20001")
        with pytest.raises(InvalidArgument, match="below the minimum withdrawal of 50000"):
            new.withdrawals.request("wallet-service", "k2", acct, "BTC", PAYEE, "20000")
        assert balances(new, acct) == (5 * BTC - 20_000 - WITHDRAWAL_FEE, 20_000 + WITHDRAWAL_FEE)
    finally:
        old.close()
        new.close()


def test_listing_the_withdrawals_of_an_account_that_does_not_exist_is_not_found(wapp, wclients):
    """It answered an empty list, while ListDeposits and GetBalances say NOT_FOUND: a client with a
    mistyped account id saw "no withdrawals" rather than its mistake."""
    with pytest.raises(grpc.RpcError) as err:
        wclients.custody.ListWithdrawals(S.ListWithdrawalsRequest(account_id="987654"),
                                         metadata=Clients.md("wallet-service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "987654" in err.value.details()


def test_an_approval_counts_only_while_its_giver_is_staff_under_the_same_key(db_url):
    """Approvals are stored, and were counted whatever the staff list said later: with alice removed
    (gone, or her key stolen) her approval plus bob's moved a two-approval withdrawal to APPROVED.
    Now only approvals by staff listed now, under their key now, count."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.support.signer import staff_public_hex

    app = Custody(withdrawal_config(db_url))
    try:
        acct = account(app, amount=5 * BTC)
        w, _ = app.withdrawals.request("wallet-service", "big", acct, "BTC", PAYEE, str(2 * BTC))
        assert app.withdrawals.approve("alice", w["id"], approve_signature(app, w["id"], "alice"))["status"] \
            == "PENDING_REVIEW"
    finally:
        app.close()

    bob_new = Ed25519PrivateKey.generate()
    bob_new_hex = bob_new.public_key().public_bytes(serialization.Encoding.Raw,
                                                     serialization.PublicFormat.Raw).hex()
    without_alice = [{"name": "bob", "ed25519_public_key": staff_public_hex("bob")},
                     {"name": "carol", "ed25519_public_key": staff_public_hex("carol")}]
    app = Custody(withdrawal_config(db_url, staff=without_alice))
    try:
        assert app.withdrawals.approve("bob", w["id"], approve_signature(app, w["id"], "bob"))["status"] \
            == "PENDING_REVIEW", "alice's approval no longer counts"
    finally:
        app.close()

    rotated = [{"name": "bob", "ed25519_public_key": bob_new_hex},
               {"name": "carol", "ed25519_public_key": staff_public_hex("carol")}]
    app = Custody(withdrawal_config(db_url, staff=rotated))
    try:
        assert app.withdrawals.approve("carol", w["id"], approve_signature(app, w["id"], "carol"))["status"] \
            == "PENDING_REVIEW", "bob's approval under his replaced key no longer counts"
        with pytest.raises(InvalidArgument):
            app.withdrawals.approve("bob", w["id"], approve_signature(app, w["id"], "bob"))  # the old key
        message = app.withdrawals.approval_message(app.withdrawals.get(w["id"])[0])
        approved = app.withdrawals.approve("bob", w["id"], bob_new.sign(message))
        assert approved["status"] == "APPROVED"
        _, history = app.withdrawals.get(w["id"])
        assert history[-1]["reason"] == "approved by bob, carol"
    finally:
        app.close()
