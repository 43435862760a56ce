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
