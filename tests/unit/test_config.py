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
    ({"assets": [{"asset": "btc", "chain": "bitcoin", "decimals": 8}]}, "upper-case"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8}] * 2}, "listed twice"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "withdrawal_fee": "0.1"}]}, "fraction"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "withdrawal_fee": 1.5}]}, "fraction"),
    ({"assets": [{"asset": "BTC", "chain": "bitcoin"}]}, "decimals"),
    ({"server": {"tls_cert": "a.crt"}}, "together"),
    ({"server": {"tls_client_ca": "ca.crt"}}, "needs tls_cert"),
])
def test_bad_configs_are_refused_with_the_reason(raw, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(raw)


def test_in_memory_sqlite_is_refused():
    from custody.db.engine import make_engine
    with pytest.raises(ValueError, match="not durable"):
        make_engine("sqlite:///:memory:")
