"""The hole-punch messages (DCUtR-like, sans-IO): what the two ends of a Link session say on a
stream of it to open a direct KPS path.

Each message is ``u16be length ‖ JSON object`` (at most 4 KiB, like DCUtR's limit), carried
inside the Link session's sealed channel, so candidates and the certhash are authenticated:

* ``{"t":"connect","v":1,"addrs":[...],"certhash":"..."}`` — the host's KPS candidates and the
  certhash the client must pin (the host's own first message);
* ``{"t":"connect","v":1,"addrs":[...]}`` — the client's candidates (its answer);
* with ``"reverse":true`` in the host's ``connect`` the roles of the round swap: the client
  answers with the candidates and certhash of a KPS listener it opened, and the host dials it;
* ``{"t":"sync"}`` — the host's signal: dial now (the host sprays after half the round trip);
* ``{"t":"result","ok":true|false}`` — the client's outcome, so the host stops or retries;
* ``{"t":"bye"}`` — the host gives up (after its bounded attempts).

Optional fields (older peers ignore them, and only a peer that names ``"guess"`` in its
``ext`` is ever asked for the many-port guess; docs/nat.md "Port guessing"):

* in ``connect``, both ways: ``"nat"`` (``eim``, ``edm-pp`` or ``edm-random``: how the
  sender's NAT maps, when its STUN queries showed it), ``"ext":["guess"]`` (it can take part in
  a guess round), ``"public":"IP:PORT"`` (the candidate STUN gave, the one to guess against)
  and ``"open":true`` (its NAT lets in datagrams from ports it never sent to: no guess needed);
* in the client's ``connect``, ``"guess":{"token":HEX,"ip":IP}``: the client (random ports)
  opened many sockets towards the host's ``public`` address; the host is to send probes
  carrying the token to many ports of ``ip``;
* in ``sync``, the same ``"guess"`` object from a host with random ports, in a reversed round:
  the client's listener is to probe the host's ``ip``;
* in ``result``, ``"via":"IP:PORT"``: the address the client's listener took the host's
  connection from, so a host that dialled twice (predicted socket and guess winner) keeps the
  same one.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass

from ..errors import KeywireError
from ..identity import decode_certhash
from .stun import Address

__all__ = ["PunchError", "PunchMessage", "decode_message", "encode_message", "format_addr"]

VERSION = 1
MAX_MESSAGE = 4096
MAX_CANDIDATES = 8
KINDS = ("connect", "sync", "result", "bye")
NAT_KINDS = ("eim", "edm-pp", "edm-random")
TOKEN_BYTES = 16


class PunchError(KeywireError):
    """A malformed or unexpected hole-punch message."""


@dataclass(frozen=True)
class PunchMessage:
    """One message; ``addrs``/``certhash`` for ``connect``, ``ok`` for ``result``."""

    kind: str
    addrs: tuple[Address, ...] = ()
    certhash: str | None = None
    ok: bool = False
    #: ``connect`` from the host: this round the host dials and the client listens
    reverse: bool = False
    #: ``connect``: the sender's NAT mapping (one of ``NAT_KINDS``), if known
    nat: str | None = None
    #: ``connect``: the extensions the sender speaks (``"guess"``)
    ext: tuple[str, ...] = ()
    #: ``connect``: the sender's STUN-mapped candidate
    public: Address | None = None
    #: ``connect``: the sender's NAT lets in new ports (RFC 5780 "change port" got through)
    open: bool = False
    #: ``connect`` (client) or ``sync`` (host): probe ``guess_ip`` with ``guess_token``
    guess_token: bytes | None = None
    guess_ip: str | None = None
    #: ``result`` of a reversed round: where the accepted connection came from
    via: Address | None = None


def format_addr(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _parse_addr(text: object) -> Address:
    if not isinstance(text, str) or len(text) > 64:
        raise PunchError("a candidate must be a short 'IP:PORT' string")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise PunchError(f"candidate {text!r} is not IP:PORT") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise PunchError(f"candidate {text!r} has no valid port")
    if ip.is_multicast or ip.is_unspecified:
        raise PunchError(f"candidate {text!r} is not a unicast address")
    return str(ip), int(port)


def _parse_guess(raw: object) -> tuple[bytes | None, str | None]:
    """The ``guess`` object's token and IP (both or neither)."""
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        raise PunchError("'guess' must be an object")
    token = raw.get("token")
    if not isinstance(token, str) or len(token) != 2 * TOKEN_BYTES:
        raise PunchError(f"'guess.token' must be {TOKEN_BYTES} bytes in hex")
    try:
        value = bytes.fromhex(token)
    except ValueError:
        raise PunchError("'guess.token' is not hex") from None
    ip, _ = _parse_addr(f"{raw.get('ip')}:1" if isinstance(raw.get("ip"), str) else None)
    if ":" in ip:
        raise PunchError("'guess.ip' must be an IPv4 address")
    return value, ip


