"""The sealed channel after a handshake, and keywire's framing of what it carries.

Each WebSocket frame is one ChaCha20-Poly1305 message with an implicit per-direction counter
nonce (Noise's CipherState), so a replayed, reordered, dropped or altered frame fails the next
open and ends the session. Plaintexts are kept within Noise's 65535-byte message limit.

A plaintext starts with a kind byte: ``{`` or ``0x01`` are Link's application envelope (legacy
JSON or framed), ``0x02`` carries bytes of keywire's byte stream (the mux runs on it) and
``0x03`` is that stream's end (half-close).
"""

from __future__ import annotations

from enum import IntEnum

from ..errors import Code, StreamError
from .noise import MAX_MESSAGE, TAG_SIZE, CipherState, NoiseError

MAX_PLAINTEXT = MAX_MESSAGE - TAG_SIZE
#: stream bytes per frame, after the kind byte
MAX_CHUNK = MAX_PLAINTEXT - 1


class Kind(IntEnum):
    ENVELOPE_FRAMED = 0x01
    STREAM = 0x02
    STREAM_END = 0x03
    ENVELOPE_JSON = 0x7B  # '{'


class SealedChannel:
    """Seal outgoing and open incoming frames; the first failure kills the channel."""

    def __init__(self, send: CipherState, receive: CipherState) -> None:
        if not (send.has_key and receive.has_key):
            raise ValueError("a sealed channel needs keys in both directions")
        self._send = send
        self._receive = receive
        self.failed: StreamError | None = None

    def seal(self, plaintext: bytes) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(f"a sealed frame holds at most {MAX_PLAINTEXT} bytes")
        return self._send.encrypt(b"", plaintext)

    def open(self, frame: bytes) -> bytes:
        if self.failed is not None:
            raise self.failed
        if len(frame) > MAX_MESSAGE:
            self.failed = StreamError(
                Code.PROTOCOL_ERROR, f"sealed frame of {len(frame)} bytes exceeds {MAX_MESSAGE}"
            )
            raise self.failed
        try:
            return self._receive.decrypt(b"", frame)
        except NoiseError as exc:
            self.failed = StreamError(Code.PROTOCOL_ERROR, f"link session: {exc}")
            raise self.failed from None

    def stream_frames(self, data: bytes) -> list[bytes]:
        """Seal stream bytes into as many frames as the size limit needs."""
        view = memoryview(data)
        return [
            self.seal(bytes([Kind.STREAM]) + view[i : i + MAX_CHUNK])
            for i in range(0, len(view), MAX_CHUNK)
        ]
