"""The ceremony and cold-signing CLI as an operator runs it."""
from __future__ import annotations

import json
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


def on_terminal(args, answers, env=None) -> tuple[str, int]:
    """Runs `custody signer ARGS` on a pseudo-terminal, as an operator at a console; answers each prompt
    (prompt text -> what is typed) in turn. Returns what the terminal showed and the exit code."""
    import pty
    import select
    import signal

    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.chdir(pathlib.Path(__file__).resolve().parents[2])
        os.execve(sys.executable, [sys.executable, "-m", "custody.cli", "signer", *map(str, args)],
                  {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "CUSTODY_SIGNER_PASSPHRASE"})
    shown, pending = b"", list(answers)
    while True:
        if pending and pending[0][0].encode() in shown:
            prompt, text = pending.pop(0)
            shown = shown.replace(prompt.encode(), b"<" + prompt.encode() + b">", 1)  # answered
            os.write(fd, (text + "\n").encode())
        ready, _, _ = select.select([fd], [], [], 20)
        if not ready:  # waiting for input it was not given (a prompt not expected)
            os.kill(pid, signal.SIGKILL)
            break
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            data = b""
        if not data:
            break
        shown += data
    _, status = os.waitpid(pid, 0)
    return shown.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def test_import_on_a_terminal_does_not_echo_the_mnemonic_and_asks_the_new_passphrase_twice(tmp_path):
    ks = tmp_path / "ks.json"
    shown, code = on_terminal(("wallet", "import", "--keystore", ks, "--wallet", "cold", "--scrypt-n", 1024), [
        ("mnemonic (not shown): ", S.MNEMONIC), ("new keystore passphrase: ", S.PASSPHRASE),
        ("the same passphrase again: ", S.PASSPHRASE)])
    assert code == 0 and "73c5da0a" in shown, shown
    assert "abandon" not in shown and S.PASSPHRASE not in shown


def test_create_on_a_terminal_refuses_two_different_passphrases_and_writes_nothing(tmp_path):
    ks = tmp_path / "ks.json"
    args = ("wallet", "create", "--keystore", ks, "--wallet", "hot", "--scrypt-n", 1024)
    shown, code = on_terminal(args, [("new keystore passphrase: ", S.PASSPHRASE),
                                     ("the same passphrase again: ", S.PASSPHRASE + "x")])
    assert code == 1 and "the two passphrases differ" in shown and not ks.exists(), shown
    shown, code = on_terminal(args, [("new keystore passphrase: ", S.PASSPHRASE),
                                     ("the same passphrase again: ", S.PASSPHRASE)])
    assert code == 0 and "wallet hot created" in shown and ks.exists(), shown
    # An existing keystore is opened: its passphrase is asked once.
    shown, code = on_terminal(("fingerprint", "--keystore", ks, "--wallet", "hot"),
                              [("keystore passphrase: ", S.PASSPHRASE)])
    assert code == 0 and "again" not in shown, shown


def test_a_bad_or_missing_mnemonic_creates_no_keystore_and_no_key_file(tmp_path):
    ks, key = tmp_path / "ks.json", tmp_path / "ks.key"
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "cold", "--key-file", key,
                input_text="abandon " * 12 + "\n")
    assert r.returncode == 1 and "not a valid BIP39 mnemonic" in r.stderr and "Traceback" not in r.stderr
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "cold", "--key-file", key,
                "--mnemonic-env", "NO_SUCH_VARIABLE")
    assert r.returncode == 1 and "NO_SUCH_VARIABLE is not set" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_xpub_account_must_be_a_hardened_index(tmp_path, keystore):
    ks = tmp_path / "keystore.json"
    for account in ("-1", "2147483648"):
        r = custody("xpub", "--keystore", ks, "--wallet", S.HOT, "--chain", "bitcoin", "--account", account)
        assert r.returncode == 2 and "is not from 0 to 2147483647" in r.stderr and not r.stdout, r.stderr
        assert "Traceback" not in r.stderr
    r = custody("xpub", "--keystore", ks, "--wallet", S.HOT, "--chain", "bitcoin", "--account", 2**31 - 1)
    assert r.returncode == 0 and "m/84h/1h/2147483647h" in r.stderr


