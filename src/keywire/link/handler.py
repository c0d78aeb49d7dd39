"""The ``link`` chain handler: ``ws(s)://RELAY/v1/link~link[:ADDRESS]`` alternatives.

Dialing ``wss://R/v1/link~link:ADDRESS`` reconnects with the saved credential (or pairs first
when ``Options.extra['link.pairing_code']`` is set) and returns a mux ``Connection``. Listening
on ``wss://R/v1/link~link`` registers this identity's host on R; several such specs share one
host (one address, one set of codes and devices) and each announces its own alternative.

``Options.extra`` keys: ``link.pairing_code`` (dial: the code; listen: True for a random code
or a code to use), ``link.code_id`` (dial), ``link.pairing_ttl`` (listen, seconds, default
900), ``link.on_pairing_code`` (listen: callback(multiaddress, code, code_id) instead of
printing), ``link.store_dir`` (a config directory instead of ``config_dir()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..address import Alternative, Scope, Section, format_address
from ..chain import ChainHandler, ConnectionHandler, Listening, Options, Registry
from ..errors import AddressError, HandshakeError
from ..mux.connection import MuxConnection
from ..mux.transform import config_from_options
from ..stream import Connection
from . import client
from .handshake import PairingCode
from .host import LinkHost, host_static_from_identity
from .noise import public_bytes
from .session import LinkPipe
from .store import ClientStore
from .wire import b64u

DEFAULT_CODE_TTL = 900.0
_hosts: dict[tuple[bytes, str], LinkHost] = {}
_host_handlers: dict[int, list[tuple[str, ConnectionHandler, Options]]] = {}


def _store_dir(options: Options) -> Path | None:
    value = options.extra.get("link.store_dir")
    return Path(value) if value else None


def print_pairing_code(multiaddress: str, code: str, code_id: bytes | None) -> None:
    """Show the code and a QR code of ``address#code`` on stderr (stdout is for the address)."""
    text = f"{multiaddress}#{code}"
    print(f"pairing code: {code}" + (f"  (code id {code_id.hex()})" if code_id else ""),
          file=sys.stderr)
    print(f"pair with:    keywire pair '{multiaddress}' {code}", file=sys.stderr)
    with contextlib.suppress(Exception):
        import io

        import qrcode

        qr = qrcode.QRCode(border=1)
        qr.add_data(text)
        out = io.StringIO()
        qr.print_ascii(out=out, invert=True)
        print(out.getvalue(), file=sys.stderr)


class LinkListening(Listening):
    def __init__(self, host: LinkHost, key: tuple[bytes, str], url: str,
                 section: Section) -> None:
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
            await self.host.close()


class LinkHandler(ChainHandler):
    name = "link"

    def claims(self, alt: Alternative) -> bool:
        return client.is_link_alternative(alt)

    async def dial(self, alt: Alternative, options: Options) -> Connection:
        url, address = client.link_target(alt)
        timeout = min(options.timeout, client.HANDSHAKE_TIMEOUT)
        store = ClientStore(_store_dir(options))
        credential = store.get(address)
        code = options.extra.get("link.pairing_code")
        pipe: LinkPipe
        if credential is not None:
            pipe = await client.reconnect(url, credential, timeout)
        elif isinstance(code, str) and code:
            code_id = client.parse_code_id(options.extra.get("link.code_id"))
            pipe, credential = await client.pair_via(url, address, code, code_id, timeout)
            store.save(credential, [url])
        else:
            raise HandshakeError(f"no credential for {address}: pair first (keywire pair "
                                 "ADDRESS CODE) or dial with a pairing code")
        return MuxConnection(pipe, client=True, config=config_from_options(options),
                             address=str(alt))

    async def listen(self, alt: Alternative, options: Options,
                     on_connection: ConnectionHandler) -> Listening:
        url = alt.sections[0].url
        assert url is not None
        identity = options.need_identity()
        static = host_static_from_identity(identity)
        store = _store_dir(options)
        key = (public_bytes(static), str(store))
        host = _hosts.get(key)
        if host is None:
            host = LinkHost(static, None, store)
            _hosts[key] = host
            _host_handlers[id(host)] = []
            host.on_pipe = self._dispatcher(host)
        if alt.sections[1].args and alt.sections[1].args != (host.address,):
            raise AddressError(str(alt), len(str(alt.sections[0])) + 1,
                               "'link' with no address (or this host's own) in a listen spec")
        _host_handlers[id(host)].append((url, on_connection, options))
        try:
            await host.add_relay(url, timeout=options.timeout)
        except BaseException:
            _host_handlers[id(host)] = [h for h in _host_handlers[id(host)] if h[0] != url]
            raise
        self._maybe_open_code(host, options)
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
            conn = MuxConnection(pipe, client=False, config=config_from_options(options),
                                 address=pipe.peer)
            await on_connection(conn)

        return dispatch

    def _maybe_open_code(self, host: LinkHost, options: Options) -> None:
        wanted = options.extra.get("link.pairing_code")
        if not wanted or host.pairing_code_opened:
            return
        host.pairing_code_opened = True
        ttl = float(options.extra.get("link.pairing_ttl", DEFAULT_CODE_TTL))
        entry: PairingCode = host.open_pairing_code(wanted if isinstance(wanted, str) else None,
                                                    ttl)
        callback = options.extra.get("link.on_pairing_code") or print_pairing_code

        def show() -> None:
            urls = list(host.uplinks)
            alts = [Alternative((Section(u.split(":", 1)[0], (), u),
                                 Section("link", (host.address,)))) for u in urls]
            callback(format_address(alts), entry.code, entry.code_id)

        # shown a moment later, once every relay of this listen command has registered
        asyncio.get_running_loop().call_later(0.3, show)


def register(registry: Registry) -> None:
    registry.add_handler(LinkHandler())


__all__ = ["LinkHandler", "b64u", "register"]
