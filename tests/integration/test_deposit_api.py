"""GetDepositAddress, ListDeposits, GetBalances.pending and deposit events over gRPC."""
import json

import grpc
import pytest

from custody.paging import parse_page
from custody.v1 import custody_pb2 as pb
from tests.support.bitcoin import CONFIRMATIONS
from tests.support.paging import every_page
from tests.support.servers import Clients, ServerThread


@pytest.fixture
def api(btc_app):
    server = ServerThread(btc_app.config, btc_app)
    clients = Clients(server.address)
    yield clients
    clients.close()
    server.stop()


def test_a_first_address_with_the_node_down_is_unavailable_without_the_node_s_address(db_url, dead_port):
    """The chain is not scanned yet and its node does not answer: UNAVAILABLE, and the message
    named the node's host and port and its socket error to any client (found by the gRPC
    review). Those go to the server log only."""
    from custody.app import Custody
    from tests.support.bitcoin import make_chain_config

    app = Custody(make_chain_config(db_url, f"http://user:pass@127.0.0.1:{dead_port}"))
    server = ServerThread(app.config, app)
    clients = Clients(server.address)
    try:
        md = clients.md()
        account = clients.custody.CreateAccount(pb.CreateAccountRequest(external_id="ann"), metadata=md).account_id
        with pytest.raises(grpc.RpcError) as refused:
            clients.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="bitcoin"),
                                              metadata=md)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert refused.value.details() == ("bitcoin: the chain is not scanned yet and its node can't be used now "
                                           "(the server log says why); no deposit address is handed out before it "
                                           "is; retry later")
    finally:
        clients.close()
        server.stop()
        app.close()


def test_deposit_flow_over_grpc(api, btc_app, chain):
    md = api.md()
    account = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="grpc-ann"), metadata=md).account_id
    first = api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="bitcoin"), metadata=md)
    again = api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="bitcoin"), metadata=md)
    fresh = api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="bitcoin",
                                                                      new_address=True, idempotency_key="n1"),
                                          metadata=md)
    assert first.address == again.address != fresh.address
    assert first.address.startswith("bcrt1q") and first.chain == "bitcoin" and first.account_id == account

    txid, _ = chain.pay((btc_app.plugin("bitcoin").watch_key(first.address), 123_456))
    chain.mine(1)
    btc_app.scanner("bitcoin").catch_up()
    (d,) = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account), metadata=md).deposits
    assert (d.txid, d.index, d.address, d.amount, d.confirmations, d.status, d.asset, d.chain, d.coinbase) == (
        txid, 0, first.address, "123456", 1, pb.DEPOSIT_STATUS_PENDING, "BTC", "bitcoin", False)
    btc = {b.asset: b for b in api.custody.GetBalances(pb.GetBalancesRequest(account_id=account),
                                                       metadata=md).balances}["BTC"]
    assert (btc.available, btc.pending) == ("0", "123456")

    chain.mine(CONFIRMATIONS - 1)
    btc_app.scanner("bitcoin").catch_up()
    (d,) = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account), metadata=md).deposits
    assert (d.status, d.confirmations, d.block_height) == (pb.DEPOSIT_STATUS_CREDITED, CONFIRMATIONS,
                                                          chain.height() - CONFIRMATIONS + 1)
    btc = {b.asset: b for b in api.custody.GetBalances(pb.GetBalancesRequest(account_id=account),
                                                       metadata=md).balances}["BTC"]
    assert (btc.available, btc.pending) == ("123456", "0")

    stream = api.custody.StreamEvents(pb.StreamEventsRequest(after_cursor=0), metadata=md, timeout=10)
    seen = []
    for event in stream:
        seen.append((event.type, json.loads(event.payload)))
        if event.type == "deposit.credited":
            break
    stream.cancel()
    assert [s[0] for s in seen] == ["deposit.pending", "ledger.deposit", "deposit.credited"]
    assert seen[2][1]["txid"] == txid and seen[2][1]["amount"] == "123456" and seen[2][1]["confirmations"] == 3


def test_deposit_rpcs_refuse_bad_requests(api):
    md = api.md()
    with pytest.raises(grpc.RpcError) as err:
        api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id="999", chain="bitcoin"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    account = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="x"), metadata=md).account_id
    with pytest.raises(grpc.RpcError) as err:
        api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="dogecoin"), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown chain 'dogecoin'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        api.custody.ListDeposits(pb.ListDepositsRequest(account_id="999"), metadata=md)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account), metadata=api.md("reviewer"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def issued_addresses(btc_app) -> int:
    from sqlalchemy import func, select

    from custody.db import schema as t
    with btc_app.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t.chain_addresses)).scalar_one()


