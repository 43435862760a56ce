"""The benchmark's bare book is a complete price-time book: on the benchmark's
own operation mix it makes exactly the trades matching_stub's matcher makes."""
from benchmarks.matching import BareRunner, MatcherRunner, operations


def test_the_bare_book_and_the_matcher_make_the_same_trades():
    """Every order from its own account (so self-trade prevention never acts):
    the same fills, in the same order, at the same prices and quantities."""
    ops = [op if op[0] == "cancel" else (op[0], op[1], k, *op[3:]) for k, op in enumerate(operations(20_000))]
    bare, ours = BareRunner(), MatcherRunner(accounts=len(ops))
    bare.run(ops, keep=True)
    ours.run(ops, keep=True)
    assert len(bare.trades) > 5_000
    assert bare.trades == ours.trades
    assert {o for o in bare.book.orders} == set(ours.book.orders)
    assert [(p, lv.total) for p, lv in sorted(bare.book.levels[1].items())] == ours.book.asks.depth(10**6)
