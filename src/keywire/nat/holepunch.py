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
    elif message.kind == "result":
        body["ok"] = message.ok
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
        return PunchMessage(kind, tuple(_parse_addr(a) for a in addrs), certhash, reverse=reverse)
    if kind == "result":
        ok = body.get("ok")
        if not isinstance(ok, bool):
            raise PunchError("'ok' must be true or false")
        return PunchMessage(kind, ok=ok)
    return PunchMessage(kind)