def test_offline_sign_does_not_overwrite_without_force(tmp_path, keystore):
    (tmp_path / "in.tx").write_text(S.eth_payload("0x" + "22" * 20, S.ETH).hex())
    out = tmp_path / "out.tx"
    out.write_text("precious\n")
    args = ("offline-sign", "--keystore", tmp_path / "keystore.json", "--wallet", S.HOT, "--chain", "ethereum",
            "--chain-id", S.ANVIL_CHAIN_ID, "--path", S.HOT_ETH_PATH, "--in", tmp_path / "in.tx", "--out", out, "--yes")
    r = custody(*args)
    assert r.returncode == 1 and "exists already; give --force" in r.stderr and out.read_text() == "precious\n"
    r = custody(*args, "--force")
    assert r.returncode == 0 and out.read_text().startswith("0x"), r.stderr
    # Bitcoin writes <out>.tx.hex too: an existing one is refused as well.
    (tmp_path / "b.psbt.tx.hex").write_text("precious\n")
    r = custody("offline-sign", "--keystore", tmp_path / "keystore.json", "--wallet", S.HOT, "--chain", "bitcoin",
                "--network", "regtest", "--in", tmp_path / "in.tx", "--out", tmp_path / "b.psbt", "--yes")
    assert r.returncode == 1 and "b.psbt.tx.hex exists already" in r.stderr
    assert not (tmp_path / "b.psbt").exists()


