"""FAILURE_MODES 34: a chain's or asset's parsing config that changes under stored
data stops the chain's jobs until staff accept the change (real bcoin node)."""
import json
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, update

from custody import config as config_mod
from custody import config_pins
from custody.api.auth import token_digest
from custody.app import Custody
from custody.db import schema as t
from custody.errors import ConfigChanged, FailedPrecondition
from tests.support.bitcoin import OTHER_XPUB, chain_config
from tests.support.servers import SCOPES, TOKENS


def raw_config(db_url, rpc_url, btc_decimals=8, deposit_xpub=None, native="BTC", **chain_overrides):
    chain = chain_config(rpc_url, **chain_overrides)
    if deposit_xpub:
        chain["deposit_xpub"] = deposit_xpub
    return {
        "database": {"url": db_url},
        "server": {"listen": "127.0.0.1:0", "ledger_writer": "thread"},
        "clients": [{"name": n, "token_sha256": token_digest(TOKENS[n]), "scopes": SCOPES[n]} for n in TOKENS],
        "assets": [{"asset": native, "chain": "bitcoin", "decimals": btc_decimals, "confirmations": 2}],
        "chains": {"bitcoin": chain},
    }


def cursor_height(app):
    with app.engine.connect() as conn:
        return conn.execute(select(t.scan_cursors.c.height).where(t.scan_cursors.c.chain == "bitcoin")).scalar()


def pin_changes(app):
    with app.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t.config_pin_changes).order_by(t.config_pin_changes.c.id))]


def test_changed_decimals_stop_the_scanner_until_staff_accept_the_change(db_url, chain):
    first = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        first.scanner("bitcoin").catch_up()  # pins chain:bitcoin and asset:BTC on first use
    finally:
        first.close()

    changed = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url, btc_decimals=6)))
    try:
        with pytest.raises(ConfigChanged, match=r"asset:BTC: decimals 8 -> 6"):
            changed.scanner("bitcoin")
        with pytest.raises(ConfigChanged):
            changed.start_jobs()
        assert [c["name"] for c in pin_changes(changed)] == ["chain:bitcoin", "asset:BTC"]  # first use only

        diffs = config_pins.accept(
            changed.engine, changed.config, "bitcoin", "alice", "BTC is now counted in micro-units")
        assert [(name, old["decimals"], new["decimals"]) for name, old, new in diffs] == [("asset:BTC", 8, 6)]
        changed.scanner("bitcoin").catch_up()  # accepted: runs again
        last = pin_changes(changed)[-1]
        assert (last["name"], last["actor"], last["reason"]) == ("asset:BTC", "alice", "BTC is now counted in micro-units")
    finally:
        changed.close()


def test_a_renamed_native_asset_stops_the_scanner_until_staff_accept_it(db_url, chain):
    """Deposits credited as BTC, then as XBT, would split every balance in two."""
    first = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        first.scanner("bitcoin").catch_up()
    finally:
        first.close()
    renamed = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url, native="XBT")))
    try:
        with pytest.raises(ConfigChanged, match=r"chain:bitcoin: native_asset 'BTC' -> 'XBT'"):
            renamed.scanner("bitcoin")
        config_pins.accept(renamed.engine, renamed.config, "bitcoin", "alice", "the exchange lists bitcoin as XBT")
        renamed.scanner("bitcoin").catch_up()
    finally:
        renamed.close()


@pytest.mark.parametrize("wallet", ["hot_xpub", "cold_xpub"])
def test_another_hot_or_cold_key_is_refused_not_accepted(db_url, chain, wallet):
    """Hot and cold addresses are registered by index for the pinned key: after accepting another
    key, none of its addresses were registered, so withdrawal change (the new hot address 0) and
    cold coins went untracked (a deposit review). Refused; nothing accepted."""
    first = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        first.scanner("bitcoin").catch_up()
    finally:
        first.close()
    changed = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url, **{wallet: OTHER_XPUB})))
    try:
        with pytest.raises(ConfigChanged, match=wallet):
            changed.scanner("bitcoin")
        before = pin_changes(changed)
        with pytest.raises(FailedPrecondition, match=f"{wallet} changed: moving the .* wallet to another key is not"):
            config_pins.accept(changed.engine, changed.config, "bitcoin", "alice", "new hardware")
        assert pin_changes(changed) == before
        with pytest.raises(ConfigChanged):
            changed.scanner("bitcoin")
    finally:
        changed.close()


