"""Checks of one stream's contract: echo, EOF iff FIN, codes, backpressure, many at once."""

from __future__ import annotations

import asyncio
import hashlib

from ..errors import Code, StreamError, UnsupportedError
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
    write_until_error,
)
from .capabilities import Capabilities, MakePair

#: codes the checks send: registry codes (so every transport carries them unchanged) that no
#: transport produces on its own during these checks
RESET_CODE = Code.UNSUPPORTED
STOP_CODE = Code.TOO_LARGE
#: a read after our own stop_sending must fail at once; this is how long "at once" may be
STOPPED_READ_WAIT = 2.0


@bounded
async def check_echo(make_pair: MakePair, capabilities: Capabilities) -> None:
    """Either side opens a stream the other accepts; bytes echo back exactly."""

    async def body(opener: Connection, acceptor: Connection, way: str) -> None:
        ours, theirs = await stream_pair(opener, acceptor, way)
        payload = pattern(65536, 1)

        async def echo() -> None:
            await theirs.write(await theirs.readexactly(len(payload)))

        echoer = asyncio.ensure_future(echo())
        try:
            step(f"{way}: echo of {len(payload)} bytes")
            await ours.write(payload)
            back = await ours.readexactly(len(payload))
            await echoer
        finally:
            await finish([echoer])
        expect(back == payload, f"{way}: the echo differs from what was sent")

    await both_ways(make_pair, capabilities, body)


