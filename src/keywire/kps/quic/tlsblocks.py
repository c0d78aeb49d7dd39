"""qh3's TLS length-prefixed blocks without generator context managers (issue 17: connect time).

qh3 2.1 reads and writes every TLS length-prefixed field (about 45 a handshake on each side)
through ``contextlib.contextmanager`` generators: ``pull_block``, ``push_block`` and
``push_extension``, and ``pull_opaque``/``push_opaque``/``pull_list``/``push_list`` on top of
them. A generator context manager costs an object, a generator and three ``next``-style calls;
the classes here do the same buffer moves with plain ``__enter__``/``__exit__``. ``install``
swaps the module globals qh3's TLS code looks up at call time. The bytes written and the errors
raised are the same (tests/kps/test_tlsblocks.py runs both on the same inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import qh3.tls as _qh3_tls
from qh3._hazmat import Buffer

#: qh3's originals, kept for the equality test
ORIGINALS: dict[str, Any] = {
    name: getattr(_qh3_tls, name)
    for name in (
        "pull_block",
        "push_block",
        "push_extension",
        "pull_list",
        "push_list",
        "pull_opaque",
        "push_opaque",
    )
}


class pull_block:
    """A block whose ``capacity``-byte length was just read; checks it was read to its end."""

    __slots__ = ("buf", "end", "length")

    def __init__(self, buf: Buffer, capacity: int) -> None:
        self.buf = buf
        self.length = int.from_bytes(buf.pull_bytes(capacity), "big")
        self.end = buf.tell() + self.length

    def __enter__(self) -> int:
        return self.length

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None and self.buf.tell() != self.end:
            raise _qh3_tls.AlertDecodeError("extra bytes at the end of a block")


class push_block:
    """A block written after a ``capacity``-byte gap that is filled with its length on exit."""

    __slots__ = ("buf", "capacity", "start")

    def __init__(self, buf: Buffer, capacity: int) -> None:
        self.buf, self.capacity = buf, capacity

    def __enter__(self) -> None:
        buf = self.buf
        self.start = buf.tell() + self.capacity
        buf.seek(self.start)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:  # as the generator: an error inside leaves the gap unfilled
            return
        buf, start, capacity = self.buf, self.start, self.capacity
        end = buf.tell()
        buf.seek(start - capacity)
        buf.push_bytes((end - start).to_bytes(capacity, "big"))
        buf.seek(end)


class push_extension(push_block):
    """An extension: its type, then a block with a 2-byte length."""

    __slots__ = ()

    def __init__(self, buf: Buffer, extension_type: int) -> None:
        buf.push_uint16(extension_type)
        super().__init__(buf, 2)


def pull_list[T](buf: Buffer, capacity: int, func: Callable[[], T]) -> list[T]:
    """The items of a block, each read by ``func``."""
    items = []
    with pull_block(buf, capacity) as length:
        end = buf.tell() + length
        while buf.tell() < end:
            items.append(func())
    return items


def push_list[T](
    buf: Buffer, capacity: int, func: Callable[[T], None], values: Sequence[T]
) -> None:
    """A block of ``values``, each written by ``func``."""
    with push_block(buf, capacity):
        for value in values:
            func(value)


def pull_opaque(buf: Buffer, capacity: int) -> bytes:
    """Bytes prefixed by their length."""
    with pull_block(buf, capacity) as length:
        return buf.pull_bytes(length)


def push_opaque(buf: Buffer, capacity: int, value: bytes) -> None:
    """Bytes prefixed by their length (no context manager: the length is known)."""
    buf.push_bytes(len(value).to_bytes(capacity, "big"))
    buf.push_bytes(value)


def install() -> None:
    """Point qh3's TLS module at these (idempotent)."""
    for name in ORIGINALS:
        setattr(_qh3_tls, name, globals()[name])