def test_a_new_address_is_issued_once_per_idempotency_key(api, btc_app):
    """new_address changes something (one more address to watch for ever): a client's retry must
    not issue a second one, and the key follows the rules of every other idempotent call."""
    md = api.md()
    ann = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="key-ann"), metadata=md).account_id
    bob = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="key-bob"), metadata=md).account_id

    def new(account, key, metadata=md):
        return api.custody.GetDepositAddress(pb.GetDepositAddressRequest(
            account_id=account, chain="bitcoin", new_address=True, idempotency_key=key), metadata=metadata).address

    current = api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=ann, chain="bitcoin"),
                                            metadata=md).address
    first = new(ann, "k1")
    assert first != current
    before = issued_addresses(btc_app)
    assert new(ann, "k1") == first, "a retry gets the address its key issued"
    assert issued_addresses(btc_app) == before
    assert api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=ann, chain="bitcoin"),
                                         metadata=md).address == first
    second = new(ann, "k2")
    assert second not in (first, current) and issued_addresses(btc_app) == before + 1

    for request, code, message in [
        (pb.GetDepositAddressRequest(account_id=ann, chain="bitcoin", new_address=True),
         grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key is required with new_address"),
        (pb.GetDepositAddressRequest(account_id=ann, chain="bitcoin", new_address=True, idempotency_key="a b"),
         grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key must be 1-128 printable ASCII"),
        (pb.GetDepositAddressRequest(account_id=ann, chain="bitcoin", idempotency_key="x" * 129),
         grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key must be 1-128 printable ASCII"),
        (pb.GetDepositAddressRequest(account_id=bob, chain="bitcoin", new_address=True, idempotency_key="k1"),
         grpc.StatusCode.ALREADY_EXISTS, "was used for a different request"),
        (pb.GetDepositAddressRequest(account_id="999", chain="bitcoin", new_address=True, idempotency_key="k9"),
         grpc.StatusCode.NOT_FOUND, "account 999 does not exist"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            api.custody.GetDepositAddress(request, metadata=md)
        assert (err.value.code(), message in err.value.details()) == (code, True), err.value.details()
    assert issued_addresses(btc_app) == before + 1, "a refused request issues nothing"
    # A key that failed (unknown account) was not used up.
    assert new(bob, "k9") not in (first, second)

    # Keys are per client and shared with the client's other calls.
    with pytest.raises(grpc.RpcError) as err:
        api.custody.Transfer(pb.TransferRequest(idempotency_key="k1", from_account_id=ann, to_account_id=bob,
                                                asset="BTC", amount="1"), metadata=md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert new(ann, "k1", api.md("wallet-service")) not in (first, second)


def list_all(api, account, page_size, md):
    """Every page of ListDeposits, as (page sizes, deposits in order)."""
    return every_page(api.custody.ListDeposits, pb.ListDepositsRequest(account_id=account, page_size=page_size),
                      "deposits", md)


def test_deposits_come_in_pages_newest_first_and_new_ones_do_not_shift_the_pages(api, btc_app, chain):
    md = api.md()
    account = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="pages"), metadata=md).account_id
    address = api.custody.GetDepositAddress(pb.GetDepositAddressRequest(account_id=account, chain="bitcoin"),
                                            metadata=md).address
    script = btc_app.plugin("bitcoin").watch_key(address)
    txid, _ = chain.pay(*[(script, 10_000 + i) for i in range(25)])
    chain.mine(1)
    btc_app.scanner("bitcoin").catch_up()

    sizes, deposits = list_all(api, account, 10, md)
    assert sizes == [10, 10, 5]
    assert [(d.txid, d.index) for d in deposits] == [(txid, i) for i in reversed(range(25))]
    assert [int(d.deposit_id) for d in deposits] == sorted((int(d.deposit_id) for d in deposits), reverse=True)
    assert len(list_all(api, account, 0, md)[1]) == 25, "the default page holds them all"

    first = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account, page_size=10), metadata=md)
    later, _ = chain.pay((script, 20_000))  # arrives while the client is paging
    chain.mine(1)
    btc_app.scanner("bitcoin").catch_up()
    second = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account, page_size=10,
                                                             page_token=first.next_page_token), metadata=md)
    assert [d.deposit_id for d in second.deposits] == [d.deposit_id for d in deposits[10:20]]
    newest = api.custody.ListDeposits(pb.ListDepositsRequest(account_id=account, page_size=1), metadata=md)
    assert newest.deposits[0].txid == later and newest.next_page_token


def test_list_deposits_refuses_bad_pages(api):
    md = api.md()
    ann = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="pages-ann"), metadata=md).account_id
    bob = api.custody.CreateAccount(pb.CreateAccountRequest(external_id="pages-bob"), metadata=md).account_id
    for request, message in [
        (pb.ListDepositsRequest(account_id=ann, page_size=1001), "page_size must be from 1 to 1000"),
        (pb.ListDepositsRequest(account_id=ann, page_token="garbage"), "not a token this server made"),
        (pb.ListDepositsRequest(account_id=ann, page_token="x\x00y"), "not a token this server made"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            api.custody.ListDeposits(request, metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    _, bobs_token = parse_page(1, "", f"deposits:{bob}").cut([2, 1], key=lambda r: r)
    with pytest.raises(grpc.RpcError) as err:
        api.custody.ListDeposits(pb.ListDepositsRequest(account_id=ann, page_token=bobs_token), metadata=md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "different list" in err.value.details()
