"""Deposit addresses handed out by several instances on one database, with real bcoin: every address is
watched from a height at or below its first possible payment, comes from the pinned deposit key, and
is issued once, under load, with no failure (found by a review of accounts and addresses)."""

import pytest

from chains.base import NodeUnavailable
from custody.app import Custody
from custody.errors import ConfigChanged
from tests.support.bitcoin import CONFIRMATIONS, DEPOSIT_XPUB, OTHER_XPUB, make_chain_config
from tests.support.threads import run_in_threads


def available(app, account_id):
    return {b.asset: b for b in app.get_balances(str(account_id))[1]}["BTC"].available


def test_an_address_handed_out_before_any_scanner_ran_is_credited(db_url, chain):
    """Instance A serves the API before any scanner has run (a first deployment, a chain added, the
    scanner on an instance that starts later). The scanner then started at the node's tip, above the
    block paying the address, and never read it."""
    config = make_chain_config(db_url, chain.rpc.url)
    api, scanning = Custody(config), None
    try:
        ann = api.create_account("ann").account_id
        _, address = api.deposit_address(str(ann), "bitcoin")
        chain.pay((api.plugin("bitcoin").watch_key(address), 250_000))
        chain.mine(1)
        scanning = Custody(config)
        scanning.scanner("bitcoin").catch_up()
        chain.mine(CONFIRMATIONS)
        scanning.scanner("bitcoin").catch_up()
        assert [(d.amount, d.status) for d in api.list_deposits(str(ann))[1]] == [(250_000, "CREDITED")]
        assert available(api, ann) == 250_000
    finally:
        api.close()
        if scanning is not None:
            scanning.close()


def test_an_instance_whose_deposit_key_differs_from_the_pins_hands_out_no_address(db_url, chain):
    """B's config names another deposit_xpub (a typo, a stale config in a rolling deploy): its scanner
    refused to start, yet B handed out addresses of that key, which A's scanner then credited: coins
    the signer's keys can't spend (FAILURE_MODES 34)."""
    a = Custody(make_chain_config(db_url, chain.rpc.url))
    b = Custody(make_chain_config(db_url, chain.rpc.url, deposit_xpub=OTHER_XPUB))
    try:
        a.scanner("bitcoin").catch_up()  # pins deposit_xpub
        bob = a.create_account("bob").account_id
        with pytest.raises(ConfigChanged, match="configuration differs") as refused:
            b.deposit_address(str(bob), "bitcoin")
        # The differences name the xpubs, with which anyone lists every user's addresses: for the
        # server log only, not for a client (found by the gRPC review).
        assert OTHER_XPUB[:20] not in str(refused.value) and DEPOSIT_XPUB[:20] not in str(refused.value)
        _, address = a.deposit_address(str(bob), "bitcoin")
        assert address == a.plugin("bitcoin").derive_address(DEPOSIT_XPUB, 0).address
    finally:
        a.close()
        b.close()


