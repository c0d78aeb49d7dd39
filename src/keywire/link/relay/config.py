"""Relay settings: Link's environment variables, each with a matching command-line flag."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..wire import LinkProtocolError, from_b64u


@dataclass
class RelayConfig:
    """Every knob of the relay; defaults are Link's."""

    host: str = "0.0.0.0"
    port: int = 80
    max_bps: int = 1048576
    hourly_bytes: int = 0
    trickle_bps: int = 16384
    idle_sec: float = 300.0
    ip_rate_per_min: int = 60
    trust_proxy: bool = False
    allowed_register_keys: frozenset[str] = field(default_factory=frozenset)
    origin: str | None = None
    #: bearer token that unlocks per-link detail in /v1/stats (keywire's fix; off = counts only)
    admin_token: str | None = None
    #: accept ``accept`` frames without the host's ticket (era-1 Link hosts); off by default
    legacy_accept: bool = False
    heartbeat_sec: float = 30.0
    #: a peer whose socket drains nothing for this long while a frame waits for it is cut (4006)
    slow_peer_sec: float = 30.0
    #: a socket that neither registers nor resolves within this many seconds is closed (4004)
    handshake_sec: float = 30.0
    #: at most this many links waiting for the host's dial-back per registered host
    max_pending_per_host: int = 64
    #: ... and at most this many of them from one client IP, so resolving a host's address
    #: from one source cannot fill the host's waiting room (issue 18)
    max_pending_per_ip: int = 8
    #: open sockets in all; 0 = from the file-descriptor limit (leaving room for the rest)
    max_sockets: int = 0
    #: open sockets from one IP
    max_sockets_per_ip: int = 256
    #: a TCP connection must finish its WebSocket upgrade within this many seconds
    upgrade_sec: float = 10.0
    #: connections still before their upgrade, in all and per IP; past the total the oldest
    #: is dropped (a newcomer always gets its chance), past the per-IP share the newcomer is
    max_upgrading: int = 1024
    max_upgrading_per_ip: int = 32

    @property
    def allowlist_active(self) -> bool:
        return bool(self.allowed_register_keys)


# attribute → (environment variable, flag, help)
_SETTINGS: dict[str, tuple[str, str, str]] = {
    "port": ("LINK_PORT", "--port", "TCP port to listen on (default 80; 0 picks one)"),
    "max_bps": (
        "LINK_RELAY_MAX_BPS",
        "--max-bps",
        "per-link shaping in bytes/s, burst 2x; 0 = off (default 1048576)",
    ),
    "hourly_bytes": (
        "LINK_RELAY_HOURLY_BYTES",
        "--hourly-bytes",
        "rolling hourly quota per host address; 0 = off (default)",
    ),
    "trickle_bps": (
        "LINK_RELAY_TRICKLE_BPS",
        "--trickle-bps",
        "rate while over the quota (default 16384)",
    ),
    "idle_sec": (
        "LINK_RELAY_IDLE_SEC",
        "--idle-sec",
        "close links that moved no bytes for this long (default 300)",
    ),
    "ip_rate_per_min": (
        "LINK_IP_RATE_PER_MIN",
        "--ip-rate-per-min",
        "register+resolve per IP per minute; 0 = off (default 60)",
    ),
    "trust_proxy": (
        "LINK_TRUST_PROXY",
        "--trust-proxy",
        "take the client IP from the first X-Forwarded-For hop",
    ),
    "allowed_register_keys": (
        "LINK_ALLOWED_REGISTER_KEYS",
        "--allowed-register-keys",
        "comma/space separated register keys (base64url); closed relay",
    ),
    "origin": (
        "LINK_ORIGIN",
        "--origin",
        "the origin hosts sign (default: the request's Host header)",
    ),
    "admin_token": (
        "LINK_ADMIN_TOKEN",
        "--admin-token",
        "bearer token for per-link detail in /v1/stats",
    ),
    "legacy_accept": (
        "LINK_LEGACY_ACCEPT",
        "--legacy-accept",
        "allow era-1 hosts' accept frames without the dial-back ticket",
    ),
    "slow_peer_sec": (
        "LINK_RELAY_SLOW_PEER_SEC",
        "--slow-peer-sec",
        "cut a link whose receiver drained nothing for this long (default 30)",
    ),
    "heartbeat_sec": (
        "LINK_HEARTBEAT_SEC",
        "--heartbeat-sec",
        "WebSocket ping interval (default 30)",
    ),
    "max_pending_per_ip": (
        "LINK_RELAY_MAX_PENDING_PER_IP",
        "--max-pending-per-ip",
        "clients from one IP waiting for one host (default 8)",
    ),
    "max_sockets": (
        "LINK_RELAY_MAX_SOCKETS",
        "--max-sockets",
        "open sockets in all; 0 = from the fd limit (default)",
    ),
    "max_sockets_per_ip": (
        "LINK_RELAY_MAX_SOCKETS_PER_IP",
        "--max-sockets-per-ip",
        "open sockets from one IP (default 256)",
    ),
    "upgrade_sec": (
        "LINK_RELAY_UPGRADE_SEC",
        "--upgrade-sec",
        "drop a connection that has not upgraded to WebSocket by then (default 10)",
    ),
    "max_upgrading": (
        "LINK_RELAY_MAX_UPGRADING",
        "--max-upgrading",
        "connections before their upgrade, in all (default 1024)",
    ),
    "max_upgrading_per_ip": (
        "LINK_RELAY_MAX_UPGRADING_PER_IP",
        "--max-upgrading-per-ip",
        "connections before their upgrade, per IP (default 32)",
    ),
}
_KEYS_FILE = ("LINK_ALLOWED_REGISTER_KEYS_FILE", "--allowed-register-keys-file")


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def parse_key_list(text: str) -> set[str]:
    keys = {k for k in re.split(r"[\s,]+", text) if k}
    for key in keys:
        try:
            from_b64u(key, 32, "allowed register key")
        except LinkProtocolError as exc:
            raise ValueError(f"{exc}: {key!r}") from None
    return keys


