"""The ``keywire`` command line.

Exit codes: 0 success; 1 the session failed after it started (reset, connection lost, a
transfer that did not complete both ways); 2 bad arguments, address or key file, or a port
already in use; 3 could not connect (every alternative failed); 130 interrupted (Ctrl-C).
stdout carries data only: the peer's bytes in the modes that splice stdio (``dial``,
``listen --stdio``), else the dialable address as its first line. Everything meant for a person
or a script (status, ``--json`` events, progress, QR code) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import errno
import importlib
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .address import Alternative, Scope, parse
from .bridge import (
    SpliceError,
    Transfer,
    remaining_size,
    splice_process,
    splice_stdio,
    splice_tcp,
)
from .cliout import (
    Progress,
    Reporter,
    address_text,
    chain_name,
    peer_fields,
    print_qr,
    rows_for,
    terminal_size,
    watch_path,
)
from .daemon_threads import with_daemon_executor
from .dial import dial, dial_retrying
from .errors import (
    AddressError,
    Code,
    CodedError,
    ConnectionClosed,
    DialError,
    IdentityError,
    KeywireError,
    StreamError,
    UnsupportedError,
)
from .identity import Identity, default_key_path
from .options import SSB_APP_KEY, Options
from .server import Server
from .stream import Connection, Stream

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: what ``keywire listen`` serves when given no spec
DEFAULT_LISTEN = ("kps:0.0.0.0:0", "net:0.0.0.0:0~shs~mux", "ws://0.0.0.0:0~shs~mux")
#: optional subcommand modules; each has ``add_parser(subparsers)``
COMMAND_MODULES: tuple[str, ...] = (
    "keywire.link.cli",
    "keywire.store.mapserver.cli",
    "keywire.nat.cli",
)
SCOPE_ORDER = (Scope.PUBLIC, Scope.PRIVATE, Scope.DEVICE)
#: ``dial --direct-wait`` default: good NAT pairs go direct 110–291 ms after the dial (docs/nat.md)
DIRECT_WAIT = 1.5

#: the reporter of the running command (``status`` goes through it)
_report = Reporter()


def status(message: str) -> None:
    """One line for a person, on stderr (a JSON event under ``--json``)."""
    _report.status(message)


# ---------------------------------------------------------------------------------------------
# options shared by commands


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def not_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def add_common(p: argparse.ArgumentParser, *, app_key: bool = True) -> None:
    p.add_argument(
        "--key",
        metavar="FILE",
        help=f"identity key file (default {default_key_path()}; created if missing)",
    )
    if app_key:
        p.add_argument(
            "--app-key",
            metavar="BASE64",
            default=SSB_APP_KEY,
            help="shs network key (default: the SSB main network)",
        )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="bound on connecting and handshaking, per alternative, and on a "
        "graceful close (default 10)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def add_session(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that hold connections: kps timers, --json, -q."""
    p.add_argument(
        "--no-direct",
        action="store_true",
        help="link: stay on the relay, never punch a direct path (link.direct = false)",
    )
    p.add_argument(
        "--idle-timeout",
        type=positive,
        metavar="SECONDS",
        help="kps: a connection without any packet for this long fails (kps.idle_timeout)",
    )
    p.add_argument(
        "--keepalive",
        type=not_negative,
        metavar="SECONDS",
        help="kps: PING a quiet connection this often, 0 for never; keep it below "
        "the idle timeout (kps.keepalive)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="stderr carries one JSON event per line instead of status lines",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no per-connection status lines and no summary after a success",
    )


def options_from(args: argparse.Namespace) -> Options:
    opts = Options(identity=Identity.load_or_create(args.key), timeout=args.timeout)
    if getattr(args, "app_key", None):
        opts.app_key = args.app_key
    if getattr(args, "idle_timeout", None) is not None:
        opts.extra["kps.idle_timeout"] = args.idle_timeout
    if getattr(args, "keepalive", None) is not None:
        opts.extra["kps.keepalive"] = args.keepalive
    if getattr(args, "no_direct", False):
        opts.extra["link.direct"] = False
    return opts


def check_timers(args: argparse.Namespace) -> str | None:
    """Why --keepalive and --idle-timeout cannot work together, if they cannot."""
    idle, keepalive = getattr(args, "idle_timeout", None), getattr(args, "keepalive", None)
    if idle is not None and keepalive and keepalive >= idle:
        return f"--keepalive {keepalive:g} must be shorter than --idle-timeout {idle:g}"
    return None


