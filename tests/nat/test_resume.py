"""Resumable streams: the sans-IO rules and layouts (``keywire.nat.resume``), fuzzed parsers, and
on loopback a stream that continues over the relay after its direct connection is aborted."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keywire.errors import Code, StreamError
from keywire.nat.linkconn import PathConnection
from keywire.nat.resume import (
    ACK_BYTES,
    ACK_DELAY,
    DONE,
    FIN,
    HEADER_SIZE,
    RECORD_SIZE,
    REQUEST_SIZE,
    ResumeError,
    ResumeState,
    Status,
    decode_answer,
    decode_header,
    decode_record,
    decode_request,
    encode_answer,
    encode_header,
    encode_record,
    encode_request,
)
from keywire.nat.resumeio import ResumableStream
from keywire.stream import Connection, Stream

from ..contract.test_link_direct import direct_link
from ..link.conftest import RelayProcess

SID = bytes(range(16))


def test_layouts_round_trip() -> None:
    assert encode_header(SID) == b"KWS1" + SID and len(encode_header(SID)) == HEADER_SIZE
    assert decode_header(encode_header(SID)) == SID
    assert decode_header(encode_header(None)) is None
    assert len(encode_record(SID, 5, FIN)) == RECORD_SIZE == 25
    record = decode_record(encode_record(SID, 1 << 40, FIN | DONE))
    assert (record.stream_id, record.recv_offset, record.flags) == (SID, 1 << 40, FIN | DONE)
    request = decode_request(encode_request(SID, 77, True))
    assert len(encode_request(SID, 77, True)) == REQUEST_SIZE == 29
    assert (request.stream_id, request.recv_offset, request.flags) == (SID, 77, FIN)
    answer = decode_answer(encode_answer(Status.RESET, code=Code.TOO_LARGE))
    assert (answer.status, answer.code) == (Status.RESET, Code.TOO_LARGE)


def test_bad_layouts_are_protocol_errors() -> None:
    cases: list[tuple[Callable[[bytes], object], bytes]] = [
        (decode_header, b"KWX1" + SID),
        (decode_header, b"KWC1" + b"\x01" * 16),
        (decode_header, b"KWS1"),
        (decode_record, encode_record(SID, 1, 4)),
        (decode_record, encode_record(SID, 1, DONE)),  # DONE without FIN
        (decode_request, b"KWR2" + encode_request(SID, 0, False)[4:]),
        (decode_request, encode_request(SID, 0, False)[:-1] + b"\x02"),
        (decode_answer, encode_answer(9)),
        (decode_answer, encode_answer(Status.OK)[:-1]),
    ]
    for decode, data in cases:
        with pytest.raises(ResumeError) as caught:
            decode(data)
        assert caught.value.code == Code.PROTOCOL_ERROR


@given(st.binary(max_size=64))
def test_parsers_take_any_bytes(data: bytes) -> None:
    """Any input: a value or ResumeError, nothing else."""
    for decode in (decode_header, decode_record, decode_request, decode_answer):
        try:
            decode(data)
        except ResumeError:
            pass


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=30),
    st.data(),
)
def test_retained_bytes_resend_exactly_what_the_peer_lacks(
    pieces: list[bytes], data: st.DataObject
) -> None:
    state = ResumeState(SID, opener=True, limit=1 << 20)
    whole = b""
    for piece in pieces:
        state.wrote(piece)
        whole += piece
        if data.draw(st.booleans()):
            state.on_ack(data.draw(st.integers(state.acked, state.sent)), 0)
    fin = data.draw(st.booleans())
    if fin:
        state.wrote_fin()
    peer = data.draw(st.integers(state.acked, state.sent))
    again, send_fin = state.resend(peer, False)
    assert again == whole[peer:] and send_fin == fin
    with pytest.raises(ResumeError):
        state.resend(state.sent + 1, False)


def test_offsets_out_of_range_are_refused() -> None:
    state = ResumeState(SID, opener=True)
    state.wrote(b"abcdef")
    state.on_ack(4, 0)
    assert state.retained == 2
    with pytest.raises(ResumeError):
        state.on_ack(7, 0)  # more than was sent
    with pytest.raises(ResumeError):
        state.resend(3, False)  # bytes already dropped
    with pytest.raises(ResumeError):
        state.on_ack(6, FIN)  # FIN not written
    with pytest.raises(ResumeError):
        state.resend(6, True)
    state.wrote_fin()
    with pytest.raises(ResumeError):
        state.wrote(b"x")


def test_acknowledgements_every_256k_or_50ms() -> None:
    state = ResumeState(SID, opener=False, limit=1 << 20)
    assert state.ack_due(0.0) is None
    state.received(1000, 10.0)
    assert state.ack_due(10.0) == pytest.approx(ACK_DELAY)
    assert state.ack_due(10.0 + ACK_DELAY) == 0.0
    state.received(ACK_BYTES, 10.01)
    assert state.ack_due(10.01) == 0.0
    assert decode_record(state.take_record()).recv_offset == ACK_BYTES + 1000
    assert state.ack_due(11.0) is None
    state.received_fin(12.0)
    assert decode_record(state.take_record()).flags == FIN
    state.wrote_fin()
    state.on_ack(0, FIN)
    assert state.done and state.ack_due(12.0) == 0.0
    assert decode_record(state.take_record()).flags == FIN | DONE  # the acceptor's last word
    assert state.ack_due(13.0) is None


def test_retained_bytes_are_views_of_immutable_data_only() -> None:
    """``bytes`` (and views of them) are kept as they are, anything a caller may change later
    is copied; a partial acknowledgement drops a view's head without touching the rest."""
    state = ResumeState(SID, opener=True)
    mutable = bytearray(b"abcdef")
    state.wrote(mutable)
    state.wrote(memoryview(b"ghijkl")[1:4])  # "hij"
    state.wrote(memoryview(bytearray(b"mno")))
    mutable[:] = b"XXXXXX"
    state.on_ack(4, 0)
    assert state.resend(5, False) == (b"fhijmno", False)


