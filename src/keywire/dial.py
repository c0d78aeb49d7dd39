"""Dialing a multiaddress: alternatives in order, those understood, the next one on failure."""

from __future__ import annotations

import asyncio
from typing import Any

from .address import Alternative, MultiAddress, parse, redacted
from .compose import Side, compose
from .errors import AddressError, Attempt, DialError, IdentityError, KeywireError
from .options import Options, make_options
from .registry import registry
from .stream import Connection
from .timeouts import with_timeout


def describe(exc: BaseException) -> str:
    """One line saying why an attempt failed."""
    if isinstance(exc, KeywireError | TimeoutError) and str(exc):
        return str(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        got, want = len(exc.partial), exc.expected
        return f"connection closed during the handshake ({got} of {want} bytes)"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if not isinstance(exc, OSError) else text


async def dial_alternative(alt: Alternative, options: Options) -> Connection:
    """Dial one alternative that the registry understands."""
    handler = registry.handler_for(alt)
    if handler is not None:
        return await handler.dial(alt, options)
    for section in alt.transforms:
        registry.transform(section.name).check(section)
    pipe = await registry.transport(alt.transport.name).connect(alt.transport, options)
    try:
        return await compose(alt, pipe, options, Side.CLIENT)
    except BaseException:
        pipe.abort()
        raise


async def dial(
    address: str | MultiAddress, options: Options | None = None, **overrides: Any
) -> Connection:
    """Connect to the first alternative of ``address`` that works.

    Alternatives this build does not understand are skipped (as multiserver does); unlike
    multiserver, a failed alternative moves on to the next. The ``DialError`` raised when all
    fail lists every attempt and why. ``options.timeout`` bounds each attempt; wrap the call in
    ``asyncio.timeout`` to bound the whole dial.
    """
    opts = make_options(options, overrides)
    registry.check_settings(opts)
    addr = parse(address)
    attempts: list[Attempt] = []
    for alt in addr.alternatives:
        why = registry.understands(alt)
        if why is not None:
            attempts.append(Attempt(redacted(alt), why))
            continue
        try:
            return await with_timeout(
                dial_alternative(alt, opts), opts.timeout, f"dialing {redacted(alt)}"
            )
        except Exception as exc:  # every failure becomes one line of the DialError
            attempts.append(Attempt(redacted(alt), describe(exc), exc))
    raise DialError(redacted(addr), attempts)


def _all_local(exc: DialError) -> bool:
    """Every attempt failed on something here that another round cannot change (a malformed
    alternative or key)."""
    return all(
        a.error is None or isinstance(a.error, AddressError | IdentityError) for a in exc.attempts
    )


async def dial_retrying(
    address: str | MultiAddress,
    options: Options | None = None,
    *,
    retries: int = 0,
    backoff: float = 0.4,
    max_backoff: float = 8.0,
    on_retry: Any = None,
    **overrides: Any,
) -> Connection:
    """``dial`` with up to ``retries`` more rounds and doubling backoff; a permanent refusal
    (wrong key, revoked credential) is raised at once."""
    delay = backoff
    for round_ in range(retries + 1):
        try:
            return await dial(address, options, **overrides)
        except DialError as exc:
            if exc.permanent or _all_local(exc) or round_ == retries:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
    raise AssertionError("unreachable")


async def open_stream(
    address: str | MultiAddress, options: Options | None = None, **overrides: Any
) -> tuple[Connection, Any]:
    """Dial and open one stream: ``conn, stream = await open_stream(addr)``."""
    conn = await dial(address, options, **overrides)
    try:
        return conn, await conn.open_stream()
    except BaseException:
        await conn.close()
        raise
