"""Link's application envelope: exact bytes, negotiation, and request/response over a session."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from keywire.link import client, envelope
from keywire.link.envelope import Envelope, Messenger, RequestFailed
from keywire.link.host import LinkHost
from keywire.link.session import LinkPipe
from keywire.link.wire import LinkProtocolError

from .conftest import RelayProcess


def test_exact_bytes() -> None:
    assert envelope.encode({"t": "evt", "data": 1}) == b'{"t":"evt","data":1}'
    assert envelope.encode({"t": "evt"}, b"\x00\xff") == (
        b"\x01\x00\x00\x00\x0b" + b'{"t":"evt"}' + b"\x00\xff"
    )
    assert envelope.decode(b"\x01\x00\x00\x00\x02{}") == ({}, b"")


@pytest.mark.parametrize(
    "bad", [b"", b"[1]", b"\x01\x00\x00", b"\x01\x00\x00\x00\x09{}", b"\x02{}", b"{nope"]
)
def test_malformed(bad: bytes) -> None:
    with pytest.raises(LinkProtocolError):
        envelope.decode(bad)


def test_negotiation_gates_payloads_and_hides_cap() -> None:
    a, b = Envelope(), Envelope()
    with pytest.raises(LinkProtocolError, match="cap"):
        a.event("x", b"payload")
    assert b.receive(a.hello()) is None and b.peer_framed
    frame = b.event({"k": 1}, b"\x00" * 10)
    incoming = a.receive(frame)
    assert incoming is not None and incoming.payload == b"\x00" * 10
    assert a.receive(b'{"t":"future-kind"}') is None


@given(st.binary(max_size=64))
def test_fuzz_decode(data: bytes) -> None:
    try:
        envelope.decode(data)
    except LinkProtocolError:
        pass


@pytest.mark.timeout(30)
async def test_request_response_over_a_session(relay: RelayProcess, tmp_path: Path) -> None:
    async def answer(cmd: str, data: Any, payload: bytes | None) -> Any:
        if cmd == "fail":
            raise ValueError("as asked")
        return {"echo": data, "cmd": cmd}

    async def on_pipe(pipe: LinkPipe) -> None:
        await Messenger(pipe, answer).start()
        await pipe.closed.wait()

    host = LinkHost(X25519PrivateKey.generate(), on_pipe, tmp_path / "host")
    try:
        await host.add_relay(relay.url)
        entry = host.open_pairing_code()
        address = f"{relay.url}~link:{host.address}"
        await client.pair(address, entry.code)
        pipe = await client.connect(address)
        messenger = await Messenger(pipe).start()
        assert await messenger.request("hello", [1, 2]) == {"echo": [1, 2], "cmd": "hello"}
        with pytest.raises(RequestFailed, match="as asked"):
            await messenger.request("fail")
        await asyncio.sleep(0)
        assert messenger.core.peer_framed
        messenger.close()
        await pipe.close()
    finally:
        await host.close()
