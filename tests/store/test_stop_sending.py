"""StopSending (frame type 5, keywire's extension): ``stop_sending(code)`` reaches the peer,
whose writes fail with the code and whose direction is reset with it, over a lossy,
reordering, duplicating store, across save/restore, and through ``keywire.dial``."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

import keywire
from keywire.errors import Code, StreamError
from keywire.options import Options
from keywire.store import MapServer
from keywire.store.core import Mode, StoreCore, StoreParams
from keywire.store.frame import Frame, FrameType, Geometry, open_frame, seal_frame
from keywire.store.persist import new_state_key, open_state, seal_state
from keywire.store.schedule import KeySchedule, Role

from .sim import Endpoint, SimStore

SECRET = bytes(range(7, 39))
PAYLOAD = random.Random(5).randbytes(150_000)


def pair(params: StoreParams, mode: Mode = Mode.DUPLEX) -> tuple[Endpoint, Endpoint]:
    """(a, b): a is the listener, b the dialer."""
    return (
        Endpoint(StoreCore(SECRET, Role.LISTENER, params, mode)),
        Endpoint(StoreCore(SECRET, Role.DIALER, params, mode)),
    )


def frames_of(store: SimStore, role: Role) -> list[Frame]:
    """Every frame ``role`` wrote, in index order, up to the first missing one."""
    keys = KeySchedule.derive(SECRET, role).write
    out: list[Frame] = []
    while (value := store.data.get(keys.frame_id(len(out)))) is not None:
        out.append(open_frame(keys, len(out), value, 1 << 20))
    return out


def codes(frames: list[Frame], ftype: FrameType) -> list[int]:
    return [struct.unpack(">I", f.payload)[0] for f in frames if f.type is ftype]


def assert_stopped_writer(a: Endpoint, code: int) -> None:
    """a's writes failed with the peer's code (the one it was writing, if any, and every
    later one)."""
    assert [f.error.wire_code for f in a.write_failures] == [code]
    error = a.write_failures[0].error
    assert error.remote and f"peer asked to stop sending (code {code})" in str(error)
    if a.outbox or a.write_error is not None:
        assert a.write_error is not None and a.write_error.wire_code == code
    with pytest.raises(StreamError, match="peer asked to stop sending") as info:
        a.core.write(b"more")
    assert info.value.wire_code == code


def assert_stopped_reader(b: Endpoint, code: int) -> None:
    """b's reads failed at once (locally), then the peer's Reset with the same code came."""
    assert [(e.error.wire_code, e.error.remote, e.discard) for e in b.errors] == [
        (code, False, True),
        (code, True, True),
    ]
    assert not b.eof


@pytest.mark.parametrize("window", [1, 4])
def test_stop_sending_fails_the_writer_and_it_resets_with_the_code(window: int) -> None:
    a, b = pair(StoreParams(window=window, value_size=256, seed=21))
    a.outbox = PAYLOAD
    store = SimStore(seed=21)
    store.run([a, b], lambda: len(b.received) > 2000)
    b.core.stop_sending(7)
    b.core.close_write()
    store.run([a, b], lambda: a.core.finished and b.core.finished, limit=120)
    assert_stopped_writer(a, 7)
    assert a.write_error is not None  # it was writing when the stop came
    assert_stopped_reader(b, 7)
    assert 2000 < len(b.received) < len(PAYLOAD)
    assert bytes(b.received) == PAYLOAD[: len(b.received)]
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]
    assert codes(frames_of(store, Role.LISTENER), FrameType.RESET) == [7]


@pytest.mark.parametrize(("loss", "seed"), [(0.2, 1), (0.3, 2), (0.3, 3), (0.25, 4)])
def test_stop_arrives_through_loss_reordering_and_duplication(loss: float, seed: int) -> None:
    a, b = pair(StoreParams(window=8, value_size=256, rto_initial=0.2, seed=seed))
    a.outbox = PAYLOAD
    b_payload = b"b keeps its own direction open" * 30
    b.outbox, b.close_after = b_payload, False
    store = SimStore(loss=loss, duplicate=0.3, latency=0.005, jitter=0.02, seed=seed)
    store.run([a, b], lambda: len(b.received) > 3000)
    b.core.stop_sending(7)
    store.run([a, b], lambda: a.core.write_finished and b.core.read_finished, limit=300)
    assert_stopped_writer(a, 7)
    assert_stopped_reader(b, 7)
    assert bytes(b.received) == PAYLOAD[: len(b.received)]
    # the other way round: a stops b, whose direction is still open
    a.core.stop_sending(Code.CLOSED)
    store.run([a, b], lambda: a.core.finished and b.core.finished, limit=600)
    assert_stopped_writer(b, Code.CLOSED)
    assert_stopped_reader(a, Code.CLOSED)
    assert bytes(a.received) == b_payload
    assert not a.rejected and not b.rejected
    assert codes(frames_of(store, Role.LISTENER), FrameType.STOP_SENDING) == [Code.CLOSED]
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]
    assert codes(frames_of(store, Role.DIALER), FrameType.RESET) == [Code.CLOSED]


def test_stop_sending_twice_sends_one_frame_and_retransmissions_are_harmless() -> None:
    a, b = pair(StoreParams(window=4, value_size=256, rto_initial=0.05, rto_min=0.05, seed=31))
    a.outbox = PAYLOAD
    store = SimStore(loss=0.3, duplicate=1.0, jitter=0.03, seed=31)  # every put lands twice
    store.run([a, b], lambda: len(b.received) > 1000)
    b.core.stop_sending(7)
    b.core.stop_sending(7)
    b.core.stop_sending(9)  # the first code stands
    b.core.close_write()
    store.run([a, b], lambda: a.core.finished and b.core.finished, limit=300)
    assert_stopped_writer(a, 7)
    assert_stopped_reader(b, 7)
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]
    assert codes(frames_of(store, Role.LISTENER), FrameType.RESET) == [7]


def plant(store: SimStore, role: Role, frames: list[Frame]) -> None:
    """Put frames as ``role`` would (for a peer whose frames we choose)."""
    keys = KeySchedule.derive(SECRET, role).write
    for frame in frames:
        address, value = seal_frame(keys, frame, Geometry(256))
        store.data[address] = value


def test_a_second_stop_frame_is_acked_and_ignored() -> None:
    """A peer that sends StopSending twice (codes 7 then 9): one reset, with the first code,
    and both frames acknowledged."""
    a, _ = pair(StoreParams(window=4, value_size=256, seed=41))
    store = SimStore(seed=41)
    plant(
        store,
        Role.DIALER,
        [
            Frame(FrameType.STOP_SENDING, 0, 2**64 - 1, b"\0\0\0\7"),
            Frame(FrameType.STOP_SENDING, 1, 2**64 - 1, b"\0\0\0\x09"),
        ],
    )
    store.run([a], lambda: a.core.receiver.read_idx == 2 and a.core.flushed)
    store.run([a], lambda: a.core.receiver.ack_sent == 1 and a.core.flushed, limit=60)
    assert_stopped_writer(a, 7)
    mine = frames_of(store, Role.LISTENER)
    assert codes(mine, FrameType.RESET) == [7]
    assert mine[-1].ack == 1  # both StopSending frames acknowledged


def test_stop_after_the_writers_end_is_ignored() -> None:
    """a wrote everything and its End is built before b's StopSending reaches it: a's
    direction completes normally (nothing is reset), and b's reads stay stopped."""
    a, b = pair(StoreParams(window=4, value_size=256, seed=51))
    a.outbox = b"all of it" * 10
    store = SimStore(seed=51)
    store.run([a], lambda: a.core.flushed)  # a's End is in the store
    b.core.stop_sending(7)  # b has read nothing yet
    b.core.close_write()
    store.run([a, b], lambda: a.core.finished and b.core.finished)
    assert not a.write_failures and a.write_error is None
    assert [(e.error.wire_code, e.error.remote) for e in b.errors] == [(7, False)]
    assert b.received == b""  # discarded after the stop
    mine = frames_of(store, Role.LISTENER)
    assert FrameType.END in [f.type for f in mine] and not codes(mine, FrameType.RESET)
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]


