"""`custody signer ...`: run the signer, key ceremonies, approvals, audit, offline signing.

Secrets never go on the command line: the keystore passphrase comes from an
environment variable (--passphrase-env, default CUSTODY_SIGNER_PASSPHRASE),
a key file (--key-file), or a prompt (asked twice when a keystore is created); a
mnemonic to import from --mnemonic-env or standard input (not echoed on a terminal).

Exit codes: 0 done; 1 the operation failed (a file missing or unreadable, a wrong
secret, declined); 2 a bad argument or config; 3 refused by a policy rule.
"""
from __future__ import annotations

import argparse
import contextlib
import getpass
import hashlib
import json
import os
import pathlib
import sys

from hsm.errors import ConfigError, KeystoreError, Refused, SignerError

PASSPHRASE_ENV = "CUSTODY_SIGNER_PASSPHRASE"
HARDENED = 2**31  # BIP32: child indexes from here on are hardened; an account number is below it
XPUB_VERSIONS = {  # BIP84 account keys: zpub/vpub say "native segwit"; xpub/tpub for tools that want those
    ("mainnet", "bip84"): "04b24746", ("mainnet", "bip32"): "0488b21e",
    ("testnet", "bip84"): "045f1cf6", ("testnet", "bip32"): "043587cf",
}