def encode_message(message: PunchMessage) -> bytes:
    """The framed bytes of ``message``."""
    body: dict[str, object] = {"t": message.kind}
    if message.kind == "connect":
        body["v"] = VERSION
        body["addrs"] = [format_addr(a) for a in message.addrs[:MAX_CANDIDATES]]
        if message.certhash is not None:
            body["certhash"] = message.certhash
        if message.reverse:
            body["reverse"] = True
        if message.nat is not None:
            body["nat"] = message.nat
        if message.ext:
            body["ext"] = list(message.ext)
        if message.public is not None:
            body["public"] = format_addr(message.public)
        if message.open:
            body["open"] = True
    if message.guess_token is not None and message.kind in ("connect", "sync"):
        body["guess"] = {"token": message.guess_token.hex(), "ip": message.guess_ip}
    if message.kind == "result":
        body["ok"] = message.ok
        if message.via is not None:
            body["via"] = format_addr(message.via)
    raw = json.dumps(body, separators=(",", ":")).encode()
    if len(raw) > MAX_MESSAGE:
        raise PunchError("hole-punch message too large")
    return struct.pack("!H", len(raw)) + raw


def decode_message(raw: bytes) -> PunchMessage:
    """A message from its JSON body (the length prefix already removed)."""
    if len(raw) > MAX_MESSAGE:
        raise PunchError(f"hole-punch message of {len(raw)} bytes (at most {MAX_MESSAGE})")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PunchError("hole-punch message is not JSON") from None
    if not isinstance(body, dict) or body.get("t") not in KINDS:
        raise PunchError("hole-punch message without a known type")
    kind = str(body["t"])
    if kind == "connect":
        if body.get("v") != VERSION:
            raise PunchError(f"hole-punch version {body.get('v')!r} (this side speaks {VERSION})")
        addrs = body.get("addrs")
        if not isinstance(addrs, list) or len(addrs) > MAX_CANDIDATES:
            raise PunchError(f"'addrs' must be a list of at most {MAX_CANDIDATES} candidates")
        certhash = body.get("certhash")
        if certhash is not None:
            if not isinstance(certhash, str):
                raise PunchError("'certhash' must be a string")
            try:
                decode_certhash(certhash)
            except KeywireError as exc:
                raise PunchError(f"bad certhash: {exc}") from None
        reverse = body.get("reverse", False)
        if not isinstance(reverse, bool):
            raise PunchError("'reverse' must be true or false")
        nat = body.get("nat")
        if nat is not None and nat not in NAT_KINDS:
            nat = None  # a kind this side does not know: as if unknown
        ext = body.get("ext", [])
        if not isinstance(ext, list) or len(ext) > 8 or not all(isinstance(e, str) for e in ext):
            raise PunchError("'ext' must be a short list of names")
        public = body.get("public")
        open_ = body.get("open", False)
        if not isinstance(open_, bool):
            raise PunchError("'open' must be true or false")
        token, ip = _parse_guess(body.get("guess"))
        return PunchMessage(
            kind,
            tuple(_parse_addr(a) for a in addrs),
            certhash,
            reverse=reverse,
            nat=nat,
            ext=tuple(str(e)[:16] for e in ext),
            public=None if public is None else _parse_addr(public),
            open=open_,
            guess_token=token,
            guess_ip=ip,
        )
    if kind == "sync":
        token, ip = _parse_guess(body.get("guess"))
        return PunchMessage(kind, guess_token=token, guess_ip=ip)
    if kind == "result":
        ok = body.get("ok")
        if not isinstance(ok, bool):
            raise PunchError("'ok' must be true or false")
        via = body.get("via")
        return PunchMessage(kind, ok=ok, via=None if via is None else _parse_addr(via))
    return PunchMessage(kind)
