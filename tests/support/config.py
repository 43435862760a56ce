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

# ETH/BTC: prices in satoshi per whole ether (price_unit 10^18 wei), a tick of
# 10 satoshi; quantities in wei, in steps of 0.001 ETH, at least 0.01 ETH.
# Fees: maker 0.1%, taker 0.2% of the quote amount.
TEST_MARKETS = [
    {"base": "ETH", "quote": "BTC", "price_unit": str(10**18), "price_tick": "10",
     "quantity_step": str(10**15), "min_quantity": str(10**16), "maker_fee_ppm": 1000, "taker_fee_ppm": 2000},
]


def make_config(database_url: str, **server) -> config_mod.Config:
    """The test config. The ledger writer is a thread unless a test asks for
    ledger_writer="process" (what `custody serve` runs by default): starting a
    writer process for each of the suite's hundreds of Custody objects would
    cost seconds each; the process writer has its own tests."""
    server.setdefault("ledger_writer", "thread")
    return config_mod.parse({
        "database": {"url": database_url},
        "server": {"listen": "127.0.0.1:0", **server},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": TEST_ASSETS,
        "markets": TEST_MARKETS,
    })