def register(sub) -> None:
    signer = sub.add_parser("signer", help="the HSM-style signer and its key ceremonies")
    s = signer.add_subparsers(dest="signer_command", required=True)

    p = s.add_parser("serve", help="run hsm.v1.SignerService")
    p.add_argument("--config", required=True)
    p.add_argument("--new-limits-db", action="store_true",
                   help="limits_db is lost for good: start with an empty one (what it remembered is forgotten; "
                        "the restart is put on record in the audit log)")
    p.add_argument("--new-audit-log", action="store_true",
                   help="the audit log is lost for good: start a new one (the rolling 24h limits restart from zero; "
                        "what limits_db remembers is kept; the restart is the new log's first entry)")
    p.set_defaults(run=_serve)

    wallet = s.add_parser("wallet", help="create or import an HD wallet seed in a software keystore")
    w = wallet.add_subparsers(dest="wallet_command", required=True)
    for name, fn in (("create", _wallet_create), ("import", _wallet_import)):
        p = w.add_parser(name)
        _keystore_args(p)
        p.add_argument("--wallet", required=True, help="the wallet's name (its key id)")
        p.add_argument("--scrypt-n", type=int, default=None, help=argparse.SUPPRESS)
        if name == "create":
            p.add_argument("--words", type=int, choices=(12, 24), default=24)
            p.add_argument("--mnemonic-out", help="write the words to this new file (0600) instead of the "
                                                  "terminal; needed when standard output is not a terminal")
        else:
            p.add_argument("--mnemonic-env", help="read the mnemonic from this variable (default: standard input)")
        p.set_defaults(run=fn)

    p = s.add_parser("xpub", help="export an account public key for the core's config")
    _keystore_args(p)
    p.add_argument("--wallet", required=True)
    p.add_argument("--chain", choices=("bitcoin", "ethereum"), required=True)
    p.add_argument("--network", default="regtest", choices=("mainnet", "testnet", "signet", "regtest"))
    p.add_argument("--account", type=_account, default=0, help=f"0 to {HARDENED - 1} (hardened)")
    p.add_argument("--format", choices=("bip84", "bip32"), default="bip84",
                   help="bitcoin: zpub/vpub (bip84, default) or xpub/tpub (bip32)")
    p.set_defaults(run=_xpub)

    p = s.add_parser("fingerprint", help="show a wallet's master key fingerprint")
    _keystore_args(p)
    p.add_argument("--wallet", required=True)
    p.set_defaults(run=_fingerprint)

    p = s.add_parser("backup", help="copy the encrypted keystore after checking that it opens")
    _keystore_args(p)
    p.add_argument("--out", required=True)
    p.set_defaults(run=_backup)

    p = s.add_parser("token-keygen", help="generate a secp256k1 key inside a PKCS#11 token")
    p.add_argument("--library", required=True)
    p.add_argument("--token-label", required=True)
    p.add_argument("--pin-env", required=True)
    p.add_argument("--label", required=True)
    p.set_defaults(run=_token_keygen)

    p = s.add_parser("staff-keygen", help="a staff member's Ed25519 approval key")
    p.add_argument("--out", required=True, help="private key file (PEM, mode 0600)")
    p.set_defaults(run=_staff_keygen)

    p = s.add_parser("approve", help="approve one exact payload (prints the approval as JSON)")
    p.add_argument("--staff-key", required=True)
    p.add_argument("--name", required=True, help="your name as listed in the signer's config")
    p.add_argument("--chain", choices=("bitcoin", "ethereum"), required=True)
    p.add_argument("--payload", required=True)
    p.add_argument("--network", choices=("mainnet", "testnet", "signet", "regtest"),
                   help="bitcoin (required): the network whose addresses to show")
    p.add_argument("--yes", action="store_true", help="approve without asking (after checking the payload)")
    p.set_defaults(run=_approve, usage_error=p.error)

    audit = s.add_parser("audit", help="the audit log")
    a = audit.add_subparsers(dest="audit_command", required=True)
    p = a.add_parser("verify", help="check the hash chain and the head; exit 1 if anything was changed")
    p.add_argument("--config")
    p.add_argument("--log")
    p.add_argument("--expect-count", type=int)
    p.add_argument("--expect-head")
    p.set_defaults(run=_audit_verify)

    p = s.add_parser("offline-sign", help="cold wallet: show, confirm and sign a transaction file, no network")
    _keystore_args(p)
    p.add_argument("--wallet", required=True)
    p.add_argument("--chain", choices=("bitcoin", "ethereum"), required=True)
    p.add_argument("--network", choices=("mainnet", "testnet", "signet", "regtest"),
                   help="bitcoin (required): the network whose addresses are shown")
    p.add_argument("--chain-id", type=int, default=0, help="ethereum: the chain id the transaction must carry")
    p.add_argument("--path", default="m/44h/60h/0h/0/0", help="ethereum: the key's derivation path")
    p.add_argument("--token", action="append", default=[], metavar="CONTRACT=ASSET",
                   help="ethereum: an ERC-20 contract whose transfers may be signed")
    p.add_argument("--in", dest="in_path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite --out (and <out>.tx.hex) if they exist")
    p.add_argument("--yes", action="store_true", help="don't ask (for scripts)")
    p.add_argument("--trust-stated-amounts", action="store_true",
                   help="bitcoin: sign inputs that lack the transaction creating their coin (non_witness_utxo); "
                        "the amounts and fee shown are then only what the file says")
    p.set_defaults(run=_offline_sign, usage_error=p.error)


