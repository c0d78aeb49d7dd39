"""The WebTransport core adapter: one WebTransport session per QUIC connection, seen as KPS.

``WebTransportQuic`` sits between qh3's QUIC connection and keywire's sans-IO stream core
(``KpsSession``) and translates in both directions, so the core and its asyncio shell run
unchanged:

* HTTP/3's own streams (control, QPACK, the CONNECT request) go to qh3's ``H3Connection`` and
  never reach the core; the handshake is reported to the core only once the WebTransport
  session is up (server: a valid CONNECT answered 200 and the binding record sent; client: the
  200 seen and the binding record verified), and stream events that arrive earlier are held.
* a WebTransport stream's header (0x41 / 0x54 + session id) is added on streams we open and
  taken off streams the peer opens; the core sees plain stream ids and bytes;
* stream error codes are mapped into and out of WebTransport's HTTP/3 range; datagrams get and
  lose the quarter stream id.

Sans-IO like the core: no sockets, no event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from qh3._hazmat import pull_quic_header
from qh3.h3.connection import H3Connection, ProtocolError
from qh3.h3.events import DataReceived, H3Event, HeadersReceived
from qh3.h3.events import StreamReset as H3StreamReset
from qh3.quic import events as qe
from qh3.quic.crypto import derive_key_iv_hp
from qh3.tls import CipherSuite, cipher_suite_hash, hkdf_expand_label

from ..errors import Code, HandshakeError
from ..kps.quic.configuration import GatedQuicConnection
from ..kps.quic.session import KpsSession
from .binding import MAX_RECORD, BindingError
from .wire import (
    BIDI_SIGNAL,
    CLOSE_SESSION,
    PATH,
    UNI_TYPE,
    bidi_header,
    close_capsule,
    decode_varint,
    encode_varint,
    from_http_code,
    parse_capsules,
    to_http_code,
)

log = logging.getLogger("keywire.webtransport")

#: SETTINGS a WebTransport server must send (RFC 9220 extended CONNECT; draft WT_MAX_SESSIONS
#: under its draft-07 and draft-13 codepoints), added to qh3's ENABLE_WEBTRANSPORT (draft-02)
EXTRA_SETTINGS = {0x8: 1, 0xC671706A: 1, 0x14E9CD29: 1}
#: default seconds a close waits for its CLOSE_WEBTRANSPORT_SESSION to be acknowledged
#: (``webtransport.close_linger``)
CLOSE_LINGER = 1.0
#: bytes of stream events held until the session is up; more is a protocol violation
MAX_EARLY = 1 << 20
H3_NO_ERROR = 0x100
QUIC_V1 = 0x00000001
#: RFC 9001 §5.2
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
#: stream kinds
WT, H3, BINDING = "wt", "h3", "binding"

Verify = Callable[[bytes], None]


class _H3(H3Connection):
    """qh3's HTTP/3 connection with the settings browsers require of a WebTransport server."""

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        settings.update(EXTRA_SETTINGS)
        return settings


