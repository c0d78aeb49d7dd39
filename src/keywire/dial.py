"""Dialing a multiaddress: alternatives in order, those understood, the next one on failure."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from .address import Alternative, MultiAddress, parse, redacted
from .chain import Options, registry, with_timeout
from .errors import Attempt, DialError, KeywireError
from .pipe import Pipe, SingleStreamConnection
from .stream import Connection


def make_options(options: Options | None, overrides: dict[str, Any]) -> Options:
    """Options with keyword overrides applied (``dial(addr, timeout=3)``)."""
    base = dataclasses.replace(options) if options is not None else Options()
    for key, value in overrides.items():
        if not hasattr(base, key):
            raise TypeError(f"unknown option {key!r}")
        setattr(base, key, value)
    return base


def describe(exc: BaseException) -> str:
    """One line saying why an attempt failed."""
    if isinstance(exc, KeywireError | TimeoutError) and str(exc):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        got, want = len(exc.partial), exc.expected
        return f"connection closed during the handshake ({got} of {want} bytes)"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if not isinstance(exc, OSError) else text


async def compose_client(alt: Alternative, pipe: Pipe, options: Options) -> Connection:
    """Run the transforms of ``alt`` over ``pipe`` as the dialer."""
    result: Pipe | Connection = pipe
    address = str(Alternative(alt.sections[:1]))
    for i, section in enumerate(alt.transforms):
        if not isinstance(result, Pipe):
            raise KeywireError(f"{section.name!r} cannot follow a multiplexing section")
        transform = registry.transforms[section.name]
        address = f"{address}~{section}"
        result = await transform.client(result, section, options, address)
        if isinstance(result, Connection) and i + 1 < len(alt.transforms):
            raise KeywireError(f"{alt.transforms[i + 1].name!r} cannot follow {section.name!r}")
    if isinstance(result, Pipe):
        return SingleStreamConnection(result, redacted(alt))
    return result


async def dial_alternative(alt: Alternative, options: Options) -> Connection:
    """Dial one alternative that the registry understands."""
    handler = registry.handler_for(alt)
    if handler is not None:
        return await handler.dial(alt, options)
    for section in alt.transforms:
        registry.transforms[section.name].check(section)
    transport = registry.transports[alt.transport.name]
    pipe = await transport.connect(alt.transport, options)
    try:
        return await compose_client(alt, pipe, options)
    except BaseException:
        pipe.abort()
        raise


async def dial(address: str | MultiAddress, options: Options | None = None,
               **overrides: Any) -> Connection:
    """Connect to the first alternative of ``address`` that works.

    Alternatives this build does not understand are skipped (as multiserver does); unlike
    multiserver, a failed alternative moves on to the next. The ``DialError`` raised when all
    fail lists every attempt and why. ``options.timeout`` bounds each attempt; wrap the call in
    ``asyncio.timeout`` to bound the whole dial.
    """
    opts = make_options(options, overrides)
    addr = parse(address)
    attempts: list[Attempt] = []
    for alt in addr.alternatives:
        why = registry.understands(alt)
        if why is not None:
            attempts.append(Attempt(redacted(alt), why))
            continue
        try:
            return await with_timeout(dial_alternative(alt, opts), opts.timeout,
                                      f"dialing {redacted(alt)}")
        except Exception as exc:  # every failure becomes one line of the DialError
            attempts.append(Attempt(redacted(alt), describe(exc), exc))
    raise DialError(redacted(addr), attempts)


async def dial_retrying(address: str | MultiAddress, options: Options | None = None, *,
                        retries: int = 0, backoff: float = 0.4, max_backoff: float = 8.0,
                        on_retry: Any = None, **overrides: Any) -> Connection:
    """``dial`` with up to ``retries`` more rounds and doubling backoff; a permanent refusal
    (wrong key, revoked credential) is raised at once."""
    delay = backoff
    for round_ in range(retries + 1):
        try:
            return await dial(address, options, **overrides)
        except DialError as exc:
            if exc.permanent or round_ == retries:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
    raise AssertionError("unreachable")


async def open_stream(address: str | MultiAddress, options: Options | None = None,
                      **overrides: Any) -> tuple[Connection, Any]:
    """Dial and open one stream: ``conn, stream = await open_stream(addr)``."""
    conn = await dial(address, options, **overrides)
    try:
        return conn, await conn.open_stream()
    except BaseException:
        await conn.close()
        raise
