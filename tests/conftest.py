"""Fixtures: a fresh database per test (SQLite and PostgreSQL), the custody app,
a real gRPC server on a free port. After every test that used a database the
ledger invariants are checked; a violation fails that test.

CUSTODY_TEST_DB=sqlite or =postgresql limits the run to one database.
"""
from __future__ import annotations

import os
import socket

import pytest

from custody.app import Custody
from custody.db.engine import make_engine
from custody.ledger.invariants import check
from tests.support import databases
from tests.support.config import make_config
from tests.support.servers import Clients, ServerThread

DB_KINDS = [k for k in ("sqlite", "postgresql") if os.environ.get("CUSTODY_TEST_DB", k) == k]

def assert_invariants(url: str) -> None:
    engine = make_engine(url)
    try:
        report = check(engine)
    finally:
        engine.dispose()
    assert report.ok, report.render()


@pytest.fixture(params=DB_KINDS)
def db_url(request, tmp_path):
    url = databases.new_database(request.param, tmp_path)
    yield url
    try:
        if not getattr(request.node, "skip_invariants", False):
            assert_invariants(url)
    finally:
        databases.drop_database(url)


@pytest.fixture
def pg_url(tmp_path):
    url = databases.new_database("postgresql", tmp_path)
    yield url
    try:
        assert_invariants(url)
    finally:
        databases.drop_database(url)


@pytest.fixture
def config(db_url):
    return make_config(db_url)


@pytest.fixture
def app(config):
    custody = Custody(config)
    yield custody
    custody.close()


@pytest.fixture
def server(app):
    thread = ServerThread(app.config, app)
    yield thread
    thread.stop()


@pytest.fixture
def clients(server):
    c = Clients(server.address)
    yield c
    c.close()



@pytest.fixture
def dead_port():
    """A local port nothing listens on for the whole test. A port only picked as free could be
    bound by the other worker's servers meanwhile; this one is bound here, never listening,
    so a connection to it is refused and nobody else can take it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]

# -- Bitcoin: one real bcoin regtest node per worker (tests/support/bitcoin.py) ----------------
@pytest.fixture(scope="session")
def bitcoin_node():
    from tests.support.bitcoin import node_folder, start_node

    nodes = start_node(node_folder("session"))
    yield nodes
    nodes.down()


@pytest.fixture(scope="session")
def session_chain(bitcoin_node):
    from tests.support.bitcoin import Chain

    c = Chain(bitcoin_node.rpc_url("bitcoin"))
    c.miner.ensure_ready(spendable=150)
    return c


@pytest.fixture
def chain(session_chain):
    """The worker's chain, with nothing of an earlier test's left in its mempool. A transaction a
    test left unmined (a withdrawal broadcast at its end) paid its change to hot address 0, the
    same in every test: mined in a later test's block, it was a hot coin that test never funded,
    and coin selection took it (three tests failed run after one such test). Mined here, below
    the tip this test's scanner starts from."""
    if session_chain.rpc.call("getrawmempool"):
        session_chain.mine(1)
    return session_chain


@pytest.fixture
def btc_app(db_url, chain):
    """The custody app on a fresh database, its Bitcoin scanner starting at the current tip."""
    from tests.support.bitcoin import make_chain_config

    custody = Custody(make_chain_config(db_url, chain.rpc.url))
    custody.scanner("bitcoin").catch_up()
    yield custody
    custody.close()
