"""Node-to-node authentication: a node that splices a client to another node says who it is
and which IP the client has, under an HMAC with the cluster's shared secret.

Only a node may claim a client IP other than its own (the per-IP limits need the real one),
so the receiving node checks the MAC and a ±60 s timestamp before it believes the header.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Keywire-Node"
MAX_SKEW_MS = 60_000


def _mac(secret: bytes, node_id: str, ts: int, ip: str) -> str:
    text = f"keywire-link-node-v1|{node_id}|{ts}|{ip}".encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def make_token(secret: bytes, node_id: str, ts: int, client_ip: str) -> str:
    """The header value: ``v1 NODE TS IP MAC``."""
    return f"v1 {node_id} {ts} {client_ip} {_mac(secret, node_id, ts, client_ip)}"


def check_token(value: str, secrets: list[bytes], now_ms: int) -> tuple[str, str] | None:
    """(node id, client IP) if ``value`` is a fresh token under one of ``secrets``, else None."""
    parts = value.split(" ")
    if len(parts) != 5 or parts[0] != "v1" or not parts[2].isdigit():
        return None
    _, node_id, ts_text, ip, mac = parts
    ts = int(ts_text)
    if abs(now_ms - ts) > MAX_SKEW_MS or not 1 <= len(ip) <= 64:
        return None
    for secret in secrets:
        if hmac.compare_digest(mac, _mac(secret, node_id, ts, ip)):
            return node_id, ip
    return None
