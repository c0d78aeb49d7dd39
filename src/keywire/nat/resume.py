"""Resumable streams over a Link connection's direct path, sans-IO (docs/nat.md, "Streams that
survive a cut").

A stream opened on the direct path can continue over the relay when that path dies. This module
holds what decides it, without any I/O:

* ``ResumeState``: one stream's offsets. ``sent`` counts the bytes the application wrote,
  ``acked`` how many of them the peer confirmed; ``retained`` keeps ``sent - acked`` bytes
  (bounded by ``limit``: writers wait for ``room``) to send again after a cut, as views of the
  written objects: nothing is copied when they are kept or when an acknowledgement drops part
  of one. ``recv_offset`` counts the bytes handed to the application; ``ack_due`` says when
  to report it (every ``ACK_BYTES`` or, with anything unreported, after ``ACK_DELAY`` seconds).
* the byte layouts: stream headers (``KWS1``/``KWC1 ‖ 16-byte id``), acknowledgement records
  (``id ‖ u64 recv_offset ‖ u8 flags``), the resume request (``KWR1 ‖ id ‖ u64 ‖ u8``) and its
  answer (``KWA1 ‖ u8 status ‖ u64 ‖ u8 flags ‖ u32 code``). Every parser raises ``ResumeError``
  (a protocol error) on anything malformed, never more than it was given to read.

Contract: the peer re-sends from our ``recv_offset`` and we from theirs; an offset outside
``[acked, sent]`` is a protocol error (it would lose or duplicate bytes), so a resumed stream is
byte-exact or it fails.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from ..errors import Code, StreamError

__all__ = [
    "ACK_BYTES",
    "ACK_DELAY",
    "ANSWER_SIZE",
    "HEADER_SIZE",
    "RECORD_SIZE",
    "REQUEST_SIZE",
    "Answer",
    "Record",
    "ResumeError",
    "ResumeState",
    "Status",
    "decode_answer",
    "decode_header",
    "decode_record",
    "decode_request",
    "encode_answer",
    "encode_header",
    "encode_record",
    "encode_request",
]

STREAM_MAGIC = b"KWS1"
CONTROL_MAGIC = b"KWC1"
REQUEST_MAGIC = b"KWR1"
ANSWER_MAGIC = b"KWA1"
ID_SIZE = 16
HEADER_SIZE = 4 + ID_SIZE
_RECORD = struct.Struct(">16sQB")
RECORD_SIZE = _RECORD.size  # 25
_REQUEST = struct.Struct(">4s16sQB")
REQUEST_SIZE = _REQUEST.size  # 29
_ANSWER = struct.Struct(">4sBQBI")
ANSWER_SIZE = _ANSWER.size  # 18
#: report ``recv_offset`` after this many new bytes …
ACK_BYTES = 256 << 10
#: … or this many seconds after the first unreported byte, whichever comes first
ACK_DELAY = 0.05
#: bytes written but not yet acknowledged, per stream, before writes wait
RETAINED_LIMIT = 4 << 20

#: record flag: the sender received our FIN (``recv_offset`` is final)
FIN = 1
#: record flag: the sender is finished both ways (its FIN was acknowledged too); the opener
#: forgets the stream, nothing is left to resume
DONE = 2


class ResumeError(StreamError):
    """Malformed or impossible resume data: the stream cannot continue byte-exact."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.PROTOCOL_ERROR, message)


class Status:
    """The answer's status byte."""

    OK = 0
    UNKNOWN = 1  # no such stream (never opened here, or long forgotten)
    RESET = 2  # the stream was reset here: ``code`` says with what


@dataclass(frozen=True)
class Record:
    stream_id: bytes
    recv_offset: int
    flags: int


@dataclass(frozen=True)
class Answer:
    status: int
    recv_offset: int
    flags: int
    code: int


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) != size:
        raise ResumeError(f"{what} is {size} bytes, got {len(data)}")