def test_operator_mistakes_are_one_line_not_a_traceback(tmp_path, keystore):
    """A directory or a missing file where a file is expected, a key that is not a PEM key, an existing
    staff key file: one line on stderr, exit 1 (2 for a config), nothing written."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "in.tx").write_text(S.eth_payload("0x" + "22" * 20, S.ETH).hex())
    (tmp_path / "not.pem").write_text("00" * 32)
    (tmp_path / "staff.pem").write_text("keep me")
    cases = [
        (1, ("fingerprint", "--keystore", folder, "--wallet", S.HOT)),
        (2, ("serve", "--config", folder)),
        (2, ("audit", "verify", "--config", folder)),
        (1, ("audit", "verify", "--log", folder)),
        (1, ("audit", "verify", "--log", tmp_path / "no-such-log")),
        (1, ("staff-keygen", "--out", tmp_path / "staff.pem")),
        (1, ("approve", "--staff-key", tmp_path / "missing.pem", "--name", "a", "--chain", "ethereum",
             "--payload", tmp_path / "in.tx")),
        (1, ("approve", "--staff-key", tmp_path / "not.pem", "--name", "a", "--chain", "ethereum",
             "--payload", tmp_path / "in.tx")),
        (1, ("offline-sign", "--keystore", tmp_path / "keystore.json", "--wallet", S.HOT, "--chain", "ethereum",
             "--chain-id", S.ANVIL_CHAIN_ID, "--path", S.HOT_ETH_PATH, "--in", folder, "--out", tmp_path / "o",
             "--yes")),
        (1, ("offline-sign", "--keystore", tmp_path / "keystore.json", "--wallet", S.HOT, "--chain", "ethereum",
             "--chain-id", S.ANVIL_CHAIN_ID, "--path", S.HOT_ETH_PATH, "--in", tmp_path / "in.tx", "--out",
             folder / "missing" / "o", "--yes")),
    ]
    for code, args in cases:
        r = custody(*args)
        assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert r"no log at" in custody("audit", "verify", "--log", tmp_path / "no-such-log").stderr
    assert (tmp_path / "staff.pem").read_text() == "keep me" and not (tmp_path / "o").exists()


def test_create_does_not_print_the_words_where_others_can_read_them(tmp_path):
    """Words printed to a redirected standard output end up in a log or a CI transcript."""
    ks, words = tmp_path / "ks.json", tmp_path / "words.txt"
    r = custody("wallet", "create", "--keystore", ks, "--wallet", "hot", "--scrypt-n", 1024)
    assert r.returncode == 1 and "standard output is not a terminal" in r.stderr and "--mnemonic-out" in r.stderr
    assert list(tmp_path.iterdir()) == []
    r = custody("wallet", "create", "--keystore", ks, "--wallet", "hot", "--scrypt-n", 1024, "--mnemonic-out", words)
    assert r.returncode == 0, r.stderr
    mnemonic = words.read_text().strip()
    words_in_order = mnemonic.split()
    # Not even two of them in a row. (One word alone proves nothing: "then", "keep" and "file"
    # are in the words list and in the message.)
    assert len(words_in_order) == 24 and not any(" ".join(pair) in r.stdout
                                                 for pair in zip(words_in_order, words_in_order[1:]))
    assert words.stat().st_mode & 0o777 == 0o600
    # The file holds the very words of the new wallet: imported elsewhere, the fingerprint is the same.
    fingerprint = custody("fingerprint", "--keystore", ks, "--wallet", "hot").stdout.strip()
    r = custody("wallet", "import", "--keystore", tmp_path / "again.json", "--wallet", "hot", "--scrypt-n", 1024,
                input_text=mnemonic + "\n")
    assert r.returncode == 0 and fingerprint in r.stdout, r.stdout + r.stderr
    # An existing words file is never overwritten, and then no wallet is added.
    r = custody("wallet", "create", "--keystore", ks, "--wallet", "second", "--scrypt-n", 1024,
                "--mnemonic-out", words)
    assert r.returncode == 1 and "exists already" in r.stderr and words.read_text().strip() == mnemonic
    assert custody("fingerprint", "--keystore", ks, "--wallet", "second").returncode != 0


def test_create_whose_words_file_cannot_be_made_saves_no_wallet(tmp_path, keystore):
    """The seed was saved before the words file was written: with the file's folder missing the command failed,
    the wallet stayed in the keystore with no copy of its words, and a retry said it exists."""
    ks, words = tmp_path / "new.json", tmp_path / "no-such-dir" / "words.txt"
    r = custody("wallet", "create", "--keystore", ks, "--wallet", "hot", "--scrypt-n", 1024, "--mnemonic-out", words)
    assert r.returncode == 1 and "No such file or directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not ks.exists()
    # Into an existing keystore: no wallet added; once the folder is there, the same command works.
    args = ("wallet", "create", "--keystore", tmp_path / "keystore.json", "--wallet", "second",
            "--mnemonic-out", words)
    r = custody(*args)
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert custody("fingerprint", "--keystore", tmp_path / "keystore.json", "--wallet", "second").returncode == 1
    words.parent.mkdir()
    r = custody(*args)
    assert r.returncode == 0, r.stderr
    mnemonic = words.read_text().strip()
    assert len(mnemonic.split()) == 24 and mnemonic not in r.stdout and words.stat().st_mode & 0o777 == 0o600
    fingerprint = custody("fingerprint", "--keystore", tmp_path / "keystore.json", "--wallet", "second").stdout
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "again", "--scrypt-n", 1024,
                input_text=mnemonic + "\n")
    assert r.returncode == 0 and fingerprint.strip() in r.stdout, r.stdout + r.stderr


def test_create_that_fails_after_making_the_words_file_removes_it(tmp_path, keystore):
    """The words file is made first; when no wallet comes of it, the (empty) file goes."""
    ks, words = tmp_path / "keystore.json", tmp_path / "words.txt"
    r = custody("wallet", "create", "--keystore", ks, "--wallet", "second", "--mnemonic-out", words,
                env={"CUSTODY_SIGNER_PASSPHRASE": "wrong passphrase"})
    assert r.returncode == 1 and "wrong passphrase" in r.stderr and not words.exists()
    r = custody("wallet", "create", "--keystore", ks, "--wallet", S.HOT, "--mnemonic-out", words)
    assert r.returncode == 1 and "exists already" in r.stderr and not words.exists()


def create_fails_leaving_no_wallet_and_no_words(tmp_path, monkeypatch):
    """`wallet create --mnemonic-out` run in this process (so a test can patch a step to fail): it
    fails, and leaves neither the wallet nor its words file."""
    import argparse

    from hsm import cli

    monkeypatch.setenv("CUSTODY_SIGNER_PASSPHRASE", S.PASSPHRASE)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    words = tmp_path / "words.txt"
    args = parser.parse_args(["signer", "wallet", "create", "--keystore", str(tmp_path / "keystore.json"),
                              "--wallet", "second", "--mnemonic-out", str(words)])
    assert cli.run(args) == 1
    assert not words.exists()
    monkeypatch.undo()
    assert custody("fingerprint", "--keystore", tmp_path / "keystore.json", "--wallet", "second").returncode == 1


def test_create_whose_keystore_save_fails_leaves_no_words_file(tmp_path, keystore, monkeypatch):
    """A full disk when the keystore is saved: no wallet, and no words file of a wallet that doesn't exist."""
    from hsm.keystores.software import SoftwareKeystore

    def full_disk(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SoftwareKeystore, "save", full_disk)
    create_fails_leaving_no_wallet_and_no_words(tmp_path, monkeypatch)


