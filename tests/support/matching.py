"""Helpers for matching tests: funded accounts, orders, balances in the ETH/BTC test market."""
from __future__ import annotations

import dataclasses
import itertools

from sqlalchemy import select

from custody.config import Config
from custody.db import schema as t
from tests.support.config import make_config

ETH = 10**18  # wei
MARKET = "ETH/BTC"
_keys = itertools.count(1)


def fund(app, account: int, asset: str, amount: int) -> None:
    app.adjust_balance("admin", f"fund-{account}-{asset}-{next(_keys)}", str(account), asset, str(amount), True,
                       "test funding")


def accounts(app, n: int, btc: int = 0, eth: int = 0, prefix: str = "trader") -> list[int]:
    ids = [app.create_account(f"{prefix}-{i}").account_id for i in range(n)]
    for a in ids:
        if btc:
            fund(app, a, "BTC", btc)
        if eth:
            fund(app, a, "ETH", eth)
    return ids


def place(app, account: int, side: str, price: int, quantity: int, tif: str = "GTC", *, type: str = "LIMIT",
          post_only: bool = False, key: str | None = None, client: str = "exchange", market: str = MARKET):
    return app.matching.place(client, key or f"order-{next(_keys)}", str(account), market, side, type, tif,
                              post_only, str(price), str(quantity))


def balances(app, account: int) -> dict[str, tuple[int, int]]:
    _, rows = app.get_balances(str(account))
    return {b.asset: (b.available, b.held) for b in rows}


def fees_revenue(app, asset: str = "BTC") -> int:
    la = t.ledger_accounts
    with app.engine.connect() as conn:
        row = conn.execute(select(la.c.debits, la.c.credits)
                           .where(la.c.code == "fees:revenue", la.c.asset == asset)).first()
    return row.credits - row.debits if row else 0


def open_holds(app) -> int:
    with app.engine.connect() as conn:
        return len(conn.execute(select(t.ledger_holds.c.id).where(t.ledger_holds.c.status == "OPEN")).all())


def order_count(app) -> int:
    with app.engine.connect() as conn:
        return len(conn.execute(select(t.orders.c.id)).all())


def config_with_fees(db_url: str, maker_fee_ppm: int, taker_fee_ppm: int, **server) -> Config:
    """The test config (tests/support/config.py) with the ETH/BTC market's fee rates changed."""
    config = make_config(db_url, **server)
    markets = tuple(dataclasses.replace(m, maker_fee_ppm=maker_fee_ppm, taker_fee_ppm=taker_fee_ppm)
                    if m.name == MARKET else m for m in config.markets)
    return dataclasses.replace(config, markets=markets)
