"""The ``keywire`` command line.

Exit codes: 0 success; 1 the session failed after it started (reset, connection lost);
2 bad arguments, address or key file; 3 could not connect (every alternative failed);
130 interrupted. The dialable address is always the first line of stdout; everything meant
for a person (status, QR code, hints) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import __version__
from .address import Scope, parse
from .bridge import splice_process, splice_stdio, splice_tcp
from .chain import SSB_APP_KEY, Options
from .dial import dial, dial_retrying
from .errors import (
    AddressError,
    Code,
    ConnectionClosed,
    DialError,
    IdentityError,
    KeywireError,
    StreamError,
)
from .identity import Identity, default_key_path
from .server import Server
from .stream import Connection, Stream

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

#: what ``keywire listen`` serves when given no spec
DEFAULT_LISTEN = ("kps:0.0.0.0:0", "net:0.0.0.0:0~shs~mux", "ws://0.0.0.0:0~shs~mux")
#: optional subcommand modules; each has ``add_parser(subparsers)``
COMMAND_MODULES: tuple[str, ...] = ("keywire.link.cli", "keywire.store.cli")
SCOPE_ORDER = (Scope.PUBLIC, Scope.PRIVATE, Scope.DEVICE)


def status(message: str) -> None:
    """One line for a person, on stderr."""
    print(f"keywire: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# options shared by commands


def add_common(p: argparse.ArgumentParser, *, app_key: bool = True) -> None:
    p.add_argument("--key", metavar="FILE",
                   help=f"identity key file (default {default_key_path()}; created if missing)")
    if app_key:
        p.add_argument("--app-key", metavar="BASE64", default=SSB_APP_KEY,
                       help="shs network key (default: the SSB main network)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="bound on connecting and handshaking, per alternative (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def options_from(args: argparse.Namespace) -> Options:
    opts = Options(identity=Identity.load_or_create(args.key), timeout=args.timeout)
    if getattr(args, "app_key", None):
        opts.app_key = args.app_key
    return opts


# ---------------------------------------------------------------------------------------------
# keywire id


async def cmd_id(args: argparse.Namespace) -> int:
    ident = Identity.load_or_create(args.key)
    info = {"certhash": ident.certhash, "shs": ident.shs_id, "ssb": ident.ssb_id,
            "file": str(ident.path)}
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key + ':':10}{value}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# keywire listen


async def echo_stream(stream: Stream) -> None:
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.close_write()


def stream_handler(args: argparse.Namespace) -> Any:
    """The per-stream action chosen by --echo / --exec / --forward."""
    if args.exec:
        async def run_exec(stream: Stream) -> None:
            await splice_process(stream, args.exec)
        return run_exec
    if args.forward:
        host, _, port = args.forward.rpartition(":")

        async def run_forward(stream: Stream) -> None:
            try:
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError as exc:
                status(f"--forward {args.forward}: {exc}")
                stream.reset(Code.NETWORK_ERROR)
                return
            await splice_tcp(stream, reader, writer)
        return run_forward
    return echo_stream


async def echo_datagrams(conn: Connection) -> None:
    """Send every datagram back (echo mode, on transports that have datagrams)."""
    with contextlib.suppress(KeywireError):
        while True:
            conn.send_datagram(await conn.receive_datagram())


async def serve_streams(conn: Connection, handle: Any, verbose: bool) -> None:
    """Run ``handle`` for every stream of ``conn`` until the connection ends."""
    tasks: set[asyncio.Task[None]] = set()
    datagrams: asyncio.Future[None] | None = None
    if handle is echo_stream and conn.max_datagram_size is not None:
        datagrams = asyncio.ensure_future(echo_datagrams(conn))

    async def one(stream: Stream) -> None:
        try:
            await handle(stream)
        except (StreamError, ConnectionClosed) as exc:
            if verbose:
                status(f"stream from {conn.address}: {exc}")
        except Exception as exc:
            status(f"stream from {conn.address} failed: {exc}")
            stream.reset(Code.INTERNAL_ERROR)

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


def print_qr(text: str) -> None:
    try:
        import qrcode

        qr = qrcode.QRCode(border=1)
        qr.add_data(text)
        qr.print_ascii(out=sys.stderr, invert=True)
    except Exception as exc:  # a QR code is a convenience; never fail the listener for it
        status(f"(no QR code: {exc})")


async def cmd_listen(args: argparse.Namespace) -> int:
    specs = args.specs or list(DEFAULT_LISTEN)
    opts = options_from(args)
    opts.max_connections = args.max_connections
    if args.pairing_code is not None:
        opts.extra["link.pairing_code"] = args.pairing_code
    if args.recovery_key is not None:
        opts.extra["link.recovery_key"] = args.recovery_key
    server = Server(specs, opts)
    try:
        await server.start()
    except (KeywireError, OSError, ValueError, NotImplementedError) as exc:
        status(f"cannot listen: {exc}")
        return EXIT_USAGE
    scopes = [Scope(s) for s in args.scope] if args.scope else list(SCOPE_ORDER)
    address = server.address(scopes)
    if not address:
        status(f"nothing to announce for scope(s) {', '.join(scopes)}")
        await server.close()
        return EXIT_USAGE
    print(address, flush=True)
    ident = opts.need_identity()
    status(f"listening as {ident.ssb_id} (certhash {ident.certhash})")
    status(f"dial with: keywire dial '{address}'")
    if args.qr or (args.qr is None and sys.stderr.isatty()):
        print_qr(address)
    demo = None
    try:
        if args.stdio:
            return await listen_stdio(server)
        handle = stream_handler(args)
        if args.web:
            demo, demo_handle = await start_demo(server, args.web)
            if handle is echo_stream:
                handle = demo_handle

        async def on_connection(conn: Connection) -> None:
            if not args.quiet:
                status(f"connection on {conn.address} from {conn.remote}")
            await serve_streams(conn, handle, args.verbose)

        await server.serve(on_connection)
        return EXIT_OK
    finally:
        if demo is not None:
            await demo.close()
        await server.close()


async def start_demo(server: Server, spec: str) -> tuple[Any, Any]:
    """``--web HOST:PORT``: the echo and chat page, dialing this listener's kps address."""
    from .webrtc.demo import DemoApp, serve_demo

    kps = [a for s in SCOPE_ORDER[::-1] for a in server.addresses(s).alternatives
           if a.transport.name == "kps"]
    if not kps:
        raise KeywireError("--web needs a kps: listen spec (the page dials it over WebRTC)")
    host, _, port = spec.rpartition(":")
    demo = await serve_demo(host.strip("[]") or "127.0.0.1", int(port), str(kps[0]))
    status(f"demo page: {demo.url} (open it in a browser)")
    return demo, DemoApp().handle_stream


