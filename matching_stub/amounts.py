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
  than them).
"""
from __future__ import annotations

from custody.config import MarketConfig

PPM = 1_000_000


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def held_fee_ppm(market: MarketConfig) -> int:
    """A buy order holds its fee at the higher of the two rates: it may take or make."""
    return max(market.maker_fee_ppm, market.taker_fee_ppm)


def buy_hold(market: MarketConfig, price: int, quantity: int) -> int:
    """Quote a new buy order holds: quantity x price plus the highest fee, both rounded up."""
    value = quantity * price
    return ceil_div(value, market.price_unit) + ceil_div(value * held_fee_ppm(market), market.price_unit * PPM)


def buy_still_needed(market: MarketConfig, fill_value: int, fee_value: int, quote_filled: int, fee: int,
                     remaining: int, price: int) -> int:
    """What a buy order may still spend: its remaining quantity at its own limit
    price, at the held fee rate, under the cumulative rounding above. Its hold
    is kept at exactly this amount after every fill."""
    rest = remaining * price
    unit = market.price_unit
    return (ceil_div(fill_value + rest, unit) - quote_filled
            + ceil_div(fee_value + rest * held_fee_ppm(market), unit * PPM) - fee)