def test_retained_is_bounded() -> None:
    state = ResumeState(SID, opener=True, limit=100)
    assert state.room(1000)  # nothing retained: one piece may exceed the bound
    state.wrote(b"x" * 60)
    assert state.room(40) and not state.room(41)
    state.on_ack(60, 0)
    assert state.room(100)


# -- on loopback: abort the direct connection under a transfer ---------------------------------


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayProcess]:
    made = RelayProcess()
    yield made
    made.kill()


async def _pump(stream: Stream, payload: bytes) -> str:
    """Write ``payload`` and FIN while reading everything; the sha256 of what was read."""

    async def send() -> None:
        for start in range(0, len(payload), 64 << 10):
            await stream.write(payload[start : start + (64 << 10)])
        await stream.close_write()

    sender = asyncio.ensure_future(send())
    digest = hashlib.sha256()
    while chunk := await stream.read():
        digest.update(chunk)
    await sender
    return digest.hexdigest()


async def _cut_under_transfer(
    relay: RelayProcess, cut: Callable[[PathConnection, PathConnection], Awaitable[None]]
) -> None:
    up, down = os.urandom(8 << 20), os.urandom(8 << 20)
    async with asyncio.timeout(60), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        assert isinstance(client, PathConnection) and isinstance(host, PathConnection)
        stream = await client.open_stream()
        assert isinstance(stream, ResumableStream)
        peer = await host.accept_stream()
        assert isinstance(peer, ResumableStream)
        ours = asyncio.ensure_future(_pump(stream, up))
        theirs = asyncio.ensure_future(_pump(peer, down))
        while stream.state.recv_offset < (2 << 20):
            await asyncio.sleep(0.01)
        await cut(client, host)
        assert await ours == hashlib.sha256(down).hexdigest()
        assert await theirs == hashlib.sha256(up).hexdigest()
        assert stream.relayed and peer.relayed
        assert not client.closed
        fresh = await client.open_stream()  # the connection carries on
        await fresh.write(b"after")
        await fresh.close_write()
        other = await host.accept_stream()
        assert await other.read_all() == b"after"