async def listen_stdio(server: Server) -> int:
    """netcat -l: the first stream of the first connection ↔ stdin/stdout, then exit."""
    conn = await server.accept()
    status(f"connection on {conn.address} from {conn.remote}")
    stream = await conn.accept_stream()
    try:
        await splice_stdio(stream)
    except (StreamError, ConnectionClosed) as exc:
        status(f"session ended: {exc}")
        return EXIT_FAILED
    finally:
        await conn.close()
    return EXIT_OK


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
        status(f"{exc}; retrying in {delay:.1f} s")

    return await dial_retrying(args.address, opts, retries=retry_rounds(args),
                               on_retry=on_retry)


async def cmd_dial(args: argparse.Namespace) -> int:
    opts = options_from(args)
    try:
        conn = await dial_for_cli(args, opts)
    except DialError as exc:
        status(str(exc))
        return EXIT_UNREACHABLE
    status(f"connected to {conn.remote} on {conn.address}")
    try:
        if args.forward_local:
            return await forward_local(conn, args.forward_local,
                                       lambda: dial_for_cli(args, opts))
        stream = await conn.open_stream()
        try:
            await splice_stdio(stream)
        except (StreamError, ConnectionClosed) as exc:
            status(f"session failed: {exc}")
            return EXIT_FAILED
        return EXIT_OK
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2.0)


async def forward_local(conn: Connection, spec: str,
                        redial: Callable[[], Awaitable[Connection]] | None = None) -> int:
    """Accept local TCP connections; each rides its own stream of ``conn``.

    When the connection is lost and ``redial`` is given, a new one is dialed (with the dial's
    retries) and later local connections ride it; streams in flight fail.
    """
    host, _, port_text = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    current = conn

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            stream = await current.open_stream()
        except KeywireError as exc:
            status(f"cannot open a stream: {exc}")
            writer.close()
            return
        with contextlib.suppress(StreamError, ConnectionClosed, OSError):
            await splice_tcp(stream, reader, writer)

    server = await asyncio.start_server(accepted, host, int(port_text))
    sock = server.sockets[0].getsockname()
    print(f"{sock[0]}:{sock[1]}", flush=True)
    status(f"forwarding {sock[0]}:{sock[1]} to {conn.address}")
    async with server:
        while True:
            reason = await current.wait_closed()
            if reason.code == Code.NONE or redial is None:
                break
            status(f"connection lost ({reason}); reconnecting")
            try:
                current = await redial()
            except DialError as exc:
                status(str(exc))
                return EXIT_UNREACHABLE
            status(f"reconnected on {current.address}")
    status(f"connection ended: {reason}")
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
        return EXIT_UNREACHABLE
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
        await conn.close()
    elapsed = time.perf_counter() - connected
    result = {"address": conn.address, "bytes": received, "connect_ms":
              round((connected - start) * 1000, 2), "seconds": round(elapsed, 3),
              "echo_mb_per_s": round(received / elapsed / 1e6, 1)}
    print(json.dumps(result))
    status(f"{received / 1e6:.1f} MB echoed in {elapsed:.2f} s: "
           f"{result['echo_mb_per_s']} MB/s each way")
    return EXIT_OK if received == size else EXIT_FAILED


