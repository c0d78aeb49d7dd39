"""Multiaddresses: multiserver's grammar plus URL sections and the bare KPS form.

```
multiaddress := alternative (';' alternative)*
alternative  := section ('~' section)*        # '!' escapes the next character
section      := name (':' arg)* | URL         # URL sections by scheme
```

The parser is strict (every rejection is an ``AddressError`` naming the position and what was
expected) and the formatter is canonical, so ``parse(format(a)) == a`` for every address.
Which sections a dialer understands is decided later by the transport registry, not here:
an alternative with unknown names still parses, so a client can skip it as multiserver does.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import SplitResult, urlsplit

from .errors import AddressError

URL_SCHEMES: frozenset[str] = frozenset(
    {"ws", "wss", "http", "https", "redis", "rediss", "nats", "redis-cluster"}
)
DEFAULT_PORTS: dict[str, int] = {
    "ws": 80,
    "wss": 443,
    "http": 80,
    "https": 443,
    "redis": 6379,
    "rediss": 6379,
    "nats": 4222,
    "redis-cluster": 6379,
}
#: the longest address text parsed at all; longer text is refused before any work is done
MAX_ADDRESS_LENGTH = 4096
_NAME = re.compile(r"[a-z][a-z0-9-]+")
_CERTHASH = re.compile(r"u[A-Za-z0-9_-]{46}")
_SPECIALS = "!~;:"
_WHITESPACE = re.compile(r"\s")
#: one token per match, no nesting: an escape pair ('!' and the next character) or a separator
_SEPARATOR_SCANNERS = {
    seps: re.compile(r"![\s\S]?|[" + re.escape(seps) + "]") for seps in (";", "~", ":")
}
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def host_problem(host: str, *, underscore: bool = True) -> str | None:
    """Why ``host`` is not an IP address or a DNS name, or None; one pass, no regex.

    The scanner replaces a regex with nested quantifiers that backtracked exponentially on
    hostile text. Labels are 1-63 characters, the name at most 253 (a trailing dot allowed);
    a non-ASCII name must survive IDNA, as the resolver would encode it.
    """
    if host == "":
        return "a host name or IP address"
    if ":" in host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "a valid IPv6 address"
        return None
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or name == "":
        return "a host name of 1 to 253 characters"
    if not name.isascii():
        try:
            name.encode("idna")
        except UnicodeError:
            return "a host name that IDNA can encode"
        return None
    allowed = _LABEL_CHARS | {"_"} if underscore else _LABEL_CHARS
    for label in name.split("."):
        if not 1 <= len(label) <= 63:
            return "host name labels of 1 to 63 characters"
        if label[0] == "-" or label[-1] == "-" or not set(label) <= allowed:
            return "a host name of letters, digits and inner '-'"
    return None


class Scope(StrEnum):
    """How far an announced address is meant to reach (multiserver's scopes)."""

    DEVICE = "device"
    LOCAL = "local"
    PRIVATE = "private"
    PUBLIC = "public"


@dataclass(frozen=True)
class Section:
    """One protocol section: ``name:arg:arg`` or a URL (``url`` set, ``args`` empty).

    ``bare`` marks a KPS address written without its ``kps:`` name (``IP:PORT:CERTHASH``).
    """

    name: str
    args: tuple[str, ...] = ()
    url: str | None = None
    bare: bool = False

    @property
    def is_url(self) -> bool:
        return self.url is not None

    def split_url(self) -> SplitResult:
        """The URL's parts; only for URL sections."""
        if self.url is None:
            raise ValueError(f"section {self.name!r} is not a URL")
        return urlsplit(self.url)

    def url_host_port(self) -> tuple[str, int]:
        """Host and port of a URL section, with the scheme's default port filled in."""
        parts = self.split_url()
        host = parts.hostname or "localhost"
        port = parts.port if parts.port is not None else DEFAULT_PORTS.get(self.name, 0)
        return host, port

    def with_args(self, *args: str) -> Section:
        """A copy with different arguments (e.g. a key filled into ``shs``)."""
        return Section(self.name, tuple(args), self.url, self.bare)

    def __str__(self) -> str:
        return format_section(self)


@dataclass(frozen=True)
class Alternative:
    """A chain: one transport section followed by transforms (``net:h:p~shs:KEY~mux``)."""

    sections: tuple[Section, ...]

    @property
    def transport(self) -> Section:
        return self.sections[0]

    @property
    def transforms(self) -> tuple[Section, ...]:
        return self.sections[1:]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.sections)

    def __str__(self) -> str:
        return format_alternative(self)


@dataclass(frozen=True)
class MultiAddress:
    """Alternatives in preference order."""

    alternatives: tuple[Alternative, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return format_address(self)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.alternatives)

    def __len__(self) -> int:
        return len(self.alternatives)


# ---------------------------------------------------------------------------------------------
# parsing