@bounded
async def check_eof_iff_fin(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``read`` returns ``b""`` only after the peer's ``close_write``, and then every time;
    a write after ``close_write`` fails; where the carrier half-closes, the other way still
    works."""

    async def body(opener: Connection, acceptor: Connection, way: str) -> None:
        ours, theirs = await stream_pair(opener, acceptor, way)
        pending = asyncio.ensure_future(theirs.read())
        try:
            await asyncio.sleep(0.2)
            if pending.done():
                outcome = pending.exception() or pending.result()
                raise ContractError(
                    f"{way}: read ended with {outcome!r} with no data and no FIN sent"
                )
            await ours.write(b"tail")
            got = await pending
        finally:
            await finish([pending])
        got += await theirs.readexactly(4 - len(got)) if len(got) < 4 else b""
        expect(got == b"tail", f"{way}: read {got!r}, wanted b'tail'")
        step(f"{way}: read after close_write")
        await ours.close_write()
        first, second = await theirs.read(), await theirs.read()
        expect(
            first == b"" and second == b"",
            f"{way}: after FIN read gave {first!r} then {second!r}, wanted b'' twice",
        )
        try:
            await ours.write(b"late")
        except StreamError:
            pass
        else:
            raise ContractError(f"{way}: write after close_write did not raise StreamError")
        if capabilities.half_close:
            step(f"{way}: the peer replies after our FIN")
            await theirs.write(b"reply")
            await theirs.close_write()
            back, end = await read_until_end(ours)
            expect(
                back == b"reply" and end is None,
                f"{way}: after our FIN the peer's reply read {back!r} then "
                f"{describe_end(end)}, wanted b'reply' then EOF",
            )

    await both_ways(make_pair, capabilities, body)


@bounded
async def check_reset_codes(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``reset(code)`` fails the peer's reads with that code (network-error without codes),
    never with a clean EOF; our own later writes fail."""

    async def body(opener: Connection, acceptor: Connection, way: str) -> None:
        ours, theirs = await stream_pair(opener, acceptor, way)
        ours.reset(RESET_CODE)
        step(f"{way}: the peer reads after our reset")
        got, end = await read_until_end(theirs)
        if end is None and not capabilities.authenticated_eof:
            return  # declared: the carrier cannot tell an abort from a FIN
        expect(
            isinstance(end, StreamError),
            f"{way}: after reset the peer read {len(got)} bytes then {describe_end(end)}, "
            "wanted StreamError",
        )
        assert isinstance(end, StreamError)
        want = RESET_CODE if capabilities.stream_codes else Code.NETWORK_ERROR
        expect(
            end.code == want,
            f"{way}: the peer's read failed with {end.code.label}, wanted {want.label}",
        )
        if capabilities.stream_codes:
            expect(end.remote, f"{way}: the peer's error does not say the code came from us")
        try:
            await ours.write(b"after reset")
        except StreamError:
            pass
        else:
            raise ContractError(f"{way}: write after reset did not raise StreamError")

    await both_ways(make_pair, capabilities, body)


@bounded
async def check_stop_sending_codes(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``stop_sending(code)`` fails our reads with the code and (with codes) the peer's writes
    with the same code, even while the peer is blocked on flow control."""

    async def body(opener: Connection, acceptor: Connection, way: str) -> None:
        ours, theirs = await stream_pair(opener, acceptor, way)
        theirs.stop_sending(STOP_CODE)
        step(f"{way}: read after stop_sending")
        try:
            data = await asyncio.wait_for(theirs.read(), STOPPED_READ_WAIT)
        except TimeoutError:
            raise ContractError(
                f"{way}: read after stop_sending neither failed nor returned "
                f"within {STOPPED_READ_WAIT:g} s"
            ) from None
        except StreamError as exc:
            expect(
                exc.code == STOP_CODE,
                f"{way}: local read after stop_sending failed with {exc.code.label}, "
                f"wanted {STOP_CODE.label}",
            )
        else:
            raise ContractError(f"{way}: read after stop_sending returned {data!r}")
        if not capabilities.stream_codes:
            return
        step(f"{way}: the peer writes until stop-sending fails its writes")
        error = await write_until_error(ours, capabilities.max_buffered)
        expect(
            error is not None,
            f"{way}: the peer's writes never failed after stop_sending "
            f"({capabilities.max_buffered} bytes written)",
        )
        assert error is not None
        expect(
            error.code == STOP_CODE and error.remote,
            f"{way}: the peer's write failed with {error.code.label} "
            f"(remote={error.remote}), wanted {STOP_CODE.label} from the peer",
        )

    await both_ways(make_pair, capabilities, body)


@bounded
async def check_backpressure(make_pair: MakePair, capabilities: Capabilities) -> None:
    """A writer blocks while the peer does not read (before ``max_buffered`` bytes) and
    resumes when it reads; every byte arrives in order."""
    chunk = 65536
    async with make_pair() as (client, server):
        ours, theirs = await stream_pair(client, server, "client→server")
        sent = hashlib.sha256()
        progress = {"written": 0}
        release = asyncio.Event()

        async def writer() -> None:
            index = 0
            while not release.is_set() and progress["written"] <= capabilities.max_buffered:
                block = pattern(chunk, index)
                await ours.write(block)
                sent.update(block)
                progress["written"] += chunk
                index += 1
            for extra in range(4):  # after the reader starts, the writer must get through
                block = pattern(chunk, 1_000_000 + extra)
                await ours.write(block)
                sent.update(block)
                progress["written"] += chunk
            await ours.close_write()

        task = asyncio.ensure_future(writer())
        try:
            step("writing to a peer that does not read")
            last, still = -1, 0.0
            while still < 0.5:
                await asyncio.sleep(0.05)
                if progress["written"] > capabilities.max_buffered:
                    raise ContractError(
                        f"{progress['written']} bytes were written to a peer that reads "
                        f"nothing: no backpressure within {capabilities.max_buffered} bytes"
                    )
                if task.done():
                    task.result()
                    raise ContractError("the writer finished without the peer reading")
                still = still + 0.05 if progress["written"] == last else 0.0
                last = progress["written"]
            release.set()
            step(f"the peer reads; the writer, blocked at {last} bytes, must resume")
            got = hashlib.sha256()
            total = 0
            while data := await theirs.read():
                got.update(data)
                total += len(data)
            await task
        finally:
            await finish([task])
        expect(
            total == progress["written"] and got.digest() == sent.digest(),
            f"the reader got {total} bytes of {progress['written']} written, or other bytes",
        )


@bounded
async def check_many_streams(make_pair: MakePair, capabilities: Capabilities) -> None:
    """``streams`` streams at once, each echoed byte-exact; a single-stream connection
    refuses a second ``open_stream`` with ``UnsupportedError``."""
    async with make_pair() as (client, server):
        if not capabilities.multiplexed:
            await stream_pair(client, server, "client→server")
            try:
                await client.open_stream()
            except UnsupportedError:
                return
            raise ContractError(
                "a second open_stream on a single-stream connection did not raise UnsupportedError"
            )
        count = capabilities.streams
        size = max(1024, capabilities.bulk // count)
        helpers: list[asyncio.Future[None]] = []

        async def echo_all() -> None:
            for _ in range(count):
                stream = await server.accept_stream()
                helpers.append(asyncio.ensure_future(echo_one(stream)))

        async def echo_one(stream: Stream) -> None:
            data, end = await read_until_end(stream)
            expect(end is None, f"an echoed stream ended with {describe_end(end)}")
            await stream.write(data)
            await stream.close_write()

        async def one(index: int) -> None:
            payload = pattern(size, 100 + index)
            stream = await client.open_stream()
            await stream.write(payload)
            await stream.close_write()
            back, end = await read_until_end(stream)
            expect(
                back == payload and end is None,
                f"stream {index} of {count}: {len(back)} of {size} bytes came back "
                f"({'equal' if back == payload[: len(back)] else 'different'}), then "
                f"{describe_end(end)}",
            )

        acceptor = asyncio.ensure_future(echo_all())
        helpers.append(acceptor)
        step(f"{count} streams of {size} bytes echoed at once")
        try:
            await asyncio.gather(*(one(i) for i in range(count)))
            await acceptor
        finally:
            await finish(helpers)
