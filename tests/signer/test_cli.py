"""The ceremony and cold-signing CLI as an operator runs it."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from embit.psbt import PSBT

from tests.support import signer as S


def custody(*args, input_text=None, env=None):
    return subprocess.run([sys.executable, "-m", "custody.cli", "signer", *map(str, args)], input=input_text,
                          capture_output=True, text=True, env={**os.environ, "CUSTODY_SIGNER_PASSPHRASE": S.PASSPHRASE,
                                                               **(env or {})}, timeout=60)


def test_import_xpub_offline_sign_with_confirmation_and_audit_verify(tmp_path):
    ks = tmp_path / "cold.json"
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "cold", "--scrypt-n", 1024, input_text=S.MNEMONIC)
    assert r.returncode == 0 and "73c5da0a" in r.stdout, r.stderr
    r = custody("xpub", "--keystore", ks, "--wallet", "cold", "--chain", "bitcoin", "--network", "regtest")
    assert r.returncode == 0 and r.stdout.startswith("vpub")
    from hsm.keystores.software import Passphrase, SoftwareKeystore

    store = SoftwareKeystore.open(ks, Passphrase(S.PASSPHRASE))
    path = "m/84h/1h/0h/0/0"
    pub = store.public_key("cold", path)
    creator = S.coin_creator([(S.p2wpkh_script(pub), S.BTC)])
    unsigned = S.make_psbt([(creator.txid().hex(), 0, S.BTC, S.p2wpkh_script(pub))],
                           [(S.foreign_script("hot"), S.BTC - 2_000)])
    psbt = PSBT.parse(S.with_creators(unsigned, [creator]))
    from embit.ec import PublicKey
    from embit.psbt import DerivationPath

    psbt.inputs[0].bip32_derivations[PublicKey.parse(pub)] = DerivationPath(
        bytes.fromhex("73c5da0a"), [84 + 2**31, 1 + 2**31, 2**31, 0, 0])
    (tmp_path / "in.psbt").write_bytes(psbt.serialize())
    args = ("offline-sign", "--keystore", ks, "--wallet", "cold", "--chain", "bitcoin", "--network", "regtest",
            "--in", tmp_path / "in.psbt", "--out", tmp_path / "out.psbt")
    declined = custody(*args, input_text="n\n")
    assert declined.returncode == 1 and "fee: 2000" in declined.stdout and not (tmp_path / "out.psbt").exists()
    accepted = custody(*args, input_text="y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert PSBT.from_string((tmp_path / "out.psbt").read_text().strip()).inputs[0].final_scriptwitness
    r = custody("offline-sign", "--keystore", ks, "--wallet", "cold", "--chain", "bitcoin", "--network", "regtest",
                "--in", tmp_path / "in.psbt", "--out", tmp_path / "o2", "--yes",
                env={"CUSTODY_SIGNER_PASSPHRASE": "wrong passphrase"})
    assert r.returncode == 1 and "wrong passphrase" in r.stderr
    r = custody("backup", "--keystore", ks, "--out", tmp_path / "backup.json")
    assert r.returncode == 0 and (tmp_path / "backup.json").read_bytes() == ks.read_bytes()


def test_offline_sign_bitcoin_needs_network_ethereum_does_not(tmp_path, keystore):
    """Without --network a mainnet PSBT would be shown with regtest addresses: a Bitcoin file is not signed
    without it (argument error, exit 2, nothing written); an Ethereum file needs only its chain id."""
    from embit.ec import PublicKey
    from embit.psbt import DerivationPath

    pub = keystore.public_key(S.HOT, "m/84h/0h/0h/0/0")
    psbt = PSBT.parse(
        S.make_psbt([("55" * 32, 0, S.BTC, S.p2wpkh_script(pub))], [(S.foreign_script("hot"), S.BTC - 2_000)]))
    psbt.inputs[0].bip32_derivations[PublicKey.parse(pub)] = DerivationPath(
        bytes.fromhex(keystore.fingerprint(S.HOT)), [84 + 2**31, 2**31, 2**31, 0, 0])
    (tmp_path / "in.psbt").write_bytes(psbt.serialize())
    ks, out = tmp_path / "keystore.json", tmp_path / "out.psbt"
    r = custody("offline-sign", "--keystore", ks, "--wallet", S.HOT, "--chain", "bitcoin", "--in", tmp_path / "in.psbt",
                "--out", out, "--yes", "--trust-stated-amounts")
    assert r.returncode == 2 and "--network is required with --chain bitcoin" in r.stderr, r.stderr
    assert "fee" not in r.stdout and not out.exists() and not pathlib.Path(f"{out}.tx.hex").exists()

    (tmp_path / "in.tx").write_text(S.eth_payload("0x" + "22" * 20, S.ETH).hex())
    r = custody("offline-sign", "--keystore", ks, "--wallet", S.HOT, "--chain", "ethereum",
                "--chain-id", S.ANVIL_CHAIN_ID, "--path", S.HOT_ETH_PATH, "--in", tmp_path / "in.tx",
                "--out", tmp_path / "out.tx", "--yes")
    assert r.returncode == 0 and (tmp_path / "out.tx").exists(), r.stderr


def test_audit_verify_exit_codes(tmp_path, signer, keystore):
    signer.sign("bitcoin", S.simple_psbt(keystore, 1000), [(S.HOT, S.HOT_BTC_PATH)], [])
    signer.audit.close()
    log = signer.config.audit_log
    assert custody("audit", "verify", "--log", log).returncode == 0
    log.write_text(log.read_text().splitlines()[0] + "\n")
    r = custody("audit", "verify", "--log", log)
    assert r.returncode == 1 and "truncated" in r.stdout
