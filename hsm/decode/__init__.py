"""Decoders: read an unsigned payload and say exactly what it does.

Each chain's module offers explain(...) -> Explained (destinations, amounts,
fee; refusing what it can't explain) and sign(...) -> Signed.
"""
from __future__ import annotations

import dataclasses
import typing


class Transfer(typing.NamedTuple):  # immutable, and cheaper to build than a frozen dataclass (hot path)
    destination: str  # normalised address
    asset: str
    contract: str  # "" for the native coin
    amount: int  # base units
    internal: bool  # the signer's own wallet (change) or a configured internal wallet
    path: str = ""  # for our own change: the key id and path it derives at (in the audit log)


@dataclasses.dataclass
class Explained:
    chain: str
    transfers: list[Transfer]
    fee: int  # base units of the chain's native asset (Ethereum: the most the tx can pay)
    fee_asset: str
    # Chain-specific state for signing (the parsed PSBT, the RLP fields, the keys).
    detail: object = None
    # Bitcoin: (outpoint "txid:vout", amount, script) of each input, as the payload claims them.
    inputs: tuple = ()
    # What the transaction uses up, so that no other transaction using any of it can also confirm:
    # Bitcoin its inputs' outpoints, Ethereum its sender's nonce ("0x<sender>/<nonce>").
    spends: tuple[str, ...] = ()


class Signed(typing.NamedTuple):
    signed_payload: bytes
    raw_transaction: bytes
    txid: str