class Shutdown:
    """SIGTERM ends a command gracefully: the main task is cancelled and knows why."""

    def __init__(self) -> None:
        self.requested = False
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self._on_term)

    def _on_term(self) -> None:
        if not self.requested and self._task is not None:
            self.requested = True
            self._task.cancel()

    def acknowledge(self) -> None:
        """Called where the cancellation is caught, so later waits work normally."""
        if self._task is not None:
            self._task.uncancel()


async def connection_end(conn: Connection) -> ConnectionClosed:
    """When ``conn`` ends; never, for a connection that cannot say."""
    try:
        return await conn.wait_closed()
    except UnsupportedError:
        await asyncio.Event().wait()
        raise AssertionError("unreachable") from None


async def close_gracefully(conn: Connection, timeout: float) -> str | None:
    """``conn.close()`` (which delivers what was written), bounded by ``timeout``; why it
    failed, if it did. A close that used its whole bound gave up on delivering, so it counts
    as a failure too."""
    conn.close_timeout = timeout
    started = time.monotonic()
    try:
        await asyncio.wait_for(conn.close(), timeout + 5.0)
    except TimeoutError:
        return f"closing took longer than {timeout:g} s; the peer may not have everything"
    except (KeywireError, OSError) as exc:
        return f"closing failed: {exc}"
    if time.monotonic() - started >= timeout:
        return f"closing took the whole --timeout ({timeout:g} s); the peer may not have everything"
    return None


def failure_reason(exc: BaseException) -> str:
    """A short reason naming the code and who sent it."""
    cause = exc.cause if isinstance(exc, SpliceError) else exc
    if isinstance(cause, CodedError):
        who = "from the peer" if cause.remote else "here"
        detail = str(cause).partition(": ")[2]
        return f"{cause.code.label} ({cause.wire_code}) {who}" + (f": {detail}" if detail else "")
    return str(cause) or type(cause).__name__


def start_progress(t: Transfer, report: Reporter) -> Progress:
    return Progress(t, enabled=sys.stderr.isatty() and not report.json and not report.quiet)


# ---------------------------------------------------------------------------------------------
# keywire id


async def cmd_id(args: argparse.Namespace) -> int:
    ident = Identity.load_or_create(args.key)
    info = {
        "certhash": ident.certhash,
        "shs": ident.shs_id,
        "ssb": ident.ssb_id,
        "file": str(ident.path),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key + ':':10}{value}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# keywire listen: who may connect


def parse_shs_key(text: str) -> bytes:
    """An shs public key as base64 or ``@BASE64.ed25519``."""
    core = text.strip().removeprefix("@").removesuffix(".ed25519")
    try:
        raw = base64.b64decode(core, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            f"{text.strip()!r} is not an shs public key (base64 of 32 bytes, or @….ed25519)"
        )
    return raw


def load_allowed(args: argparse.Namespace) -> set[bytes] | None:
    """The keys of --allow and --allow-file (None when neither was given)."""
    if not args.allow and not args.allow_file:
        return None
    keys = {parse_shs_key(k) for k in args.allow or ()}
    for name in args.allow_file or ():
        for n, line in enumerate(Path(name).read_text().splitlines(), 1):
            word = line.split("#", 1)[0].strip()
            if word:
                try:
                    keys.add(parse_shs_key(word.split()[0]))
                except ValueError as exc:
                    raise ValueError(f"{name}:{n}: {exc}") from None
    return keys


def shs_key_text(key: bytes) -> str:
    return f"@{base64.b64encode(key).decode()}.ed25519"


class Gate:
    """``--allow``: the shs handshake refuses unknown keys; a connection whose chain proved no
    client key (kps, noauth, Link, store streams) is closed before any stream is served."""

    def __init__(self, allowed: set[bytes] | None, report: Reporter) -> None:
        self.allowed = allowed
        self.report = report

    def authorize(self, key: bytes) -> bool:
        ok = self.allowed is None or key in self.allowed
        if not ok:
            self.refused(shs_key_text(key), "its key is not in --allow")
        return ok

    def refused(self, peer: str, why: str, **fields: Any) -> None:
        self.report.event("refused", peer=peer, reason=why, **fields)
        if not self.report.json:
            self.report.status(f"refused {peer}: {why}")

    async def admit(self, conn: Connection) -> bool:
        if self.allowed is None:
            return True
        key = conn.remote.public_key
        if key is not None and key in self.allowed:
            return True
        if key is None:
            why = (
                f"{chain_name(conn.address)} proves no client identity, and --allow admits "
                "only clients with a proven shs key"
            )
        else:
            why = "its key is not in --allow"
        self.refused(str(conn.remote), why, address=address_text(conn.address))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(Code.PERMISSION_DENIED, "not allowed"), 2.0)
        return False

    def warn_unproven(self, specs: Sequence[str]) -> None:
        """Say at start which listen specs cannot admit anyone under --allow."""
        if self.allowed is None:
            return
        for spec in specs:
            for alt in parse(spec).alternatives:
                if "shs" not in alt.names:
                    self.report.status(
                        f"--allow: clients of {alt} prove no key and will be refused"
                    )


