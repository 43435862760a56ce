"""The pure parts of matching_stub: the book and the settlement arithmetic, no database."""
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.config import MarketConfig
from matching_stub import amounts
from matching_stub.book import BUY, SELL, Book, Order
from matching_stub.matcher import DictFunds, Matcher

MARKET = MarketConfig(base="ETH", quote="BTC", price_unit=10**18, price_tick=10, quantity_step=10**15,
                      min_quantity=10**16, maker_fee_ppm=1000, taker_fee_ppm=2000)


def test_levels_keep_time_order_and_drop_when_empty():
    book = Book("ETH/BTC")
    orders = [Order(str(i), i, "ETH/BTC", SELL, price, 10) for i, price in enumerate((105, 100, 100, 101))]
    for o in orders:
        book.rest(o)
    assert book.asks.depth(10) == [(100, 20), (101, 10), (105, 10)]
    assert list(book.asks.best().orders) == ["1", "2"]
    book.cancel(orders[1])
    book.take(orders[2], 10)
    assert book.asks.depth(10) == [(101, 10), (105, 10)]
    assert not book.bids.depth(5) and book.asks.best().price == 101


@settings(max_examples=150, deadline=None)
@given(prices=st.lists(st.integers(1, 20_000), min_size=1, max_size=12),
       steps=st.lists(st.integers(1, 3000), min_size=12, max_size=12),
       limit_extra=st.integers(0, 500))
def test_a_buy_never_pays_more_than_it_held_and_rounding_is_zero_or_one(prices, steps, limit_extra):
    """Whatever fills it takes, a buy's hold covers them exactly: refunds never go negative,
    the hold ends at zero, and each fill's rounding is 0 or 1 base unit."""
    book = Book("ETH/BTC")
    funds = DictFunds({(a, asset): 10**40 for a in range(20) for asset in ("ETH", "BTC")})
    matcher = Matcher(MARKET, book, funds)
    for i, (price, step) in enumerate(zip(prices, steps)):
        matcher.place(Order(f"s{i}", i + 1, "ETH/BTC", SELL, price * 10, step * 10**15))
    quantity = sum(steps[:len(prices)]) * 10**15
    limit = (max(prices) + limit_extra) * 10
    held = amounts.buy_hold(MARKET, limit, quantity)
    before = funds.available(0, "BTC")
    outcome = matcher.place(Order("b", 0, "ETH/BTC", BUY, limit, quantity))
    assert outcome.order.status == "FILLED" and outcome.order.hold_remaining == 0
    spent = sum(f.buyer_paid + f.buyer_fee for f in outcome.fills)
    assert spent <= held and before - funds.available(0, "BTC") == spent
    assert all(f.rounding in (0, 1) and f.refund >= 0 for f in outcome.fills)
    exact = sum(f.quantity * f.price for f in outcome.fills)
    assert spent - sum(f.buyer_fee for f in outcome.fills) == -(-exact // MARKET.price_unit)  # ceil, once
    for f in outcome.fills:
        assert 0 <= f.seller_fee <= f.seller_gross


@settings(max_examples=150, deadline=None)
@given(ask_prices=st.lists(st.integers(1, 20_000), min_size=1, max_size=6),
       steps=st.lists(st.integers(1, 3000), min_size=12, max_size=12),
       limit_extra=st.integers(0, 500), rest_steps=st.integers(1, 5000))
def test_the_inlined_settlement_keeps_a_buy_hold_at_what_amounts_says(ask_prices, steps, limit_extra, rest_steps):
    """The matcher's inlined arithmetic against amounts.py, the reference: a buy that takes
    several asks below its limit (price improvement), rests, and is then hit by sells as
    maker holds exactly amounts.buy_hold at first and amounts.buy_still_needed after each fill."""
    book = Book("ETH/BTC")
    funds = DictFunds({(a, asset): 10**40 for a in range(40) for asset in ("ETH", "BTC")})
    matcher = Matcher(MARKET, book, funds)
    for i, price in enumerate(ask_prices):
        matcher.place(Order(f"a{i}", i + 1, "ETH/BTC", SELL, price * 10, steps[i] * 10**15))
    limit = (max(ask_prices) + limit_extra) * 10
    quantity = (sum(steps[:len(ask_prices)]) + rest_steps) * 10**15
    buy = Order("b", 0, "ETH/BTC", BUY, limit, quantity)

    def still_needed() -> int:
        return amounts.buy_still_needed(MARKET, buy.fill_value, buy.fee_value, buy.quote_filled, buy.fee,
                                        buy.remaining, buy.price)

    outcome = matcher.place(buy)
    assert outcome.held == amounts.buy_hold(MARKET, limit, quantity)
    assert buy.status == "PARTIALLY_FILLED" and buy.hold_remaining == still_needed()
    for i, step in enumerate(steps[6:]):
        if buy.remaining == 0:
            break
        sell = matcher.place(Order(f"s{i}", 20 + i, "ETH/BTC", SELL, limit - 10 * i, step * 10**15))
        assert [f.maker.id for f in sell.fills] == ["b"] and sell.fills[0].price == limit
        assert buy.hold_remaining == still_needed() and sell.fills[0].refund >= 0


def test_the_matcher_cancels_a_frozen_accounts_resting_orders_it_meets():
    """The matcher's own guard (the engine normally cancels them first): a frozen owner's orders
    are cancelled, not filled, and fill-or-kill does not count them."""
    book = Book("ETH/BTC")
    funds = DictFunds({(a, asset): 10**40 for a in range(3) for asset in ("ETH", "BTC")}, frozen={1})
    matcher = Matcher(MARKET, book, funds)
    matcher.place(Order("f", 1, "ETH/BTC", SELL, 100_000, 10**16))
    matcher.place(Order("o", 2, "ETH/BTC", SELL, 100_000, 10**16))
    killed = matcher.place(Order("k", 0, "ETH/BTC", BUY, 100_000, 2 * 10**16, time_in_force="FOK"))
    assert killed.order.status == "EXPIRED" and not killed.fills and set(book.orders) == {"f", "o"}
    taker = matcher.place(Order("t", 0, "ETH/BTC", BUY, 100_000, 10**16))
    assert [f.maker.id for f in taker.fills] == ["o"]
    assert [(o.id, o.reason, released) for o, released in taker.maker_cancels] == [("f", "account_frozen", 10**16)]
    assert not book.orders and funds.available(1, "ETH") == 10**40
