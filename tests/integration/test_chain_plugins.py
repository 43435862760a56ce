"""Chain plugins load through the `custody.chains` entry points, the third-party
example (examples/chain-plugin, installed by `make install`) included, and the
core's scanner runs unchanged on top of it."""
import json

import pytest

from chains import registry
from chains.base import ChainPlugin
from chains.bitcoin.plugin import BitcoinChain
from custody import config as config_mod
from custody.app import Custody


def test_bitcoin_and_the_third_party_example_are_registered():
    assert {"bitcoin", "toychain"} <= set(registry.available())
    assert registry.load("bitcoin") is BitcoinChain
    toy = registry.load("toychain")
    assert issubclass(toy, ChainPlugin) and toy.__module__ == "custody_example_chain"
    with pytest.raises(registry.UnknownChain, match="no chain plugin named 'nochain'"):
        registry.load("nochain")


def write_blocks(path, blocks):
    path.write_text(json.dumps(blocks))


def test_the_scanner_credits_a_deposit_on_the_example_chain(db_url, tmp_path):
    node = tmp_path / "toy.json"
    write_blocks(node, [{"hash": "g", "parent": "", "transfers": []}])
    config = config_mod.parse({
        "database": {"url": db_url},
        "assets": [{"asset": "TOY", "chain": "toychain", "decimals": 0, "confirmations": 2}],
        "chains": {"toychain": {"network": "toynet", "rpc_url": f"file://{node}", "deposit_xpub": "toy-key"}},
    })
    app = Custody(config)
    try:
        app.scanner("toychain").catch_up()
        account = app.create_account("ann").account_id
        _, address = app.deposit_address(str(account), "toychain")
        assert address.startswith("toy1")
        write_blocks(node, [{"hash": "g", "parent": "", "transfers": []},
                            {"hash": "b1", "parent": "g", "transfers": [
                                {"txid": "t1", "index": 0, "to": address, "amount": 9},
                                {"txid": "t1", "index": 1, "to": "toy1" + "0" * 40, "amount": 1}]},
                            {"hash": "b2", "parent": "b1", "transfers": []}])
        app.scanner("toychain").catch_up()
        (deposit,) = app.list_deposits(str(account))[1]
        assert (deposit.status, deposit.amount, deposit.confirmations) == ("CREDITED", 9, 2)
        assert {b.asset: b.available for b in app.get_balances(str(account))[1]}["TOY"] == 9
    finally:
        app.close()


def test_a_chain_without_a_plugin_is_a_configuration_error(db_url):
    config = config_mod.parse({
        "database": {"url": db_url},
        "chains": {"nochain": {"network": "x", "rpc_url": "http://127.0.0.1:1/", "deposit_xpub": "k"}},
    })
    with pytest.raises(config_mod.ConfigError, match="chains.nochain: no chain plugin named 'nochain'"):
        Custody(config)


def test_a_bad_extended_key_is_a_configuration_error(db_url):
    config = config_mod.parse({
        "database": {"url": db_url},
        "chains": {"bitcoin": {"network": "regtest", "rpc_url": "http://127.0.0.1:1/",
                               "deposit_xpub": "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjq"
                                               "JoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8"}},
    })
    with pytest.raises(config_mod.ConfigError, match=r"chains.bitcoin.deposit_xpub: .*tpub/vpub for regtest"):
        Custody(config)


@pytest.mark.parametrize("key, message", [
    ("rpc_timout_s", r"chains.bitcoin.rpc_timout_s: unknown setting \(did you mean rpc_timeout_s\?\)"),
    ("max_reorg_dept", r"chains.bitcoin.max_reorg_dept: unknown setting \(did you mean max_reorg_depth\?\)"),
])
def test_a_misspelt_key_in_a_chain_section_is_a_configuration_error(db_url, key, message):
    """The Bitcoin plugin declares its own keys, so a misspelt one (its or the core's) stops the
    service instead of silently leaving that setting at its default."""
    config = config_mod.parse({
        "database": {"url": db_url},
        "chains": {"bitcoin": {"network": "regtest", "rpc_url": "http://127.0.0.1:1/", key: 5,
                               "deposit_xpub": "vpub5Y6cjg78GGuNLsaPhmYsiw4gYX3HoQiRBiSwDaBXKUafCt9bNwWQiitDk5VZ"
                                               "5BVxYnQdwoTyXSs2JHRPAgjAvtbBrf8ZhDYe2jWAqvZVnsc"}},
    })
    with pytest.raises(config_mod.ConfigError, match=message):
        Custody(config)
