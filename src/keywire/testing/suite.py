"""``check_connection``: every check, each on fresh connections, each bounded in time."""

from __future__ import annotations

from . import lifecycle, naming, streams
from ._util import Check, ContractError
from .capabilities import Capabilities, MakePair

#: every check by name, in the order ``check_connection`` runs them
CHECKS: dict[str, Check] = {
    "echo": streams.check_echo,
    "eof_iff_fin": streams.check_eof_iff_fin,
    "reset_codes": streams.check_reset_codes,
    "stop_sending_codes": streams.check_stop_sending_codes,
    "backpressure": streams.check_backpressure,
    "many_streams": streams.check_many_streams,
    "concurrent_accept": lifecycle.check_concurrent_accept,
    "close_with_code": lifecycle.check_close_with_code,
    "abort": lifecycle.check_abort,
    "graceful_close": lifecycle.check_graceful_close,
    "wait_closed": lifecycle.check_wait_closed,
    "datagrams": lifecycle.check_datagrams,
    "addresses": naming.check_addresses,
}


async def check_connection(
    make_pair: MakePair,
    capabilities: Capabilities | None = None,
    *,
    only: tuple[str, ...] | None = None,
) -> None:
    """Run every check (or those named in ``only``) against ``make_pair``.

    All checks run even after one fails; the failures are raised together as an
    ``ExceptionGroup`` of ``ContractError`` (a check that raised something else is reported
    as it raised it).
    """
    caps = capabilities if capabilities is not None else Capabilities()
    names = tuple(CHECKS) if only is None else only
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown} (known: {', '.join(CHECKS)})")
    failures: list[Exception] = []
    for name in names:
        try:
            await CHECKS[name](make_pair, caps)
        except Exception as exc:
            exc.add_note(f"keywire.testing check: {name}")
            failures.append(exc)
    if failures:
        raise ExceptionGroup(f"{len(failures)} of {len(names)} conformance checks failed", failures)


__all__ = ["CHECKS", "ContractError", "check_connection"]