def test_stop_after_the_peers_end_was_read_is_local_only() -> None:
    a, b = pair(StoreParams(window=4, value_size=256, seed=52))
    a.outbox = b"short"
    store = SimStore(seed=52)
    store.run([a, b], lambda: b.eof)
    b.core.stop_sending(7)  # nothing left to stop
    b.core.close_write()
    store.run([a, b], lambda: a.core.finished and b.core.finished)
    assert bytes(b.received) == b"short" and not a.write_failures
    assert not codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING)


def test_stop_reaches_an_idle_writer_after_the_stoppers_end() -> None:
    """b ended its direction long ago and a (still open, idle) no longer needs b's acks: a
    keeps one get on b's direction, so a StopSending after b's End still arrives."""
    a, b = pair(StoreParams(window=4, value_size=256, seed=53))
    a.outbox = b"first part"
    a.close_after = False
    b.core.close_write()
    store = SimStore(seed=53)
    store.run([a, b], lambda: a.eof and b.received == b"first part" and a.core.acked)
    store.run([a, b], lambda: a.core.quiescent and b.core.quiescent)
    idle_until = store.now + 3 * a.core.params.get_wait  # every earlier long poll ran out
    store.run([a, b], lambda: store.now >= idle_until)
    b.core.stop_sending(7)
    store.run([a, b], lambda: bool(a.write_failures))
    a.outbox = b"second part"
    store.run([a, b], lambda: a.core.finished and b.core.finished)
    assert_stopped_writer(a, 7)
    assert_stopped_reader(b, 7)
    assert bytes(b.received) == b"first part"
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]
    kinds = [f.type for f in frames_of(store, Role.DIALER)]
    assert kinds.index(FrameType.END) < kinds.index(FrameType.STOP_SENDING)


