"""The check that a connection names its path: ``Connection.address`` is a parsed address."""

from __future__ import annotations

from ..address import Alternative, parse_alternative
from ..errors import AddressError
from ..stream import Connection
from ._util import ContractError, bounded, expect, step
from .capabilities import Capabilities, MakePair


def _check_named(conn: Connection, side: str) -> None:
    step(f"reading the {side}'s address")
    try:
        address = conn.address
    except AddressError as exc:
        raise ContractError(f"the {side}'s address is not a valid address: {exc}") from exc
    if address is None:
        return
    expect(
        isinstance(address, Alternative),
        f"the {side}'s address is a {type(address).__name__}, wanted an Alternative",
    )
    expect(
        parse_alternative(str(address)) == address,
        f"the {side}'s address {address} does not survive its own text",
    )


@bounded
async def check_addresses(make_pair: MakePair, capabilities: Capabilities) -> None:
    """Both ends expose ``address`` as a parsed ``Alternative`` (or None when the pair was
    made without addresses) whose text parses back to it."""
    async with make_pair() as (client, server):
        _check_named(client, "dialer")
        _check_named(server, "acceptor")


__all__ = ["check_addresses"]
