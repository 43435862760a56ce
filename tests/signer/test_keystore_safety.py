"""What must never happen to a software keystore file, through the real `custody signer` commands: a wallet that
was reported created is lost, a keystore is replaced or deleted, one seed is kept under two names."""
from __future__ import annotations

import fcntl
import os
import socket
import stat
import subprocess
import sys

from hsm.keystores.software import Passphrase, SoftwareKeystore
from tests.signer.test_cli import custody
from tests.support import signer as S


def started_custody(*args, passphrase=S.PASSPHRASE):
    """`custody signer ARGS` started, not waited for: several run at once."""
    return subprocess.Popen([sys.executable, "-m", "custody.cli", "signer", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUSTODY_SIGNER_PASSPHRASE": passphrase})


def wallets(path, passphrase=S.PASSPHRASE) -> dict[str, str]:
    return {k.key_id: k.fingerprint for k in SoftwareKeystore.open(path, Passphrase(passphrase)).list_keys()}


def test_a_keystore_being_changed_by_one_command_is_not_changed_by_another(tmp_path, keystore):
    """Two commands each saved the wallets they had read plus their own, and the first one's wallet was lost;
    while one holds <keystore>.lock, another refuses in one line and writes nothing, not even its words."""
    ks, words = tmp_path / "keystore.json", tmp_path / "words.txt"
    before = ks.read_bytes()
    create = ("wallet", "create", "--keystore", ks, "--wallet", "deposit", "--mnemonic-out", words)
    held = os.open(tmp_path / "keystore.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another `wallet create` or `wallet import` holds it
        for r in (custody(*create),
                  custody("wallet", "import", "--keystore", ks, "--wallet", "cold", input_text=S.OTHER_MNEMONIC)):
            assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
            assert r.stderr.strip().splitlines() == [
                f"custody signer: keystore {ks} is being changed by another command; nothing was written; "
                "run this one again once that one has finished"]
        assert ks.read_bytes() == before and not words.exists()
    finally:
        os.close(held)
    r = custody(*create)
    assert r.returncode == 0, r.stderr
    assert set(wallets(ks)) == {S.HOT, "deposit"}


def test_commands_run_at_once_lose_no_wallet_they_reported(tmp_path):
    """Both said "created" and printed a fingerprint, but only one wallet was kept; on a new keystore the
    second file replaced the first, under its own passphrase. Now every run that says "created" has its wallet
    in the keystore, the others exit 1 with one line."""
    existing = tmp_path / "existing.json"
    SoftwareKeystore.create(existing, Passphrase(S.PASSPHRASE), scrypt_n=2**14)
    for ks, passphrases in ((existing, [S.PASSPHRASE] * 3),
                            (tmp_path / "new.json", [S.PASSPHRASE, "another passphrase", "a third one"])):
        runs = {f"w{i}": (started_custody("wallet", "create", "--keystore", ks, "--wallet", f"w{i}",
                                          "--scrypt-n", 2**14, "--mnemonic-out", tmp_path / f"{ks.stem}-w{i}.words",
                                          passphrase=passphrase), passphrase)
                for i, passphrase in enumerate(passphrases)}
        created = {}
        for name, (process, passphrase) in runs.items():
            out, err = process.communicate(timeout=60)
            if process.returncode == 0:
                created[name] = (out.split("fingerprint ")[1].split()[0], passphrase)
            else:
                assert process.returncode == 1 and len(err.strip().splitlines()) == 1, err
                assert "Traceback" not in err, err
                assert not (tmp_path / f"{ks.stem}-{name}.words").exists()
        assert created, f"no run created a wallet in {ks}"
        for name, (fingerprint, passphrase) in created.items():
            assert wallets(ks, passphrase)[name] == fingerprint


def test_create_never_replaces_what_is_at_the_keystore_path(tmp_path):
    """The keystore was renamed into place over whatever had appeared since the check that none exists. A
    dangling symlink (the keystore's volume not mounted) reads as "none" to that check, and was replaced."""
    ks, words = tmp_path / "keystore.json", tmp_path / "words.txt"
    ks.symlink_to("/mnt/not-mounted/keystore.json")
    r = custody("wallet", "create", "--keystore", ks, "--wallet", S.HOT, "--scrypt-n", 2**10, "--mnemonic-out", words)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"custody signer: {ks} exists already; a keystore is never overwritten"], r.stdout + r.stderr
    assert ks.is_symlink() and os.readlink(ks) == "/mnt/not-mounted/keystore.json" and not words.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keystore.json", "keystore.json.lock"]  # no temp file


def test_a_new_key_file_is_complete_and_private(tmp_path):
    """The key file is the only key to the keystore it unlocks, so it is fsynced (and its folder) like the
    keystore. The fsync itself can't be seen from here, only with strace (as the review's
    repro_keyfile_not_durable.sh does); this checks what can be: the whole key, readable by its owner only."""
    ks, key, words = tmp_path / "keystore.json", tmp_path / "keystore.key", tmp_path / "words.txt"
    r = custody("wallet", "create", "--keystore", ks, "--key-file", key, "--wallet", S.HOT, "--mnemonic-out", words)
    assert r.returncode == 0 and f"wrote a new key file {key}" in r.stderr, r.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32 and key.read_text().endswith("\n")
    assert custody("fingerprint", "--keystore", ks, "--key-file", key, "--wallet", S.HOT).returncode == 0


def test_one_seed_is_not_imported_under_two_names(tmp_path, keystore):
    """The same words imported as a second wallet (cold words typed into the hot keystore) were accepted,
    one fingerprint under two names. Refused, naming the wallet that has it; nothing written."""
    ks = tmp_path / "keystore.json"
    before = ks.read_bytes()
    fingerprint = keystore.fingerprint(S.HOT)
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "cold", input_text="  ".join(S.MNEMONIC.split()))
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"custody signer: this seed (fingerprint {fingerprint}) is wallet '{S.HOT}' already; nothing was written"]
    assert ks.read_bytes() == before
    r = custody("wallet", "import", "--keystore", ks, "--wallet", "cold", input_text=S.OTHER_MNEMONIC)
    assert r.returncode == 0 and set(wallets(ks)) == {S.HOT, "cold"}, r.stderr


def test_listen_removes_only_an_old_socket(tmp_path, keystore):
    """[server] listen = "unix:PATH" deleted whatever was at PATH: pointed at keystore.json by a slip, the
    encrypted seeds. Another file there stops the signer (a config error, exit 2) and stays as it was; a socket
    left by an earlier run is still replaced."""
    ks = tmp_path / "keystore.json"
    before = ks.read_bytes()
    raw = S.raw_config(tmp_path)
    raw["server"]["listen"] = f"unix:{ks}"
    (tmp_path / "signer.toml").write_text(S.to_toml(raw))
    r = subprocess.run([sys.executable, "-m", "custody.cli", "signer", "serve", "--config", tmp_path / "signer.toml"],
                       env={**os.environ, "TEST_SIGNER_PASS": S.PASSPHRASE}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"custody signer: configuration error: server.listen: {ks} exists and is not a socket; the signer "
        "removes only an old socket there: choose another path"], r.stdout + r.stderr
    assert ks.read_bytes() == before

    old = socket.socket(socket.AF_UNIX)
    old.bind(str(tmp_path / "signer.sock"))
    old.close()  # its file stays, as after a crash
    signer = S.SignerProcess(tmp_path, S.raw_config(tmp_path))
    try:
        assert [k.key_id for k in signer.client.list_keys()] == [S.HOT]
    finally:
        signer.stop()