def test_a_stop_the_peer_never_reads_needs_no_ack_once_its_end_arrived() -> None:
    """b's StopSending is lost while b's next frame (acking a's End) arrives: a, done both
    ways, stops reading b, so nobody will ack the StopSending. b read a's End, so nothing is
    left to stop: b only reads the frame back, like a bare ack, and finishes."""
    a, b = pair(StoreParams(window=4, value_size=256, seed=54))
    a.outbox, a.close_after = b"x", False
    b.core.close_write()
    store = SimStore(seed=54)
    store.run(
        [a, b], lambda: a.eof and b.received == b"x" and a.core.quiescent and b.core.quiescent
    )
    stop_address = KeySchedule.derive(SECRET, Role.DIALER).write.frame_id(
        b.core.snapshot()["write_idx"]
    )
    store.black_hole.add(stop_address)
    b.core.stop_sending(7)  # built before b reads a's End ...
    a.core.close_write()
    store.run([a, b], lambda: a.core.finished and b.eof)
    lift_at = store.now + 3 * a.core.params.get_wait  # ... and lost until a stopped reading
    store.run([a, b], lambda: store.now >= lift_at)
    store.black_hole.clear()
    store.run([a, b], lambda: b.core.finished)
    assert not a.write_failures
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]


def test_save_and_restore_across_an_unacked_stop() -> None:
    """b's StopSending is in the store but unacked when b is saved and b "crashes"; the
    restored b resends it and keeps reading stopped, and a resets with the code."""
    params = StoreParams(window=4, value_size=256, seed=61)
    a, b = pair(params)
    a.outbox = PAYLOAD
    store = SimStore(seed=61)
    store.run([a, b], lambda: len(b.received) > 1000)
    b.core.stop_sending(7)
    stop_address = KeySchedule.derive(SECRET, Role.DIALER).write.frame_id(
        b.core.snapshot()["write_idx"]
    )
    store.black_hole.add(stop_address)
    for op in b.core.poll(store.now):  # the StopSending is built and put ...
        store.start(b, op)
    saved = open_state(seal_state(b.core.snapshot(), key := new_state_key()), key)
    assert saved["stop"] == "sent" and saved["sent"][-1][1] == stop_address
    store.run([a], lambda: stop_address not in store.black_hole or store.now > 1.0)
    store.black_hole.clear()  # ... lost, and b is gone
    assert stop_address not in store.data
    restored = Endpoint(StoreCore.from_snapshot(saved, params, store.now))
    restored.core.close_write()
    store.run([a, restored], lambda: a.core.finished and restored.core.finished, limit=120)
    assert_stopped_writer(a, 7)
    assert [(e.error.wire_code, e.error.remote) for e in restored.errors] == [(7, False), (7, True)]
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]


def test_restore_builds_a_stop_saved_before_it_was_built() -> None:
    params = StoreParams(window=4, value_size=256, seed=62)
    a, b = pair(params)
    a.outbox = PAYLOAD
    store = SimStore(seed=62)
    store.run([a, b], lambda: len(b.received) > 1000)
    b.core.stop_sending(7)
    saved = b.core.snapshot()  # saved before any poll built the frame
    assert saved["stop"] == "pending"
    restored = Endpoint(StoreCore.from_snapshot(saved, params, store.now))
    restored.core.close_write()
    store.run([a, restored], lambda: a.core.finished and restored.core.finished, limit=120)
    assert_stopped_writer(a, 7)
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]


def test_restore_adopts_a_stop_sent_after_the_save() -> None:
    """Saved before stop_sending; the previous run then sent the StopSending and died. The
    restored run finds that frame in the store and takes it as sent: reads stay stopped."""
    params = StoreParams(window=4, value_size=256, seed=63)
    a, b = pair(params)
    a.outbox = PAYLOAD
    store = SimStore(seed=63)
    store.run([a, b], lambda: len(b.received) > 1000)
    saved = b.core.snapshot()
    b.core.stop_sending(7)
    for op in b.core.poll(store.now):
        store.start(b, op)
    restored = Endpoint(StoreCore.from_snapshot(saved, params, store.now))
    store.run([restored], lambda: not restored.core.recovering)
    restored.core.close_write()
    store.run([a, restored], lambda: a.core.finished and restored.core.finished, limit=120)
    assert_stopped_writer(a, 7)
    assert (7, False) in [(e.error.wire_code, e.error.remote) for e in restored.errors]
    assert codes(frames_of(store, Role.DIALER), FrameType.STOP_SENDING) == [7]


