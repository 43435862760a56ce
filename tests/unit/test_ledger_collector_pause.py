"""apply_commands pauses the cyclic garbage collector only for its own duration."""
import gc

import pytest

from custody.ledger.engine import _collector_paused


def test_the_collector_runs_again_after_a_group_even_one_that_raised():
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with _collector_paused():
            assert not gc.isenabled()
            raise RuntimeError("the group's transaction failed")
    assert gc.isenabled()


def test_a_collector_paused_by_someone_else_stays_paused():
    gc.disable()
    try:
        with _collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
