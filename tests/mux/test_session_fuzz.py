"""Hypothesis against the session: hostile bytes end only in the documented protocol error, and
two honest sessions under any sequence of operations never see one and never lose bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywire.errors import Code, ConnectionClosed, StreamError
from keywire.events import (
    ConnectionTerminated,
    StopSendingReceived,
    StreamClosed,
    StreamData,
    StreamOpened,
    StreamReset,
)
from keywire.mux.frame import INITIAL_WINDOW, encode_header
from keywire.mux.session import MuxConfig, MuxSession

CONFIG = MuxConfig(
    window=INITIAL_WINDOW, max_streams=8, keepalive_interval=1.0, keepalive_timeout=1.0
)


def check_ended_properly(session: MuxSession) -> None:
    """Either still open, or ended by a protocol error we detected, or by the peer's GoAway."""
    terminated = session.terminated
    if terminated is None:
        return
    if not terminated.remote:
        assert terminated.code == Code.PROTOCOL_ERROR, terminated
        assert terminated.reason
    assert session.stream_count == 0


def feed(session: MuxSession, data: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        session.receive_data(data[last:cut], 0.0)
        last = max(last, cut)
    session.events()
    session.data_to_send()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes(client: bool, data: bytes, cuts: list[int]) -> None:
    session = MuxSession(client=client, config=CONFIG)
    feed(session, data, cuts)
    check_ended_properly(session)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))
    flags = draw(st.integers(0, 0x1F) | st.sampled_from([0x1, 0x2, 0x4, 0x8, 0x10, 0x101]))
    sid = draw(st.integers(0, 9) | st.just(0xFFFFFFFF))
    if kind == 0:
        length = draw(st.integers(0, 40) | st.sampled_from([INITIAL_WINDOW, INITIAL_WINDOW + 1]))
        payload = draw(st.binary(min_size=min(length, 40), max_size=min(length, 40)))
        return encode_header(kind, flags, sid, length) + payload
    length = draw(st.integers(0, 0x120) | st.integers(0, 0xFFFFFFFF))
    return encode_header(kind, flags, sid, length)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.booleans(),
    st.lists(frames(), max_size=25),
    st.lists(st.integers(0, 2000), max_size=4),
    st.lists(
        st.sampled_from(["open", "send", "fin", "reset", "stop", "consume", "timer"]), max_size=8
    ),
)
def test_random_frames_between_local_operations(
    client: bool, wire: list[bytes], cuts: list[int], ops: list[str]
) -> None:
    """Well-formed headers with random meanings reach deep states; local calls in between."""
    session = MuxSession(client=client, config=CONFIG)
    data = b"".join(wire)
    half = len(data) // 2
    feed(session, data[:half], cuts)
    now = 0.0
    for op in ops:
        sid = session.open_stream() if op == "open" and session.can_open_stream() else None
        sids = session.stream_ids
        target = sid if sid is not None else (sids[0] if sids else 1)
        try:
            if op == "send":
                session.send(target, b"payload")
            elif op == "fin":
                session.close_write(target)
            elif op == "reset":
                session.reset(target, 7)
            elif op == "stop":
                session.stop_sending(target, 1)
            elif op == "consume":
                session.consumed(target, 100)
            elif op == "timer":
                now += 1.0
                session.handle_timer(now)
        except (StreamError, ConnectionClosed):
            pass
    feed(session, data[half:], cuts)
    if session.terminated is not None and not session.terminated.remote:
        assert session.terminated.code in (Code.PROTOCOL_ERROR, Code.TIMEOUT)
    else:
        check_ended_properly(session)


