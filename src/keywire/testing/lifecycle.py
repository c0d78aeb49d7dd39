"""Checks of a connection's life: concurrent accepts, close and abort, graceful close,
``wait_closed``, datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import Code, ConnectionClosed, DatagramTooLarge, StreamError, UnsupportedError
from ..stream import Connection, Stream
from ._util import (
    ContractError,
    both_ways,
    bounded,
    describe_end,
    expect,
    finish,
    pattern,
    read_until_end,
    step,
    stream_pair,
)
from .capabilities import Capabilities, DatagramSupport, MakePair

#: the code the close and abort checks end connections with
CLOSE_CODE = Code.PERMISSION_DENIED


def _outcomes(results: list[Any]) -> str:
    return ", ".join(type(r).__name__ for r in results)


async def _expect_closed(what: str, call: Any) -> None:
    """``call()`` must raise ``ConnectionClosed`` (not hang, not succeed)."""
    step(what)
    try:
        result = await call()
    except ConnectionClosed:
        return
    except Exception as exc:
        raise ContractError(
            f"{what} raised {type(exc).__name__}({exc}), wanted ConnectionClosed"
        ) from exc
    raise ContractError(f"{what} returned {result!r}, wanted ConnectionClosed")


async def _two_accepts(
    server: Connection,
    then: Callable[[Sequence[asyncio.Future[Stream]]], Awaitable[None]],
    what: str,
) -> list[Any]:
    """Start two ``accept_stream`` calls on ``server``, let them wait, run ``then`` (given the
    waiters), and return how each ended (a stream or an exception)."""
    waiters = [asyncio.ensure_future(server.accept_stream()) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        step(f"two accept_stream waiters, {what}")
        await then(waiters)
        return await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        await finish(waiters)


def _both_closed(results: list[Any], when: str) -> None:
    expect(
        all(isinstance(r, ConnectionClosed) for r in results),
        f"two accept_stream waiters ended as {_outcomes(results)} when {when}, "
        "wanted ConnectionClosed for both",
    )


@bounded
async def check_concurrent_accept(make_pair: MakePair, capabilities: Capabilities) -> None:
    """Two ``accept_stream`` waiters at once: both get a stream, or both raise
    ``ConnectionClosed`` when the connection closes; none is lost or left hanging."""
    if not capabilities.multiplexed:
        async with make_pair() as (client, server):

            async def open_then_close(_: Sequence[asyncio.Future[Stream]]) -> None:
                ours = await client.open_stream()
                await ours.write(b"A")
                await asyncio.sleep(0.1)
                await server.close()

            results = await _two_accepts(
                server, open_then_close, "on a single-stream connection, one stream, close()"
            )
            streams = [r for r in results if isinstance(r, Stream)]
            closed = [r for r in results if isinstance(r, ConnectionClosed)]
            expect(
                len(streams) == 1 and len(closed) == 1,
                f"two accept_stream waiters on a single-stream connection ended as "
                f"{_outcomes(results)}, wanted one stream and one ConnectionClosed",
            )
        return

    async with make_pair() as (client, server):

        async def open_two(waiters: Sequence[asyncio.Future[Stream]]) -> None:
            early = [w for w in waiters if w.done()]
            if early:
                outcome = early[0].exception() or early[0].result()
                raise ContractError(
                    "a second waiting accept_stream ended before the peer "
                    f"opened any stream: {type(outcome).__name__}({outcome})"
                )
            for mark in (b"A", b"B"):
                stream = await client.open_stream()
                await stream.write(mark)

        results = await _two_accepts(server, open_two, "two streams opened")
        expect(
            all(isinstance(r, Stream) for r in results),
            f"two waiting accept_stream calls ended as {_outcomes(results)}, wanted two streams",
        )
        marks = {await r.readexactly(1) for r in results if isinstance(r, Stream)}
        expect(marks == {b"A", b"B"}, f"the two waiters got streams carrying {marks}")

        async def peer_closes(_: Sequence[asyncio.Future[Stream]]) -> None:
            await client.close()

        _both_closed(await _two_accepts(server, peer_closes, "the peer closed"), "the peer closed")

    async with make_pair() as (client, server):

        async def we_close(_: Sequence[asyncio.Future[Stream]]) -> None:
            await server.close()

        results = await _two_accepts(server, we_close, "close()")
        _both_closed(results, "their own connection closed")


async def _check_ended_by(
    ender: Connection,
    peer: Connection,
    ours: Stream,
    theirs: Stream,
    capabilities: Capabilities,
    how: str,
) -> None:
    """After ``ender`` closed with ``CLOSE_CODE`` (by ``how``): both sides report it."""
    expect(ender.closed, f"after {how}, closed is False")
    await _expect_closed(f"open_stream after {how}", ender.open_stream)
    await _expect_closed(f"accept_stream after {how}", ender.accept_stream)
    step(f"write on a stream after {how}")
    try:
        await ours.write(b"x")
    except StreamError:
        pass
    else:
        raise ContractError(f"a write on a stream of a connection ended by {how} succeeded")
    step(f"our wait_closed after {how}")
    mine = await ender.wait_closed()
    expect(
        mine.code == CLOSE_CODE and not mine.remote,
        f"after {how}, our wait_closed gave {mine.code.label} (remote={mine.remote}), "
        f"wanted {CLOSE_CODE.label} from us",
    )
    step(f"the peer's stream read after {how}")
    got, end = await read_until_end(theirs)
    if not (end is None and not capabilities.authenticated_eof):
        expect(
            isinstance(end, StreamError),
            f"after the peer's {how}, a stream read {len(got)} bytes then "
            f"{describe_end(end)}, wanted StreamError",
        )
    if end is None:
        # declared: the carrier showed the end as a FIN, so the peer's connection ends when
        # its application ends its own half, as after any FIN
        step(f"the peer's close_write after {how}")
        with contextlib.suppress(StreamError):
            await theirs.close_write()
    step(f"the peer's wait_closed after {how}")
    reason = await peer.wait_closed()
    if capabilities.close_codes:
        expect(
            reason.code == CLOSE_CODE and reason.remote,
            f"after the peer's {how}, wait_closed gave {reason.code.label} "
            f"(remote={reason.remote}), wanted {CLOSE_CODE.label} from the peer",
        )
    expect(
        peer.closed and peer.close_error is not None,
        f"after the peer's {how}, closed/close_error do not say so",
    )
    await _expect_closed(f"open_stream after the peer's {how}", peer.open_stream)


@bounded
async def check_close_with_code(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``close(code)`` ends the connection at once: our calls raise ``ConnectionClosed``, the
    peer's streams fail and its ``wait_closed`` reports the code (where the chain carries it)."""
    async with make_pair() as (client, server):
        ours, theirs = await stream_pair(client, server, "client→server")
        step("close(code)")
        await client.close(CLOSE_CODE, "contract check")
        await _check_ended_by(client, server, ours, theirs, capabilities, "close(code)")