def run(args) -> int:
    """Called by custody.cli for `custody signer ...`; maps the signer's errors to exit codes."""
    try:
        return args.run(args)
    except Refused as exc:
        print(f"custody signer: refused by rule {exc.rule}: {exc.reason}", file=sys.stderr)
        return 3
    except ConfigError as exc:
        print(f"custody signer: configuration error: {exc}", file=sys.stderr)
        return 2
    except SignerError as exc:
        print(f"custody signer: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a missing file, a directory given for a file: one line, not a traceback
        print(f"custody signer: {exc.filename}: {exc.strerror}" if exc.filename else f"custody signer: {exc}",
              file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"custody signer: {exc}", file=sys.stderr)
        return 1


def _account(text: str) -> int:
    account = int(text)
    if not 0 <= account < HARDENED:  # -1 or 2**31 would name another (or a non-hardened) key
        raise argparse.ArgumentTypeError(f"{account} is not from 0 to {HARDENED - 1}")
    return account


def _load_config(path: str):
    from hsm import config as config_mod

    try:
        return config_mod.load(path)
    except OSError as exc:  # a directory given as --config
        raise ConfigError(f"{path}: {exc.strerror}") from None


# -- keystore access -----------------------------------------------------------------------------
def _keystore_args(p) -> None:
    p.add_argument("--keystore", required=True, help="the encrypted keystore file")
    p.add_argument("--key-file", help="unlock with this key file instead of a passphrase")
    p.add_argument("--passphrase-env", default=PASSPHRASE_ENV)


def _secret(args, new: bool = False):
    """new: for a keystore about to be created, a typed passphrase is asked twice."""
    from hsm.keystores.software import KeyFile, Passphrase

    if args.key_file:
        return KeyFile(pathlib.Path(args.key_file))
    if args.passphrase_env in os.environ:
        return Passphrase(os.environ[args.passphrase_env])
    if sys.stdin.isatty():
        text = getpass.getpass("new keystore passphrase: " if new else "keystore passphrase: ")
        if new and getpass.getpass("the same passphrase again: ") != text:
            raise KeystoreError("the two passphrases differ; nothing was created")
        return Passphrase(text)
    raise KeystoreError(f"no passphrase: set {args.passphrase_env} or give --key-file")


def _open(args):
    from hsm.keystores.software import SoftwareKeystore

    return SoftwareKeystore.open(pathlib.Path(args.keystore), _secret(args))


@contextlib.contextmanager
def _keystore_to_change(args):
    """The keystore opened, or created if there is none, and locked until the block has saved its change."""
    from hsm.keystores.software import DEFAULT_SCRYPT_N, KeyFile, SoftwareKeystore, held_for_change

    path = pathlib.Path(args.keystore)
    new = not path.exists()
    secret = _secret(args, new=new)  # asked before the lock and before anything is written
    with held_for_change(path):
        if new:
            if path.exists():  # made since by another command, perhaps under another passphrase
                raise KeystoreError(f"{path} was created by another command meanwhile; nothing was written; "
                                    "run this one again to add the wallet to it")
            if args.key_file and not pathlib.Path(args.key_file).exists():
                KeyFile.generate(pathlib.Path(args.key_file))
                print(f"wrote a new key file {args.key_file}: keep it apart from the keystore", file=sys.stderr)
            store = SoftwareKeystore.create(path, secret, scrypt_n=args.scrypt_n or DEFAULT_SCRYPT_N)
        else:
            store = SoftwareKeystore.open(path, secret)
        yield store


# -- commands ------------------------------------------------------------------------------------
def _serve(args) -> int:
    from hsm.api.server import serve
    from hsm.keystores import open_keystore
    from hsm.service import Signer

    config = _load_config(args.config)
    keystore = open_keystore(config)  # fails here, at start, on a wrong secret or a missing token
    signer = Signer(config, keystore, new_limits_db=args.new_limits_db, new_audit_log=args.new_audit_log)
    try:
        serve(config, signer)
    except (OSError, ConfigError):  # it could not listen
        signer.close()  # its lock on the audit log, its limits_db
        raise
    return 0


def _wallet_create(args) -> int:
    # Words printed to a redirected stdout end up in a log or a CI transcript, for good.
    if not args.mnemonic_out and not sys.stdout.isatty():
        raise KeystoreError("standard output is not a terminal: the words would be written where others "
                            "can read them; give --mnemonic-out FILE; nothing was created")
    # The words are on disk before the seed is saved: a missing folder, an existing file or a failed
    # write stops here, before a wallet exists that no one has the words of.
    from hsm.keystores.software import new_mnemonic

    words_out = pathlib.Path(args.mnemonic_out) if args.mnemonic_out else None
    words_fd = _create_private_file(words_out) if words_out else None
    try:
        with _keystore_to_change(args) as store:
            if words_out:
                mnemonic = new_mnemonic(args.words)
                fd, words_fd = words_fd, None
                _finish_private_file(fd, words_out, (mnemonic + "\n").encode())
                store.import_wallet(args.wallet, mnemonic)
            else:
                mnemonic = store.generate_wallet(args.wallet, words=args.words)
    except BaseException:  # a wrong passphrase, an existing wallet, a failed write or save, ^C at a prompt
        if words_out:
            if words_fd is not None:
                os.close(words_fd)
            words_out.unlink(missing_ok=True)  # the words of a wallet that was not saved
        raise
    print(f"wallet {args.wallet} created, fingerprint {store.fingerprint(args.wallet)}")
    if words_out:
        print(f"its words are in {args.mnemonic_out}: write them down, keep them offline, then delete the file")
    else:
        print("write these words down, in order, and keep them offline; they are shown only now:")
        print(mnemonic)
    return 0


def _write_new_private_file(path: pathlib.Path, data: bytes) -> None:
    """Creates path (never overwriting), readable by this user only, and makes it durable."""
    _finish_private_file(_create_private_file(path), path, data)


def _create_private_file(path: pathlib.Path) -> int:
    """Creates path, empty, readable by this user only; an existing file (or symlink) is never overwritten."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeystoreError(f"{path} exists already; it is never overwritten; nothing was created") from None


def _finish_private_file(fd: int, path: pathlib.Path, data: bytes) -> None:
    """Writes data to fd, a file _create_private_file made, and makes it and its name durable."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the new name too, not only the bytes
    finally:
        os.close(folder)


def _wallet_import(args) -> int:
    from embit import bip39

    if args.mnemonic_env:
        if args.mnemonic_env not in os.environ:
            raise KeystoreError(f"no mnemonic: environment variable {args.mnemonic_env} is not set")
        mnemonic = os.environ[args.mnemonic_env]
    elif sys.stdin.isatty():
        mnemonic = getpass.getpass("mnemonic (not shown): ")
    else:
        mnemonic = sys.stdin.readline()
    if not bip39.mnemonic_is_valid(" ".join(mnemonic.split())):  # before a keystore or key file is created
        raise KeystoreError("not a valid BIP39 mnemonic (unknown word or bad checksum); nothing was written")
    with _keystore_to_change(args) as store:
        store.import_wallet(args.wallet, mnemonic)
    print(f"wallet {args.wallet} imported, fingerprint {store.fingerprint(args.wallet)}")
    return 0


def _xpub(args) -> int:
    store = _open(args)
    if args.chain == "bitcoin":
        coin = 0 if args.network == "mainnet" else 1
        path = f"m/84h/{coin}h/{args.account}h"
        net = "mainnet" if args.network == "mainnet" else "testnet"
        version = bytes.fromhex(XPUB_VERSIONS[(net, args.format)])
    else:
        path, version = f"m/44h/60h/{args.account}h", None
    print(store.extended_public_key(args.wallet, path, version))
    print(f"path {path}  fingerprint {store.fingerprint(args.wallet)}", file=sys.stderr)
    return 0


def _fingerprint(args) -> int:
    print(_open(args).fingerprint(args.wallet))
    return 0


def _backup(args) -> int:
    _open(args)  # a backup that doesn't open with today's secret is no backup
    out = pathlib.Path(args.out)
    data = pathlib.Path(args.keystore).read_bytes()
    _write_new_private_file(out, data)
    digest = hashlib.sha256(data).hexdigest()
    print(f"backup written to {out} (still encrypted), sha256 {digest}")
    return 0


def _token_keygen(args) -> int:
    from hsm.keystores.pkcs11 import Pkcs11Keystore

    if args.pin_env not in os.environ:
        raise KeystoreError(f"the token PIN is not set: environment variable {args.pin_env}")
    store = Pkcs11Keystore.open(pathlib.Path(args.library), args.token_label, os.environ[args.pin_env])
    try:
        pub = store.generate_key(args.label)
    finally:
        store.close()
    from hsm.decode.ethereum import address_of

    print(f"key {args.label} generated in token {args.token_label}: public key {pub.hex()} "
          f"(ethereum address {address_of(pub)})")
    return 0


def _staff_keygen(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SignerError(f"{args.out} exists already; a key file is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print(f"ed25519_public_key = \"{public.hex()}\"  # add to [[policy.staff]] in signer.toml")
    return 0


def _approve(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from chains.bitcoin.params import network
    from hsm.approvals import payload_hash, sign_approval
    from hsm.decode.summary import summarize
    from hsm.offline import read_payload

    if args.chain == "bitcoin" and args.network is None:
        args.usage_error("--network is required with --chain bitcoin")  # the addresses shown depend on it

    try:
        key = serialization.load_pem_private_key(pathlib.Path(args.staff_key).read_bytes(), password=None)
    except (ValueError, TypeError):  # not PEM, or a passphrase-protected one
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignerError(f"{args.staff_key}: not an unencrypted PEM Ed25519 private key "
                          "(as `custody signer staff-keygen` writes)")
    payload = read_payload(args.chain, pathlib.Path(args.payload))
    # On stderr: standard output is the approval, often redirected to a file.
    print(summarize(args.chain, payload, network(args.network) if args.network else None), file=sys.stderr)
    if not args.yes:
        print("approve this transaction? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            print("not approved", file=sys.stderr)
            return 1
    approval = sign_approval(key, args.name, args.chain, payload)
    print(json.dumps({"approver": approval.approver, "chain": args.chain,
                      "payload_sha256": payload_hash(args.chain, payload).hex(),
                      "signature": approval.signature.hex()}))
    return 0


def _audit_verify(args) -> int:
    from hsm import audit

    if args.log:
        log = pathlib.Path(args.log)
    elif args.config:
        log = _load_config(args.config).audit_log
    else:
        raise ConfigError("give --config or --log")
    if not log.exists():  # an empty report would read as OK
        raise SignerError(f"no log at {log}")
    report = audit.verify(log, args.expect_count, args.expect_head)
    print(report.render())
    return 0 if report.ok else 1


def _offline_sign(args) -> int:
    from hsm import offline

    if args.chain == "bitcoin" and args.network is None:
        # No default: the destinations are shown in the network's address encoding, and a mainnet PSBT shown
        # with regtest addresses can't be checked against the addresses the operator expects.
        args.usage_error("--network is required with --chain bitcoin")  # exits 2 before the keystore is opened
    tokens = []
    for t in args.token:
        contract, _, asset = t.partition("=")
        tokens.append((contract.lower(), asset))
    out = pathlib.Path(args.out)
    for path in (out, out.with_name(out.name + ".tx.hex")) if args.chain == "bitcoin" else (out,):
        if path.exists() and not args.force:
            raise SignerError(f"{path} exists already; give --force to overwrite it")
    job = offline.OfflineJob(args.chain, args.wallet, args.network, args.chain_id, args.path, tuple(tokens))
    payload = offline.read_payload(args.chain, pathlib.Path(args.in_path))
    store = _open(args)
    explained, decoder = offline.explain(job, payload, store, args.trust_stated_amounts)
    print(offline.describe(explained))
    if args.trust_stated_amounts and args.chain == "bitcoin":
        print("  WARNING: input amounts not proven (--trust-stated-amounts): check them against the chain")
    if not args.yes:
        try:
            answer = input("sign this transaction? [y/N] ").strip().lower()
        except EOFError:
            answer = ""
        if answer not in ("y", "yes"):
            print("not signed")
            return 1
    signed = offline.sign(decoder, explained)
    offline.write_signed(args.chain, signed, pathlib.Path(args.out))
    print(f"signed: {args.out} (txid {signed.txid})")
    return 0