# ---------------------------------------------------------------------------------------------
# keywire listen: what each stream does


StreamHandler = Callable[[Connection, Stream, Transfer], Awaitable[None]]


async def echo_stream(conn: Connection, stream: Stream, t: Transfer) -> None:
    """Echo bytes and FIN; when the peer resets or stops, end our half too (as KPS's echo)."""
    try:
        while chunk := await stream.read():
            t.received += len(chunk)
            await stream.write(chunk)
            t.sent += len(chunk)
        t.received_done = True
        await stream.close_write()
        t.sent_done = True
    except StreamError as exc:
        with contextlib.suppress(KeywireError):
            stream.reset(exc.code)
            stream.stop_sending(exc.code)
        raise


def exec_env(conn: Connection) -> dict[str, str]:
    """What an --exec child learns about its peer."""
    remote = conn.remote
    return {
        "KEYWIRE_PEER": "" if str(remote) == "anonymous" else str(remote),
        "KEYWIRE_TRANSPORT": chain_name(conn.address),
        "KEYWIRE_ADDRESS": address_text(conn.address) or "",
    }


def stream_handler(args: argparse.Namespace, report: Reporter) -> StreamHandler:
    """The per-stream action chosen by --echo / --exec / --forward."""
    if args.exec:

        async def run_exec(conn: Connection, stream: Stream, t: Transfer) -> None:
            await splice_process(stream, args.exec, exec_env(conn), t)

        return run_exec
    if args.forward:
        host, _, port = args.forward.rpartition(":")

        async def run_forward(conn: Connection, stream: Stream, t: Transfer) -> None:
            try:
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError as exc:
                report.error(f"--forward {args.forward}: {exc}")
                stream.reset(Code.NETWORK_ERROR)
                raise
            await splice_tcp(stream, reader, writer, t)

        return run_forward
    return echo_stream


async def echo_datagrams(conn: Connection) -> None:
    """Send every datagram back (echo mode, on transports that have datagrams)."""
    with contextlib.suppress(KeywireError):
        while True:
            conn.send_datagram(await conn.receive_datagram())