async def test_a_stream_continues_over_the_relay_when_the_client_aborts_the_direct_path(
    relay: RelayProcess,
) -> None:
    async def cut(client: PathConnection, host: PathConnection) -> None:
        assert client.direct is not None
        client.direct.abort(Code.NETWORK_ERROR, "cut")

    await _cut_under_transfer(relay, cut)


async def test_a_stream_continues_when_the_host_aborts_the_direct_path(
    relay: RelayProcess,
) -> None:
    async def cut(client: PathConnection, host: PathConnection) -> None:
        assert host.direct is not None
        host.direct.abort(Code.NETWORK_ERROR, "cut")

    await _cut_under_transfer(relay, cut)


async def greeted(
    client: Connection, host: Connection, greeting: bytes
) -> tuple[Stream, Stream, Connection]:
    """A stream from ``client`` to ``host`` that carried ``greeting`` over the direct path, and
    that direct connection (a test cuts it next)."""
    stream = await client.open_stream()
    await stream.write(greeting)
    peer = await host.accept_stream()
    assert await peer.readexactly(len(greeting)) == greeting
    assert isinstance(client, PathConnection) and client.direct is not None
    return stream, peer, client.direct


async def test_a_reset_after_resume_delivers_its_code(relay: RelayProcess) -> None:
    async with asyncio.timeout(30), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        stream, peer, direct = await greeted(client, host, b"hello")
        direct.abort(Code.NETWORK_ERROR, "cut")
        await stream.write(b" again")
        assert await peer.readexactly(6) == b" again"
        assert isinstance(stream, ResumableStream) and stream.relayed
        stream.reset(Code.TOO_LARGE)
        with pytest.raises(StreamError) as caught:
            await peer.read()
        assert caught.value.code == Code.TOO_LARGE


async def test_a_peer_without_resume_gets_plain_direct_streams(relay: RelayProcess) -> None:
    off: dict[str, object] = {"link.direct_resume": False}
    async with asyncio.timeout(30), direct_link(relay, off) as make_pair, make_pair() as pair:
        client, host = pair
        assert isinstance(client, PathConnection) and not client.resume
        assert isinstance(host, PathConnection) and not host.resume
        stream = await client.open_stream()
        assert not isinstance(stream, ResumableStream)
        await stream.write(b"plain")
        await stream.close_write()
        peer = await host.accept_stream()
        assert not isinstance(peer, ResumableStream)
        assert await peer.read_all() == b"plain"


async def test_a_reset_racing_the_cut_still_delivers_its_code(relay: RelayProcess) -> None:
    """The acceptor resets, and the path dies at that moment: whichever reaches the opener
    first (the reset itself, or the resume answer naming it), the opener sees that code."""
    async with asyncio.timeout(30), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        stream, peer, direct = await greeted(client, host, b"hello")
        peer.reset(Code.PERMISSION_DENIED)
        direct.abort(Code.NETWORK_ERROR, "cut")
        with pytest.raises(StreamError) as caught:
            await stream.read()
        assert caught.value.code == Code.PERMISSION_DENIED


async def test_unacknowledged_bytes_are_bounded(relay: RelayProcess) -> None:
    """A peer that does not read: the writer waits once ``retained`` is full, and everything
    still arrives once it reads (acknowledgements free the room)."""
    payload = os.urandom(12 << 20)
    async with asyncio.timeout(40), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        stream = await client.open_stream()
        assert isinstance(stream, ResumableStream)
        writing = asyncio.ensure_future(stream.write(payload))
        peer = await host.accept_stream()
        await asyncio.sleep(1.0)
        assert not writing.done()
        assert 0 < stream.state.retained <= stream.state.limit
        reading = asyncio.ensure_future(peer.readexactly(len(payload)))
        await writing
        assert await reading == payload