# -- two honest peers ----------------------------------------------------------------------------
class Side:
    def __init__(self, client: bool) -> None:
        self.session = MuxSession(
            client=client,
            config=MuxConfig(
                window=INITIAL_WINDOW,
                max_window=4 * INITIAL_WINDOW,
                connection_window=10 * INITIAL_WINDOW,
                max_frame=50_000,
                max_streams=4,
                keepalive_interval=None,
            ),
        )
        self.sent: dict[int, bytearray] = {}
        self.received: dict[int, bytearray] = {}
        self.finished: set[int] = set()
        self.reset_by_peer: set[int] = set()
        self.known: list[int] = []
        self.unconsumed: dict[int, int] = {}
        self.stopped: set[int] = set()
        self.closed: set[int] = set()
        #: streams this side asked the peer to stop: what still arrives is discarded
        self.stopped_locally: set[int] = set()

    def absorb(self) -> None:
        for event in self.session.events():
            if isinstance(event, StreamOpened):
                self.known.append(event.stream_id)
            elif isinstance(event, StreamData):
                if event.fin:
                    self.finished.add(event.stream_id)
                self.received.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.unconsumed[event.stream_id] = self.unconsumed.get(event.stream_id, 0) + len(
                    event.data
                )
            elif isinstance(event, StreamReset):
                self.reset_by_peer.add(event.stream_id)
            elif isinstance(event, ConnectionTerminated):
                raise AssertionError(f"honest peers ended: {event}")
            elif isinstance(event, StopSendingReceived):
                self.stopped.add(event.stream_id)
            elif isinstance(event, StreamClosed):
                self.closed.add(event.stream_id)

    def consume_all(self) -> None:
        for sid, n in list(self.unconsumed.items()):
            # with a clock that never moves, every grant is "fast": windows grow to the limits
            self.session.consumed(sid, n, now=0.0)
            self.unconsumed[sid] = 0


OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "send", "fin", "reset", "stop", "consume", "deliver"]),
        st.booleans(),
        st.integers(0, 7),
        st.integers(1, 120_000),
        st.integers(0, 11),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.lists(st.integers(1, 70_000), min_size=1, max_size=5))
def test_two_honest_sessions_never_disagree(
    ops: list[tuple[str, bool, int, int, int]], chunking: list[int]
) -> None:
    a, b = Side(client=True), Side(client=False)

    def deliver(src: Side, dst: Side) -> None:
        data = src.session.data_to_send()
        pos, i = 0, 0
        while pos < len(data):
            size = chunking[i % len(chunking)]
            dst.session.receive_data(data[pos : pos + size], 0.0)
            pos += size
            i += 1
        dst.absorb()

    for op, on_a, index, size, code in ops:
        side = a if on_a else b
        s = side.session
        if op == "open":
            if s.can_open_stream():
                side.known.append(s.open_stream())
            continue
        if op == "deliver":
            deliver(a, b)
            deliver(b, a)
            continue
        if op == "consume":
            side.consume_all()
            continue
        if not side.known:
            continue
        sid = side.known[index % len(side.known)]
        try:
            if op == "send":
                payload = bytes([sid % 251]) * size
                n = s.send(sid, payload)
                side.sent.setdefault(sid, bytearray()).extend(payload[:n])
            elif op == "fin":
                s.close_write(sid)
            elif op == "reset":
                s.reset(sid, code)
            elif op == "stop":
                s.stop_sending(sid, code)
                side.stopped_locally.add(sid)
        except StreamError:
            pass
    for _ in range(4):
        deliver(a, b)
        deliver(b, a)
        a.consume_all()
        b.consume_all()
    assert not a.session.closed and not b.session.closed
    for sender, receiver in ((a, b), (b, a)):
        for sid, sent in sender.sent.items():
            got = receiver.received.get(sid, bytearray())
            # bytes arrive in order; a clean FIN means every byte arrived, unless the receiver
            # itself stopped reading (then what arrives after the stop is discarded)
            assert bytes(sent).startswith(bytes(got))
            if (
                sid in receiver.finished
                and sid not in receiver.reset_by_peer
                and sid not in receiver.stopped_locally
            ):
                assert got == sent
