"""BIP84 derivation against the published vectors, and address validation with precise reasons."""
import pytest
from embit import base58, bech32

from chains.base import InvalidAddress, InvalidKey
from chains.bitcoin.addresses import derive, parse_account_key, parse_address, script_to_address
from chains.bitcoin.params import network

MAIN, REGTEST, TESTNET = network("mainnet"), network("regtest"), network("testnet")
# BIP84 test vectors: mnemonic "abandon abandon ... about", account m/84'/0'/0'.
BIP84_ZPUB = ("zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToU"
              "G868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs")


def as_version(key: str, version_hex: str) -> str:
    return base58.encode_check(bytes.fromhex(version_hex) + base58.decode_check(key)[4:])


@pytest.mark.parametrize("index, change, expected", [
    (0, False, "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"),
    (1, False, "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"),
    (0, True, "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"),
])
def test_bip84_published_vectors(index, change, expected):
    derived = derive(parse_account_key(BIP84_ZPUB, MAIN), index, change, MAIN)
    assert derived.address == expected
    assert derived.path == f"{int(change)}/{index}"
    assert parse_address(expected, MAIN)[1] == derived.watch_key


def test_xpub_and_zpub_give_the_same_addresses_and_testnet_keys_work_on_regtest():
    xpub = as_version(BIP84_ZPUB, "0488b21e")
    assert derive(parse_account_key(xpub, MAIN), 0, False, MAIN).address == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    vpub, tpub = as_version(BIP84_ZPUB, "045f1cf6"), as_version(BIP84_ZPUB, "043587cf")
    regtest = {derive(parse_account_key(k, REGTEST), 0, False, REGTEST).address for k in (vpub, tpub)}
    # The same key on regtest: same program, regtest prefix.
    assert regtest == {"bcrt1qcr8te4kr609gcawutmrza0j4xv80jy8zeqchgx"}


def test_extended_keys_of_the_wrong_network_or_kind_are_refused():
    with pytest.raises(InvalidKey, match="is not one of tpub/vpub for regtest"):
        parse_account_key(BIP84_ZPUB, REGTEST)
    xprv = ("xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33"
            "yuGBxrMPHi")
    with pytest.raises(InvalidKey):
        parse_account_key(xprv, MAIN)
    with pytest.raises(InvalidKey, match="base58check"):
        parse_account_key(BIP84_ZPUB[:-1] + "t", MAIN)


def segwit(hrp, version, program, encoding):
    data = [version] + bech32.convertbits(list(program), 8, 5)
    return bech32.bech32_encode(encoding, hrp, data)


VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", MAIN, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
     "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3", MAIN,
     "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", MAIN,
     "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", MAIN, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
     "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", MAIN, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
     "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
    ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", REGTEST, "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
     "76a914243f1394f44554f4ce3fd68649c19adc483ce92488ac"),
    ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", REGTEST, "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
     "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
]


@pytest.mark.parametrize("text, net, normalised, script_hex", VALID)
def test_valid_addresses_are_normalised_and_give_their_script(text, net, normalised, script_hex):
    assert parse_address(text, net) == (normalised, bytes.fromhex(script_hex))
    assert script_to_address(bytes.fromhex(script_hex), net) == normalised


INVALID = [
    # bad checksum: last character changed
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", MAIN, "bad checksum"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3", MAIN, "bad checksum"),
    # wrong network
    ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", MAIN, r"for testnet/signet \(prefix tb1\), not mainnet"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", REGTEST, r"for mainnet \(prefix bc1\), not regtest"),
    ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", MAIN, "for testnet/signet/regtest, not mainnet"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", TESTNET, "for mainnet, not testnet"),
    # wrong length (valid checksums)
    (segwit("bc", 0, bytes(21), bech32.Encoding.BECH32), MAIN, "witness v0 program is 20 or 32 bytes, got 21"),
    (segwit("bc", 1, bytes(41), bech32.Encoding.BECH32M), MAIN, "too long|at most 90|2 to 40 bytes"),
    (base58.encode_check(b"\x00" + bytes(21)), MAIN, "base58 address holds 25 bytes, got 26"),
    # refused before decoding, whose time grows with the square of the length (200,000: seconds)
    ("9" * 200_000, MAIN, "base58 address has at most 35 characters, got 200000"),
    # mixed case
    ("bc1qW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", MAIN, "mixed upper and lower case"),
    # wrong encoding for the witness version
    (segwit("bc", 0, bytes(20), bech32.Encoding.BECH32M), MAIN, "v0 address must use bech32, not bech32m"),
    (segwit("bc", 1, bytes(32), bech32.Encoding.BECH32), MAIN, "v1 address must use bech32m, not bech32"),
    (segwit("bc", 2, bytes(16), bech32.Encoding.BECH32M), MAIN, "unsupported witness version 2"),
    # characters and format
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3tb", MAIN, "invalid bech32 character 'b' at position 41"),
    ("0x52908400098527886E0F7030069857D2E4169EE7", MAIN, "not a Bitcoin address"),
    ("ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kgmn4n9", MAIN, "unknown bech32 prefix 'ltc'"),
    ("", MAIN, "empty"),
    # FAILURE_MODES 35: Bitcoin Cash addresses and payment URIs pasted as addresses
    ("bitcoincash:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a", MAIN, "Bitcoin Cash address"),
    ("BITCOINCASH:QPM2QSZNHKS23Z7629MMS6S4CWEF74VCWVY22GDX6A", MAIN, "Bitcoin Cash address"),
    ("qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a", MAIN, "Bitcoin Cash address"),
    ("bchreg:qpm2qsznhks23z7629mms6s4cwef74vcwvy22gdx6a", REGTEST, "Bitcoin Cash address"),
    ("bitcoin:bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", MAIN, "payment URI"),
    (" bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", MAIN, "whitespace"),
]


@pytest.mark.parametrize("text, net, reason", INVALID)
def test_invalid_addresses_are_refused_with_the_reason(text, net, reason):
    with pytest.raises(InvalidAddress, match=reason):
        parse_address(text, net)