def read_key_file(path: str) -> set[str]:
    """One key per line; ``#`` starts a comment."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read allowed-keys file {path}: {exc.strerror}") from None
    return parse_key_list("\n".join(line.split("#", 1)[0] for line in text.splitlines()))


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(RelayConfig)}[name]
    try:
        if kind == "int":
            value: object = int(raw)
            if int(raw) < 0:
                raise ValueError
            return value
        if kind == "float":
            number = float(raw)
            if number < 0:
                raise ValueError
            return number
    except ValueError:
        raise ValueError(
            f"{_SETTINGS[name][0]} must be a non-negative number, got {raw!r}"
        ) from None
    if kind == "bool":
        return _truthy(raw)
    if name == "allowed_register_keys":
        return frozenset(parse_key_list(raw))
    return raw.strip().lower() if name == "origin" else raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default 0.0.0.0)")
    for name, (env, flag, text) in _SETTINGS.items():
        if name in ("trust_proxy", "legacy_accept"):
            parser.add_argument(
                flag,
                dest=name,
                action="store_const",
                const="1",
                default=None,
                help=f"{text} [{env}]",
            )
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"{text} [{env}]")
    parser.add_argument(
        _KEYS_FILE[1],
        dest="allowed_register_keys_file",
        default=None,
        help=f"file of allowed register keys, one per line [{_KEYS_FILE[0]}]",
    )


def load(
    env: Mapping[str, str] | None = None, args: argparse.Namespace | None = None
) -> RelayConfig:
    """Defaults, then the environment, then flags (a flag wins over its variable)."""
    env = os.environ if env is None else env
    config = RelayConfig()
    for name, (var, _flag, _text) in _SETTINGS.items():
        raw = getattr(args, name, None) if args is not None else None
        if raw is None:
            raw = env.get(var)
        if raw is not None and raw != "":
            setattr(config, name, _convert(name, str(raw)))
    key_file = getattr(args, "allowed_register_keys_file", None) if args is not None else None
    key_file = key_file or env.get(_KEYS_FILE[0])
    if key_file:
        config.allowed_register_keys = frozenset(
            config.allowed_register_keys | read_key_file(key_file)
        )
    if args is not None and getattr(args, "host", None):
        config.host = args.host
    if config.origin == "":
        config.origin = None
    return config