def encode_header(stream_id: bytes | None) -> bytes:
    """A direct stream's first bytes: ``KWS1 ‖ id``, or ``KWC1 ‖ 0*16`` for the control stream."""
    if stream_id is None:
        return CONTROL_MAGIC + bytes(ID_SIZE)
    if len(stream_id) != ID_SIZE:
        raise ValueError("a stream id is 16 bytes")
    return STREAM_MAGIC + stream_id


def decode_header(data: bytes) -> bytes | None:
    """The stream id of a ``KWS1`` header, None for the ``KWC1`` control stream."""
    _need(data, HEADER_SIZE, "a stream header")
    magic, rest = data[:4], data[4:]
    if magic == STREAM_MAGIC:
        return bytes(rest)
    if magic == CONTROL_MAGIC and rest == bytes(ID_SIZE):
        return None
    raise ResumeError(f"not a resumable stream header: {bytes(data[:4])!r}")


def encode_record(stream_id: bytes, recv_offset: int, flags: int) -> bytes:
    return _RECORD.pack(stream_id, recv_offset, flags)


def decode_record(data: bytes) -> Record:
    _need(data, RECORD_SIZE, "an acknowledgement record")
    stream_id, offset, flags = _RECORD.unpack(data)
    if flags & ~(FIN | DONE) or (flags & DONE and not flags & FIN):
        raise ResumeError(f"bad acknowledgement flags {flags:#x}")
    return Record(stream_id, offset, flags)


def encode_request(stream_id: bytes, recv_offset: int, fin: bool) -> bytes:
    return _REQUEST.pack(REQUEST_MAGIC, stream_id, recv_offset, FIN if fin else 0)


def decode_request(data: bytes) -> Record:
    """``KWR1 ‖ id ‖ u64 recv_offset ‖ u8 flags`` (only ``FIN`` may be set)."""
    _need(data, REQUEST_SIZE, "a resume request")
    magic, stream_id, offset, flags = _REQUEST.unpack(data)
    if magic != REQUEST_MAGIC:
        raise ResumeError(f"not a resume request: {magic!r}")
    if flags & ~FIN:
        raise ResumeError(f"bad resume request flags {flags:#x}")
    return Record(stream_id, offset, flags)


def encode_answer(status: int, recv_offset: int = 0, fin: bool = False, code: int = 0) -> bytes:
    return _ANSWER.pack(ANSWER_MAGIC, status, recv_offset, FIN if fin else 0, code)


def decode_answer(data: bytes) -> Answer:
    """``KWA1 ‖ u8 status ‖ u64 recv_offset ‖ u8 flags ‖ u32 code``."""
    _need(data, ANSWER_SIZE, "a resume answer")
    magic, status, offset, flags, code = _ANSWER.unpack(data)
    if magic != ANSWER_MAGIC:
        raise ResumeError(f"not a resume answer: {magic!r}")
    if status not in (Status.OK, Status.UNKNOWN, Status.RESET) or flags & ~FIN:
        raise ResumeError(f"bad resume answer (status {status}, flags {flags:#x})")
    return Answer(status, offset, flags, code)


