"""Ledger commands: request digests stay what earlier versions stored, and commands survive the writer's pipe."""
import json
import pickle

from hypothesis import given, settings
from hypothesis import strategies as st

from custody.ledger.commands import BatchResult, Command, HoldCreate, HoldPost, HoldVoid, Idempotency, canonical_json
from custody.ledger.model import Posting

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**300), max_value=2**300), st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                             max_size=3), max_leaves=8)


@settings(deadline=None)  # a loaded CI machine, not a slow function
@given(st.dictionaries(st.text(max_size=8), _values, max_size=6))
def test_canonical_json_writes_the_bytes_json_dumps_wrote(fields):
    """orjson's fast path must not change a single digest: non-ASCII text and ints beyond 64 bits take json's path."""
    assert canonical_json(fields) == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def test_canonical_json_matches_json_dumps_for_every_ascii_character():
    for code in range(128):
        fields = {"memo": f"a{chr(code)}b", chr(code): code}
        assert canonical_json(fields) == json.dumps(fields, sort_keys=True, separators=(",", ":")).encode(), code


def test_request_digest_is_the_sha256_of_the_old_canonical_form():
    fields = {"from": 12, "to": 13, "asset": "USDT", "amount": "1", "memo": "café"}
    digest = Idempotency.for_request("exchange", "k-1", "Transfer", fields).request_hash
    assert digest == _old_digest("Transfer", fields)
    plain = {**fields, "memo": ""}
    assert Idempotency.for_request("exchange", "k-1", "Transfer", plain).request_hash == _old_digest("Transfer", plain)


def _old_digest(method, fields):
    import hashlib

    canonical = json.dumps({"method": method, **fields}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def test_commands_and_results_round_trip_through_pickle():
    command = Command(
        kind="trade", actor="exchange", reference="trade:1",
        postings=(Posting("BTC", "user:1:available", "user:2:available", 2**256 - 1),),
        hold_creates=(HoldCreate(1, "BTC", 5, reference="r", hold_id="h1"),),
        hold_posts=(HoldPost("h0", (("user:2:available", 3),), close=True),),
        hold_voids=(HoldVoid("h9"),),
        idempotency=Idempotency("exchange", "k", "0" * 64), memo="m", not_frozen=(1,), must_exist=(2,), flagged=True)
    again = pickle.loads(pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == command
    assert type(again.postings[0]) is Posting and type(again.hold_posts[0]) is HoldPost
    assert again.idempotency.request_hash == "0" * 64
    result = BatchResult("b" * 32, 7, ("h1",), replayed=True)
    assert pickle.loads(pickle.dumps(result)) == result
    assert BatchResult.from_json(BatchResult("b" * 32, 7, ("h1",)).to_json()) == result
