"""The ``link`` chain handler: ``ws(s)://RELAY/v1/link~link[:ADDRESS]`` alternatives.

Dialing ``wss://R/v1/link~link:ADDRESS`` reconnects with the saved credential (or pairs first
when ``Options.extra['link.pairing_code']`` is set, or recovers with
``Options.extra['link.recovery_key']``) and returns a mux ``Connection``. Listening
on ``wss://R/v1/link~link`` registers this identity's host on R; several such specs share one
host (one address, one set of codes and devices) and each announces its own alternative.

``Options.extra`` keys: ``link.pairing_code`` (dial: the code; listen: True for a random code
or a code to use), ``link.code_id`` (dial), ``link.pairing_ttl`` (listen, seconds, default
900), ``link.on_pairing_code`` (listen: callback(multiaddress, code, code_id) instead of
printing), ``link.pairing_qr`` (listen: False to print the code without its QR code),
``link.recovery_key`` (dial: recover with this key; listen: a key, or True to reuse
the saved one or generate one), ``link.recover_concurrency`` (listen, default 4),
``link.dialback_timeout`` (listen: seconds a dial-back has to finish its handshake, default 5),
``link.on_recovery_key`` (listen: callback(multiaddress, key) for a generated key instead of
printing), ``link.store_dir`` (a config directory instead of ``config_dir()``),
``link.direct`` (both: False turns the direct path off; docs/nat.md), ``link.stun`` (both:
``HOST[:PORT]`` of the STUN server the punch asks, default the relay's host on 3478),
``link.direct_exchanges`` (punch exchanges per session, default 3), ``link.direct_idle``
(seconds of silence that end a direct path, default 6), ``link.direct_resume`` (both: False
keeps direct streams from continuing over the relay after a cut), ``link.direct_guess*``
(the many-port guess for a random-port NAT; docs/nat.md "Port guessing").
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..address import Alternative, Scope, Section, format_address
from ..errors import AddressError, HandshakeError
from ..mux.connection import MuxConnection
from ..mux.transform import config_from_options
from ..nat.linkdirect import DirectHost, direct_settings, start_client
from ..options import Options
from ..plugin import ChainHandler, ConnectionHandler, Listening
from ..registry import Registry
from ..stream import Connection
from . import client, codes
from .handshake import DEFAULT_RECOVER_CONCURRENCY, PairingCode, recovery_scalar
from .host import DIALBACK_TIMEOUT, LinkHost, dialback_timeout_setting, host_static_from_identity
from .noise import public_bytes
from .session import LinkPipe
from .store import ClientStore
from .wire import b64u

DEFAULT_CODE_TTL = 900.0
_hosts: dict[tuple[bytes, str], LinkHost] = {}
_host_handlers: dict[int, list[tuple[str, ConnectionHandler, Options]]] = {}
#: each host's direct-path side (its KPS listener, session tokens), by ``id(host)``
_direct_hosts: dict[int, DirectHost] = {}


def _store_dir(options: Options) -> Path | None:
    value = options.extra.get("link.store_dir")
    return Path(value) if value else None


def print_pairing_code(
    multiaddress: str, code: str, code_id: bytes | None, show_qr: bool = True
) -> None:
    """Show the code and, unless ``show_qr`` is False (``--no-qr``), a QR code of ``address#code``
    on stderr (stdout is for the address)."""
    text = f"{multiaddress}#{code}"
    print(
        f"pairing code: {code}" + (f"  (code id {code_id.hex()})" if code_id else ""),
        file=sys.stderr,
    )
    print(f"pair with:    keywire pair '{multiaddress}' {code}", file=sys.stderr)
    if not show_qr:
        return
    with contextlib.suppress(Exception):
        import io

        import qrcode

        qr = qrcode.QRCode(border=1)
        qr.add_data(text)
        out = io.StringIO()
        qr.print_ascii(out=out, invert=True)
        print(out.getvalue(), file=sys.stderr)


def print_recovery_key(multiaddress: str, key: str) -> None:
    """Show a newly generated recovery key once, on stderr; only its ``w`` is saved."""
    print(f"recovery key: {key}", file=sys.stderr)
    print(
        "  (shown once: write it down; it gives any device a new credential, at any time)",
        file=sys.stderr,
    )
    print(f"recover with: keywire pair '{multiaddress}' --recovery-key {key}", file=sys.stderr)


def recovery_setting(options: Options) -> tuple[str | bool | None, int]:
    """``link.recovery_key`` and ``link.recover_concurrency``, checked before any network."""
    key = options.extra.get("link.recovery_key")
    if key is False:
        key = None
    if key is not None and key is not True:
        if not isinstance(key, str):
            raise codes.RecoveryKeyError(
                f"link.recovery_key is a key (text) or True, got {type(key).__name__}"
            )
        key = codes.normalise_recovery_key(key)
    raw = options.extra.get("link.recover_concurrency", DEFAULT_RECOVER_CONCURRENCY)
    cap = int(raw) if isinstance(raw, str) and raw.strip().isdecimal() else raw
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"link.recover_concurrency is a whole number >= 1, got {raw!r}")
    return key, cap


class LinkListening(Listening):
    def __init__(self, host: LinkHost, key: tuple[bytes, str], url: str, section: Section) -> None:
        self.host = host
        self._key = key
        self.url = url
        self._section = section

    def announce(self, scope: Scope) -> list[Alternative]:
        return [Alternative((self._section, Section("link", (self.host.address,))))]

    async def close(self) -> None:
        await self.host.remove_relay(self.url)
        handlers = _host_handlers.get(id(self.host), [])
        handlers[:] = [h for h in handlers if h[0] != self.url]
        if not self.host.uplinks:
            _hosts.pop(self._key, None)
            _host_handlers.pop(id(self.host), None)
            direct = _direct_hosts.pop(id(self.host), None)
            await self.host.close()
            if direct is not None:
                await direct.close()


class LinkHandler(ChainHandler):
    name = "link"

    def claims(self, alt: Alternative) -> bool:
        return client.is_link_alternative(alt)

    async def dial(self, alt: Alternative, options: Options) -> Connection:
        url, address = client.link_target(alt)
        direct = direct_settings(options.extra)
        timeout = min(options.timeout, client.HANDSHAKE_TIMEOUT)
        store = ClientStore(_store_dir(options))
        credential = store.get(address)
        code = options.extra.get("link.pairing_code")
        recovery = options.extra.get("link.recovery_key")
        pipe: LinkPipe
        if credential is not None:
            pipe = await client.reconnect(url, credential, timeout)
        elif isinstance(code, str) and code:
            code_id = client.parse_code_id(options.extra.get("link.code_id"))
            pipe, credential = await client.pair_via(url, address, code, code_id, timeout)
            store.save(credential, [url])
        elif isinstance(recovery, str) and recovery:
            pipe, credential = await client.recover_via(url, address, recovery, timeout)
            store.save(credential, [url])
        else:
            missing = HandshakeError(
                f"no credential for {address}: pair first (keywire "
                "pair ADDRESS CODE) or dial with a pairing code or "
                "recovery key"
            )
            missing.permanent = True  # a local lack: dialing again cannot supply it
            raise missing
        relayed = MuxConnection(
            pipe, client=True, config=config_from_options(options), address=str(alt)
        )
        return start_client(pipe, relayed, direct) if direct.enabled else relayed

    async def listen(
        self, alt: Alternative, options: Options, on_connection: ConnectionHandler
    ) -> Listening:
        url = alt.sections[0].url
        assert url is not None
        identity = options.need_identity()
        static = host_static_from_identity(identity)
        store = _store_dir(options)
        recovery_key, recover_cap = recovery_setting(options)
        direct = direct_settings(options.extra)
        dialback_timeout = dialback_timeout_setting(
            options.extra.get("link.dialback_timeout", DIALBACK_TIMEOUT)
        )
        key = (public_bytes(static), str(store))
        host = _hosts.get(key)
        if host is None:
            host = LinkHost(static, None, store)
            _hosts[key] = host
            _host_handlers[id(host)] = []
            host.on_pipe = self._dispatcher(host)
            _direct_hosts[id(host)] = DirectHost(identity, direct)
        host.dialback_timeout = dialback_timeout
        if alt.sections[1].args and alt.sections[1].args != (host.address,):
            raise AddressError(
                str(alt),
                len(str(alt.sections[0])) + 1,
                "'link' with no address (or this host's own) in a listen spec",
            )
        try:
            self._configure_recovery(host, recovery_key, recover_cap)
        except BaseException:
            if not host.uplinks:
                _hosts.pop(key, None)
                _host_handlers.pop(id(host), None)
                _direct_hosts.pop(id(host), None)
                await host.close()
            raise
        _host_handlers[id(host)].append((url, on_connection, options))
        try:
            await host.add_relay(url, timeout=options.timeout)
        except BaseException:
            _host_handlers[id(host)] = [h for h in _host_handlers[id(host)] if h[0] != url]
            raise
        self._maybe_open_code(host, options)
        self._maybe_show_recovery_key(host, options)
        return LinkListening(host, key, url, alt.sections[0])

    def _dispatcher(self, host: LinkHost) -> Callable[[LinkPipe], Any]:
        async def dispatch(pipe: LinkPipe) -> None:
            handlers = _host_handlers.get(id(host), [])
            url = pipe.peer.split("~link:", 1)[0]
            match = next((h for h in handlers if h[0] == url), handlers[0] if handlers else None)
            if match is None:
                pipe.abort()
                return
            _, on_connection, options = match
            conn: Connection = MuxConnection(
                pipe, client=False, config=config_from_options(options), address=pipe.peer
            )
            direct = _direct_hosts.get(id(host))
            if direct is not None:
                conn = direct.wrap(pipe, conn)  # answers a client's punch, if it asks
            await on_connection(conn)

        return dispatch

    @staticmethod
    def _configure_recovery(host: LinkHost, key: str | bool | None, cap: int) -> None:
        """The first listen spec that names a recovery key sets it; a different one later is an
        error (one host, one key)."""
        if key is None:
            return
        gate = host.ctx.recovery
        if gate is None:
            host.set_recovery_key(key, cap, save=False)
        elif isinstance(key, str) and recovery_scalar(key) != gate.w:
            raise codes.RecoveryKeyError(
                "link.recovery_key differs between listen specs of "
                "one host (one host has one recovery key)"
            )

    @staticmethod
    def _maybe_show_recovery_key(host: LinkHost, options: Options) -> None:
        if host.unsaved_recovery_key is None or host.recovery_key_shown:
            return
        host.recovery_key_shown = True
        callback = options.extra.get("link.on_recovery_key") or print_recovery_key

        def show() -> None:
            key = host.unsaved_recovery_key
            if key is None:
                return
            urls = list(host.uplinks)
            alts = [
                Alternative((Section(u.split(":", 1)[0], (), u), Section("link", (host.address,))))
                for u in urls
            ]
            callback(format_address(alts), key)
            host.save_recovery_key()  # saved only once it was shown, so it is never lost unseen

        asyncio.get_running_loop().call_later(0.3, show)

    def _maybe_open_code(self, host: LinkHost, options: Options) -> None:
        wanted = options.extra.get("link.pairing_code")
        if not wanted or host.pairing_code_opened:
            return
        host.pairing_code_opened = True
        ttl = float(options.extra.get("link.pairing_ttl", DEFAULT_CODE_TTL))
        entry: PairingCode = host.open_pairing_code(
            wanted if isinstance(wanted, str) else None, ttl
        )
        callback = options.extra.get("link.on_pairing_code")
        with_qr = bool(options.extra.get("link.pairing_qr", True))

        def show() -> None:
            urls = list(host.uplinks)
            alts = [
                Alternative((Section(u.split(":", 1)[0], (), u), Section("link", (host.address,))))
                for u in urls
            ]
            if callback is not None:
                callback(format_address(alts), entry.code, entry.code_id)
            else:
                print_pairing_code(format_address(alts), entry.code, entry.code_id, with_qr)

        # shown a moment later, once every relay of this listen command has registered
        asyncio.get_running_loop().call_later(0.3, show)


#: the ``link.*`` settings this handler reads from ``Options.extra``
SETTINGS = (
    "pairing_code",
    "pairing_qr",
    "pairing_ttl",
    "code_id",
    "recovery_key",
    "recover_concurrency",
    "dialback_timeout",
    "store_dir",
    "on_pairing_code",
    "on_recovery_key",
    "direct",
    "direct_exchanges",
    "direct_idle",
    "direct_resume",
    "direct_guess",
    "direct_guess_sockets",
    "direct_guess_probes",
    "direct_guess_rate",
    "direct_guess_burst",
    "direct_guess_time",
    "stun",
)


def register(registry: Registry) -> None:
    registry.add_handler(LinkHandler())
    registry.declare_settings("link", SETTINGS)


__all__ = ["LinkHandler", "b64u", "register"]