def test_a_stop_acted_on_stays_acted_on_after_restore() -> None:
    params = StoreParams(window=4, value_size=256, seed=64)
    a, b = pair(params)
    a.outbox = PAYLOAD
    store = SimStore(seed=64)
    store.run([a, b], lambda: len(b.received) > 1000)
    b.core.stop_sending(7)
    store.run([a, b], lambda: bool(a.write_failures))
    saved = a.core.snapshot()
    assert saved["peer_stop"] == 7
    restored = Endpoint(StoreCore.from_snapshot(saved, params, store.now))
    with pytest.raises(StreamError, match=r"peer asked to stop sending \(code 7\)") as info:
        restored.core.write(b"x")
    assert info.value.wire_code == 7 and info.value.remote
    b.core.close_write()
    store.run([restored, b], lambda: restored.core.finished and b.core.finished, limit=120)
    assert_stopped_reader(b, 7)


def test_states_saved_before_stop_sending_existed_still_load() -> None:
    """The snapshot keeps version 1: the StopSending keys are optional."""
    core = StoreCore(SECRET, Role.DIALER)
    state = core.snapshot()
    for key in ("stop", "stop_code", "stop_idx", "peer_stop"):
        del state[key]
    restored = StoreCore.from_snapshot(state)
    restored.stop_sending(3)
    assert restored.snapshot()["stop"] == "pending"
    state = core.snapshot() | {"stop": "sideways"}
    with pytest.raises(ValueError, match="saved stream state is malformed"):
        StoreCore.from_snapshot(state)


def test_multicast_stop_sending_stays_local() -> None:
    """A multicast reader cannot write, so it sends nothing: its reads stop, the publisher
    is not told and finishes normally."""
    params = StoreParams(window=4, value_size=256, seed=71)
    pub = Endpoint(StoreCore(SECRET, Role.LISTENER, params, Mode.MULTICAST))
    reader = Endpoint(StoreCore(SECRET, Role.DIALER, params, Mode.MULTICAST))
    pub.outbox = PAYLOAD[:20_000]
    store = SimStore(seed=71)
    store.run([pub, reader], lambda: len(reader.received) > 1000)
    reader.core.stop_sending(7)
    store.run([pub, reader], lambda: pub.core.finished)
    assert not pub.write_failures and pub.write_error is None
    assert [(e.error.wire_code, e.error.remote) for e in reader.errors] == [(7, False)]
    assert frames_of(store, Role.DIALER) == []  # the reader put nothing at all
    pub.core.stop_sending(7)  # a publisher reads nothing: local too
    assert reader.core.snapshot()["stop"] == pub.core.snapshot()["stop"] == "local"


# -- end to end: keywire.dial / keywire.Server over the map server ------------------------------
OPTIONS = Options(extra={"store.linger": 5.0, "store.window": 4})


async def test_stop_sending_through_dial_and_server() -> None:
    """The server streams until the client stops it: the server's blocked write fails with
    StreamError(7), the client's reads fail with 7 and its stream ends (the server's Reset
    arrived), and both connections close without hanging."""
    async with MapServer() as map_server:
        server = keywire.Server([f"{map_server.url}~stream"], OPTIONS)
        await server.start()
        try:
            write_error: list[StreamError] = []

            async def serve() -> None:
                conn = await server.__aiter__().__anext__()
                stream = await conn.accept_stream()
                try:
                    while True:
                        await stream.write(bytes(200_000))  # blocks on backpressure
                except StreamError as exc:
                    write_error.append(exc)
                await conn.close()

            serving = asyncio.ensure_future(serve())
            conn = await keywire.dial(server.address(), OPTIONS)
            stream = await conn.open_stream()
            async with asyncio.timeout(20):
                await stream.write(b"go")
                assert len(await stream.readexactly(50_000)) == 50_000
                stream.stop_sending(7)
                with pytest.raises(StreamError) as info:
                    await stream.read()
                assert info.value.wire_code == 7 and not info.value.remote
                await stream.close_write()
                await stream.wait_finished()  # the server's Reset(7) arrived
                await serving
            assert write_error and write_error[0].wire_code == 7 and write_error[0].remote
            assert "(7, peer): the peer ended our sending half" in str(write_error[0])
            assert stream.core.failed is None
            await asyncio.wait_for(conn.close(), 10)
        finally:
            await server.close()
