"""The ``webtransport:`` address: host, port, the identity key and the pinned certificate hashes.

```
webtransport:HOST:PORT:KEY:CERTHASH[:CERTHASH…]     dial (1 to 4 hashes; a listener announces 2)
webtransport:HOST:PORT                               listen spec (port 0 picks one)
```

KEY is the Ed25519 identity key in the form ``shs`` addresses use (standard base64, 44
characters); each CERTHASH is a KPS certhash (``u`` + base64url multihash of the certificate's
SHA-256). IPv6 hosts are written bare, as in ``kps:``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ..address import Section
from ..errors import AddressError, IdentityError
from ..identity import decode_certhash
from ..kps.handler import host_of, port_of

NAME = "webtransport"
MAX_HASHES = 4
_CERTHASH = re.compile(r"u[A-Za-z0-9_-]{46}")


@dataclass(frozen=True)
class WtTarget:
    """What a dialer needs: where, which key, which certificates."""

    host: str
    port: int
    public_key: bytes
    certhashes: tuple[str, ...]

    @property
    def digests(self) -> tuple[bytes, ...]:
        return tuple(decode_certhash(h) for h in self.certhashes)

    @property
    def key_text(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/keywire"


def decode_key(section: Section, text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32 or base64.b64encode(key).decode() != text:
        raise AddressError(str(section), len(NAME) + 1, "an Ed25519 key in base64 (44 characters)")
    return key


def dial_target(section: Section) -> WtTarget:
    """Parse a dialable ``webtransport:`` section (every problem is an ``AddressError``)."""
    args = section.args
    hashes: list[str] = []
    while args and _CERTHASH.fullmatch(args[-1]):
        hashes.insert(0, args[-1])
        args = args[:-1]
    if not hashes or len(hashes) > MAX_HASHES or len(args) < 3:
        raise AddressError(
            str(section), len(NAME), f"':HOST:PORT:KEY:CERTHASH' (1 to {MAX_HASHES} hashes)"
        )
    for text in hashes:
        try:
            decode_certhash(text)
        except IdentityError as exc:
            raise AddressError(str(section), len(NAME) + 1, str(exc)) from None
    key = decode_key(section, args[-1])
    port = port_of(section, args[-2], allow_zero=False, at=len(NAME) + 1)
    return WtTarget(host_of(args[:-2]), port, key, tuple(hashes))


def listen_target(section: Section) -> tuple[str, int]:
    if len(section.args) < 2:
        raise AddressError(str(section), len(NAME), "':HOST:PORT' after 'webtransport'")
    return host_of(section.args[:-1]), port_of(
        section, section.args[-1], allow_zero=True, at=len(NAME) + 1
    )


def wt_section(host: str, port: int, public_key: bytes, certhashes: tuple[str, ...]) -> Section:
    key = base64.b64encode(public_key).decode()
    return Section(NAME, (*host.split(":"), str(port), key, *certhashes))
