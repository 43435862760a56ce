"""The signer's config: what it refuses, and why each refusal matters."""
from __future__ import annotations

import pytest

from hsm import config

KEY_A, KEY_B = "a" * 64, "b" * 64


def signer_config(**overrides) -> dict:
    raw = {
        "server": {"listen": "unix:signer.sock"},
        "clients": [{"name": "custody-core", "token_sha256": KEY_A}],
        "keystore": {"kind": "software", "path": "keys.json", "passphrase_env": "SIGNER_PASSPHRASE"},
        "chains": {"ethereum": {"chain_id": 31337}},
        "policy": {"staff": [{"name": "alice", "ed25519_public_key": KEY_A}]},
    }
    raw.update(overrides)
    return raw


def test_a_minimal_config_loads():
    cfg = config.parse(signer_config())
    assert [c.name for c in cfg.clients] == ["custody-core"]
    assert [s.name for s in cfg.policy.staff] == ["alice"]


@pytest.mark.parametrize("overrides, message", [
    ({"server": {"listen": "0.0.0.0:7000"}}, "loopback only"),
    ({"server": {"listen": "127.0.0.1:7000"}}, "needs tls_cert"),
    # Nothing checks a client certificate on a unix socket: a tls_client_ca there promised it.
    ({"server": {"listen": "unix:signer.sock", "tls_client_ca": "ca.pem"}}, "apply to a TCP listener only"),
    ({"clients": []}, "at least one client"),
    ({"clients": [{"name": "core", "token_sha256": KEY_A}, {"name": "other", "token_sha256": KEY_A.upper()}]},
     r"clients\[1\] \(other\): another client has the same name or token_sha256"),
    ({"clients": [{"name": "core", "token_sha256": KEY_A}, {"name": "core", "token_sha256": KEY_B}]},
     r"clients\[1\] \(core\): another client"),
    ({"keystore": {"kind": "plain"}}, "keystore.kind"),
    ({"chains": {}}, "chain_id is required"),
    ({"policy": {"staff": [{"name": "alice", "ed25519_public_key": KEY_A},
                           {"name": "bob", "ed25519_public_key": KEY_A}]}}, "public key is listed twice"),
    ({"policy": {"staff": [{"name": "alice", "ed25519_public_key": KEY_A},
                           {"name": "alice", "ed25519_public_key": KEY_B}]}},
     r"policy.staff\[1\] \(alice\): this name is listed twice"),
    ({"policy": {"approval_quorum": 2, "staff": [{"name": "alice", "ed25519_public_key": KEY_A}]}},
     "more than the 1 staff keys"),
    # A misspelt limit would leave that limit off (no limit at all): refused, with the likely meaning.
    ({"policy": {"assets": [{"asset": "BTC", "chain": "bitcoin", "max_per_24hr": "1"}]}},
     r"policy.assets\[0\].max_per_24hr: unknown setting \(did you mean max_per_24h\?\)"),
    ({"policy": {"assets": [{"asset": "BTC", "chain": "bitcoin", "max_fee_per_24h": "1"}]}},
     r"did you mean max_fees_per_24h\?"),
    ({"policy": {"aproval_quorum": 2}}, r"policy.aproval_quorum: unknown setting \(did you mean approval_quorum\?\)"),
    ({"policy": {"staff": [{"name": "alice", "ed25519_public_key": KEY_A, "role": "x"}]}},
     r"policy.staff\[0\].role: unknown setting"),
    ({"state": {"audit": "a.log"}}, r"state.audit: unknown setting \(did you mean audit_log\?\)"),
    ({"limits": {}}, r"^limits: unknown setting"),
    ({"chains": {"bitcoin": {"net": "mainnet"}, "ethereum": {"chain_id": 1}}}, r"chains.bitcoin.net: unknown"),
    ({"server": "unix:signer.sock"}, r"server: expected a table"),
])
def test_bad_configs_are_refused_with_the_reason(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(signer_config(**overrides))