def test_a_backup_is_private_and_never_overwrites(tmp_path, keystore):
    ks, out = tmp_path / "keystore.json", tmp_path / "backup.json"
    r = custody("backup", "--keystore", ks, "--out", out)
    assert r.returncode == 0 and out.read_bytes() == ks.read_bytes()
    assert out.stat().st_mode & 0o777 == 0o600
    out.write_text("older backup")
    r = custody("backup", "--keystore", ks, "--out", out)
    assert r.returncode == 1 and "exists already" in r.stderr and out.read_text() == "older backup"


def test_approve_shows_what_it_approves_and_asks(tmp_path):
    """An approval lets the signer pay past its quorum limits: staff signed a file blind before."""
    from cryptography.hazmat.primitives import serialization

    from hsm.approvals import Approval, count_valid, payload_hash
    from hsm.config import StaffKey

    key = tmp_path / "alice.pem"
    key.write_bytes(S.STAFF["alice"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    psbt = S.make_psbt([("11" * 32, 0, 100_000, S.foreign_script("ours"))],
                       [(S.foreign_script(), 60_000), (S.foreign_script("change"), 39_000)])
    (tmp_path / "tx.psbt").write_bytes(psbt)
    args = ("approve", "--staff-key", key, "--name", "alice", "--chain", "bitcoin", "--payload", tmp_path / "tx.psbt")
    assert custody(*args).returncode == 2  # --network: the addresses shown depend on it
    declined = custody(*args, "--network", "regtest", input_text="n\n")
    assert declined.returncode == 1 and declined.stdout == "" and "not approved" in declined.stderr
    shown = declined.stderr
    assert f"pay 60000 sats to {S.address_for(S.foreign_script())}" in shown
    assert f"pay 39000 sats to {S.address_for(S.foreign_script('change'))}" in shown
    assert f"spend {'11' * 32}:0: 100000 sats" in shown and "fee: 1000 sats" in shown
    approved = custody(*args, "--network", "regtest", input_text="y\n")
    assert approved.returncode == 0, approved.stderr
    answer = json.loads(approved.stdout)
    staff = (StaffKey("alice", bytes.fromhex(S.staff_public_hex("alice"))),)
    valid, _ = count_valid([Approval(answer["approver"], bytes.fromhex(answer["signature"]))], staff, "bitcoin",
                           payload_hash("bitcoin", psbt))
    assert valid == {"alice"}

    token = bytes.fromhex("a9059cbb") + bytes(12) + bytes.fromhex("22" * 20) + (5_000).to_bytes(32, "big")
    (tmp_path / "tx.eth").write_text("0x" + S.eth_payload(S.USDT_CONTRACT, 0, gas=60_000, data=token).hex())
    r = custody("approve", "--staff-key", key, "--name", "alice", "--chain", "ethereum", "--payload",
                tmp_path / "tx.eth", "--yes")
    assert r.returncode == 0 and json.loads(r.stdout)["approver"] == "alice", r.stderr
    assert f"call token contract {S.USDT_CONTRACT}: transfer 5000 token units to 0x{'22' * 20}" in r.stderr
    assert f"chain id {S.ANVIL_CHAIN_ID}" in r.stderr and "fee: at most 120000000000000 wei" in r.stderr


def test_create_whose_words_cannot_be_written_saves_no_wallet(tmp_path, keystore, monkeypatch):
    """A full disk while the words are written: the seed was saved first, so a wallet existed whose
    words were lost. The words are now on disk before the seed is saved."""
    from hsm import cli

    def full_disk(fd, path, data):
        import os

        os.close(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_finish_private_file", full_disk)
    create_fails_leaving_no_wallet_and_no_words(tmp_path, monkeypatch)