class _Parser:
    """Holds the whole text so every error can quote it with the failing position."""

    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, position: int, expected: str) -> AddressError:
        return AddressError(self.text, position, expected)

    def split(self, piece: str, start: int, seps: str) -> list[tuple[str, int]]:
        """Split on unescaped separators; (raw piece, offset) with escapes still in place."""
        if "!" not in piece:  # the common case: no escapes, so str.split finds every separator
            out: list[tuple[str, int]] = []
            at = start
            for part in piece.split(seps):
                out.append((part, at))
                at += len(part) + 1
            return out
        pieces: list[tuple[str, int]] = []
        begin = 0
        for match in _SEPARATOR_SCANNERS[seps].finditer(piece):
            token = match.group()
            if token == "!":
                raise self.fail(start + match.start(), "a character after '!'")
            if len(token) == 1:
                pieces.append((piece[begin : match.start()], start + begin))
                begin = match.end()
        pieces.append((piece[begin:], start + begin))
        return pieces

    @staticmethod
    def unescape(raw: str) -> str:
        return re.sub(r"!(.)", r"\1", raw, flags=re.DOTALL)

    def check_chars(self, raw: str, offset: int, what: str) -> None:
        if raw.isprintable() and _WHITESPACE.search(raw) is None:
            return
        for i, ch in enumerate(raw):
            if ch.isspace() or not ch.isprintable():
                raise self.fail(offset + i, f"a printable character in {what}")

    def url(self, raw: str, offset: int) -> Section:
        url = self.unescape(raw)
        scheme = url.split("://", 1)[0].lower()
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise self.fail(offset, f"a valid {scheme} URL ({exc})") from None
        if not parts.hostname:
            raise self.fail(offset + len(scheme) + 3, "a host after '//'")
        problem = host_problem(parts.hostname)
        if problem is not None:
            at = raw.lower().find(parts.hostname, len(scheme) + 3)
            raise self.fail(offset + (at if at >= 0 else len(scheme) + 3), problem)
        return Section(scheme, (), url)

    def bare_kps(self, raw: str, offset: int) -> Section | None:
        """``IP:PORT:CERTHASH`` or ``[V6]:PORT:CERTHASH``; None if not of that shape."""
        if "!" in raw:
            return None
        if raw.startswith("["):
            close = raw.find("]")
            if close < 0 or not raw[close + 1 :].startswith(":"):
                return None
            host, parts = raw[1:close], raw[close + 2 :].split(":")
            if len(parts) != 2:
                return None
            try:
                is_v6 = ipaddress.ip_address(host).version == 6
            except ValueError:
                is_v6 = False
            if not is_v6:
                raise self.fail(offset + 1, "an IPv6 address inside '[]'")
        else:
            all_parts = raw.split(":")
            if len(all_parts) != 3:
                return None
            host, parts = all_parts[0], all_parts[1:]
            if _NAME.fullmatch(host) and host != "localhost":
                return None  # a protocol section such as net:HOST:PORT
            if host_problem(host, underscore=False) is not None:
                return None
        port_text, certhash = parts
        if not _CERTHASH.fullmatch(certhash):
            return None
        decimal = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
        if not decimal or port_text != str(int(port_text)) or not 1 <= int(port_text) <= 65535:
            at = offset + len(raw) - len(certhash) - 1 - len(port_text)
            raise self.fail(at, "a decimal port from 1 to 65535")
        return Section("kps", (host, port_text, certhash), None, bare=True)

    def section(self, raw: str, offset: int) -> Section:
        if raw == "":
            raise self.fail(offset, "a section (a protocol name or a URL)")
        if "://" in raw:
            scheme = raw.split("://", 1)[0].lower()
            if scheme in URL_SCHEMES:
                self.check_chars(raw, offset, "a URL")
                return self.url(raw, offset)
        self.check_chars(raw, offset, "a section")
        bare = self.bare_kps(raw, offset)
        if bare is not None:
            return bare
        pieces = self.split(raw, offset, ":")
        name, name_at = pieces[0]
        if not _NAME.fullmatch(name):
            raise self.fail(
                name_at,
                "a protocol name of 2+ characters from a-z, 0-9 and '-' starting with a letter",
            )
        if name in URL_SCHEMES:
            raise self.fail(name_at + len(name), f"'://' after {name!r} (a {name}:// URL)")
        return Section(name, tuple(self.unescape(p) for p, _ in pieces[1:]))

    def alternative(self, piece: str, offset: int) -> Alternative:
        if piece == "":
            raise self.fail(offset, "an address alternative")
        return Alternative(tuple(self.section(p, at) for p, at in self.split(piece, offset, "~")))

    def address(self) -> MultiAddress:
        if self.text.strip() == "":
            raise self.fail(0, "a non-empty address")
        return MultiAddress(
            tuple(self.alternative(p, at) for p, at in self.split(self.text, 0, ";"))
        )