async def serve_streams(
    conn: Connection, handle: StreamHandler, report: Reporter, verbose: bool = False
) -> None:
    """Run ``handle`` for every stream of ``conn`` until the connection ends."""
    tasks: set[asyncio.Task[None]] = set()
    datagrams: asyncio.Future[None] | None = None
    if handle is echo_stream and conn.max_datagram_size is not None:
        datagrams = asyncio.ensure_future(echo_datagrams(conn))

    async def one(stream: Stream) -> None:
        t = Transfer()
        report.event("stream_opened", stream=stream.id, address=address_text(conn.address))
        reason = ""
        try:
            await handle(conn, stream, t)
        except (SpliceError, StreamError, ConnectionClosed, OSError) as exc:
            reason = failure_reason(exc)
            if verbose and not report.json:
                report.status(f"stream from {conn.address}: {reason}")
        except Exception as exc:
            reason = f"internal error: {exc}"
            report.error(f"stream from {conn.address} failed: {exc}")
            stream.reset(Code.INTERNAL_ERROR)
        t.ended = time.monotonic()
        report.stream_closed(stream.id, t, reason, seconds=round(t.seconds, 3))

    try:
        async for stream in conn:
            task = asyncio.ensure_future(one(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if datagrams is not None:
            datagrams.cancel()


# ---------------------------------------------------------------------------------------------
# keywire listen: the address


def signature(alt: Alternative) -> str:
    return "~".join(alt.names)


def announced(server: Server, args: argparse.Namespace) -> str:
    """--scope as given; --all-scopes every scope; by default each chain's best scope."""
    if args.all_scopes:
        return server.address(list(SCOPE_ORDER))
    if args.scope:
        return server.address([Scope(s) for s in args.scope])
    order = [signature(alt) for spec in server.specs for alt in parse(spec).alternatives]
    best: dict[str, list[Alternative]] = {}
    for scope in SCOPE_ORDER:
        found: dict[str, list[Alternative]] = {}
        for alt in server.addresses(scope).alternatives:
            found.setdefault(signature(alt), []).append(alt)
        for sig, alts in found.items():
            best.setdefault(sig, alts)
    ranked = sorted(best, key=lambda s: order.index(s) if s in order else len(order))
    return ";".join(str(alt) for sig in ranked for alt in best[sig])


def bind_problem(exc: BaseException) -> str:
    """One line for a failure to bind (the port in use above all)."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    return str(exc) or type(exc).__name__


async def cmd_listen(args: argparse.Namespace) -> int:
    report = _use_reporter(args)
    specs = args.specs or list(DEFAULT_LISTEN)
    problem = check_timers(args)
    try:
        allowed = load_allowed(args)
    except (OSError, ValueError) as exc:
        problem = f"--allow: {exc}"
    if problem:
        report.error(problem)
        return EXIT_USAGE
    gate = Gate(allowed, report)
    opts = options_from(args)
    opts.max_connections = args.max_connections
    if allowed is not None:
        opts.authorize = gate.authorize
    if args.pairing_code is not None:
        opts.extra["link.pairing_code"] = args.pairing_code
        # --no-qr (or a non-terminal stderr, or --json) also drops the pairing code's QR
        opts.extra["link.pairing_qr"] = not args.json and (
            args.qr is True or (args.qr is None and sys.stderr.isatty())
        )
    if args.recovery_key is not None:
        opts.extra["link.recovery_key"] = args.recovery_key
    server = Server(specs, opts)
    shutdown = Shutdown()
    demo = None
    try:
        try:
            await server.start()
        except (KeywireError, OSError, ValueError, NotImplementedError) as exc:
            report.error(f"cannot listen: {bind_problem(exc)}")
            return EXIT_USAGE
        handle = stream_handler(args, report)
        if args.web:
            try:
                demo, demo_handle = await start_demo(server, args.web, report)
            except (KeywireError, OSError, ValueError) as exc:
                report.error(f"cannot serve --web {args.web}: {bind_problem(exc)}")
                return EXIT_USAGE
            if handle is echo_stream:
                handle = demo_handle
        address = announced(server, args)
        if not address:
            report.error(f"nothing to announce for scope(s) {', '.join(args.scope or [])}")
            return EXIT_USAGE
        announce(address, args, opts, report)
        gate.warn_unproven(specs)
        if args.stdio:
            return await listen_stdio(server, gate, report, shutdown, args.timeout)

        async def on_connection(conn: Connection) -> None:
            if not await gate.admit(conn):
                return
            report.info(f"connection on {conn.address} from {conn.remote}")
            report.event("connected", **peer_fields(conn))
            watch_path(conn, report)
            await serve_streams(conn, handle, report, args.verbose)
            reason = conn.close_error
            report.event(
                "disconnected",
                address=address_text(conn.address),
                reason=str(reason) if reason is not None else "done",
            )

        await server.serve(on_connection)
        return EXIT_OK
    except asyncio.CancelledError:
        if not shutdown.requested:
            raise
        shutdown.acknowledge()
        report.info("terminated (SIGTERM): shutting down")
        report.event("stopped", reason="SIGTERM")
        return EXIT_OK
    finally:
        if demo is not None:
            await demo.close()
        await server.close()


def announce(address: str, args: argparse.Namespace, opts: Options, report: Reporter) -> None:
    """The address on stdout (stderr with --stdio, whose stdout is the peer's bytes), who we
    are, and a QR code when it fits the terminal."""
    ident = opts.need_identity()
    report.event("listening", address=address, identity=ident.ssb_id, certhash=ident.certhash)
    used = 0
    columns, _ = terminal_size()
    if args.stdio:
        if not report.json:
            report.status(f"listening on {address}")
        used += rows_for(f"keywire: listening on {address}", columns)
    else:
        print(address, flush=True)
        used += rows_for(address, columns)  # a person usually sees stdout there too
    who = f"keywire: identity {ident.ssb_id}"
    report.info(who.removeprefix("keywire: "))
    used += rows_for(who, columns)
    if args.qr or (args.qr is None and sys.stderr.isatty()):
        if report.json:
            report.status("(no QR code with --json)")
        else:
            print_qr(report, address, used)


async def start_demo(server: Server, spec: str, report: Reporter) -> tuple[Any, Any]:
    """``--web HOST:PORT``: the echo and chat page, dialing this listener's kps address."""
    from .kps.webrtc.demo import DemoApp, serve_demo

    kps = [
        a
        for s in SCOPE_ORDER[::-1]
        for a in server.addresses(s).alternatives
        if a.transport.name == "kps"
    ]
    if not kps:
        raise KeywireError("--web needs a kps: listen spec (the page dials it over WebRTC)")
    host, _, port = spec.rpartition(":")
    demo = await serve_demo(host.strip("[]") or "127.0.0.1", int(port), str(kps[0]))
    report.status(f"demo page: {demo.url} (open it in a browser)")
    app = DemoApp()

    async def handle(conn: Connection, stream: Stream, t: Transfer) -> None:
        await app.handle_stream(stream)

    return demo, handle


async def listen_stdio(
    server: Server, gate: Gate, report: Reporter, shutdown: Shutdown, timeout: float
) -> int:
    """netcat -l: the first stream of the first admitted connection ↔ stdin/stdout.

    A connection that ends without opening a stream (``keywire pair`` on a Link host, a port
    probe) moved no data, so the listener keeps waiting for the next one. Once a stream is
    taken, the server stops listening and keeps only that connection.
    """
    while True:
        conn = await server.accept()
        if not await gate.admit(conn):
            continue
        report.info(f"connection on {conn.address} from {conn.remote}")
        report.event("connected", **peer_fields(conn))
        watch_path(conn, report)
        try:
            stream = await conn.accept_stream()
        except ConnectionClosed as exc:
            report.info(f"that connection ended before opening a stream ({exc}); still listening")
            report.event("disconnected", address=address_text(conn.address), reason=str(exc))
            continue
        break
    # one session: later dialers are refused at once rather than left waiting
    await server.stop_listening()

    async def first() -> Stream:
        return stream

    t = Transfer(expected=remaining_size(0))
    return await run_stdio_session(conn, first, t, report, shutdown, timeout)


async def run_stdio_session(
    conn: Connection,
    get_stream: Callable[[], Awaitable[Stream]],
    t: Transfer,
    report: Reporter,
    shutdown: Shutdown,
    timeout: float,
) -> int:
    """One stream ↔ stdio, then a graceful close; exit 0 only if both directions completed
    and the close delivered everything."""
    reason = ""
    stream_id: int | None = None
    try:
        stream = await get_stream()
        stream_id = stream.id
        report.event("stream_opened", stream=stream_id, address=address_text(conn.address))
        with start_progress(t, report):
            await splice_stdio(stream, t, ended=connection_end(conn))
    except (SpliceError, StreamError, ConnectionClosed) as exc:
        reason = failure_reason(exc)
    except asyncio.CancelledError:
        if not shutdown.requested:
            raise
        shutdown.acknowledge()
        reason = "terminated (SIGTERM)"
    t.ended = t.ended or time.monotonic()
    report.stream_closed(stream_id, t, reason)
    if reason:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(Code.CANCELLED, reason[:100]), 2.0)
    else:
        reason = await close_gracefully(conn, timeout) or ""
    report.summary(t, conn, ok=not reason, reason=reason)
    return EXIT_FAILED if reason else EXIT_OK


# ---------------------------------------------------------------------------------------------
# keywire dial


def retry_rounds(args: argparse.Namespace) -> int:
    """--retry, or by default a few rounds for relayed (Link) addresses, whose host may be
    re-registering, and none for direct ones."""
    if args.retry is not None:
        return int(args.retry)
    names = {s.name for alt in parse(args.address).alternatives for s in alt.sections}
    return 5 if "link" in names else 0


async def dial_for_cli(args: argparse.Namespace, opts: Options) -> Connection:
    def on_retry(exc: DialError, delay: float) -> None:
        _report.status(f"{exc}; retrying in {delay:.1f} s")

    return await dial_retrying(args.address, opts, retries=retry_rounds(args), on_retry=on_retry)


async def wait_for_direct(conn: Connection, bound: float, report: Reporter) -> None:
    """A Link connection that may punch a direct path: give it up to ``bound`` seconds, so the
    one stream of ``keywire dial`` goes direct (and can resume over the relay at a cut) rather
    than staying on the relay for its whole life. Ends early when the path goes direct, the
    first punch exchange ends without one, or the connection ends."""
    first = getattr(conn, "first_exchange_done", None)
    settled = getattr(conn, "settled", None)
    add = getattr(conn, "add_path_listener", None)
    if bound <= 0 or add is None or first is None or settled is None:
        return
    if str(getattr(conn, "path", "relay")) != "relay" or first.is_set() or settled.is_set():
        return
    went = asyncio.Event()
    add(lambda kind, _remote: went.set() if kind == "direct" else None)
    report.info(f"path: waiting up to {bound:g} s for a direct path")
    started = time.monotonic()
    waits = [
        asyncio.ensure_future(w)
        for w in (went.wait(), first.wait(), settled.wait(), connection_end(conn))
    ]
    try:
        await asyncio.wait(waits, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    waited = time.monotonic() - started
    path = str(getattr(conn, "path", "relay"))
    if path == "relay":
        why = "the punch found none" if first.is_set() or settled.is_set() else "none yet"
        report.info(f"path: {why} after {waited:.2f} s; the stream opens over the relay")
    report.event("path_wait", path=path.partition(" ")[0], seconds=round(waited, 3))


def dial_exit_code(exc: DialError) -> int:
    """A malformed alternative or key is the user's to fix (2); else nothing answered (3)."""
    if any(isinstance(a.error, AddressError | IdentityError) for a in exc.attempts):
        return EXIT_USAGE
    return EXIT_UNREACHABLE


async def cmd_dial(args: argparse.Namespace) -> int:
    report = _use_reporter(args)
    problem = check_timers(args)
    if problem:
        report.error(problem)
        return EXIT_USAGE
    opts = options_from(args)
    shutdown = Shutdown()
    t = Transfer(expected=None if args.forward_local else remaining_size(0))
    try:
        conn = await dial_for_cli(args, opts)
    except DialError as exc:
        report.error(str(exc))
        return dial_exit_code(exc)
    except asyncio.CancelledError:
        if not shutdown.requested:
            raise
        shutdown.acknowledge()
        return EXIT_FAILED
    report.info(f"connected to {conn.remote} on {conn.address}")
    report.event("connected", **peer_fields(conn))
    watch_path(conn, report)
    t.started = time.monotonic()
    if args.forward_local:
        try:
            return await forward_local(
                conn, args.forward_local, lambda: dial_for_cli(args, opts), report
            )
        except asyncio.CancelledError:
            if not shutdown.requested:
                raise
            shutdown.acknowledge()
            report.info("terminated (SIGTERM)")
            return EXIT_OK
        finally:
            await close_gracefully(conn, args.timeout)

    async def open_after_wait() -> Stream:
        # stdin is not read before the stream is open, so waiting loses nothing
        await wait_for_direct(conn, args.direct_wait, report)
        return await conn.open_stream()

    return await run_stdio_session(conn, open_after_wait, t, report, shutdown, args.timeout)


async def forward_local(
    conn: Connection,
    spec: str,
    redial: Callable[[], Awaitable[Connection]] | None = None,
    report: Reporter | None = None,
) -> int:
    """Accept local TCP connections; each rides its own stream of ``conn``.

    When the connection is lost and ``redial`` is given, a new one is dialed (with the dial's
    retries) and later local connections ride it; streams in flight fail.
    """
    report = report or _report
    host, _, port_text = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    current = conn

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stream = await current.open_stream()
        except KeywireError as exc:
            report.error(f"cannot open a stream: {exc}")
            writer.close()
            return
        t = Transfer()
        report.event("stream_opened", stream=stream.id, address=address_text(current.address))
        reason = ""
        try:
            await splice_tcp(stream, reader, writer, t)
        except (SpliceError, StreamError, ConnectionClosed, OSError) as exc:
            reason = failure_reason(exc)
        report.stream_closed(stream.id, t, reason, seconds=round(t.seconds, 3))

    try:
        server = await asyncio.start_server(accepted, host, int(port_text))
    except OSError as exc:
        report.error(f"cannot listen on {spec}: {bind_problem(exc)}")
        return EXIT_USAGE
    sock = server.sockets[0].getsockname()
    print(f"{sock[0]}:{sock[1]}", flush=True)
    report.event(
        "listening", address=f"{sock[0]}:{sock[1]}", forwarding_to=address_text(conn.address)
    )
    report.info(f"forwarding {sock[0]}:{sock[1]} to {conn.address}")
    async with server:
        while True:
            reason = await current.wait_closed()
            if reason.code == Code.NONE or redial is None:
                break
            report.status(f"connection lost ({reason}); reconnecting")
            try:
                current = await redial()
            except DialError as exc:
                report.error(str(exc))
                return EXIT_UNREACHABLE
            report.status(f"reconnected on {current.address}")
            report.event("connected", **peer_fields(current))
    report.info(f"connection ended: {reason}")
    report.event("closed", reason=str(reason), ok=reason.code == Code.NONE)
    return EXIT_OK if reason.code == Code.NONE else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# keywire bench


async def cmd_bench(args: argparse.Namespace) -> int:
    """Throughput against an echo listener: send N MB and read the echo back."""
    opts = options_from(args)
    size = int(args.size * 1_000_000)
    start = time.perf_counter()
    try:
        conn = await dial(args.address, opts)
    except DialError as exc:
        status(str(exc))
        return dial_exit_code(exc)
    connected = time.perf_counter()
    try:
        stream = await conn.open_stream()
        block = bytes(range(256)) * 256

        async def send() -> None:
            left = size
            while left > 0:
                n = min(left, len(block))
                await stream.write(block[:n])
                left -= n
            await stream.close_write()

        sender = asyncio.ensure_future(send())
        received = 0
        while chunk := await stream.read():
            received += len(chunk)
        await sender
    except (StreamError, ConnectionClosed) as exc:
        status(f"bench failed: {exc}")
        return EXIT_FAILED
    finally:
        await close_gracefully(conn, args.timeout)
    elapsed = time.perf_counter() - connected
    result = {
        "address": address_text(conn.address),
        "bytes": received,
        "connect_ms": round((connected - start) * 1000, 2),
        "seconds": round(elapsed, 3),
        "echo_mb_per_s": round(received / elapsed / 1e6, 1),
    }
    print(json.dumps(result))
    status(
        f"{received / 1e6:.1f} MB echoed in {elapsed:.2f} s: "
        f"{result['echo_mb_per_s']} MB/s each way"
    )
    return EXIT_OK if received == size else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keywire",
        description="Secure byte streams to a peer named by its key: KPS (QUIC/WebRTC), "
        "multiserver/shs, Link relays and store streams.",
        epilog="Exit codes: 0 ok, 1 session failed or incomplete, 2 bad arguments/address/key "
        "or port in use, 3 could not connect, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"keywire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "listen",
        help="serve on listen specs and print the dialable address",
        description="Listen on every SPEC at once (port 0 picks a free port; the "
        "key comes from the identity) and print the dialable multiaddress as the "
        "first line of stdout (on stderr with --stdio, whose stdout carries only "
        "the peer's bytes). Each stream is echoed unless --exec, --forward or "
        "--stdio says otherwise. SIGTERM ends it gracefully (exit 0).",
    )
    p.add_argument(
        "specs",
        nargs="*",
        metavar="SPEC",
        help=f"listen spec, e.g. net:0.0.0.0:0~shs (default: {' '.join(DEFAULT_LISTEN)})",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument("--echo", action="store_true", help="echo every stream (the default)")
    action.add_argument(
        "--exec",
        metavar="CMD",
        help="run CMD per stream, wired to its stdin/stdout; it gets "
        "KEYWIRE_PEER, KEYWIRE_TRANSPORT and KEYWIRE_ADDRESS",
    )
    action.add_argument("--forward", metavar="HOST:PORT", help="carry each stream to a TCP port")
    action.add_argument(
        "--stdio",
        action="store_true",
        help="netcat -l: the first stream ↔ stdin/stdout, then exit; the address goes to stderr",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--scope",
        action="append",
        choices=[s.value for s in Scope],
        help="announce only this scope (repeatable; default: each listen "
        "spec's best scope of public, private, device)",
    )
    scope.add_argument(
        "--all-scopes", action="store_true", help="announce every scope (public, private, device)"
    )
    p.add_argument(
        "--allow",
        action="append",
        metavar="KEY",
        help="admit only this shs client key (base64 or @….ed25519; repeatable); "
        "clients of chains that prove no key (kps, noauth, Link, store) are "
        "refused",
    )
    p.add_argument(
        "--allow-file",
        action="append",
        metavar="FILE",
        help="admit the shs keys listed in FILE (one per line, # comments)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=1024,
        metavar="N",
        help="refuse connections beyond N at once (default 1024)",
    )
    qr = p.add_mutually_exclusive_group()
    qr.add_argument(
        "--qr",
        dest="qr",
        action="store_true",
        default=None,
        help="print a QR code of the address on stderr when it fits the terminal "
        "(default: when stderr is a terminal)",
    )
    qr.add_argument("--no-qr", dest="qr", action="store_false", help="never print a QR code")
    p.add_argument(
        "--web",
        metavar="HOST:PORT",
        help="kps specs: serve a demo page (echo and chat over WebRTC) over HTTP",
    )
    p.add_argument(
        "--pairing-code",
        nargs="?",
        const=True,
        metavar="CODE",
        help="Link specs: open a one-time pairing code (random, or CODE) and print "
        "it with a QR code of address + code on stderr",
    )
    p.add_argument(
        "--recovery-key",
        nargs="?",
        const=True,
        metavar="KEY",
        help="Link specs: accept recover mode with a long-lived recovery key: KEY "
        "(at least 100 bits, e.g. 20+ Crockford characters), or with no KEY "
        "this host's saved key, else a new one printed once on stderr",
    )
    add_session(p)
    add_common(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser(
        "dial",
        help="connect and pipe stdin/stdout through a stream",
        description="Dial ADDRESS (alternatives in order, moving on when one "
        "fails) and splice one stream with stdin/stdout like netcat: stdin's EOF "
        "becomes the peer's EOF once delivered; exits 0 once both directions "
        "completed, 1 if either was cut short. A Link address opens its stream once "
        "a direct path is up, or over the relay after --direct-wait.",
    )
    p.add_argument("address", help="a multiaddress, e.g. 'net:host:8008~shs:KEY'")
    p.add_argument(
        "--forward-local",
        metavar="[HOST:]PORT",
        help="accept local TCP connections and carry each over its own stream "
        "(prints the local address first); reconnects when the connection "
        "is lost",
    )
    p.add_argument(
        "--retry",
        type=int,
        metavar="N",
        help="dial N more rounds with backoff (0.4 s doubling to 8 s) before "
        "giving up (default: 5 for Link addresses, else 0)",
    )
    p.add_argument(
        "--direct-wait",
        type=not_negative,
        default=DIRECT_WAIT,
        metavar="SECONDS",
        help="link: before opening the stream, wait up to this long for a direct path "
        "(ends early once direct or once the first punch exchange finds none); 0 opens "
        f"over the relay at once (default {DIRECT_WAIT:g})",
    )
    add_session(p)
    add_common(p)
    p.set_defaults(func=cmd_dial)

    p = sub.add_parser(
        "id",
        help="print this identity's certhash and keys",
        description="Print the certhash (KPS), the shs public key (base64 and SSB "
        "form) and the key file path; creates the key file if it is missing.",
    )
    p.add_argument("--key", metavar="FILE", help=f"key file (default {default_key_path()})")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser(
        "bench",
        help="measure echo throughput to a listener",
        description="Dial a `keywire listen --echo` address, send --size MB on one "
        "stream and read the echo; prints one JSON line.",
    )
    p.add_argument("address", help="the address a `keywire listen --echo` printed")
    p.add_argument("--size", type=float, default=64.0, help="megabytes to send (default 64)")
    add_common(p)
    p.set_defaults(func=cmd_bench)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


class JsonLogFormatter(logging.Formatter):
    """Log records as ``log`` events, so --json keeps every stderr line JSON."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": "log",
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            separators=(",", ":"),
        )


def _use_reporter(args: argparse.Namespace) -> Reporter:
    global _report
    _report = Reporter(
        json_events=bool(getattr(args, "json", False)), quiet=bool(getattr(args, "quiet", False))
    )
    return _report


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    report = (
        _use_reporter(args)
        if args.command in ("listen", "dial")
        else _use_reporter(argparse.Namespace())
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter() if report.json else logging.Formatter("keywire: %(name)s: %(message)s")
    )
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        handlers=[handler],
    )
    if args.command == "listen" and args.specs:
        try:
            for spec in args.specs:
                parse(spec)
        except AddressError as exc:
            report.error(str(exc))
            return EXIT_USAGE
    try:
        return int(asyncio.run(with_daemon_executor(args.func(args))))
    except KeyboardInterrupt:
        report.error("interrupted")
        return EXIT_INTERRUPTED
    except (IdentityError, AddressError) as exc:
        report.error(str(exc))
        return EXIT_USAGE
    except KeywireError as exc:
        report.error(str(exc))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