# ---------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keywire",
        description="Secure byte streams to a peer named by its key: KPS (QUIC/WebRTC), "
                    "multiserver/shs, Link relays and store streams.",
        epilog="Exit codes: 0 ok, 1 session failed, 2 bad arguments/address/key, "
               "3 could not connect, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"keywire {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("listen", help="serve on listen specs and print the dialable address",
                       description="Listen on every SPEC at once (port 0 picks a free port; the "
                       "key comes from the identity) and print the dialable multiaddress as the "
                       "first line of stdout. Each stream is echoed unless --exec, --forward or "
                       "--stdio says otherwise.")
    p.add_argument("specs", nargs="*", metavar="SPEC",
                   help="listen spec, e.g. net:0.0.0.0:0~shs "
                        f"(default: {' '.join(DEFAULT_LISTEN)})")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--echo", action="store_true", help="echo every stream (the default)")
    action.add_argument("--exec", metavar="CMD",
                        help="run CMD per stream, wired to its stdin/stdout")
    action.add_argument("--forward", metavar="HOST:PORT", help="carry each stream to a TCP port")
    action.add_argument("--stdio", action="store_true",
                        help="netcat -l: the first stream ↔ stdin/stdout, then exit")
    p.add_argument("--scope", action="append", choices=[s.value for s in Scope],
                   help="announce only this scope (repeatable; default public, private, device)")
    p.add_argument("--max-connections", type=int, default=1024, metavar="N",
                   help="refuse connections beyond N at once (default 1024)")
    qr = p.add_mutually_exclusive_group()
    qr.add_argument("--qr", dest="qr", action="store_true", default=None,
                    help="print a QR code of the address on stderr (default: when a terminal)")
    qr.add_argument("--no-qr", dest="qr", action="store_false", help="never print a QR code")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-connection status lines")
    p.add_argument("--web", metavar="HOST:PORT",
                   help="kps specs: serve a demo page (echo and chat over WebRTC) over HTTP")
    p.add_argument("--pairing-code", nargs="?", const=True, metavar="CODE",
                   help="Link specs: open a one-time pairing code (random, or CODE) and print "
                        "it with a QR code of address + code on stderr")
    p.add_argument("--recovery-key", nargs="?", const=True, metavar="KEY",
                   help="Link specs: accept recover mode with a long-lived recovery key: KEY "
                        "(at least 100 bits, e.g. 20+ Crockford characters), or with no KEY "
                        "this host's saved key, else a new one printed once on stderr")
    add_common(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("dial", help="connect and pipe stdin/stdout through a stream",
                       description="Dial ADDRESS (alternatives in order, moving on when one "
                       "fails) and splice one stream with stdin/stdout like netcat; exits 0 "
                       "when the peer has ended its side.")
    p.add_argument("address", help="a multiaddress, e.g. 'net:host:8008~shs:KEY'")
    p.add_argument("--forward-local", metavar="[HOST:]PORT",
                   help="accept local TCP connections and carry each over its own stream "
                        "(prints the local address first); reconnects when the connection "
                        "is lost")
    p.add_argument("--retry", type=int, metavar="N",
                   help="dial N more rounds with backoff (0.4 s doubling to 8 s) before "
                        "giving up (default: 5 for Link addresses, else 0)")
    add_common(p)
    p.set_defaults(func=cmd_dial)

    p = sub.add_parser("id", help="print this identity's certhash and keys",
                       description="Print the certhash (KPS), the shs public key (base64 and SSB "
                       "form) and the key file path; creates the key file if it is missing.")
    p.add_argument("--key", metavar="FILE", help=f"key file (default {default_key_path()})")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(func=cmd_id)

    p = sub.add_parser("bench", help="measure echo throughput to a listener",
                       description="Dial a `keywire listen --echo` address, send --size MB on one "
                       "stream and read the echo; prints one JSON line.")
    p.add_argument("address", help="the address a `keywire listen --echo` printed")
    p.add_argument("--size", type=float, default=64.0, help="megabytes to send (default 64)")
    add_common(p)
    p.set_defaults(func=cmd_bench)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="keywire: %(name)s: %(message)s", stream=sys.stderr,
    )
    if args.command == "listen" and args.specs:
        try:
            for spec in args.specs:
                parse(spec)
        except AddressError as exc:
            status(str(exc))
            return EXIT_USAGE
    try:
        return int(asyncio.run(args.func(args)))
    except KeyboardInterrupt:
        status("interrupted")
        return EXIT_INTERRUPTED
    except (IdentityError, AddressError) as exc:
        status(str(exc))
        return EXIT_USAGE
    except KeywireError as exc:
        status(str(exc))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
