"""Offline (cold) signing proves each Bitcoin input's amount with the transaction that created its
coin (non_witness_utxo): it keeps no memory between files, so this is what stops two files for one
transaction, each understating another input, from combining into a transaction that pays the
difference to miners (CVE-2020-14199)."""
from __future__ import annotations

import pytest
from embit.ec import PublicKey
from embit.psbt import PSBT, DerivationPath

from hsm import offline
from hsm.errors import Refused
from tests.signer.test_cli import custody
from tests.support import signer as S

PATH = "m/84h/1h/0h/0/0"
JOB = offline.OfflineJob("bitcoin", S.HOT)


def cold_psbt(keystore, creators, amounts, pay: int) -> bytes:
    """Spends output 0 of each creator, claiming amounts, with the derivation hints a watch-only
    wallet adds; pays `pay` out and nothing back."""
    pub = keystore.public_key(S.HOT, PATH)
    script = S.p2wpkh_script(pub)
    unsigned = S.make_psbt([(c.txid().hex(), 0, amount, script) for c, amount in zip(creators, amounts)],
                           [(S.foreign_script("cold refill"), pay)])
    psbt = PSBT.parse(S.with_creators(unsigned, creators))
    for scope in psbt.inputs:
        scope.bip32_derivations[PublicKey.parse(pub)] = DerivationPath(
            bytes.fromhex(keystore.fingerprint(S.HOT)), [84 + 2**31, 1 + 2**31, 2**31, 0, 0])
    return psbt.serialize()


def coins(keystore, *amounts):
    script = S.p2wpkh_script(keystore.public_key(S.HOT, PATH))
    return [S.coin_creator([(script, amount)], seed=f"coin {i}") for i, amount in enumerate(amounts)]


def test_inputs_with_their_creating_transactions_are_signed(keystore):
    a, b = coins(keystore, S.BTC, S.BTC)
    explained, decoder = offline.explain(JOB, cold_psbt(keystore, [a, b], [S.BTC, S.BTC], 2 * S.BTC - 3_000), keystore)
    assert explained.fee == 3_000
    assert offline.sign(decoder, explained).raw_transaction


def test_two_files_each_understating_the_other_input_are_both_refused(keystore):
    """The CVE-2020-14199 pair: coins A and B hold 1 BTC each; each file claims 0.5 BTC for the other
    input and so shows a 3,000 sat fee for a transaction that in truth pays 0.5 BTC more to miners."""
    a, b = coins(keystore, S.BTC, S.BTC)
    pay = S.BTC + S.BTC // 2 - 3_000
    for claims in ([S.BTC, S.BTC // 2], [S.BTC // 2, S.BTC]):
        with pytest.raises(Refused, match="claims 50000000 sats") as refused:
            offline.explain(JOB, cold_psbt(keystore, [a, b], claims, pay), keystore)
        assert refused.value.rule == "previous_tx"


def test_a_creating_transaction_that_is_not_the_inputs_is_refused(keystore):
    a, b = coins(keystore, S.BTC, S.BTC)
    payload = cold_psbt(keystore, [a], [S.BTC], S.BTC - 1_000)
    psbt = PSBT.parse(payload)
    psbt.inputs[0].non_witness_utxo = b  # same amount and script, another coin
    with pytest.raises(Refused, match="the transaction given for"):
        offline.explain(JOB, psbt.serialize(), keystore)


def test_an_input_without_its_creating_transaction_is_refused_unless_the_operator_trusts_the_amounts(keystore):
    a, = coins(keystore, S.BTC)
    payload = S.make_psbt([(a.txid().hex(), 0, S.BTC, S.p2wpkh_script(keystore.public_key(S.HOT, PATH)))],
                          [(S.foreign_script("cold refill"), S.BTC - 1_000)])
    psbt = PSBT.parse(payload)
    psbt.inputs[0].bip32_derivations[PublicKey.parse(keystore.public_key(S.HOT, PATH))] = DerivationPath(
        bytes.fromhex(keystore.fingerprint(S.HOT)), [84 + 2**31, 1 + 2**31, 2**31, 0, 0])
    with pytest.raises(Refused, match="non_witness_utxo"):
        offline.explain(JOB, psbt.serialize(), keystore)
    explained, _ = offline.explain(JOB, psbt.serialize(), keystore, trust_stated_amounts=True)
    assert explained.fee == 1_000


def test_the_cli_refuses_without_the_proof_and_warns_when_told_to_trust(tmp_path):
    ks = tmp_path / "cold.json"
    assert custody("wallet", "import", "--keystore", ks, "--wallet", "cold", "--scrypt-n", 1024,
                   input_text=S.MNEMONIC).returncode == 0
    from hsm.keystores.software import Passphrase, SoftwareKeystore

    store = SoftwareKeystore.open(ks, Passphrase(S.PASSPHRASE))
    pub = store.public_key("cold", PATH)
    unsigned = S.make_psbt([("44" * 32, 0, S.BTC, S.p2wpkh_script(pub))], [(S.foreign_script("hot"), S.BTC - 2_000)])
    psbt = PSBT.parse(unsigned)
    psbt.inputs[0].bip32_derivations[PublicKey.parse(pub)] = DerivationPath(
        bytes.fromhex(store.fingerprint("cold")), [84 + 2**31, 1 + 2**31, 2**31, 0, 0])
    (tmp_path / "in.psbt").write_bytes(psbt.serialize())
    args = ("offline-sign", "--keystore", ks, "--wallet", "cold", "--chain", "bitcoin", "--network", "regtest",
            "--in", tmp_path / "in.psbt", "--out", tmp_path / "out.psbt", "--yes")
    refused = custody(*args)
    assert refused.returncode == 3 and "non_witness_utxo" in refused.stderr + refused.stdout
    assert not (tmp_path / "out.psbt").exists()
    trusted = custody(*args, "--trust-stated-amounts")
    assert trusted.returncode == 0, trusted.stderr
    assert "amounts not proven" in trusted.stdout and (tmp_path / "out.psbt").exists()


def test_an_extra_derivation_hint_on_an_input_does_not_make_an_output_to_that_key_ours(keystore):
    """Every input hint with our fingerprint becomes a signing key; one naming a key the input is
    not paid to made the output paying that key (at a path no wallet scan finds) show as ours,
    'leaving our wallets: 0' (a signer review)."""
    hidden = "m/84h/1h/0h/0/7777777"
    hidden_pub = keystore.public_key(S.HOT, hidden)
    (coin,) = coins(keystore, 10 * S.BTC)
    script = S.p2wpkh_script(keystore.public_key(S.HOT, PATH))
    unsigned = S.make_psbt([(coin.txid().hex(), 0, 10 * S.BTC, script)],
                           [(S.p2wpkh_script(hidden_pub), 10 * S.BTC - 1_000)])
    psbt = PSBT.parse(S.with_creators(unsigned, [coin]))
    fingerprint = bytes.fromhex(keystore.fingerprint(S.HOT))
    for path, pub in ((PATH, keystore.public_key(S.HOT, PATH)), (hidden, hidden_pub)):
        psbt.inputs[0].bip32_derivations[PublicKey.parse(pub)] = DerivationPath(
            fingerprint, [int(p[:-1]) + 2**31 if p.endswith("h") else int(p) for p in path.split("/")[1:]])
    explained, _ = offline.explain(JOB, psbt.serialize(), keystore)
    assert [t.internal for t in explained.transfers] == [False]
    assert f"leaving our wallets: {10 * S.BTC - 1_000}" in offline.describe(explained)
