"""Acceptance by real nodes: transactions signed by `custody signer serve` (its own
process, over its Unix socket) are accepted and mined by bcoin regtest and anvil,
with keys in the software keystore and in a SoftHSM2 token."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from chains.nodes import ANVIL, Nodes, json_rpc
from hsm.keystores.pkcs11 import Pkcs11Keystore
from tests.support import signer as S
from tests.support import softhsm
from tests.support.bitcoin import node_folder
from tests.support.ports import free_port

ANVIL_ACCOUNT_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"  # unlocked in anvil's default accounts
TOKEN_KEY = "hot-token"



@pytest.fixture(scope="module")
def anvil():
    nodes = Nodes(node_folder("signer-anvil"), {"ethereum": free_port()})
    nodes.up(("ethereum",), fresh=True)
    yield nodes.rpc_url("ethereum")
    nodes.down(("ethereum",))


@pytest.fixture(params=["software", "softhsm"])
def served(request, tmp_path):
    """(signer process, key for bitcoin, key for ethereum) with keys in either keystore."""
    raw = S.raw_config(tmp_path)
    env = {}
    if request.param == "software":
        S.make_keystore(tmp_path)
        keys = ((S.HOT, S.HOT_BTC_PATH), (S.HOT, S.HOT_ETH_PATH))
    else:
        label = softhsm.new_token()
        store = Pkcs11Keystore.open(softhsm.LIBRARY, label, softhsm.PIN)
        store.generate_key(TOKEN_KEY)
        store.close()
        raw["keystore"] = {"kind": "pkcs11", "library": str(softhsm.LIBRARY), "token_label": label,
                           "pin_env": "TEST_SIGNER_PIN"}
        env = {"TEST_SIGNER_PIN": softhsm.PIN, "SOFTHSM2_CONF": os.environ["SOFTHSM2_CONF"]}
        keys = ((TOKEN_KEY, ""), (TOKEN_KEY, ""))
    process = S.SignerProcess(tmp_path, raw, env)
    yield process, keys
    process.stop()


def test_signed_psbt_is_accepted_and_mined_by_bcoin(served, chain):
    process, (btc_key, _) = served
    client = process.client
    pub = client.public_key(*btc_key).public_key
    ours = S.p2wpkh_script(pub)
    funding_txid, _ = chain.pay((ours, S.BTC))
    chain.mine(1)
    destination = S.foreign_script(f"payee {time.time()}")
    payload = S.make_psbt([(funding_txid, 0, S.BTC, ours)], [(destination, S.BTC // 10), (ours, S.BTC - S.BTC // 10 - 5_000)])
    result = client.sign("bitcoin", payload, [btc_key], reference="withdrawal-1")
    assert result.signed, result.refused_reason
    assert result.destinations[1][3] is True and result.fee == 5_000
    txid = chain.miner.send(result.raw_transaction)  # raises unless the mempool took it (bcoin says yes anyway)
    assert txid == result.txid
    chain.mine(1)
    assert txid not in chain.rpc.call("getrawmempool")
    coin = chain.rpc.call("gettxout", txid, 0)
    assert coin and int(round(float(coin["value"]) * S.BTC)) == S.BTC // 10 and coin["confirmations"] == 1


def test_tampered_signature_is_refused_by_bcoin(served, chain):
    """The acceptance check above can fail: a transaction with a broken signature never enters the mempool."""
    process, (btc_key, _) = served
    ours = S.p2wpkh_script(process.client.public_key(*btc_key).public_key)
    funding_txid, _ = chain.pay((ours, S.BTC))
    chain.mine(1)
    payload = S.make_psbt([(funding_txid, 0, S.BTC, ours)], [(S.foreign_script("x"), S.BTC // 10),
                                                              (ours, S.BTC - S.BTC // 10 - 5_000)])
    result = process.client.sign("bitcoin", payload, [btc_key])
    assert result.signed, result.refused_reason
    # The payee output's amount is the first 8 bytes after the outpoint and counts: change one bit.
    raw = bytearray(result.raw_transaction)
    index = raw.find((S.BTC // 10).to_bytes(8, "little"))
    assert index > 0
    raw[index] ^= 1
    with pytest.raises(Exception, match="refused"):
        chain.miner.send(bytes(raw))


def eth_call(url, method, *params):
    return json_rpc(url, method, list(params))


def receipt(url, txhash, timeout_s=15.0):
    """anvil mines each transaction, a moment after answering."""
    deadline = time.monotonic() + timeout_s
    while (found := eth_call(url, "eth_getTransactionReceipt", txhash)) is None:
        assert time.monotonic() < deadline, f"{txhash} was not mined"
        time.sleep(0.05)
    return found


def test_signed_eip1559_transaction_is_accepted_and_mined_by_anvil(served, anvil):
    from hsm.decode.ethereum import address_of

    process, (_, eth_key) = served
    client = process.client
    ours = address_of(client.public_key(*eth_key).public_key)
    funding = eth_call(anvil, "eth_sendTransaction", {"from": ANVIL_ACCOUNT_0, "to": ours, "value": hex(3 * S.ETH)})
    assert int(receipt(anvil, funding)["status"], 16) == 1
    payee = "0x" + os.urandom(20).hex()
    nonce = int(eth_call(anvil, "eth_getTransactionCount", ours, "pending"), 16)
    payload = S.eth_payload(payee, S.ETH, nonce=nonce, max_fee=20 * 10**9, tip=10**9)
    result = client.sign("ethereum", payload, [eth_key])
    assert result.signed, result.refused_reason
    txhash = eth_call(anvil, "eth_sendRawTransaction", "0x" + result.raw_transaction.hex())
    assert txhash == result.txid
    mined = receipt(anvil, txhash)
    assert int(mined["status"], 16) == 1 and mined["from"].lower() == ours
    assert int(eth_call(anvil, "eth_getBalance", payee, "latest"), 16) == S.ETH


def test_one_staff_approval_of_an_ethereum_payload_pays_once_whatever_key_signs_it(tmp_path, anvil):
    """An Ethereum payload does not name its sender: the key the core names at signing does. Staff
    approved one 3 ETH payment (above approval_above); a compromised core had it signed by two of
    our keys, each with nonce 0 and funds, and anvil mined both: 6 ETH paid on one approval (found
    by the signer review). The approval now stands for the first payment made with it."""
    from hsm.approvals import sign_approval
    from hsm.decode.ethereum import address_of

    S.make_keystore(tmp_path).close()
    process = S.SignerProcess(tmp_path, S.raw_config(tmp_path))
    try:
        client = process.client
        first_index = 1000 + int.from_bytes(os.urandom(2), "big")  # keys no other test on this anvil has used
        paths = [f"m/44h/60h/0h/0/{first_index}", f"m/44h/60h/0h/0/{first_index + 1}"]
        for path in paths:
            eth_call(anvil, "anvil_setBalance", address_of(client.public_key(S.HOT, path).public_key), hex(10 * S.ETH))
        payee = "0x" + os.urandom(20).hex()
        payload = S.eth_payload(payee, 3 * S.ETH, nonce=0, max_fee=20 * 10**9, tip=10**9)
        approvals = [sign_approval(S.STAFF[name], name, "ethereum", payload) for name in ("alice", "bob")]
        assert client.sign("ethereum", payload, [(S.HOT, paths[0])]).refused_rule == "approvals"
        first = client.sign("ethereum", payload, [(S.HOT, paths[0])], approvals)
        assert first.signed, first.refused_reason
        other = client.sign("ethereum", payload, [(S.HOT, paths[1])], approvals)
        assert (other.signed, other.refused_rule) == (False, "approvals"), other
        assert "paid before" in other.refused_reason
        mined = receipt(anvil, eth_call(anvil, "eth_sendRawTransaction", "0x" + first.raw_transaction.hex()))
        assert int(mined["status"], 16) == 1
        assert int(eth_call(anvil, "eth_getBalance", payee, "latest"), 16) == 3 * S.ETH
    finally:
        process.stop()


def test_transaction_for_anvil_is_rejected_by_a_node_with_another_chain_id(tmp_path):
    """FAILURE_MODES 10: what the signer signs for chain 31337 can't be replayed on chain 1337."""
    S.make_keystore(tmp_path)
    from hsm.service import Signer
    from hsm.keystores.software import Passphrase, SoftwareKeystore

    store = SoftwareKeystore.open(tmp_path / "keystore.json", Passphrase(S.PASSPHRASE))
    signer = Signer(S.make_config(tmp_path), store)
    result = signer.sign("ethereum", S.eth_payload("0x" + "22" * 20, 1, max_fee=20 * 10**9),
                         [(S.HOT, S.HOT_ETH_PATH)], [])
    assert result.signed
    port = free_port()
    other = subprocess.Popen([str(ANVIL), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "1337"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 20
        while True:
            try:
                assert int(eth_call(url, "eth_chainId"), 16) == 1337
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        address = S.hot_eth_address(store)
        eth_call(url, "anvil_setBalance", address, hex(10 * S.ETH))
        with pytest.raises(ValueError, match="(?i)chain"):
            eth_call(url, "eth_sendRawTransaction", "0x" + result.raw_transaction.hex())
    finally:
        other.terminate()
        other.wait(timeout=10)
        signer.audit.close()
        signer.limits.close()


def test_offline_signed_eip1559_file_is_accepted_and_mined_by_anvil(anvil, tmp_path):
    """Cold wallet: `custody signer offline-sign` reads an unsigned EIP-1559 file, shows it, signs after
    the operator's yes, and anvil mines the signed file; the wrong chain id is refused and writes nothing."""
    import sys

    from hsm.decode.ethereum import address_of

    store = S.make_keystore(tmp_path, name="cold")
    path = "m/44h/60h/0h/0/0"
    cold = address_of(store.public_key("cold", path))
    funding = eth_call(anvil, "eth_sendTransaction", {"from": ANVIL_ACCOUNT_0, "to": cold, "value": hex(2 * S.ETH)})
    assert int(receipt(anvil, funding)["status"], 16) == 1
    payee = "0x" + os.urandom(20).hex()
    nonce = int(eth_call(anvil, "eth_getTransactionCount", cold, "pending"), 16)
    unsigned = tmp_path / "refill.tx"
    unsigned.write_text("0x" + S.eth_payload(payee, S.ETH // 4, nonce=nonce, max_fee=20 * 10**9, tip=10**9).hex() + "\n")

    def offline_sign(chain_id, out):
        return subprocess.run(
            [sys.executable, "-m", "custody.cli", "signer", "offline-sign", "--keystore", str(tmp_path / "keystore.json"),
             "--wallet", "cold", "--chain", "ethereum", "--chain-id", str(chain_id), "--path", path,
             "--in", str(unsigned), "--out", str(out)],
            input="y\n", capture_output=True, text=True, timeout=60,
            env={**os.environ, "CUSTODY_SIGNER_PASSPHRASE": S.PASSPHRASE})

    refused = offline_sign(1, tmp_path / "mainnet.signed.tx")
    assert refused.returncode == 3 and "chain_id" in refused.stderr and not (tmp_path / "mainnet.signed.tx").exists()

    signed_file = tmp_path / "refill.signed.tx"
    done = offline_sign(S.ANVIL_CHAIN_ID, signed_file)
    assert done.returncode == 0, done.stderr
    assert f"pay {S.ETH // 4} ETH (base units) to {payee}" in done.stdout
    assert f"fee: {21_000 * 20 * 10**9} ETH" in done.stdout
    txhash = eth_call(anvil, "eth_sendRawTransaction", signed_file.read_text().strip())
    mined = receipt(anvil, txhash)
    assert int(mined["status"], 16) == 1 and mined["from"].lower() == cold
    assert int(eth_call(anvil, "eth_getBalance", payee, "latest"), 16) == S.ETH // 4
