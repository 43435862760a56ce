"""Config, staff approvals and helpers for the withdrawal tests, benchmark and demo."""
from __future__ import annotations

from custody import config as config_mod
from custody.api.auth import token_digest
from tests.support.bitcoin import chain_config
from tests.support.servers import SCOPES, TOKENS
from tests.support.signer import STAFF, staff_public_hex

BTC = 100_000_000
WITHDRAWAL_FEE = 1_000
MIN_WITHDRAWAL = 10_000
# A valid regtest address of nobody we know, and the same key's testnet / mainnet forms.
PAYEE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
TESTNET_PAYEE = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"


def withdrawal_config(db_url: str, rpc_url: str = "http://x:y@127.0.0.1:9", confirmations: int = 2,
                      chain: dict | None = None, **withdrawals) -> config_mod.Config:
    return config_mod.parse({
        "database": {"url": db_url},
        "server": {"listen": "127.0.0.1:0"},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": [{"asset": "BTC", "chain": "bitcoin", "decimals": 8, "confirmations": confirmations,
                    "withdrawal_fee": str(WITHDRAWAL_FEE), "min_withdrawal": str(MIN_WITHDRAWAL),
                    "max_withdrawal": str(10 * BTC), "daily_withdrawal_limit": str(20 * BTC)},
                   {"asset": "ETH", "chain": "ethereum", "decimals": 18, "confirmations": 3}],
        "chains": {"bitcoin": chain_config(rpc_url, **(chain or {}))},
        "withdrawals": {
            "auto_approve_max": str(BTC // 10), "two_approvals_above": str(BTC),
            "staff": [{"name": n, "ed25519_public_key": staff_public_hex(n)} for n in STAFF],
            **withdrawals,
        },
    })


def approve_signature(app, withdrawal_id: str, staff: str) -> bytes:
    """What a staff member's tool sends: Ed25519 over the withdrawal's approval message."""
    w, _ = app.withdrawals.get(withdrawal_id)
    return STAFF[staff].sign(app.withdrawals.approval_message(w))


def fund(app, account_id: int | str, amount: int, key: str | None = None) -> None:
    app.adjust_balance("alice-admin", key or f"fund-{account_id}-{amount}", str(account_id), "BTC", str(amount),
                       True, "test funding")
