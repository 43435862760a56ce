"""The configuration tests, benchmarks and the demo run with."""
from __future__ import annotations

from custody import config as config_mod
from custody.api.auth import token_digest
from tests.support.servers import SCOPES, TOKENS

TEST_ASSETS = [
    {"asset": "BTC", "chain": "bitcoin", "decimals": 8, "confirmations": 2,
     "withdrawal_fee": "1000", "min_withdrawal": "10000"},
    {"asset": "ETH", "chain": "ethereum", "decimals": 18, "confirmations": 3},
    {"asset": "USDT", "chain": "ethereum", "decimals": 6, "contract": "0xdAC17F958D2ee523a2206206994597C13D831ec7"},
]


def make_config(database_url: str, **server) -> config_mod.Config:
    return config_mod.parse({
        "database": {"url": database_url},
        "server": {"listen": "127.0.0.1:0", **server},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": TEST_ASSETS,
    })
