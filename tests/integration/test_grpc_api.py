"""The gRPC API through a real server on a free port, with real tokens and scopes."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from custody.money import MAX_AMOUNT
from custody.v1 import backoffice_pb2 as bo
from custody.v1 import custody_pb2 as pb
from tests.support.servers import bearer


def create(clients, external_id):
    return clients.custody.CreateAccount(pb.CreateAccountRequest(external_id=external_id), metadata=bearer("exchange"))


def adjust(clients, account_id, amount, key, asset="BTC", direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="funding for test"):
    return clients.backoffice.AdjustBalance(bo.AdjustBalanceRequest(
        idempotency_key=key, account_id=account_id, asset=asset, amount=amount, direction=direction, reason=reason),
        metadata=bearer("alice-admin"))


def balances(clients, account_id):
    reply = clients.custody.GetBalances(pb.GetBalancesRequest(account_id=account_id), metadata=bearer("exchange"))
    return {b.asset: (b.available, b.held, b.pending) for b in reply.balances}


def event_count(app):
    return len(app.events_after(0, limit=10_000))


@pytest.fixture
def two(clients):
    a = create(clients, "alice").account_id
    b = create(clients, "bob").account_id
    adjust(clients, a, "5000", "fund-a")
    return a, b


def test_create_account_is_idempotent_on_external_id(clients):
    first = create(clients, "user-42")
    again = create(clients, "user-42")
    assert first.created and not again.created
    assert again.account_id == first.account_id


def test_balances_list_every_configured_asset(clients, two):
    a, b = two
    assert balances(clients, a) == {"BTC": ("5000", "0", "0"), "ETH": ("0", "0", "0"), "USDT": ("0", "0", "0")}


def test_transfer_and_replay(clients, two):
    a, b = two
    req = pb.TransferRequest(idempotency_key="t-1", from_account_id=a, to_account_id=b, asset="BTC", amount="1234")
    first = clients.custody.Transfer(req, metadata=bearer("exchange"))
    again = clients.custody.Transfer(req, metadata=bearer("exchange"))
    assert first == again
    assert balances(clients, a)["BTC"][0] == "3766"
    assert balances(clients, b)["BTC"][0] == "1234"
    req.amount = "1235"
    with pytest.raises(grpc.RpcError) as err:
        clients.custody.Transfer(req, metadata=bearer("exchange"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_assets_comes_from_the_config(clients):
    reply = clients.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"))
    btc = {a.asset: a for a in reply.assets}["BTC"]
    assert (btc.chain, btc.decimals, btc.confirmations, btc.withdrawal_fee, btc.min_withdrawal) == (
        "bitcoin", 8, 2, "1000", "10000")
    assert {a.asset: a.contract for a in reply.assets}["USDT"].startswith("0x")


LONG = "x" * 129


@pytest.mark.parametrize("change, code, detail", [
    ({"amount": "-5"}, grpc.StatusCode.INVALID_ARGUMENT, "negative"),
    ({"amount": "0"}, grpc.StatusCode.INVALID_ARGUMENT, "greater than zero"),
    ({"amount": "1.5"}, grpc.StatusCode.INVALID_ARGUMENT, "fraction"),
    ({"amount": "ten"}, grpc.StatusCode.INVALID_ARGUMENT, "decimal digits"),
    ({"amount": ""}, grpc.StatusCode.INVALID_ARGUMENT, "amount is required"),
    ({"amount": str(MAX_AMOUNT + 1)}, grpc.StatusCode.INVALID_ARGUMENT, "exceeds 2^256-1"),
    ({"asset": "DOGE"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown asset"),
    ({"asset": ""}, grpc.StatusCode.INVALID_ARGUMENT, "unknown asset"),
    ({"to_account_id": "987654"}, grpc.StatusCode.NOT_FOUND, "987654"),
    ({"from_account_id": "987654"}, grpc.StatusCode.NOT_FOUND, "987654"),
    ({"to_account_id": "abc"}, grpc.StatusCode.INVALID_ARGUMENT, "to_account_id"),
    ({"to_account_id": "9" * 40}, grpc.StatusCode.INVALID_ARGUMENT, "to_account_id"),
    ({"to_account_id": "SAME"}, grpc.StatusCode.INVALID_ARGUMENT, "must differ"),
    ({"amount": "5001"}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient BTC"),
    ({"asset": "ETH"}, grpc.StatusCode.FAILED_PRECONDITION, "insufficient ETH"),
    ({"idempotency_key": ""}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key is required"),
    ({"idempotency_key": LONG}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ({"idempotency_key": "has space"}, grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ({"memo": "m" * 257}, grpc.StatusCode.INVALID_ARGUMENT, "memo"),
    ({"memo": "rent\x00"}, grpc.StatusCode.INVALID_ARGUMENT, "memo must not contain control characters"),
    ({"memo": "paid \x1b[2Kback"}, grpc.StatusCode.INVALID_ARGUMENT, "memo must not contain control characters"),
])
def test_bad_transfer_gets_a_precise_status_and_changes_nothing(app, clients, two, change, code, detail):
    a, b = two
    fields = {"idempotency_key": "bad-1", "from_account_id": a, "to_account_id": b, "asset": "BTC", "amount": "10"}
    fields.update(change)
    if fields["to_account_id"] == "SAME":
        fields["to_account_id"] = a
    before = (balances(clients, a), balances(clients, b), event_count(app))
    with pytest.raises(grpc.RpcError) as err:
        clients.custody.Transfer(pb.TransferRequest(**fields), metadata=bearer("exchange"))
    assert err.value.code() == code
    assert detail in err.value.details()
    assert (balances(clients, a), balances(clients, b), event_count(app)) == before


@pytest.mark.parametrize("call, code", [
    (lambda c: create(c, LONG), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda c: create(c, ""), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda c: create(c, "tab\there"), grpc.StatusCode.INVALID_ARGUMENT),
    (lambda c: c.custody.GetBalances(pb.GetBalancesRequest(account_id="12345"), metadata=bearer("exchange")),
     grpc.StatusCode.NOT_FOUND),
    (lambda c: c.custody.GetBalances(pb.GetBalancesRequest(account_id=""), metadata=bearer("exchange")),
     grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_account_requests(clients, call, code):
    with pytest.raises(grpc.RpcError) as err:
        call(clients)
    assert err.value.code() == code


def test_adjust_balance_records_the_staff_identity_and_reason(clients, two):
    a, _ = two
    reply = adjust(clients, a, "7", "fix-1", direction=bo.ADJUSTMENT_DIRECTION_DEBIT, reason="refund of a double credit")
    assert balances(clients, a)["BTC"][0] == "4993"
    call = clients.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=reply.event_cursor - 1),
                                        metadata=bearer("exchange"))
    event = next(call)
    call.cancel()
    assert event.type == "ledger.adjustment"
    assert '"actor":"alice-admin"' in event.payload
    assert "refund of a double credit" in event.payload


@pytest.mark.parametrize("change, detail", [
    ({"reason": ""}, "reason is required"),
    ({"reason": "ab"}, "reason is required"),
    ({"reason": "r" * 513}, "reason is required"),
    ({"reason": "double credit\x00"}, "reason must not contain control characters"),
    ({"reason": "approved\rby nobody"}, "reason must not contain control characters"),
    ({"direction": bo.ADJUSTMENT_DIRECTION_UNSPECIFIED}, "direction"),
    ({"amount": "-1"}, "negative"),
    ({"asset": "XRP"}, "unknown asset"),
    ({"idempotency_key": ""}, "idempotency_key"),
])
def test_bad_adjustments_change_nothing(app, clients, two, change, detail):
    a, _ = two
    fields = {"idempotency_key": "adj", "account_id": a, "asset": "BTC", "amount": "1",
              "direction": bo.ADJUSTMENT_DIRECTION_CREDIT, "reason": "a good reason"}
    fields.update(change)
    before = (balances(clients, a), event_count(app))
    with pytest.raises(grpc.RpcError) as err:
        clients.backoffice.AdjustBalance(bo.AdjustBalanceRequest(**fields), metadata=bearer("alice-admin"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert detail in err.value.details()
    assert (balances(clients, a), event_count(app)) == before


def test_memos_and_reasons_keep_tabs_new_lines_and_any_language(clients, two):
    a, b = two
    clients.custody.Transfer(pb.TransferRequest(
        idempotency_key="memo-ok", from_account_id=a, to_account_id=b, asset="BTC", amount="1",
        memo="loyer\tdécembre\nкомната 5 · 家賃"), metadata=bearer("exchange"))
    adjust(clients, a, "1", "reason-ok", reason="line one\nline two: ünïcödé")
    assert balances(clients, b)["BTC"][0] == "1"


def test_debit_adjustment_cannot_overdraw(clients, two):
    a, _ = two
    with pytest.raises(grpc.RpcError) as err:
        adjust(clients, a, "5001", "too-much", direction=bo.ADJUSTMENT_DIRECTION_DEBIT)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_missing_or_invalid_token_is_unauthenticated(clients):
    for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "token-exchange")]):
        with pytest.raises(grpc.RpcError) as err:
            clients.custody.ListAssets(pb.ListAssetsRequest(), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_methods_are_unimplemented_and_not_remembered(server, clients):
    clients.custody.ListAssets(pb.ListAssetsRequest(), metadata=bearer("exchange"))
    remembered = dict(server.server.interceptor._wrapped)
    assert remembered, "served methods are wrapped once"
    for i in range(50):
        call = clients.channel.unary_unary(f"/custody.v1.CustodyService/Nothing{i}")
        with pytest.raises(grpc.RpcError) as err:
            call(b"", metadata=bearer("exchange"))
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert server.server.interceptor._wrapped == remembered, "a name anyone can make up takes no memory"


@pytest.mark.parametrize("client", ["exchange", "reviewer", "nobody"])
def test_adjust_balance_needs_the_admin_scope(clients, two, client):
    a, _ = two
    with pytest.raises(grpc.RpcError) as err:
        clients.backoffice.AdjustBalance(bo.AdjustBalanceRequest(
            idempotency_key="k", account_id=a, asset="BTC", amount="1",
            direction=bo.ADJUSTMENT_DIRECTION_CREDIT, reason="not allowed"), metadata=bearer(client))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert balances(clients, a)["BTC"][0] == "5000"


@pytest.mark.parametrize("client", ["alice-admin", "nobody"])
def test_account_calls_need_the_accounts_scope(clients, client):
    with pytest.raises(grpc.RpcError) as err:
        clients.custody.CreateAccount(pb.CreateAccountRequest(external_id="x"), metadata=bearer(client))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_health_and_reflection_are_on(clients):
    health = health_pb2_grpc.HealthStub(clients.channel)
    for service in ("", "custody.v1.CustodyService", "custody.v1.BackofficeService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(clients.channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                         metadata=bearer("exchange")))
    names = {s.name for s in reply.list_services_response.service}
    assert {"custody.v1.CustodyService", "custody.v1.BackofficeService", "grpc.health.v1.Health"} <= names


def test_wei_amounts_with_thirty_digits_round_trip_exactly(clients):
    """FAILURE_MODES item 15: no float anywhere near an amount."""
    a = create(clients, "wei-holder").account_id
    adjust(clients, a, "123456789012345678901234567890", "wei-1", asset="ETH")
    adjust(clients, a, "1", "wei-2", asset="ETH")
    adjust(clients, a, str(MAX_AMOUNT - 123456789012345678901234567891), "wei-3", asset="ETH")
    assert balances(clients, a)["ETH"] == (str(MAX_AMOUNT), "0", "0")
