"""Which host a listener announces for each scope.

multiserver-scopes semantics: ``device`` is this machine only, ``local``/``private`` the first
private interface address (Wi-Fi, then Ethernet, IPv4 before IPv6), ``public`` the first
address that is neither private nor loopback. A wildcard bind announces per scope; a concrete
bind announces itself in the scopes it belongs to. For ``device`` keywire announces
``127.0.0.1`` (``::1`` for an IPv6-only bind) rather than multiserver's ``localhost``, which
resolvers may map to ``::1`` while a listener is IPv4-only.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

from .address import Scope

_SIOCGIFADDR = 0x8915
_PREFERRED = ("wl", "en", "eth")


def _ipv4_of(ifname: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", ifname.encode()[:15])
            res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
        except OSError:
            return None
    return socket.inet_ntoa(res[20:24])


def _ipv6_all() -> list[tuple[str, str]]:
    """(interface, address) pairs from /proc/net/if_inet6 (empty where absent)."""
    out: list[tuple[str, str]] = []
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) >= 6:
            raw = parts[0]
            addr = ipaddress.IPv6Address(bytes.fromhex(raw))
            out.append((parts[5], str(addr)))
    return out


def interface_addresses() -> list[tuple[str, str]]:
    """Every (interface, address) of this machine, IPv4 first."""
    out: list[tuple[str, str]] = []
    for _, name in socket.if_nameindex():
        v4 = _ipv4_of(name)
        if v4:
            out.append((name, v4))
    out.extend(_ipv6_all())
    return out


def classify(host: str) -> Scope | None:
    """The scope a literal address belongs to (None for link-local or unparsable)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.is_loopback:
        return Scope.DEVICE
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    if ip.is_private:
        return Scope.PRIVATE
    return Scope.PUBLIC


def _rank(ifname: str, host: str) -> tuple[int, int, int]:
    family = 0 if ":" not in host else 1
    for i, prefix in enumerate(_PREFERRED):
        if ifname.startswith(prefix):
            return (family, 0, i)
    if ifname.startswith("tun"):
        return (2, 0, family)
    return (3, family, 0)


def addresses_for_scope(bind_host: str, scope: Scope | str) -> list[str]:
    """Hosts to announce for ``scope`` given the host a listener is bound to."""
    scope = Scope(scope)
    wildcard_v6 = bind_host in ("::", "")
    if bind_host in ("0.0.0.0", "::", ""):
        if scope is Scope.DEVICE:
            return ["127.0.0.1"]
        wanted = Scope.PRIVATE if scope in (Scope.LOCAL, Scope.PRIVATE) else Scope.PUBLIC
        found = [
            (ifname, host)
            for ifname, host in interface_addresses()
            if classify(host) is wanted and (wildcard_v6 or ":" not in host)
        ]
        found.sort(key=lambda item: _rank(*item))
        return [found[0][1]] if found else []
    if bind_host == "localhost":
        return ["127.0.0.1"] if scope is Scope.DEVICE else []
    kind = classify(bind_host)
    if kind is None:
        # a DNS name: announce it for every scope but device
        try:
            ipaddress.ip_address(bind_host)
        except ValueError:
            return [bind_host] if scope is not Scope.DEVICE else []
        return []
    if kind is Scope.PRIVATE and scope in (Scope.LOCAL, Scope.PRIVATE):
        return [bind_host]
    return [bind_host] if kind is scope else []