@bounded
async def check_abort(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``abort(code)``: the immediate form of close, with the same visible outcome."""
    async with make_pair() as (client, server):
        ours, theirs = await stream_pair(client, server, "client→server")
        abort = getattr(client, "abort", None)
        expect(callable(abort), f"{type(client).__name__} has no abort(code)")
        assert abort is not None
        step("abort(code)")
        result = abort(CLOSE_CODE)
        if inspect.isawaitable(result):
            await result
        await _check_ended_by(client, server, ours, theirs, capabilities, "abort(code)")


@bounded
async def check_wait_closed(make_pair: MakePair, capabilities: Capabilities) -> None:
    """A clean ``close()``: ``wait_closed`` returns the reason (code none) on both sides, and
    ``closed``/``close_error`` agree."""
    async with make_pair() as (client, server):
        _, theirs = await stream_pair(client, server, "client→server")
        step("close()")
        await client.close()
        step("our wait_closed after close()")
        mine = await client.wait_closed()
        expect(mine.code == Code.NONE, f"our wait_closed after close() gave {mine.code.label}")
        # the peer's application finishes its stream as any would; a single-stream
        # connection ends with its stream
        step("the peer reads its stream to the end")
        await read_until_end(theirs)
        try:
            await theirs.close_write()
        except StreamError:
            pass
        step("the peer's wait_closed after close()")
        reason = await server.wait_closed()
        if capabilities.close_codes:
            expect(
                reason.code == Code.NONE,
                f"the peer's wait_closed after a clean close gave {reason.code.label}",
            )
        expect(client.closed and server.closed, "closed is False after wait_closed returned")
        expect(
            client.close_error is not None and server.close_error is not None,
            "close_error is None after wait_closed returned",
        )
        await _expect_closed("open_stream after close()", client.open_stream)
        await _expect_closed("the peer's accept_stream after close", server.accept_stream)


@bounded
async def check_graceful_close(make_pair: MakePair, capabilities: Capabilities) -> None:
    """Write ``bulk`` bytes, ``close()`` at once: the peer reads every byte, then EOF."""

    async def body(writer: Connection, reader: Connection, way: str) -> None:
        ours, theirs = await stream_pair(writer, reader, way)
        payload = pattern(capabilities.bulk, 7)
        receiving = asyncio.ensure_future(read_until_end(theirs))
        try:
            step(f"{way}: write {len(payload)} bytes")
            await ours.write(payload)
            step(f"{way}: close()")
            await writer.close()
            step(f"{way}: the peer reads to the end")
            got, end = await receiving
        finally:
            await finish([receiving])
        expect(got == payload[: len(got)], f"{way}: the peer read other bytes than written")
        if capabilities.close_delivers:
            expect(
                len(got) == len(payload) and end is None,
                f"{way}: wrote {len(payload)} bytes and closed; the peer read {len(got)} "
                f"then {describe_end(end)}, wanted all then EOF",
            )
        else:
            expect(
                len(got) == len(payload) or end is not None,
                f"{way}: a transfer cut at {len(got)} of {len(payload)} bytes ended in a clean EOF",
            )

    await both_ways(make_pair, capabilities, body, fresh=True)


async def _receive_soon(conn: Connection, seconds: float) -> bytes | None:
    try:
        return await asyncio.wait_for(conn.receive_datagram(), seconds)
    except TimeoutError:
        return None


async def _datagram_way(
    sender: Connection, receiver: Connection, support: DatagramSupport, way: str
) -> None:
    size = sender.max_datagram_size
    expect(
        isinstance(size, int) and size > 0,
        f"{way}: max_datagram_size is {size!r} on a connection declared with datagrams",
    )
    assert size is not None
    if support.max_size is not None:
        expect(
            size <= support.max_size,
            f"{way}: max_datagram_size {size} exceeds the declared {support.max_size}",
        )
    payload = pattern(size, 11)
    step(f"{way}: a datagram of {size} bytes")
    received = None
    for _ in range(10):  # datagrams may be lost; loopback rarely loses ten in a row
        sender.send_datagram(payload)
        received = await _receive_soon(receiver, 0.5)
        if received is not None:
            break
    expect(
        received == payload,
        f"{way}: a datagram of max_datagram_size ({size}) did not arrive intact",
    )
    # the limit may have grown since (QUIC path-MTU discovery runs after the handshake): one byte
    # over the limit reported now must be refused, naming that limit
    size = sender.max_datagram_size
    assert size is not None
    try:
        sender.send_datagram(bytes(size + 1))
    except DatagramTooLarge as exc:
        expect(
            exc.limit == size, f"{way}: DatagramTooLarge names the limit {exc.limit}, not {size}"
        )
    else:
        raise ContractError(f"{way}: a datagram of {size + 1} bytes did not raise DatagramTooLarge")
    # drain strays (repeats of the sized datagram) before the queue check
    while await _receive_soon(receiver, 0.2) is not None:
        pass


@bounded
async def check_datagrams(make_pair: MakePair, capabilities: Capabilities) -> None:
    """Declared datagrams: size limit, too-large error, a bounded queue that drops the oldest;
    undeclared: every datagram call raises ``UnsupportedError``."""
    support = capabilities.datagrams
    async with make_pair() as (client, server):
        if support is None:
            expect(
                client.max_datagram_size is None and server.max_datagram_size is None,
                "max_datagram_size is not None on a connection declared without datagrams",
            )
            try:
                client.send_datagram(b"x")
            except UnsupportedError:
                pass
            else:
                raise ContractError("send_datagram did not raise UnsupportedError")
            try:
                await server.receive_datagram()
            except UnsupportedError:
                return
            raise ContractError("receive_datagram did not raise UnsupportedError")
        await _datagram_way(client, server, support, "client→server")
        await _datagram_way(server, client, support, "server→client")
        count = support.queue + 32
        step(f"{count} datagrams to a receiver that does not read")
        for index in range(count):
            client.send_datagram(index.to_bytes(4, "big"))
            if index % 32 == 31:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.5)
        indices: list[int] = []
        while (item := await _receive_soon(server, 0.3)) is not None:
            indices.append(int.from_bytes(item, "big"))
        expect(
            0 < len(indices) <= support.queue,
            f"{len(indices)} datagrams were queued unread; the declared bound is {support.queue}",
        )
        expect(
            max(indices) >= support.queue,
            "the full queue kept the oldest datagrams and dropped the newest",
        )