class WebTransportQuic(GatedQuicConnection):
    """A QUIC connection carrying exactly one WebTransport session (see module doc)."""

    def __init__(
        self,
        *,
        authority: str = "",
        path: str = PATH,
        record: bytes | None = None,
        verify: Verify | None = None,
        close_linger: float = CLOSE_LINGER,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.close_linger = close_linger
        self.h3: H3Connection | None = None
        self.session_id: int | None = None
        #: the session is up: stream events pass to the core
        self.ready = False
        #: why the client refused the server (binding, status), once it did
        self.refusal: HandshakeError | None = None
        self._authority = authority
        self._path = path
        self._record = record
        self._verify = verify
        self._held: qe.HandshakeCompleted | None = None
        self._out: deque[qe.QuicEvent] = deque()
        self._early: list[qe.QuicEvent] = []
        self._early_bytes = 0
        self._kind: dict[int, str] = {}
        self._prefix: dict[int, bytearray] = {}
        self._headed: set[int] = set()
        self._binding = bytearray()
        self._capsules = bytearray()
        #: client: the server's 200 arrived; its binding record verified
        self._accepted = False
        self._binding_done = False
        #: an application close waiting for its capsule to be acknowledged, and its deadline
        self._closing: tuple[int, str] | None = None
        self._close_at: float | None = None
        #: the source connection id of a client's first Initial (server side)
        self._client_scid: bytes | None = None

    # -- events out to the core -----------------------------------------------------------------
    def next_event(self) -> qe.QuicEvent | None:
        while not self._out:
            event = super().next_event()
            if event is None:
                return None
            self._handle(event)
        return self._out.popleft()

    def _emit(self, event: qe.QuicEvent) -> None:
        if self.ready:
            self._out.append(event)
            return
        self._early.append(event)
        self._early_bytes += len(getattr(event, "data", b"")) + 16
        if self._early_bytes > MAX_EARLY:
            self._refuse("webtransport: more than 1 MiB of stream data before the session was up")

    def _go_ready(self) -> None:
        if self.ready or self._held is None:
            return
        self.ready = True
        self._out.append(self._held)
        self._out.extend(self._early)
        self._early.clear()

    def _refuse(
        self, reason: str, code: int = Code.PROTOCOL_ERROR, *, binding: bool = False
    ) -> None:
        """End the connection before the session is up; ``binding``: the identity check failed
        (a permanent ``BindingError``), otherwise a ``HandshakeError``."""
        if self.refusal is None:
            self.refusal = BindingError(reason) if binding else HandshakeError(reason)
            log.debug("webtransport: %s", reason)
            self.close(error_code=int(code), reason_phrase=reason[:100])

    def drop_references(self) -> None:
        self.h3 = None

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if self._core is None and not self._is_client:
            try:
                header = pull_quic_header(data, 0, self._configuration.connection_id_length)
                self._client_scid = header[4]
            except ValueError:
                pass
        super().receive_datagram(data, addr, now)

    def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
        if (
            self._client_scid != b""
            or self._version != QUIC_V1
            or len(initial_dcid) != self._configuration.connection_id_length
        ):
            super()._create_core(remote_addr, initial_dcid, now)
            return
        # qh3 2.1's core never adopts a zero-length client connection id (Chromium's): it
        # keeps addressing the client's original DCID, which Chromium drops. So the core is
        # built towards the empty id, with the original DCID as our own id (the core accepts
        # Initials addressed to it, and the router already routes it here), and the Initial
        # keys that DCID derives are installed by hand (RFC 9001 §5.2)
        self.host_cid = initial_dcid
        super()._create_core(remote_addr, b"", now)
        core = self._core
        assert core is not None
        initial = hmac.new(INITIAL_SALT_V1, initial_dcid, hashlib.sha256).digest()
        algorithm = cipher_suite_hash(CipherSuite.AES_128_GCM_SHA256)
        for direction, label in (("receive", b"client in"), ("send", b"server in")):
            secret = hkdf_expand_label(algorithm, initial, label, b"", 32)
            key, iv, hp = derive_key_iv_hp(
                cipher_suite=CipherSuite.AES_128_GCM_SHA256, secret=secret, version=QUIC_V1
            )
            core.install_packet_key(
                direction, 0, ("aes-128-gcm", "aes-128-ecb"), key, iv, hp, 0, secret, QUIC_V1
            )

    def _learn_remote_source_cid(self, data: bytes) -> None:
        """qh3 2.1 learns the client's source connection id only if it is non-empty, then
        refuses a client with a zero-length one (Chromium) for "initial_source_connection_id
        does not match"; an empty id from a long header is learned too."""
        super()._learn_remote_source_cid(data)
        bridge = self._tls
        if self._handshake_complete or bridge is None:
            return
        if bridge.remote_initial_source_connection_id is None:
            try:
                header = pull_quic_header(data, 0, self._configuration.connection_id_length)
            except ValueError:
                return
            if header[0] is not None:  # a long header: its source id is the client's
                bridge.remote_initial_source_connection_id = header[4]

    # -- translation ------------------------------------------------------------------------------
    def _local(self, stream_id: int) -> bool:
        return (stream_id & 1) == (0 if self._is_client else 1)

    def _handle(self, event: qe.QuicEvent) -> None:
        if isinstance(event, qe.HandshakeCompleted):
            self._held = event
            self._start()
        elif isinstance(event, qe.StreamDataReceived):
            self._on_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, (qe.StreamReset, qe.StopSendingReceived)):
            self._on_code(event)
        elif isinstance(event, qe.DatagramFrameReceived):
            head = decode_varint(event.data)
            if head is not None and self.session_id is not None and head[0] * 4 == self.session_id:
                self._emit(qe.DatagramFrameReceived(data=event.data[head[1] :]))
        else:
            self._out.append(event)

    def _start(self) -> None:
        try:
            self.h3 = _H3(weakref.proxy(self), enable_webtransport=True)  # type: ignore[arg-type]
        except Exception as exc:
            self._refuse(f"HTTP/3 could not start: {exc}", Code.INTERNAL_ERROR)
            return
        if self._is_client:
            stream_id = self.get_next_available_stream_id()
            self.session_id = stream_id
            self._kind[stream_id] = H3
            self.h3.send_headers(
                stream_id,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"webtransport"),
                    (b":scheme", b"https"),
                    (b":authority", self._authority.encode()),
                    (b":path", self._path.encode()),
                    (b"sec-webtransport-http3-draft02", b"1"),
                ],
                end_stream=False,
            )

    def _classify(self, stream_id: int, data: bytes) -> tuple[str | None, bytes]:
        """The kind of a stream seen for the first time, and its data after any header."""
        if self._local(stream_id):
            return (H3 if stream_id == self.session_id else WT), data
        buffer = self._prefix.setdefault(stream_id, bytearray())
        buffer.extend(data)
        first = decode_varint(buffer)
        if first is None:
            return None, b""
        signal = BIDI_SIGNAL if not stream_id & 2 else UNI_TYPE
        if first[0] != signal:
            return H3, bytes(self._prefix.pop(stream_id))
        second = decode_varint(buffer, first[1])
        if second is None:
            return None, b""
        rest = bytes(buffer[second[1] :])
        del self._prefix[stream_id]
        if stream_id & 2 and self._is_client and not self._accepted_binding_stream():
            return BINDING, rest
        return WT, rest

    def _accepted_binding_stream(self) -> bool:
        """True once the server's first unidirectional WebTransport stream was claimed."""
        return BINDING in self._kind.values() or self.ready

    def _on_data(self, stream_id: int, data: bytes, fin: bool) -> None:
        kind = self._kind.get(stream_id)
        first = kind is None
        if kind is None:
            kind, data = self._classify(stream_id, data)
            if kind is None:
                if fin:
                    self._prefix.pop(stream_id, None)
                return
            self._kind[stream_id] = kind
        if kind == WT:
            if data or fin or first:
                self._emit(qe.StreamDataReceived(data=data, end_stream=fin, stream_id=stream_id))
        elif kind == BINDING:
            self._binding.extend(data)
            if len(self._binding) > MAX_RECORD:
                self._refuse(
                    "webtransport: the binding record is too long",
                    Code.PERMISSION_DENIED,
                    binding=True,
                )
            elif fin:
                self._check_binding()
        else:
            self._feed(qe.StreamDataReceived(data=data, end_stream=fin, stream_id=stream_id))

    def _on_code(self, event: qe.StreamReset | qe.StopSendingReceived) -> None:
        stream_id = event.stream_id
        kind = self._kind.get(stream_id)
        if kind is None and not (stream_id & 2):
            kind = self._kind[stream_id] = WT  # reset before its header arrived
            self._prefix.pop(stream_id, None)
        if kind == WT:
            mapped = from_http_code(event.error_code)
            code = Code.INTERNAL_ERROR if mapped is None else mapped
            if isinstance(event, qe.StreamReset):
                self._emit(qe.StreamReset(error_code=code, stream_id=stream_id))
            else:
                self._emit(qe.StopSendingReceived(error_code=code, stream_id=stream_id))
        elif kind == BINDING:
            self._refuse(
                "webtransport: the server reset its binding stream",
                Code.PERMISSION_DENIED,
                binding=True,
            )
        elif kind == H3:
            self._feed(event)

    def _feed(self, event: qe.QuicEvent) -> None:
        if self.h3 is None:
            return
        try:
            h3_events = self.h3.handle_event(event)
        except (ProtocolError, AssertionError, ValueError) as exc:
            self._refuse(f"HTTP/3 error: {exc}", Code.PROTOCOL_ERROR)
            return
        for h3_event in h3_events:
            self._on_h3(h3_event)

    def _on_h3(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            if self._is_client:
                self._on_response(event)
            else:
                self._on_request(event)
            if event.stream_ended and event.stream_id == self.session_id:
                self._session_ended(Code.NONE, "session stream ended")
        elif isinstance(event, DataReceived) and event.stream_id == self.session_id:
            self._capsules.extend(event.data)
            for kind, value in parse_capsules(self._capsules):
                if kind == CLOSE_SESSION and len(value) >= 4:
                    code = int.from_bytes(value[:4], "big")
                    self._session_ended(code, value[4:].decode(errors="replace"))
                    return
            if event.stream_ended:
                self._session_ended(Code.NONE, "session stream ended")
        elif isinstance(event, H3StreamReset) and event.stream_id == self.session_id:
            self._session_ended(Code.CANCELLED, "session stream reset")

    def _on_request(self, event: HeadersReceived) -> None:
        assert self.h3 is not None
        headers = dict(event.headers)
        good = (
            headers.get(b":method") == b"CONNECT"
            and headers.get(b":protocol") == b"webtransport"
            and headers.get(b":path", b"").split(b"?")[0] == PATH.encode()
            and self.session_id is None
        )
        if not good:
            self.h3.send_headers(event.stream_id, [(b":status", b"404")], end_stream=True)
            return
        self.session_id = event.stream_id
        self.h3.send_headers(
            event.stream_id,
            [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
            end_stream=False,
        )
        if self._record is not None:
            uni = self.h3.create_webtransport_stream(event.stream_id, is_unidirectional=True)
            self.send_stream_data(uni, self._record, True)
        self._go_ready()

    def _on_response(self, event: HeadersReceived) -> None:
        if event.stream_id != self.session_id or self._accepted:
            return
        status = dict(event.headers).get(b":status", b"")
        if status != b"200":
            self._refuse(f"webtransport: the server answered status {status.decode()!r}")
            return
        self._accepted = True
        if self._binding_done:
            self._go_ready()

    def _check_binding(self) -> None:
        if self._verify is not None:
            try:
                self._verify(bytes(self._binding))
            except BindingError as exc:
                self._refuse(str(exc), Code.PERMISSION_DENIED, binding=True)
                return
        self._binding_done = True
        if self._accepted:
            self._go_ready()

    def _session_ended(self, code: int, reason: str) -> None:
        """The peer ended the session (capsule, FIN or reset of the CONNECT stream)."""
        if not self.ready:
            self._refuse(f"webtransport: session refused: {reason}")
            return
        self._out.append(
            qe.ConnectionTerminated(error_code=code, frame_type=None, reason_phrase=reason)
        )

    # -- commands in from the core ----------------------------------------------------------------
    def _is_wt(self, stream_id: int) -> bool:
        return (not stream_id & 2 and stream_id != self.session_id) or (
            self._kind.get(stream_id) == WT
        )

    def send_stream_data(self, stream_id: int, data: Any, end_stream: bool = False) -> None:
        if (
            self.session_id is not None
            and not stream_id & 2
            and self._local(stream_id)
            and stream_id != self.session_id
            and stream_id not in self._headed
        ):
            self._headed.add(stream_id)
            self._kind[stream_id] = WT
            data = bidi_header(self.session_id) + bytes(data)
        super().send_stream_data(stream_id, data, end_stream)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        if self._is_wt(stream_id):
            error_code = to_http_code(error_code)
        super().reset_stream(stream_id, error_code)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        if self._is_wt(stream_id):
            error_code = to_http_code(error_code)
        super().stop_stream(stream_id, error_code)

    def close(
        self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None:
        """An application close of an established session first sends
        CLOSE_WEBTRANSPORT_SESSION (code, reason) and FIN on the CONNECT stream, which is how a
        browser learns the code (Chromium and Firefox both report a CONNECTION_CLOSE that
        follows at once as a lost connection, the capsule unread). The core above sees the
        connection closed at once, but the QUIC connection stays driven (``close_lingering``)
        so a lost capsule is retransmitted like any stream data; CONNECTION_CLOSE follows once
        the capsule is acknowledged, or after ``close_linger`` seconds."""
        if self._closing is not None:
            return
        if (
            self.ready
            and frame_type is None
            and self.h3 is not None
            and self.session_id is not None
            and self._close_event is None
            and 0 <= error_code <= 0xFFFFFFFF
        ):
            try:
                capsule = close_capsule(error_code, reason_phrase)
                self.h3.send_data(self.session_id, capsule, end_stream=True)
            except (ProtocolError, AssertionError, ValueError):
                pass
            else:
                self._closing = (error_code, reason_phrase)
                # the core above learns of the close now (a closed connection is closed at
                # once); the QUIC connection lives on until the capsule is acknowledged
                self._out.append(
                    qe.ConnectionTerminated(
                        error_code=error_code, frame_type=None, reason_phrase=reason_phrase
                    )
                )
                return
        super().close(error_code=error_code, frame_type=frame_type, reason_phrase=reason_phrase)

    @property
    def close_lingering(self) -> bool:
        """The close capsule is sent but not known to be acknowledged, and no CONNECTION_CLOSE
        has gone yet: the shell must keep driving this connection (timers, ACKs, resends)."""
        return self._closing is not None and self._close_event is None

    def _finish_close(self) -> None:
        if self._closing is not None and self._close_event is None:
            code, reason = self._closing
            super().close(error_code=code, frame_type=None, reason_phrase=reason)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        out = super().datagrams_to_send(now)
        if self._closing is not None and self._close_event is None:
            core = self._core
            if self._close_at is None:
                self._close_at = now + self.close_linger
            elif core is not None and core.bytes_in_flight == 0:
                self._finish_close()  # the capsule was acknowledged
                out += super().datagrams_to_send(now)
        return out

    def get_timer(self) -> float | None:
        timer = super().get_timer()
        if self._close_at is not None and self._close_event is None:
            return self._close_at if timer is None else min(timer, self._close_at)
        return timer

    def handle_timer(self, now: float) -> None:
        if self._close_at is not None and now >= self._close_at:
            self._finish_close()
        super().handle_timer(now)

    def send_datagram_frame(self, data: bytes) -> None:
        if self.session_id is None:
            raise ValueError("no WebTransport session yet")
        super().send_datagram_frame(encode_varint(self.session_id // 4) + bytes(data))


class WebTransportSession(KpsSession):
    """The stream core over ``WebTransportQuic``: datagram room less the quarter stream id."""

    quic: WebTransportQuic

    @property
    def max_datagram_size(self) -> int:
        base = KpsSession.max_datagram_size.fget(self)  # type: ignore[attr-defined]
        session_id = self.quic.session_id
        if not base or session_id is None:
            return 0
        return max(0, int(base) - len(encode_varint(session_id // 4)))