def _check_length(text: str) -> None:
    if len(text) > MAX_ADDRESS_LENGTH:
        raise AddressError(
            text[:120], MAX_ADDRESS_LENGTH, f"an address of at most {MAX_ADDRESS_LENGTH} characters"
        )


def parse_alternative(text: str) -> Alternative:
    """Parse one alternative (no ``;``)."""
    _check_length(text)
    return _Parser(text).alternative(text, 0)


def parse(text: str | MultiAddress) -> MultiAddress:
    """Parse a multiaddress; raises ``AddressError`` (and nothing else) on malformed text."""
    if isinstance(text, MultiAddress):
        return text
    if not isinstance(text, str):
        raise AddressError(repr(text), 0, "a string")
    _check_length(text)
    return _Parser(text).address()


# ---------------------------------------------------------------------------------------------
# formatting


def _escape(text: str, specials: str = _SPECIALS) -> str:
    return "".join("!" + ch if ch in specials else ch for ch in text)


def format_section(section: Section) -> str:
    """The canonical text of one section (escaping what needs it)."""
    if section.url is not None:
        return _escape(section.url, "!~;")
    if section.bare:
        host, port, certhash = section.args
        host_text = f"[{host}]" if ":" in host else host
        return f"{host_text}:{port}:{certhash}"
    return ":".join([section.name, *(_escape(a) for a in section.args)])


def format_alternative(alt: Alternative) -> str:
    return "~".join(format_section(s) for s in alt.sections)


def format_address(addr: MultiAddress | Iterable[Alternative]) -> str:
    alts = addr.alternatives if isinstance(addr, MultiAddress) else tuple(addr)
    return ";".join(format_alternative(a) for a in alts)


#: sections that carry secrets: name → index of the first secret argument (a store stream's
#: shared secret, an shs invite seed); the arguments before it are public keys or nothing
SECRET_ARGUMENTS = {"stream": 0, "shs": 1}
REDACTED = "…"


def _redact_section(section: Section) -> Section:
    if section.url is not None:
        parts = urlsplit(section.url)
        if parts.password is None and parts.username is None:
            return section
        netloc = f"{REDACTED}@{parts.netloc.rpartition('@')[2]}"
        return Section(
            section.name, section.args, parts._replace(netloc=netloc).geturl(), section.bare
        )
    first = SECRET_ARGUMENTS.get(section.name)
    if first is None or len(section.args) <= first:
        return section
    return section.with_args(*section.args[:first], *(REDACTED for _ in section.args[first:]))


def redact(alt: Alternative) -> Alternative:
    """``alt`` with its secrets replaced by ``…`` (what a connection keeps as its address)."""
    return Alternative(tuple(_redact_section(s) for s in alt.sections))


def redacted(addr: MultiAddress | Alternative) -> str:
    """The address as text with its secrets shown as ``…``: for errors, logs and status lines.

    Store-stream secrets, shs invite seeds and URL credentials are what let someone else use
    the address, and error messages end up in logs and bug reports.
    """
    alts = addr.alternatives if isinstance(addr, MultiAddress) else (addr,)
    return ";".join(format_alternative(redact(a)) for a in alts)


def join(alternatives: Sequence[Alternative | str]) -> MultiAddress:
    """Join alternatives (parsed or text) into one multiaddress."""
    out: list[Alternative] = []
    for alt in alternatives:
        out.extend(parse(alt).alternatives if isinstance(alt, str) else [alt])
    return MultiAddress(tuple(out))


# ---------------------------------------------------------------------------------------------
# helpers for transports


def split_host_port(section: Section, *, allow_zero: bool = False) -> tuple[str, int]:
    """``net:HOST:PORT`` style arguments: host is every middle part (bare IPv6), port the last.

    As multiserver: an empty host means ``localhost``; the port must be a decimal number.
    """
    if len(section.args) < 2:
        raise AddressError(
            format_section(section), len(section.name), f"':HOST:PORT' after {section.name!r}"
        )
    port_text = section.args[-1]
    host = ":".join(section.args[:-1]) or "localhost"
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    low = 0 if allow_zero else 1
    decimal = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not decimal or not low <= int(port_text) <= 65535:
        raise AddressError(
            format_section(section),
            len(format_section(section)) - len(port_text),
            f"a decimal port from {low} to 65535",
        )
    problem = host_problem(host.split("%", 1)[0] if ":" in host else host)
    if problem is not None:
        raise AddressError(format_section(section), len(section.name) + 1, problem)
    return host, int(port_text)


def host_port_args(host: str, port: int) -> tuple[str, ...]:
    """Arguments of ``net:HOST:PORT`` for a host that may be bare IPv6 (``fe80::1`` → parts)."""
    return (*host.split(":"), str(port))


def format_url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
