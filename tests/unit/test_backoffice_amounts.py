"""How the staff CLI shows base units as coins: exactly, from integers, never through a float."""
import pytest

from backoffice.cli import coins
from custody.money import MAX_AMOUNT


@pytest.mark.parametrize("base_units, decimals, shown", [
    ("30000000", 8, "0.30000000"),
    ("1", 8, "0.00000001"),
    ("2100000000000000", 8, "21,000,000.00000000"),
    ("123456789012345678901234567890", 18, "123,456,789,012.345678901234567890"),  # beyond a float's digits
    ("7", 0, "7"),
    (str(MAX_AMOUNT), 8, "no limit"),
])
def test_base_units_as_coins(base_units, decimals, shown):
    assert coins(base_units, decimals) == shown
