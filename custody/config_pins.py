"""Pins of the config that decides how chain data is read (FAILURE_MODES 34).

A chain's network, plugin and extended public keys, and an asset's chain,
decimals and contract, change what a block means: which addresses are ours,
what a token transfer is worth. If they changed between restarts (or another
instance runs with other values), old and new data would be read by
different rules. So the first use of a chain pins these fields in the
database; the chain's jobs (scanner, withdrawal sender) refuse to start, and
stop at their next run, while the config differs from the pin. An operator
accepts a change explicitly (`custody admin config accept`), which moves the
pin and records who, when, why and what changed; data already scanned under
the old rules is re-read only by an explicit rescan.
"""
from __future__ import annotations

import datetime
import json

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from custody.config import Config
from custody.db import schema as t
from custody.db.engine import write_transaction
from custody.errors import ConfigChanged, FailedPrecondition
from custody.text import parse_reason, parse_staff

__all__ = ["ConfigChanged", "accept", "differences", "pinned_fields", "verify"]


def pinned_fields(config: Config, chain: str) -> dict[str, dict]:
    """name -> the fields that decide how this chain's data is read, as the config gives them."""
    c = config.chain(chain)
    native = sorted(a.asset for a in config.assets if a.chain == chain and not a.contract)
    fields = {f"chain:{chain}": {
        "plugin": c.settings.get("plugin", chain), "network": c.network,
        "deposit_xpub": c.deposit_xpub, "hot_xpub": c.hot_xpub, "cold_xpub": c.cold_xpub,
        # The asset its deposits are credited in: renamed, balances would split in two.
        "native_asset": native[0] if native else None,
    }}
    for a in config.assets:
        if a.chain == chain:
            fields[f"asset:{a.asset}"] = {"chain": a.chain, "decimals": a.decimals, "contract": a.contract}
    return fields


def _encode(value: dict) -> str:
    return json.dumps(value, sort_keys=True)


def differences(engine: Engine, config: Config, chain: str) -> list[tuple[str, dict | None, dict]]:
    """(name, pinned value or None if never pinned, configured value) for each pin that differs."""
    wanted = pinned_fields(config, chain)
    with engine.connect() as conn:
        rows = conn.execute(select(t.config_pins.c.name, t.config_pins.c.value)
                            .where(t.config_pins.c.name.in_(list(wanted)))).all()
    stored = {name: json.loads(value) for name, value in rows}
    return [(name, stored.get(name), value) for name, value in wanted.items() if stored.get(name) != value]


def verify(engine: Engine, config: Config, chain: str) -> None:
    """Pins what was never pinned; raises ConfigChanged if a pinned field differs.

    A field this version pins and an older one did not (a pin that lacks it,
    all else equal) is pinned on first use too."""
    diffs = differences(engine, config, chain)
    changed = [d for d in diffs if d[1] is not None and not _only_adds_fields(d[1], d[2])]
    if changed:
        raise ConfigChanged(describe(chain, changed))
    if diffs:
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            with write_transaction(engine) as conn:
                for name, old, new in diffs:
                    if old is None:
                        conn.execute(insert(t.config_pins).values(name=name, value=_encode(new), pinned_at=now))
                    elif conn.execute(update(t.config_pins)
                                      .where(t.config_pins.c.name == name, t.config_pins.c.value == _encode(old))
                                      .values(value=_encode(new), pinned_at=now)).rowcount != 1:
                        break  # another instance moved it: compare again below
                    conn.execute(insert(t.config_pin_changes).values(
                        name=name, old_value=None if old is None else _encode(old), new_value=_encode(new),
                        actor="first use", reason="pinned on first use", changed_at=now))
        except IntegrityError:
            pass  # another instance pinned first: compare with what it pinned
        verify(engine, config, chain)


def _only_adds_fields(old: dict, new: dict) -> bool:
    return all(k in new and new[k] == v for k, v in old.items())


def describe(chain: str, changed: list[tuple[str, dict | None, dict]]) -> str:
    parts = []
    for name, old, new in changed:
        fields = sorted(k for k in new if (old or {}).get(k) != new[k])
        parts.append(f"{name}: " + ", ".join(f"{k} {(old or {}).get(k)!r} -> {new[k]!r}" for k in fields))
    return (f"the config of chain {chain} changed since its data was read: {'; '.join(parts)}. Its jobs stay "
            f"stopped until the change is accepted: custody admin config accept --chain {chain} "
            f"--staff NAME --reason TEXT (then rescan what must be re-read under the new config)")


def accept(engine: Engine, config: Config, chain: str, staff: str, reason: str) -> list[tuple[str, dict | None, dict]]:
    """Moves the pins of chain to the configured values; returns what changed."""
    staff, reason = parse_staff(staff), parse_reason(reason)
    diffs = differences(engine, config, chain)
    for name, old, new in diffs:
        for wallet in ("hot_xpub", "cold_xpub"):
            if name.startswith("chain:") and old and old.get(wallet) and old.get(wallet) != new.get(wallet):
                # Its addresses are registered by index (branch/key_index) for the old key, so none of
                # the new key's would be: withdrawal change (the new hot address 0) and cold coins
                # would go untracked, and the old key's coins need the old key to be spent.
                raise FailedPrecondition(
                    f"{name}: {wallet} changed: moving the {wallet.split('_')[0]} wallet to another key is not "
                    "supported (its old addresses stay tracked, the new key's would not be, and the old key's "
                    "coins need the old key); put the pinned key back in the config. Nothing was accepted")
    now = datetime.datetime.now(datetime.timezone.utc)
    with write_transaction(engine) as conn:
        for name, old, new in diffs:
            if old is None:
                conn.execute(insert(t.config_pins).values(name=name, value=_encode(new), pinned_at=now))
            else:
                conn.execute(update(t.config_pins).where(t.config_pins.c.name == name)
                             .values(value=_encode(new), pinned_at=now))
            conn.execute(insert(t.config_pin_changes).values(
                name=name, old_value=None if old is None else _encode(old), new_value=_encode(new),
                actor=staff, reason=reason, changed_at=now))
    return diffs
