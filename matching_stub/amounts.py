"""What an order holds and what a fill moves: integer arithmetic only.

A fill of q base units at price p (quote base units per U = price_unit base
units) is worth x = q*p/U quote base units, usually not a whole number. The
exchange never loses the fraction (docs/matching.md, "Rounding"):

- a buy order pays ceil(sum of its fills' q*p / U) over its life: each fill
  pays the increase of that ceiling, so the order pays at most ceil(Q*P/U),
  exactly what it held, however many fills it takes;
- a sell order receives floor(q*p / U) per fill;
- the difference of the two (0 or 1 base unit per fill, never negative) goes
  to fees:revenue and is recorded on the trade as `rounding`;
- fees are parts per million of x, rounded up: a buy order's cumulatively
  (like its cost), a sell's per fill (taken out of its proceeds, never more
  than them);
- a buy order holds its fee at the rate it was placed under (held_fee_ppm,
  stored on the order) and a fill charges it min(the market's current maker or
  taker rate, that rate): rates changed while it rests never make it need
  more than it holds (docs/matching.md, "Changing fee rates").
"""
from __future__ import annotations

from custody.config import MarketConfig

PPM = 1_000_000


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def held_fee_ppm(market: MarketConfig) -> int:
    """The rate a new buy order holds its fee at: the higher of the two (it may take or make)."""
    return max(market.maker_fee_ppm, market.taker_fee_ppm)


def charged_fee_ppm(market_ppm: int, order_held_fee_ppm: int) -> int:
    """The rate a buy order's fill is charged: the market's rate for it (maker or
    taker), but never above the rate its hold was sized with."""
    return min(market_ppm, order_held_fee_ppm)


def buy_hold(market: MarketConfig, price: int, quantity: int, fee_ppm: int | None = None) -> int:
    """Quote a new buy order holds: quantity x price plus its fee at fee_ppm (default
    held_fee_ppm(market)), both rounded up."""
    if fee_ppm is None:
        fee_ppm = held_fee_ppm(market)
    value = quantity * price
    return ceil_div(value, market.price_unit) + ceil_div(value * fee_ppm, market.price_unit * PPM)


def buy_still_needed(market: MarketConfig, fill_value: int, fee_value: int, quote_filled: int, fee: int,
                     remaining: int, price: int, fee_ppm: int | None = None) -> int:
    """What a buy order may still spend: its remaining quantity at its own limit
    price, at the order's held fee rate fee_ppm (default held_fee_ppm(market), as
    for an order placed under the current rates), under the cumulative rounding
    above. Its hold is kept at exactly this amount after every fill."""
    if fee_ppm is None:
        fee_ppm = held_fee_ppm(market)
    rest = remaining * price
    unit = market.price_unit
    return (ceil_div(fill_value + rest, unit) - quote_filled
            + ceil_div(fee_value + rest * fee_ppm, unit * PPM) - fee)
