"""Sans-IO routing of QUIC datagrams on a listener's socket.

``QuicRouter.classify`` reads a datagram's header and says what to do with it: deliver it to a
known connection (by destination connection id, else by source address for short headers whose
new connection id the dispatcher has not learned yet), accept a new connection (an Initial of at
least 1200 bytes while under the connection limit), refuse one (over the limit, rate-limited),
answer with Version Negotiation (rate-limited), or drop it. Garbage is always a drop, never an
exception, and the table never holds more than ``max_connections`` connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from qh3._hazmat import pull_quic_header
from qh3.quic.packet import QuicPacketType, QuicProtocolVersion, encode_quic_version_negotiation

from .retry import RetryTokens, TokenError

Address = tuple[Any, ...]
#: RFC 9000 §14.1: a client's first datagram is padded to at least this size
MIN_INITIAL_SIZE = 1200


class Action(Enum):
    DELIVER = "deliver"
    ACCEPT = "accept"
    REFUSE = "refuse"
    REPLY = "reply"
    DROP = "drop"


@dataclass(frozen=True)
class Decision:
    action: Action
    #: the connection to deliver to (DELIVER)
    target: Any = None
    #: the datagram to send back to the source (REPLY: Version Negotiation)
    reply: bytes = b""
    #: the client's chosen destination connection id (ACCEPT / REFUSE)
    dcid: bytes = b""
    reason: str = ""
    #: ACCEPT / REFUSE: the id the client first chose (differs from ``dcid`` after a Retry)
    original_dcid: bytes = b""
    #: ACCEPT / REFUSE after a valid Retry token: the Retry's source id (= ``dcid``)
    retry_scid: bytes | None = None

    @property
    def validated(self) -> bool:
        """The client proved it receives at its address (it came back with our token)."""
        return self.retry_scid is not None


class TokenBucket:
    """At most ``rate`` events per second, bursting to ``rate``; time is the caller's."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class QuicRouter:
    """Connection-id table plus admission control for one listening socket."""

    def __init__(
        self,
        *,
        cid_length: int,
        max_connections: int,
        replies_per_second: float = 20.0,
        supported_versions: tuple[int, ...] = (QuicProtocolVersion.VERSION_1,),
        tokens: RetryTokens | None = None,
        retry_threshold: int = 0,
    ) -> None:
        self.cid_length = cid_length
        self.max_connections = max_connections
        self.supported_versions = supported_versions
        #: Retry tokens (None: no address validation)
        self.tokens = tokens
        #: Retry token-less Initials once this many handshakes are in flight (0: always)
        self.retry_threshold = retry_threshold
        self._handshaking: set[int] = set()
        #: counters: Retries sent, Initials with a token that failed, validated admissions
        self.retries = 0
        self.bad_tokens = 0
        self.validated = 0
        self._by_cid: dict[bytes, Any] = {}
        self._by_addr: dict[Address, Any] = {}
        #: a connection's ids (a short list: an empty set alone is 216 bytes per connection)
        self._cids_of: dict[int, list[bytes]] = {}
        self._addr_of: dict[int, Address] = {}
        self._connections: dict[int, Any] = {}
        self._replies = TokenBucket(replies_per_second)
        self.dropped = 0

    # -- the table ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._connections)

    def connections(self) -> list[Any]:
        return list(self._connections.values())

    def add(self, conn: Any, cid: bytes, addr: Address | None = None) -> None:
        key = id(conn)
        self._connections[key] = conn
        self._by_cid[cid] = conn
        cids = self._cids_of.get(key)
        if cids is None:
            self._cids_of[key] = [cid]
        elif cid not in cids:
            cids.append(cid)
        if addr is not None:
            old = self._addr_of.get(key)
            if old is not None and self._by_addr.get(old) is conn:
                del self._by_addr[old]
            self._by_addr[addr] = conn
            self._addr_of[key] = addr

    def retire(self, conn: Any, cid: bytes) -> None:
        if self._by_cid.get(cid) is conn:
            del self._by_cid[cid]
        cids = self._cids_of.get(id(conn))
        if cids is not None and cid in cids:
            cids.remove(cid)

    def remove(self, conn: Any) -> None:
        key = id(conn)
        for cid in self._cids_of.pop(key, ()):
            if self._by_cid.get(cid) is conn:
                del self._by_cid[cid]
        addr = self._addr_of.pop(key, None)
        if addr is not None and self._by_addr.get(addr) is conn:
            del self._by_addr[addr]
        self._connections.pop(key, None)
        self._handshaking.discard(key)

    def handshake_started(self, conn: Any) -> None:
        """``conn`` holds handshake state (counts towards ``retry_threshold``)."""
        self._handshaking.add(id(conn))

    def handshake_ended(self, conn: Any) -> None:
        self._handshaking.discard(id(conn))

    @property
    def handshakes_in_flight(self) -> int:
        return len(self._handshaking)

    def retry_required(self) -> bool:
        return self.tokens is not None and len(self._handshaking) >= self.retry_threshold

    # -- classification -------------------------------------------------------------------------
    def short_header_target(self, data: bytes) -> Any | None:
        """The connection a short-header packet with a known connection id belongs to, found
        without parsing the packet or building a ``Decision`` (the per-packet fast path of a
        busy listener); None means ``classify`` decides."""
        if data and not data[0] & 0x80:
            return self._by_cid.get(data[1 : 1 + self.cid_length])
        return None

    def classify(self, data: bytes, addr: Address, now: float) -> Decision:
        try:
            header = pull_quic_header(data, 0, self.cid_length)
        except ValueError:
            return self._drop("not a QUIC packet")
        version, packet_type, dcid, scid = header[0], header[1], header[3], header[4]
        conn = self._by_cid.get(dcid)
        if conn is not None:
            return Decision(Action.DELIVER, target=conn)
        if version is None:
            # short header with an unknown id: a connection id we have not learned yet
            conn = self._by_addr.get(addr)
            if conn is not None:
                return Decision(Action.DELIVER, target=conn)
            return self._drop("short header for an unknown connection")
        if len(data) < MIN_INITIAL_SIZE:
            return self._drop("long header below 1200 bytes for an unknown connection")
        if version not in self.supported_versions:
            if version == QuicProtocolVersion.NEGOTIATION or not self._replies.take(now):
                return self._drop("version negotiation not answered")
            reply = encode_quic_version_negotiation(
                source_cid=dcid,
                destination_cid=scid,
                supported_versions=list(self.supported_versions),
            )
            return Decision(Action.REPLY, reply=reply, reason="unsupported version")
        if packet_type != QuicPacketType.INITIAL:
            return self._drop("not an Initial for an unknown connection")
        original, retry_scid = dcid, None
        token = header[5]
        if token and self.tokens is not None:
            try:
                checked = self.tokens.validate(token, addr, dcid, now)
            except TokenError as exc:
                # a Retry token that fails cannot be answered with another Retry (the client
                # ignores a second one), and a token we did not mint is not worth a handshake
                self.bad_tokens += 1
                return self._drop(f"invalid token: {exc}")
            original, retry_scid = checked.original_dcid, checked.retry_scid
        elif self.retry_required():
            self.retries += 1
            assert self.tokens is not None
            reply = self.tokens.retry_packet(
                version=version, addr=addr, client_scid=scid, original_dcid=dcid, now=now
            )
            return Decision(Action.REPLY, reply=reply, reason="address validation (Retry)")
        if len(self._connections) >= self.max_connections:
            if self._replies.take(now):
                return Decision(
                    Action.REFUSE,
                    dcid=dcid,
                    reason="connection limit",
                    original_dcid=original,
                    retry_scid=retry_scid,
                )
            return self._drop("connection limit (refusals rate-limited)")
        if retry_scid is not None:
            self.validated += 1
        return Decision(Action.ACCEPT, dcid=dcid, original_dcid=original, retry_scid=retry_scid)

    def _drop(self, reason: str) -> Decision:
        self.dropped += 1
        return Decision(Action.DROP, reason=reason)
