"""Offline (cold) signing: read an unsigned transaction file, show a human what
it does, sign with a cold keystore, write the signed file. No network.

The human is the policy here: the signer's limits are for the hot keys. What
is still enforced: the payload decodes completely, change is shown as ours only
if it re-derives from the cold wallet, Ethereum transactions must carry the
chain id the operator named, and each Bitcoin input carries the whole
transaction that created its coin (non_witness_utxo), whose txid must be the
input's and whose output must be the amount and script the input claims.

Why the whole transaction: a segwit v0 signature commits to its own input's
amount only, so two files for one transaction, each understating another input,
would each show a small fee while the two signatures combine into a valid
transaction paying the difference to miners (CVE-2020-14199). The hot signer
remembers the amounts it signed (hsm/replacements.py); an offline signer keeps
no state between files, so it proves each amount instead, as hardware wallets
do since that CVE. --trust-stated-amounts signs without that proof.
"""
from __future__ import annotations

import dataclasses
import pathlib

from chains.bitcoin.params import network
from hsm.decode import Explained, Signed
from hsm.decode.bitcoin import BitcoinDecoder, input_keypaths, parse_psbt, path_text, psbt_bytes
from hsm.decode.ethereum import EthereumDecoder
from hsm.errors import Refused
from hsm.keystores.base import Keystore


@dataclasses.dataclass(frozen=True)
class OfflineJob:
    chain: str
    wallet: str
    network: str = "regtest"  # bitcoin
    chain_id: int = 0  # ethereum
    eth_path: str = "m/44h/60h/0h/0/0"
    tokens: tuple[tuple[str, str], ...] = ()  # (contract, asset) an Ethereum transaction may transfer


def read_payload(chain: str, path: pathlib.Path) -> bytes:
    data = pathlib.Path(path).read_bytes()
    if chain == "bitcoin":
        return psbt_bytes(data)
    text = data.strip()
    try:
        return bytes.fromhex(text.decode().removeprefix("0x"))
    except (UnicodeDecodeError, ValueError):
        return data


def decoder_for(job: OfflineJob, keystore: Keystore):
    if job.chain == "bitcoin":
        return BitcoinDecoder(network(job.network), keystore)
    if job.chain == "ethereum":
        if job.chain_id <= 0:
            raise Refused("chain_id", "give the chain id the transaction must be for (--chain-id)")
        return EthereumDecoder(job.chain_id, keystore, dict(job.tokens))
    raise Refused("chain", f"unknown chain {job.chain!r}")


def keys_for(job: OfflineJob, payload: bytes, keystore: Keystore) -> list[tuple[str, str]]:
    """Bitcoin: the input derivation hints that name the cold wallet; Ethereum: the given path."""
    if job.chain != "bitcoin":
        return [(job.wallet, job.eth_path)]
    import wallycore as wally

    fingerprint = {k.key_id: k.fingerprint for k in keystore.list_keys()}.get(job.wallet)
    psbt, _ = parse_psbt(payload)
    keys = []
    for i in range(wally.psbt_get_num_inputs(psbt)):
        for owner, derivation in input_keypaths(psbt, i):
            if owner == fingerprint:
                keys.append((job.wallet, path_text(derivation)))
    return keys


def explain(job: OfflineJob, payload: bytes, keystore: Keystore,
            trust_stated_amounts: bool = False) -> tuple[Explained, object]:
    decoder = decoder_for(job, keystore)
    explained = decoder.explain(payload, keys_for(job, payload, keystore))
    if job.chain == "bitcoin" and not trust_stated_amounts:
        check_input_amounts(explained)
    return explained, decoder


def check_input_amounts(explained: Explained) -> None:
    """Refuses (rule "previous_tx") unless each input carries the transaction that created its coin,
    with the input's txid, paying the amount and script the input claims."""
    import _wallycore as c

    from hsm.decode._wally import output_script, txid

    psbt = explained.detail[0]
    for i, (outpoint, amount, script) in enumerate(explained.inputs):
        previous = c.psbt_get_input_utxo_alloc(psbt, i)
        if previous is None:
            raise Refused("previous_tx", f"input {i} ({outpoint}) lacks the transaction that created its coin "
                                         "(non_witness_utxo), so its amount and the fee can't be proven; "
                                         "export the PSBT with it (Bitcoin Core does), or sign with "
                                         "--trust-stated-amounts after checking the amounts yourself")
        prev_txid, vout = outpoint.split(":")
        if txid(previous) != prev_txid:
            raise Refused("previous_tx", f"input {i}: the transaction given for {outpoint} is {txid(previous)}")
        vout = int(vout)
        if vout >= c.tx_get_num_outputs(previous):
            raise Refused("previous_tx", f"input {i}: {prev_txid} has no output {vout}")
        real = c.tx_get_output_satoshi(previous, vout), output_script(previous, vout)
        if real != (amount, script):
            raise Refused("previous_tx", f"input {i} claims {amount} sats to {script.hex()}, but {outpoint} is "
                                         f"{real[0]} sats to {real[1].hex()}")


def describe(explained: Explained) -> str:
    lines = [f"{explained.chain} transaction:"]
    for t in explained.transfers:
        tag = "  (ours: change / internal)" if t.internal else ""
        lines.append(f"  pay {t.amount} {t.asset} (base units) to {t.destination}{tag}")
    external = sum(t.amount for t in explained.transfers if not t.internal)
    lines.append(f"  leaving our wallets: {external} (base units)")
    lines.append(f"  fee: {explained.fee} {explained.fee_asset} (base units"
                 + (", the most it can cost)" if explained.chain == "ethereum" else ")"))
    return "\n".join(lines)


def sign(decoder, explained: Explained) -> Signed:
    return decoder.sign(explained)


def write_signed(chain: str, signed: Signed, out: pathlib.Path) -> None:
    import base64

    out = pathlib.Path(out)
    if chain == "bitcoin":
        out.write_text(base64.b64encode(signed.signed_payload).decode() + "\n")
        out.with_name(out.name + ".tx.hex").write_text(signed.raw_transaction.hex() + "\n")
    else:
        out.write_text("0x" + signed.raw_transaction.hex() + "\n")