def test_cli_accept_of_another_hot_key_exits_2_and_records_nothing(db_url, chain, tmp_path):
    from tests.support.signer import to_toml

    app = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        app.verify_config("bitcoin")
        before = pin_changes(app)
    finally:
        app.close()
    path = tmp_path / "custody.toml"
    path.write_text(to_toml(raw_config(db_url, chain.rpc.url, hot_xpub=OTHER_XPUB, poll_interval_s=1, rpc_backoff_s=1)))
    refused = subprocess.run([sys.executable, "-m", "custody.cli", "admin", "config", "accept", "--config", str(path),
                              "--chain", "bitcoin", "--staff", "carol", "--reason", "new hardware"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert "hot_xpub changed: moving the hot wallet to another key is not supported" in refused.stderr
    app = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        assert pin_changes(app) == before
    finally:
        app.close()


def test_a_pin_stored_before_a_field_existed_gets_it_on_first_use(db_url, chain):
    app = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        app.scanner("bitcoin").catch_up()
        with app.engine.begin() as conn:  # as an older version stored it: no native_asset
            value = json.loads(conn.execute(select(t.config_pins.c.value)
                                            .where(t.config_pins.c.name == "chain:bitcoin")).scalar_one())
            del value["native_asset"]
            conn.execute(update(t.config_pins).where(t.config_pins.c.name == "chain:bitcoin")
                         .values(value=json.dumps(value, sort_keys=True)))
        config_pins.verify(app.engine, app.config, "bitcoin")
        assert config_pins.differences(app.engine, app.config, "bitcoin") == []
        last = pin_changes(app)[-1]
        assert (last["name"], last["actor"]) == ("chain:bitcoin", "first use")
        assert json.loads(last["new_value"])["native_asset"] == "BTC" and "native_asset" not in last["old_value"]
    finally:
        app.close()


def test_a_running_scanner_stops_at_its_next_run_when_another_instance_moves_the_pins(db_url, chain):
    running = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    other = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url, deposit_xpub=chain_config(chain.rpc.url)["cold_xpub"])))
    try:
        running.start_jobs()
        chain.mine(1)
        deadline = time.time() + 30
        while cursor_height(running) != chain.height() and time.time() < deadline:
            time.sleep(0.1)
        assert cursor_height(running) == chain.height()

        config_pins.accept(
            other.engine, other.config, "bitcoin", "bob", "new deposit wallet")
        deadline = time.time() + 30
        while "scan:bitcoin" not in running._jobs.stopped and time.time() < deadline:
            time.sleep(0.1)
        assert "deposit_xpub" in running._jobs.stopped["scan:bitcoin"]
        stopped_at = cursor_height(running)
        chain.mine(2)
        time.sleep(1.0)  # five poll intervals
        assert cursor_height(running) == stopped_at  # blocks are not read under the old rules
    finally:
        running.close()
        other.close()


def test_cli_serve_refuses_a_changed_config_and_accept_records_it(db_url, chain, tmp_path):
    from tests.support.signer import to_toml

    app = Custody(config_mod.parse(raw_config(db_url, chain.rpc.url)))
    try:
        app.verify_config("bitcoin")
    finally:
        app.close()
    path = tmp_path / "custody.toml"
    path.write_text(to_toml(raw_config(db_url, chain.rpc.url, btc_decimals=6, poll_interval_s=1, rpc_backoff_s=1)))
    custody = [sys.executable, "-m", "custody.cli"]

    serve = subprocess.run([*custody, "serve", "--config", str(path)], capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2, serve.stderr[-2000:]
    assert "asset:BTC: decimals 8 -> 6" in serve.stderr and "custody admin config accept" in serve.stderr

    show = subprocess.run([*custody, "admin", "config", "show", "--config", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert show.returncode == 0 and "CHANGED" in show.stdout, show.stdout + show.stderr

    refused = subprocess.run([*custody, "admin", "config", "accept", "--config", str(path), "--chain", "bitcoin",
                              "--staff", "carol", "--reason", ""], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "reason" in refused.stderr
    # The recorded "who" and "why" are plain text: an escape or a right-to-left override made the
    # record read as someone else's (found by the staff flows review).
    for staff, reason in (("ceo-of-the-exchange\u202e", "decimals fixed"),
                          ("carol", "ok\x1b[2K\rapproved by compliance")):
        refused = subprocess.run([*custody, "admin", "config", "accept", "--config", str(path), "--chain",
                                  "bitcoin", "--staff", staff, "--reason", reason], capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 2 and ("staff name" in refused.stderr or "control characters" in refused.stderr)
    accepted = subprocess.run([*custody, "admin", "config", "accept", "--config", str(path), "--chain", "bitcoin",
                               "--staff", "carol", "--reason", "decimals fixed"], capture_output=True, text=True,
                              timeout=60)
    assert accepted.returncode == 0, accepted.stderr
    assert '"decimals": 8' in accepted.stdout and '"decimals": 6' in accepted.stdout
