"""What a transport declares it can do, so the suite checks the declared behaviour.

A transport that cannot do something is not excused from a check: the check then asserts the
documented fallback (a second ``open_stream`` raises ``UnsupportedError``, a reset without codes
surfaces as network-error, a connection without datagrams raises ``UnsupportedError``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from ..stream import Connection

#: an async context manager factory giving ``(client, server)``; its exit closes both
MakePair = Callable[[], AbstractAsyncContextManager[tuple[Connection, Connection]]]


@dataclass(frozen=True)
class DatagramSupport:
    """A connection with unreliable datagrams."""

    #: the largest ``max_datagram_size`` may report (None: no declared bound)
    max_size: int | None = None
    #: how many unread datagrams the receiver keeps before dropping the oldest
    queue: int = 256


@dataclass(frozen=True)
class Capabilities:
    """The typed declaration a transport passes to ``check_connection``."""

    #: many streams per connection; False: one stream, a second ``open_stream`` is unsupported
    multiplexed: bool = True
    #: reset and stop-sending carry their code to the peer; False: a reset tears the
    #: connection down (the peer reads network-error) and stop-sending only acts locally
    stream_codes: bool = True
    #: the peer's ``wait_closed`` reports the code given to ``close``
    close_codes: bool = True
    #: after our FIN the peer can still send (False: the carrier cannot half-close)
    half_close: bool = True
    #: an abrupt end can never read as a clean EOF (False: raw TCP without a secure layer,
    #: where a crash looks like a FIN; the checks then accept ``b""`` where a reset or abort
    #: is expected)
    authenticated_eof: bool = True
    #: ``close()`` delivers everything written, then FIN; False: a truncated transfer at
    #: least never ends in a clean EOF
    close_delivers: bool = True
    #: datagram support, or None (sending and receiving raise ``UnsupportedError``)
    datagrams: DatagramSupport | None = None
    #: streams the many-streams check runs at once
    streams: int = 16
    #: bytes the bulk checks move (graceful close, many streams share it)
    bulk: int = 1 << 20
    #: a writer whose peer does not read must block before this many bytes are in flight
    max_buffered: int = 32 << 20
    #: seconds each check may take
    timeout: float = 30.0
