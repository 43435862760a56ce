import pathlib

import pytest

from custody import config

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_example_config_loads():
    cfg = config.load(ROOT / "custody.example.toml")
    assert [a.asset for a in cfg.assets] == ["BTC", "ETH", "USDT"]
    assert cfg.asset("BTC").withdrawal_fee == 10000
    assert cfg.database_url == "sqlite:///" + str(ROOT / "var" / "custody.db")


@pytest.mark.parametrize("raw, message", [
    ({"clients": [{"name": "x", "token_sha256": "ab", "scopes": []}]}, "64 hex digits"),
    ({"clients": [{"name": "x", "token_sha256": "a" * 64, "scopes": ["root"]}]}, "unknown scopes"),
    ({"clients": [{"name": "withdrawals", "token_sha256": "a" * 64}]}, "reserved"),
    ({"clients": [{"name": "withdrawal-job", "token_sha256": "a" * 64}]}, "reserved"),
    ({"clients": [{"name": "scanner:bitcoin", "token_sha256": "a" * 64}]}, "name must be"),
    ({"clients": [{"name": "two words", "token_sha256": "a" * 64}]}, "name must be"),
    ({"clients": [{"name": "x" * 65, "token_sha256": "a" * 64}]}, "name must be"),
    ({"clients": [{"name": 7, "token_sha256": "a" * 64}]}, "name must be"),
    ({"clients": [{"name": "x", "token_sha256": "a" * 64}, {"name": "x", "token_sha256": "b" * 64}]},
     r"clients\[1\] \(x\): another client has the same name"),
    ({"clients": [{"name": "x", "token_sha256": "a" * 64}, {"name": "y", "token_sha256": "A" * 64}]},
     r"clients\[1\] \(y\): another client has the same token_sha256"),
    ({"withdrawals": {"staff": [{"name": "alice", "ed25519_public_key": "a" * 64},
                                {"name": "alice-2", "ed25519_public_key": "A" * 64}]}},
     r"withdrawals.staff\[1\] \(alice-2\): another staff entry has the same name or key"),
    ({"withdrawals": {"staff": [{"name": "alice", "ed25519_public_key": "a" * 64},
                                {"name": "alice", "ed25519_public_key": "b" * 64}]}}, "same name or key"),
    ({"assets": [{"asset": "btc", "chain": "bitcoin", "decimals": 8}]}, "upper-case"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8}] * 2}, "listed twice"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "withdrawal_fee": "0.1"}]}, "fraction"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "withdrawal_fee": 1.5}]}, "fraction"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin"}]}, "decimals"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "min_deposit": -1}]},
     r"assets\[0\].min_deposit must not be negative"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "min_deposit": "-5"}]}, "must not be negative"),
    ({"server": {"tls_cert": "a.crt"}}, "together"),
    ({"server": {"tls_client_ca": "ca.crt"}}, "needs tls_cert"),
    ({"server": {"group_commit_wait_ms": -1}}, "group_commit_wait_ms"),
    ({"server": {"group_commit_wait_ms": "2"}}, "group_commit_wait_ms"),
    ({"server": {"group_commit_wait_ms": 1000}}, "group_commit_wait_ms"),
    ({"server": {"max_concurrent_rpcs": 0}}, "max_concurrent_rpcs"),
    ({"server": {"max_concurrent_rpcs": "100"}}, "max_concurrent_rpcs"),
    ({"server": {"max_concurrent_rpcs": True}}, "max_concurrent_rpcs"),
])
def test_bad_configs_are_refused_with_the_reason(raw, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(raw)


def test_in_memory_sqlite_is_refused():
    from custody.db.engine import make_engine
    with pytest.raises(ValueError, match="not durable"):
        make_engine("sqlite:///:memory:")


ASSETS = [{"asset": "BTC", "chain": "bitcoin", "decimals": 8}, {"asset": "ETH", "chain": "ethereum", "decimals": 18}]
MARKET = {"base": "ETH", "quote": "BTC", "price_tick": "1", "quantity_step": "1000", "min_quantity": "5000",
          "maker_fee_ppm": 1000, "taker_fee_ppm": 2000}


def test_a_market_is_read_with_integer_units():
    cfg = config.parse({"assets": ASSETS, "markets": [MARKET]})
    market = cfg.market("ETH/BTC")
    assert (market.base, market.quote, market.price_unit, market.price_tick) == ("ETH", "BTC", 10**18, 1)
    assert (market.quantity_step, market.min_quantity, market.maker_fee_ppm, market.taker_fee_ppm) == (1000, 5000, 1000, 2000)


def test_the_example_config_has_a_market():
    cfg = config.load(ROOT / "custody.example.toml")
    assert [m.name for m in cfg.markets] == ["ETH/BTC"]


@pytest.mark.parametrize("change, message", [
    ({"base": "DOGE"}, "not a configured asset"),
    ({"quote": "ETH"}, "must differ"),
    ({"price_tick": "0"}, "greater than zero"),
    ({"price_tick": "0.5"}, "fraction"),
    ({"quantity_step": None}, "quantity_step is required"),
    ({"min_quantity": "5500"}, "multiple of quantity_step"),
    ({"taker_fee_ppm": 0.002}, "parts per million"),
    ({"maker_fee_ppm": -1}, "parts per million"),
    ({"maker_fee_ppm": 100_001}, "parts per million"),
])
def test_bad_markets_are_refused_with_the_reason(change, message):
    market = {k: v for k, v in {**MARKET, **change}.items() if v is not None}
    with pytest.raises(config.ConfigError, match=message):
        config.parse({"assets": ASSETS, "markets": [market]})


def test_a_market_listed_twice_is_refused():
    with pytest.raises(config.ConfigError, match="listed twice"):
        config.parse({"assets": ASSETS, "markets": [MARKET, MARKET]})


def test_client_names_fit_their_columns_and_are_kept_as_given():
    names = ["a", "alice@exchange.example", "wallet-service.v2_1", "Z" * 64]
    cfg = config.parse({"clients": [{"name": n, "token_sha256": f"{i:064x}"} for i, n in enumerate(names)]})
    assert [c.name for c in cfg.clients] == names


CLIENT = {"name": "x", "token_sha256": "a" * 64}
ASSET = {"asset": "BTC", "chain": "bitcoin", "decimals": 8}
CHAIN = {"network": "regtest", "rpc_url": "http://u:p@127.0.0.1:1/", "deposit_xpub": "vpub-key"}


@pytest.mark.parametrize("raw, message", [
    ({"assets": [{**ASSET, "daily_withdrawl_limit": "100"}]},
     r"^assets\[0\]\.daily_withdrawl_limit: unknown setting \(did you mean daily_withdrawal_limit\?\)$"),
    ({"withdrawals": {"two_approval_above": "100"}},
     r"^withdrawals\.two_approval_above: unknown setting \(did you mean two_approvals_above\?\)$"),
    ({"withdrawals": {"staff": [{"name": "alice", "ed25519_public_key": "a" * 64, "ed25519_public": "b" * 64}]}},
     r"^withdrawals\.staff\[0\]\.ed25519_public: unknown setting \(did you mean ed25519_public_key\?\)$"),
    ({"server": {"max_group_comit": 10}}, r"^server\.max_group_comit: unknown setting \(did you mean max_group_commit\?\)$"),
    ({"database": {"uri": "sqlite:///x.db"}}, r"^database\.uri: unknown setting \(did you mean url\?\)$"),
    ({"clients": [{**CLIENT, "scope": ["accounts"]}]}, r"^clients\[0\]\.scope: unknown setting \(did you mean scopes\?\)$"),
    ({"assets": [ASSET, {"asset": "ETH", "chain": "ethereum", "decimals": 18}],
      "markets": [{**MARKET, "maker_fee": 10}]},
     r"^markets\[0\]\.maker_fee: unknown setting \(did you mean maker_fee_ppm\?\)$"),
    ({"withdrawal": {}}, r"^withdrawal: unknown setting \(did you mean withdrawals\?\)$"),
    ({"zzz": 1}, r"^zzz: unknown setting; known: server, database"),
    ({"server": "127.0.0.1:1"}, r"^server: must be a table"),
    ({"clients": {"name": "x"}}, r"clients: must be an array of tables"),
    ({"withdrawals": {"staff": {"name": "alice"}}}, r"withdrawals\.staff: must be an array of tables"),
])
def test_unknown_keys_are_refused_with_the_key_meant(raw, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(raw)


def test_a_chain_section_keeps_the_plugins_keys_for_the_plugin():
    """[chains.<name>] is also the plugin's settings: keys the core does not read are passed on."""
    cfg = config.parse({"chains": {"bitcoin": {**CHAIN, "rpc_timeout_s": 3}}})
    assert cfg.chain("bitcoin").settings["rpc_timeout_s"] == 3


@pytest.mark.parametrize("raw, message", [
    ({"server": {"max_group_commit": "abc"}}, r"server: max_group_commit must be an integer"),
    ({"server": {"max_group_commit": 0}}, r"server: max_group_commit must be at least 1"),
    ({"server": {"max_group_commit": True}}, r"server: max_group_commit must be an integer"),
    ({"server": {"group_commit_wait_ms": float("nan")}}, "group_commit_wait_ms"),
    ({"server": {"listen": 50051}}, r"server: listen must be a string"),
    ({"server": {"tls_cert": 1, "tls_key": "k"}}, r"server: tls_cert must be a string"),
    ({"database": {"url": "sqlite:///:memory:"}}, r"database.url: an in-memory SQLite database is not durable"),
    ({"database": {"url": "sqlite://"}}, r"database.url: an in-memory SQLite database is not durable"),
    ({"database": {"url": 5}}, r"database.url must be a database URL"),
    ({"assets": [{**ASSET, "confirmations": "x"}]}, r"assets\[0\]: confirmations must be an integer"),
    ({"assets": [{**ASSET, "confirmations": -1}]}, r"assets\[0\]: confirmations must be from 1 to 4294967295"),
    ({"assets": [{**ASSET, "confirmations": 0}]}, r"assets\[0\]: confirmations must be from 1"),
    ({"assets": [{**ASSET, "confirmations": 2**32}]}, r"assets\[0\]: confirmations must be from 1 to 4294967295"),
    ({"assets": [{**ASSET, "confirmations": 1.5}]}, r"assets\[0\]: confirmations must be an integer"),
    ({"assets": [{**ASSET, "decimals": True}]}, r"assets\[0\]: decimals must be an integer"),
    ({"assets": [{**ASSET, "asset": 7}]}, r"assets\[0\]: asset must be"),
    ({"assets": [{**ASSET, "chain": ["bitcoin"]}]}, r"assets\[0\]: chain is required"),
    ({"assets": [{**ASSET, "contract": 0}]}, r"assets\[0\]: contract must be a string"),
    ({"assets": [{**ASSET, "deposits_enabled": "false"}]}, r"assets\[0\]: deposits_enabled must be true or false"),
    ({"chains": {"bitcoin": {**CHAIN, "scan": "false"}}}, r"chains.bitcoin: scan must be true or false"),
    ({"chains": {"bitcoin": {**CHAIN, "hot_xpub": 1}}}, r"chains.bitcoin: hot_xpub must be a string"),
    ({"chains": {"bitcoin": {**CHAIN, "poll_interval_s": float("nan")}}}, r"chains.bitcoin: poll_interval_s"),
    ({"withdrawals": {"include_deposit_wallet": "false"}}, r"withdrawals: include_deposit_wallet must be true or false"),
    ({"withdrawals": {"include_deposit_wallet": 0}}, r"withdrawals: include_deposit_wallet must be true or false"),
    ({"withdrawals": {"max_batch": "500"}}, r"withdrawals: max_batch must be an integer"),
    ({"withdrawals": {"signer_token": 123}}, r"withdrawals: signer_token must be a string"),
    ({"withdrawals": {"signer_target": ["unix:/s"]}}, r"withdrawals: signer_target must be a string"),
    ({"withdrawals": {"staff": [{"name": "alice", "ed25519_public_key": 5}]}}, r"withdrawals.staff\[0\]: name and"),
    ({"withdrawals": {"staff": [{"name": 5, "ed25519_public_key": "a" * 64}]}}, r"withdrawals.staff\[0\]: name and"),
    ({"clients": [{**CLIENT, "scopes": "accounts"}]}, r"clients\[0\] \(x\): scopes must be a list of strings"),
    ({"clients": [{**CLIENT, "scopes": [{"a": 1}]}]}, r"clients\[0\] \(x\): scopes must be a list of strings"),
    ({"clients": [{**CLIENT, "token_sha256": int("1" * 64)}]}, r"clients\[0\] \(x\): token_sha256 must be 64 hex"),
    ({"assets": [ASSET], "markets": [{**MARKET, "base": ["ETH"]}]}, r"markets\[0\]: base \['ETH'\] is not a configured"),
])
def test_values_of_the_wrong_type_are_refused_with_the_field(raw, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(raw)


def test_a_bad_value_in_a_file_is_a_configuration_error_not_a_crash(tmp_path):
    path = tmp_path / "custody.toml"
    path.write_text('[[assets]]\nasset = "BTC"\nchain = "bitcoin"\ndecimals = 8\nconfirmations = "x"\n')
    with pytest.raises(config.ConfigError, match="confirmations must be an integer"):
        config.load(path)


@pytest.mark.parametrize("name", ["signer", "scanner", "matching", "anonymous"])
def test_the_services_own_actors_are_reserved_client_names(name):
    with pytest.raises(config.ConfigError, match="reserved"):
        config.parse({"clients": [{**CLIENT, "name": name}]})


def test_the_signers_files_are_relative_to_the_config_files_folder(tmp_path):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "custody.toml"
    path.write_text('[withdrawals]\nsigner_target = "unix:run/signer.sock"\nsigner_ca_file = "tls/ca.pem"\n'
                    'signer_cert_file = "tls/me.crt"\nsigner_key_file = "/etc/custody/me.key"\n')
    rules = config.load(path).withdrawals
    folder = (tmp_path / "conf").resolve()
    assert rules.signer_target == f"unix:{folder / 'run' / 'signer.sock'}"
    assert (rules.signer_ca_file, rules.signer_cert_file) == (str(folder / "tls" / "ca.pem"), str(folder / "tls" / "me.crt"))
    assert rules.signer_key_file == "/etc/custody/me.key"


def test_a_tcp_signer_target_is_kept_as_written():
    assert config.parse({"withdrawals": {"signer_target": "10.0.0.5:7000"}}).withdrawals.signer_target == "10.0.0.5:7000"


SIGNER = {"signer_target": "unix:/run/signer.sock", "signer_token_env": "T"}


@pytest.mark.parametrize("assets", [
    [],
    [{"asset": "XBT", "chain": "bitcoin", "decimals": 8}],
    [{"asset": "BTC", "chain": "ethereum", "decimals": 8, "contract": "0x2260FAC5E5542a773Aa44fBCfeDf7C193bc2C599"}],
])
def test_the_withdrawal_job_needs_the_bitcoin_chains_asset_named_btc(assets):
    with pytest.raises(config.ConfigError, match='native asset listed as asset = "BTC"'):
        config.parse({"assets": assets, "chains": {"bitcoin": CHAIN}, "withdrawals": SIGNER})


def test_without_the_withdrawal_job_the_bitcoin_asset_may_have_another_name():
    """Deposits only: renaming the native asset is a pinned change staff accept (tests/integration/test_config_pins.py)."""
    cfg = config.parse({"assets": [{"asset": "XBT", "chain": "bitcoin", "decimals": 8}], "chains": {"bitcoin": CHAIN}})
    assert cfg.asset_names == {"XBT"}
    cfg = config.parse({"assets": [ASSET], "chains": {"bitcoin": CHAIN}, "withdrawals": SIGNER})
    assert cfg.withdrawals.signer_target == "unix:/run/signer.sock"


def test_asset_defaults():
    a = config.parse({"assets": [ASSET]}).asset("BTC")
    assert (a.confirmations, a.withdrawal_fee, a.min_withdrawal, a.min_deposit, a.deposits_enabled) == (1, 0, 1, 0, True)
    assert a.max_withdrawal == a.daily_withdrawal_limit == 2**256 - 1
