"""Helpers the checks share: the failure type, bounded runs, stream set-up in both directions."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Protocol

from ..errors import StreamError
from ..stream import Connection, Stream
from .capabilities import Capabilities, MakePair

#: the first bytes of every stream a check opens (so transports that announce a stream with its
#: first data frame announce it, and the acceptor can tell the stream is the one it expects)
HELLO = b"kw"

Body = Callable[[Connection, Connection, str], Awaitable[None]]


class Check(Protocol):
    """One conformance check: ``await check(make_pair, capabilities)``."""

    __name__: str

    def __call__(
        self, make_pair: MakePair, capabilities: Capabilities | None = None
    ) -> Awaitable[None]: ...


#: what the running check is doing, so a timeout can say where it hung
_step: ContextVar[list[str]] = ContextVar("keywire_testing_step")


def step(text: str) -> None:
    """Record what the check does next (named in the error if it hangs there)."""
    holder = _step.get(None)
    if holder is not None:
        holder[:] = [text]


class ContractError(AssertionError):
    """A transport broke the Connection/Stream contract; the message says where and how."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def pattern(size: int, seed: int) -> bytes:
    """Deterministic incompressible bytes, different per ``seed``."""
    return random.Random(seed).randbytes(size)


def bounded(check: Callable[[MakePair, Capabilities], Awaitable[None]]) -> Check:
    """Run ``check`` within ``capabilities.timeout``; a hang becomes a ContractError naming it."""

    @functools.wraps(check)
    async def run(make_pair: MakePair, capabilities: Capabilities | None = None) -> None:
        caps = capabilities if capabilities is not None else Capabilities()
        holder = ["setting up"]
        token = _step.set(holder)
        try:
            async with asyncio.timeout(caps.timeout):
                await check(make_pair, caps)
        except TimeoutError:
            raise ContractError(
                f"{check.__name__} did not finish within {caps.timeout:g} s: hung at {holder[0]}"
            ) from None
        finally:
            _step.reset(token)

    return run


async def stream_pair(opener: Connection, acceptor: Connection, way: str) -> tuple[Stream, Stream]:
    """A stream opened on ``opener`` and accepted on ``acceptor``, with ``HELLO`` read."""
    step(f"{way}: open_stream")
    ours = await opener.open_stream()
    await ours.write(HELLO)
    step(f"{way}: accept_stream")
    theirs = await acceptor.accept_stream()
    got = await theirs.readexactly(len(HELLO))
    step(f"{way}: stream open")
    expect(got == HELLO, f"{way}: the accepted stream began with {got!r}, not {HELLO!r}")
    return ours, theirs


async def both_ways(
    make_pair: MakePair, capabilities: Capabilities, body: Body, *, fresh: bool = False
) -> None:
    """Run ``body(opener, acceptor, way)`` with the client opening, then the server.

    A single-stream connection (or ``fresh``) uses a new pair for each direction; a
    multiplexed one runs both on one pair, as separate streams.
    """
    if capabilities.multiplexed and not fresh:
        async with make_pair() as (client, server):
            await body(client, server, "client→server")
            await body(server, client, "server→client")
        return
    async with make_pair() as (client, server):
        await body(client, server, "client→server")
    async with make_pair() as (client, server):
        await body(server, client, "server→client")


async def read_until_end(stream: Stream) -> tuple[bytes, BaseException | None]:
    """Everything readable, and what ended it (None for EOF, else the exception)."""
    parts: list[bytes] = []
    try:
        while chunk := await stream.read():
            parts.append(chunk)
    except (StreamError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return b"".join(parts), exc
    except Exception as exc:  # any other type is itself a contract break; report it
        return b"".join(parts), exc
    return b"".join(parts), None


def describe_end(end: BaseException | None) -> str:
    return "EOF" if end is None else f"{type(end).__name__}({end})"


async def write_until_error(stream: Stream, limit: int, chunk: int = 16384) -> StreamError | None:
    """Write until a write raises ``StreamError`` (returned) or ``limit`` bytes went out."""
    block = bytes(chunk)
    sent = 0
    while sent < limit:
        try:
            await stream.write(block)
        except StreamError as exc:
            return exc
        sent += chunk
        await asyncio.sleep(0)
    return None


async def finish(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel and reap helper tasks (a failed check must not leave tasks behind)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