class ResumeState:
    """One resumable stream's offsets and retained bytes (see the module docstring)."""

    def __init__(self, stream_id: bytes, *, opener: bool, limit: int = RETAINED_LIMIT) -> None:
        self.stream_id = stream_id
        self.opener = opener
        self.limit = limit
        self.sent = 0
        self.acked = 0
        #: views of the written (immutable) bytes not yet acknowledged, oldest first
        self._retained: deque[memoryview] = deque()
        self.fin_written = False
        self.fin_acked = False
        self.recv_offset = 0
        self.fin_received = False
        self.peer_done = False
        self._reported = 0
        self._fin_reported = False
        self._done_reported = False
        self._first_unreported: float | None = None

    # -- sending --------------------------------------------------------------------------------
    @property
    def retained(self) -> int:
        return self.sent - self.acked

    def room(self, n: int) -> bool:
        """May ``n`` more bytes be written now? (Always when nothing is retained.)"""
        return self.retained == 0 or self.retained + n <= self.limit

    def wrote(self, data: bytes | bytearray | memoryview) -> None:
        """``data`` went to the peer: keep it until acknowledged. ``bytes`` and views of
        ``bytes`` are kept without a copy (they cannot change); anything else is copied."""
        if self.fin_written:
            raise ResumeError("write after FIN")
        if isinstance(data, memoryview) and isinstance(data.obj, bytes) and data.c_contiguous:
            view = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        else:
            view = memoryview(data if isinstance(data, bytes) else bytes(data))
        if view:
            self._retained.append(view)
            self.sent += len(view)

    def wrote_fin(self) -> None:
        self.fin_written = True

    def on_ack(self, recv_offset: int, flags: int) -> None:
        """The peer's record: drop what it confirmed; an offset past ``sent`` is an error."""
        if recv_offset > self.sent:
            raise ResumeError(f"acknowledged {recv_offset} of {self.sent} bytes sent")
        if flags & FIN and not self.fin_written:
            raise ResumeError("FIN acknowledged before it was written")
        if flags & FIN and recv_offset != self.sent:
            raise ResumeError(f"FIN acknowledged at {recv_offset}, sent {self.sent}")
        self._drop(recv_offset)
        if flags & FIN:
            self.fin_acked = True
        if flags & DONE:
            self.peer_done = True

    def _drop(self, upto: int) -> None:
        while self.acked < upto:
            head = self._retained[0]
            take = min(len(head), upto - self.acked)
            if take == len(head):
                self._retained.popleft()
            else:
                self._retained[0] = head[take:]  # a view: the rest is not copied
            self.acked += take

    def resend(self, peer_offset: int, peer_fin: bool) -> tuple[bytes, bool]:
        """After a cut: the bytes to send again from the peer's ``recv_offset``, and whether
        the FIN must follow. Bytes before ``peer_offset`` count as acknowledged."""
        if not self.acked <= peer_offset <= self.sent:
            raise ResumeError(
                f"the peer resumes at {peer_offset}, outside the retained {self.acked}..{self.sent}"
            )
        if peer_fin and not (self.fin_written and peer_offset == self.sent):
            raise ResumeError("the peer claims a FIN that was not sent")
        self._drop(peer_offset)
        if peer_fin:
            self.fin_acked = True
        data = b"".join(self._retained)
        return data, self.fin_written and not peer_fin

    # -- receiving ------------------------------------------------------------------------------
    def received(self, n: int, now: float) -> None:
        if self.fin_received and n:
            raise ResumeError("bytes after FIN")
        if n and self._first_unreported is None:
            self._first_unreported = now
        self.recv_offset += n

    def received_fin(self, now: float) -> None:
        self.fin_received = True
        if self._first_unreported is None:
            self._first_unreported = now

    @property
    def done(self) -> bool:
        """Finished both ways: our FIN acknowledged and the peer's received."""
        return self.fin_received and self.fin_acked

    def ack_due(self, now: float) -> float | None:
        """0 when a record should go now, else seconds until it should, None if none is owed."""
        owed = (
            self.recv_offset > self._reported
            or (self.fin_received and not self._fin_reported)
            or (not self.opener and self.done and not self._done_reported)
        )
        if not owed:
            return None
        if self.recv_offset - self._reported >= ACK_BYTES or self.fin_received:
            return 0.0
        first = now if self._first_unreported is None else self._first_unreported
        return max(0.0, first + ACK_DELAY - now)

    def take_record(self) -> bytes:
        """The record to send now (marks everything in it reported)."""
        flags = FIN if self.fin_received else 0
        if not self.opener and self.done:
            flags |= DONE
            self._done_reported = True
        self._reported = self.recv_offset
        self._fin_reported = self.fin_received
        self._first_unreported = None
        return encode_record(self.stream_id, self.recv_offset, flags)
