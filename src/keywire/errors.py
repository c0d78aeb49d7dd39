"""Errors and the one code registry shared by every transport.

The codes are KPS's (SPEC §9.1): the same numbers travel in RESET, STOP_SENDING and
connection close on every transport, so an application can switch transports without
re-learning what a failure means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum


class Code(IntEnum):
    """Error codes carried by stream resets, stop-sending and connection close."""

    NONE = 0
    CANCELLED = 1
    CLOSED = 2
    RESET = 3
    TIMEOUT = 4
    NETWORK_ERROR = 5
    PROTOCOL_ERROR = 6
    UNSUPPORTED = 7
    TOO_LARGE = 8
    QUEUE_FULL = 9
    PERMISSION_DENIED = 10
    INTERNAL_ERROR = 11

    @classmethod
    def from_wire(cls, value: int) -> Code:
        """Map a uint32 off the wire to a code; unknown values become internal-error."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR

    @property
    def label(self) -> str:
        """The registry's spelling, e.g. ``protocol-error``."""
        return "none" if self is Code.NONE else self.name.lower().replace("_", "-")


class KeywireError(Exception):
    """Base of every error keywire raises on purpose."""

    #: True when trying again cannot help (a pin mismatch, a revoked credential)
    permanent: bool = False


class CodedError(KeywireError):
    """An error that carries a registry code and, where the peer sent it, says so."""

    def __init__(self, code: int, message: str = "", *, remote: bool = False) -> None:
        self.code = Code.from_wire(code)
        self.wire_code = code
        self.remote = remote
        who = "peer" if remote else "local"
        text = f"{self.code.label} ({code}, {who})"
        super().__init__(f"{text}: {message}" if message else text)


class StreamError(CodedError):
    """A stream ended other than by the peer's FIN: reset, stop-sending, or its connection died."""


class ConnectionClosed(CodedError):
    """The connection is closed; ``code`` says why (0 is a clean close)."""


class UnsupportedError(CodedError):
    """The transport cannot do what was asked (datagrams over TCP, a second stream without mux)."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNSUPPORTED, message)


class DatagramTooLarge(CodedError):
    """A datagram larger than the connection's ``max_datagram_size``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(Code.TOO_LARGE, f"datagram of {size} bytes exceeds the limit of {limit}")


class AddressError(KeywireError, ValueError):
    """A malformed address; names the character position and what was expected there."""

    def __init__(self, text: str, position: int, expected: str) -> None:
        self.text = text
        self.position = position
        self.expected = expected
        shown = text if len(text) <= 120 else text[:117] + "..."
        super().__init__(f"bad address at position {position}: expected {expected} in {shown!r}")


class IdentityError(KeywireError):
    """A key file or certhash that cannot be used."""


class HandshakeError(KeywireError):
    """The secure handshake failed (wrong key, wrong app key, refused, timed out)."""


class PinMismatch(HandshakeError):
    """The peer's certificate does not hash to the pinned certhash."""

    permanent = True

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"certificate pin mismatch: expected {expected[:12]}…, peer presented {actual[:12]}…"
        )


@dataclass(frozen=True)
class Attempt:
    """One alternative the dialer tried, and why it failed (``error`` when it raised)."""

    address: str
    reason: str
    error: BaseException | None = field(default=None, compare=False, repr=False)


class DialError(KeywireError):
    """Every alternative of a multiaddress failed (or none was understood); lists each attempt."""

    def __init__(self, address: str, attempts: Sequence[Attempt]) -> None:
        self.address = address
        self.attempts = list(attempts)
        if not self.attempts:
            text = f"could not dial {address!r}: no alternative"
        else:
            lines = "; ".join(f"{a.address}: {a.reason}" for a in self.attempts)
            text = f"could not dial any of {len(self.attempts)} alternative(s): {lines}"
        super().__init__(text)
        # retrying cannot help when every attempt failed permanently (a pin mismatch, a revoked
        # credential) or was not understood
        self.permanent = all(
            a.error is None or getattr(a.error, "permanent", False) for a in self.attempts
        )
