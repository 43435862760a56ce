"""signer.toml values of another TOML type than the setting takes are refused, naming the setting and the
value, instead of being converted into something else (a deny list that refuses nothing, mainnet's chain id)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hsm import config
from tests.support import signer as S

DENIED = S.address_for(S.foreign_script("sanctioned"))


def with_value(raw: dict, where: tuple, value) -> dict:
    table = raw
    for key in where[:-1]:
        table = table[key]
    table[where[-1]] = value
    return raw


@pytest.mark.parametrize("where, value, message", [
    # A string iterated as a list: a deny list of single characters, which refused nothing.
    (("policy", "deny"), DENIED, rf"^policy.deny: a list of strings .*, got '{DENIED}'$"),
    (("policy", "allow"), DENIED, r"^policy.allow: a list of strings"),
    (("policy", "internal"), "0x" + "22" * 20, r"^policy.internal: a list of strings"),
    (("policy", "internal_xpubs"), "vpub5Y6cjg78", r"^policy.internal_xpubs: a list of strings"),
    (("policy", "deny"), [DENIED, 7], r"^policy.deny: a list of strings .*, got \['bcrt1"),
    # true is 1 in Python: Ethereum mainnet's chain id.
    (("chains", "ethereum", "chain_id"), True, r"^chains.ethereum.chain_id: a whole number, got True$"),
    # 1.9 was cut to 1: one approver where the file seems to ask for two.
    (("policy", "approval_quorum"), 1.9, r"^policy.approval_quorum: a whole number, got 1.9$"),
    (("policy", "approval_quorum"), True, r"^policy.approval_quorum: a whole number, got True$"),
    # str.isdigit() took digits that are not ASCII: "²" then failed in int(); Arabic-Indic digits were read.
    (("policy", "assets", 0, "max_per_transaction"), "²",
     r"^policy.assets\[0\].max_per_transaction: an amount in base units .*, got '²'$"),
    (("policy", "assets", 0, "max_per_24h"), "١٠٠", r"^policy.assets\[0\].max_per_24h: an amount"),
    # bool("false") is True, bool(0) False.
    (("state", "durable"), "false", r"^state.durable: true or false, got 'false'$"),
    (("state", "audit_log"), 7, r"^state.audit_log: a string, got 7$"),
    (("server", "listen"), 50061, r"^server.listen: a string, got 50061$"),
    (("keystore", "passphrase_env"), ["SIGNER_PASS"], r"^keystore.passphrase_env: a string"),
    (("clients", 0, "name"), 7, r"^clients\[0\].name: a string, got 7$"),
    (("policy", "assets", 0, "asset"), 7, r"^policy.assets\[0\].asset: a string, got 7$"),
    (("policy", "staff", 0, "name"), True, r"^policy.staff\[0\].name: a string, got True$"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting(tmp_path, where, value, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(with_value(S.raw_config(tmp_path), where, value))


def test_values_of_the_right_type_still_load(tmp_path):
    raw = S.raw_config(tmp_path, deny=[DENIED], internal_xpubs=["vpub5Y6cjg78"])
    raw["policy"]["assets"][0]["max_fee"] = 100_000  # an amount may be a TOML integer
    cfg = config.parse(raw)
    assert cfg.policy.deny == {DENIED} and cfg.policy.internal_xpubs == ("vpub5Y6cjg78",)
    assert cfg.policy.assets[0].max_fee == 100_000 and cfg.ethereum_chain_id == S.ANVIL_CHAIN_ID


@pytest.mark.parametrize("where, value, setting", [
    (("policy", "deny"), DENIED, "policy.deny"),
    (("policy", "assets", 0, "max_per_transaction"), "²", "policy.assets[0].max_per_transaction"),
])
def test_serve_stops_with_a_configuration_error(tmp_path, keystore, where, value, setting):
    """`custody signer serve`: exit 2 and one line naming the setting, as for every other config error."""
    path = tmp_path / "signer.toml"
    path.write_text(S.to_toml(with_value(S.raw_config(tmp_path), where, value)))
    r = subprocess.run([sys.executable, "-m", "custody.cli", "signer", "serve", "--config", str(path)],
                       capture_output=True, text=True, env={**os.environ, "TEST_SIGNER_PASS": S.PASSPHRASE}, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"custody signer: configuration error: {setting}: ") and repr(value) in r.stderr
