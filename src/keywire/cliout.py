"""What the CLI tells people and scripts on stderr: status lines, JSON events, progress.

stdout is for data only (the peer's bytes, or the dialable address in the listen modes that
carry no data), so everything here writes to stderr. With ``--json`` every stderr line is one
JSON object with an ``event`` field; otherwise lines start with ``keywire:``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from .address import Alternative
from .bridge import Transfer
from .stream import Connection


def is_relayed(address: Alternative | None) -> bool:
    """A Link address goes through a relay; everything else is a direct path."""
    return address is not None and "link" in address.names


def chain_name(address: Alternative | None) -> str:
    """The section names of an address, e.g. ``net~shs~mux`` or ``kps``."""
    return "~".join(address.names) if address is not None else "?"


def address_text(address: Alternative | None) -> str | None:
    """An address as JSON-able text (None stays None)."""
    return None if address is None else str(address)


def peer_fields(conn: Connection) -> dict[str, Any]:
    """The peer identity and path of ``conn`` as JSON-able fields."""
    remote = conn.remote
    host_key = None
    if remote.host_key is not None:
        host_key = str(remote).removeprefix("link host ")
    return {
        "peer": str(remote),
        "peer_key": remote.shs_id,
        "certhash": remote.certhash,
        "host_key": host_key,
        "transport": chain_name(conn.address),
        "address": address_text(conn.address),
        "relayed": is_relayed(conn.address),
    }


def watch_path(conn: Connection, report: Reporter) -> None:
    """For a connection whose new streams can change path (Link with a direct path,
    ``keywire.nat.linkconn``): say the path now and at every change (``path`` events)."""
    add = getattr(conn, "add_path_listener", None)
    if add is None:
        return

    def say(kind: str, remote: str | None) -> None:
        report.info(f"path: {kind} {remote}" if remote else f"path: {kind}")
        report.event("path", path=kind, remote=remote, address=address_text(conn.address))

    kind, _, remote = str(getattr(conn, "path", "relay")).partition(" ")
    say(kind, remote or None)
    add(say)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Reporter:
    """Status lines or JSON events on stderr, as ``--json`` / ``-q`` ask."""

    def __init__(self, *, json_events: bool = False, quiet: bool = False) -> None:
        self.json = json_events
        self.quiet = quiet

    def _emit(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def status(self, message: str) -> None:
        """A line for a person; in JSON mode a ``status`` event."""
        if self.json:
            self.event("status", message=message)
        else:
            self._emit(f"keywire: {message}")

    def info(self, message: str) -> None:
        """A status line that ``-q`` silences, and ``--json`` too (its events say it)."""
        if not self.quiet and not self.json:
            self.status(message)

    def error(self, message: str, **fields: Any) -> None:
        """A failure; always shown (JSON: an ``error`` event)."""
        if self.json:
            self.event("error", message=message, **fields)
        else:
            self._emit(f"keywire: {message}")

    def event(self, name: str, **fields: Any) -> None:
        """One JSON object per line (only in ``--json`` mode)."""
        if self.json:
            record = {"event": name, "time": round(time.time(), 3), **fields}
            self._emit(json.dumps(record, separators=(",", ":"), default=str))

    def stream_closed(self, stream_id: int | None, t: Transfer, reason: str, **fields: Any) -> None:
        """The ``stream_closed`` event of one stream's transfer (``reason`` empty: it ended
        well)."""
        self.event(
            "stream_closed",
            stream=stream_id,
            sent=t.sent,
            received=t.received,
            ok=not reason,
            reason=reason or "done",
            **fields,
        )

    def summary(self, t: Transfer, conn: Connection | None, *, ok: bool, reason: str = "") -> None:
        """The one line at the end of a transfer (and the ``closed`` event)."""
        path = ""
        fields: dict[str, Any] = {}
        if conn is not None:
            relayed = is_relayed(conn.address)
            chain = chain_name(conn.address)
            path = f" over {chain} ({'relayed' if relayed else 'direct'})"
            fields = {"transport": chain, "relayed": relayed}
        if self.json:
            self.event(
                "closed",
                ok=ok,
                reason=reason or "done",
                sent=t.sent,
                received=t.received,
                sent_complete=t.sent_done,
                received_complete=t.received_done,
                seconds=round(t.seconds, 3),
                **fields,
            )
            return
        if self.quiet and ok:
            return
        what = "done" if ok else f"transfer incomplete ({reason})"
        sent = human_bytes(t.sent) + ("" if t.sent_done else ", unfinished")
        received = human_bytes(t.received) + ("" if t.received_done else ", unfinished")
        self._emit(
            f"keywire: {what}: sent {t.sent} bytes ({sent}), received {t.received} "
            f"bytes ({received}) in {t.seconds:.2f} s{path}"
        )


class Progress(AbstractContextManager["Progress"]):
    """Live progress of a transfer on stderr (rich), only when stderr is a terminal."""

    def __init__(self, t: Transfer, enabled: bool) -> None:
        self._t = t
        self._progress: Any = None
        self._ticker: asyncio.Future[None] | None = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=True,
            refresh_per_second=4,
        )
        self._sent = self._progress.add_task("sent    ", total=t.expected)
        self._received = self._progress.add_task("received", total=None)

    def update(self) -> None:
        if self._progress is not None:
            self._progress.update(self._sent, completed=self._t.sent)
            self._progress.update(self._received, completed=self._t.received)

    async def _tick(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(0.25)

    def __enter__(self) -> Progress:
        if self._progress is not None:
            self._progress.start()
            self._ticker = asyncio.ensure_future(self._tick())
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            if self._ticker is not None:
                self._ticker.cancel()
            self.update()
            self._progress.stop()


def terminal_size() -> tuple[int, int]:
    """Columns and rows of the terminal on stderr (80×24 when it is not one)."""
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


def rows_for(text: str, columns: int) -> int:
    """Terminal rows ``text`` takes when wrapped at ``columns``."""
    return sum(max(1, -(-len(line) // columns)) for line in text.splitlines() or [""])


def qr_text(data: str) -> tuple[str, int, int]:
    """The QR code of ``data`` as half-block text, with its width and height in cells."""
    import io

    import qrcode

    qr = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_L)
    qr.add_data(data)
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, invert=True)
    text = out.getvalue()
    lines = text.splitlines()
    return text, max((len(line) for line in lines), default=0), len(lines)


def print_qr(report: Reporter, address: str, used_rows: int) -> None:
    """A QR code of the address when it fits the terminal with what is already shown; else
    of its first alternative; else a note saying why there is none."""
    columns, rows = terminal_size()
    candidates = [(address, "")]
    first = address.split(";", 1)[0]
    if first != address:
        candidates.append(
            (first, " (of the first alternative only: the whole address does not fit)")
        )
    try:
        for data, note in candidates:
            text, width, height = qr_text(data)
            # one row for the note, if any, and one for the shell prompt afterwards
            if width <= columns and used_rows + height + bool(note) + 1 <= rows:
                if note:
                    report.status(f"QR code{note}:")
                sys.stderr.write(text)
                sys.stderr.flush()
                return
        report.status(
            f"(no QR code: it needs {height} rows and {width} columns; the "
            f"terminal has {rows}×{columns})"
        )
    except Exception as exc:  # a QR code is a convenience; never fail the listener for it
        report.status(f"(no QR code: {exc})")
