"""The signer's memory of signed inputs: exact, whichever of its three places answers."""
from __future__ import annotations

import sqlite3

from hsm import signed_inputs
from hsm.replacements import CountedSpends


class CountingConnection:
    """A sqlite3 connection that counts the queries asked of it."""

    def __init__(self, db: sqlite3.Connection):
        self.db, self.queries = db, 0

    def execute(self, *args):
        self.queries += 1
        return self.db.execute(*args)


def claims(n: int, start: int = 0):
    return [(f"{i:064x}:0", 1_000 + i, bytes([0, 20]) + i.to_bytes(20, "big")) for i in range(start, start + n)]


def test_every_claim_is_found_wherever_it_is_kept_and_new_outpoints_cost_no_query(tmp_path, monkeypatch):
    monkeypatch.setattr(signed_inputs, "RECENT", 3)
    monkeypatch.setattr(signed_inputs, "MIN_CAPACITY", 8)
    spends = CountedSpends(tmp_path / "limits.sqlite")
    signed = claims(20)
    for i in range(0, 20, 4):  # past the filter's capacity twice: it is rebuilt from the table
        spends.add(None, 1.0, signed[i:i + 4])
    db = CountingConnection(spends._db)
    memory = signed_inputs.SignedInputs(db)
    assert memory._capacity == 40 and db.queries == 2  # the count, then the rows
    for outpoint, amount, script in signed:
        assert memory.claim(outpoint) == (amount, script)
        assert spends.claimed_otherwise([(outpoint, amount, script)]) == []
    assert spends.claimed_otherwise([(signed[0][0], 999, signed[0][2])]) == [(signed[0][0], 999, signed[0][2],
                                                                              signed[0][1], signed[0][2])]
    before = db.queries
    never = claims(200, start=1_000)
    assert [memory.claim(outpoint) for outpoint, _, _ in never] == [None] * 200
    assert db.queries - before < 20, "a Bloom filter answers for outpoints never signed (rare false positives)"
    memory.signed(never[:1])
    before = db.queries
    assert memory.claim(never[0][0]) == never[0][1:] and db.queries == before, "a recent claim costs no query"
    spends.close()


def test_memory_keeps_the_first_claim_of_an_outpoint_as_the_table_does(tmp_path):
    spends = CountedSpends(tmp_path / "limits.sqlite")
    first = claims(1)
    lie = [(first[0][0], 1, first[0][2])]
    spends.add(None, 1.0, first)
    spends.add(None, 2.0, lie)  # never reached by a request (refused before), but memory must not differ
    assert spends._inputs.claim(first[0][0]) == first[0][1:]
    assert spends._db.execute("SELECT amount FROM signed_inputs").fetchall() == [(first[0][1],)]
    spends.close()