def test_addresses_issued_at_once_by_two_instances_are_distinct_and_none_fails(pg_url, chain):
    """Each caller took the index after the highest and only one of them won: 14 of 16 concurrent
    callers failed with INTERNAL, two instances starting together failed to start, and two first calls
    for one account got two "current" addresses."""
    config = make_chain_config(pg_url, chain.rpc.url)
    instances = [Custody(config), Custody(config)]
    try:
        # Both register the hot and cold wallets' addresses on an empty database.
        errors = run_in_threads([lambda app=app: app.scanner("bitcoin") for app in instances], together=True)
        assert not errors, errors
        instances[0].scanner("bitcoin").catch_up()

        accounts = [instances[0].create_account(f"user-{i}").account_id for i in range(8)]
        answers = []

        def issue(app, account, new, key=""):
            answers.append((account, new, app.deposit_address(str(account), "bitcoin", new=new, client="exchange",
                                                              idempotency_key=key)[1]))

        errors = run_in_threads([lambda i=i: issue(instances[i % 2], accounts[i // 2], i % 4 == 3, f"new-{i}")
                                 for i in range(16)], together=True)
        assert not errors, errors
        owner, current = {}, {}
        for account, new, address in answers:
            assert owner.setdefault(address, account) == account, f"{address} given to two accounts"
            if not new:
                current.setdefault(account, set()).add(address)
        twice_current = [a for i, a in enumerate(accounts) if i % 2 == 0]  # two new=False calls at once
        assert all(len(current[a]) == 1 for a in twice_current), current
        fresh = [address for _, new, address in answers if new]
        assert len(set(fresh)) == len(fresh) == 4

        # A client's retry of one new-address request reaching both instances at once: one address.
        answers.clear()
        errors = run_in_threads([lambda i=i: issue(instances[i % 2], accounts[0], True, "retried") for i in range(4)],
                                together=True)
        assert not errors, errors
        assert len({address for _, _, address in answers}) == 1 and len(answers) == 4
    finally:
        for app in instances:
            app.close()


def test_a_block_a_reorg_brings_in_after_the_tip_was_read_is_not_applied_unwatched(pg_url, chain):
    """The scanner reads the tip, refreshes its watched addresses, then fetches. An address issued on
    another instance after the refresh, paid in a block a reorg brought in before the fetch, was
    applied without the address being watched: the payment was never credited."""
    config = make_chain_config(pg_url, chain.rpc.url)
    api, scanning = Custody(config), Custody(config)
    try:
        scanner = scanning.scanner("bitcoin")
        scanner.catch_up()
        chain.mine(1)
        height = chain.height()
        plugin = scanning.plugin("bitcoin")
        fetch, late = plugin.fetch_blocks, {}

        def fetch_after_a_reorg(start, count, watch):
            if not late:  # after the tip read and the refresh, before the blocks are read
                late["account"] = api.create_account("late").account_id
                _, address = api.deposit_address(str(late["account"]), "bitcoin")
                chain.miner.invalidate(height)
                chain.pay((api.plugin("bitcoin").watch_key(address), 123_456))
                chain.mine(1)
            return fetch(start, count, watch)

        plugin.fetch_blocks = fetch_after_a_reorg
        scanner.catch_up()
        plugin.fetch_blocks = fetch
        chain.mine(CONFIRMATIONS + 1)
        scanner.catch_up()
        assert [(d.amount, d.status) for d in api.list_deposits(str(late["account"]))[1]] == [(123_456, "CREDITED")]
    finally:
        api.close()
        scanning.close()



def test_a_reorg_after_the_tip_was_read_that_replaces_the_cursors_block_is_not_unwound_unwatched(pg_url, chain):
    """As above, but the reorg also replaces the block at the scanner's cursor, so the run unwinds:
    the new branch was read with the watched set from before the address was issued and applied,
    and the payment at the cursor's height was never recorded (a deposit review)."""
    config = make_chain_config(pg_url, chain.rpc.url)
    api, scanning = Custody(config), Custody(config)
    try:
        scanner = scanning.scanner("bitcoin")
        scanner.catch_up()
        cursor_height = chain.height()
        chain.mine(1)
        plugin = scanning.plugin("bitcoin")
        fetch, late = plugin.fetch_blocks, {}

        def fetch_after_a_deeper_reorg(start, count, watch):
            if not late:
                late["account"] = api.create_account("late").account_id
                _, address = api.deposit_address(str(late["account"]), "bitcoin")
                chain.miner.invalidate(cursor_height)
                chain.pay((api.plugin("bitcoin").watch_key(address), 123_456))
                chain.mine(2)  # the payment is in the new block at the cursor's height
            return fetch(start, count, watch)

        plugin.fetch_blocks = fetch_after_a_deeper_reorg
        try:
            scanner.catch_up()
        except NodeUnavailable as exc:  # the run rolls back and the next one starts over (the fix)
            assert "changed while a reorg was unwound" in str(exc)
        plugin.fetch_blocks = fetch
        chain.mine(CONFIRMATIONS)
        scanner.catch_up()
        assert [(d.amount, d.status) for d in api.list_deposits(str(late["account"]))[1]] == [(123_456, "CREDITED")]
    finally:
        api.close()
        scanning.close()