async def test_without_resume_a_cut_fails_the_stream_as_before(relay: RelayProcess) -> None:
    off: dict[str, object] = {"link.direct_resume": False}
    async with asyncio.timeout(30), direct_link(relay, off) as make_pair, make_pair() as pair:
        client, host = pair
        stream, peer, direct = await greeted(client, host, b"plain")
        direct.abort(Code.NETWORK_ERROR, "cut")
        with pytest.raises(StreamError):
            await stream.read()
        with pytest.raises(StreamError):
            await peer.read()


async def test_with_the_relay_gone_too_the_stream_fails_clearly(relay: RelayProcess) -> None:
    async with asyncio.timeout(30), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        stream, peer, direct = await greeted(client, host, b"doomed")
        direct.abort(Code.NETWORK_ERROR, "cut")
        assert isinstance(client, PathConnection)
        client.relay.abort(Code.NETWORK_ERROR, "relay gone")
        with pytest.raises(StreamError) as caught:
            await stream.read()
        assert caught.value.code in (Code.NETWORK_ERROR, Code.CANCELLED), caught.value
        with pytest.raises(StreamError):
            await peer.read()  # the host's side ends too (its session ended)


async def test_many_streams_resume_while_new_relayed_streams_open(relay: RelayProcess) -> None:
    """Resumes are told from the application's relayed streams by their ordinal: ten streams
    resumed from both sides' opens while both sides open new streams on the relay."""
    async with asyncio.timeout(60), direct_link(relay) as make_pair, make_pair() as pair:
        client, host = pair
        assert isinstance(client, PathConnection) and isinstance(host, PathConnection)
        payloads = [os.urandom(512 << 10) for _ in range(10)]
        pairs: list[tuple[Stream, Stream]] = []
        for i in range(10):
            opener, acceptor = (client, host) if i % 2 == 0 else (host, client)
            stream = await opener.open_stream()
            await stream.write(b"x")
            peer = await acceptor.accept_stream()
            assert await peer.readexactly(1) == b"x"
            pairs.append((stream, peer))
        jobs = [asyncio.ensure_future(_pump(a, payloads[i])) for i, (a, _b) in enumerate(pairs)] + [
            asyncio.ensure_future(_pump(b, payloads[i][::-1])) for i, (_a, b) in enumerate(pairs)
        ]
        assert client.direct is not None
        client.direct.abort(Code.NETWORK_ERROR, "cut")
        extra: list[tuple[Stream, bytes]] = []
        for opener in (client, host, client, host):
            stream = await opener.open_stream()  # on the relay now
            body = os.urandom(1000)
            await stream.write(body)
            await stream.close_write()
            extra.append((stream, body))
        for acceptor in (host, client, host, client):
            stream = await acceptor.accept_stream()
            assert not isinstance(stream, ResumableStream)
            assert await stream.read_all() in [body for _s, body in extra]
        digests = await asyncio.gather(*jobs)
        for i in range(10):
            assert digests[i] == hashlib.sha256(b"x" + payloads[i][::-1]).hexdigest() or (
                digests[i] == hashlib.sha256(payloads[i][::-1]).hexdigest()
            )
            assert digests[10 + i] == hashlib.sha256(payloads[i]).hexdigest()
        assert all(isinstance(a, ResumableStream) and a.relayed for a, _b in pairs)


async def test_no_task_outlives_the_connection(relay: RelayProcess) -> None:
    """Closing a connection whose streams went direct leaves none of its tasks behind (the
    acknowledgement writer of each direct connection included)."""
    async with asyncio.timeout(30), direct_link(relay) as make_pair:
        async with make_pair() as pair:
            client, host = pair
            stream, peer, _direct = await greeted(client, host, b"hello")
            await stream.close_write()
            assert await peer.read_all() == b""
            assert isinstance(client, PathConnection) and isinstance(host, PathConnection)
            paths = (client, host)
        for path in paths:
            for _ in range(40):
                if not path._pumps:
                    break
                await asyncio.sleep(0.05)
            assert not path._pumps, [t.get_coro() for t in path._pumps]
