"""Every dial of one ``…~stream:SECRET`` address is a session of its own: nothing of an earlier
session is ever delivered to a later one (issue 10), over memory, the map server and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keywire
from keywire.options import Options
from keywire.store import (
    HttpStore,
    MapServer,
    MemoryStore,
    Role,
    StoreBackend,
    StoreError,
    StoreParams,
    StoreStream,
    format_secret,
    generate_secret,
    parse_secret,
)
from keywire.store.rendezvous import SessionDialer, SessionListener, dial_session, search
from keywire.store.schedule import KeySchedule
from keywire.store.session import (
    RecordError,
    SessionKeys,
    SlotSearch,
    new_session,
    open_record,
    seal_record,
)

from .conftest import RedisProcess, random_bytes

OPTIONS = Options(extra={"store.linger": 5.0})
PARAMS = StoreParams(window=8, value_size=4096, rto_min=0.05, rto_initial=0.2)
#: three sessions: two of one size with other contents, a third of another size
SIZES = (120_000, 120_000, 1_000_003)


# -- the sans-IO parts ---------------------------------------------------------------------------
@pytest.mark.parametrize("used", [0, 1, 2, 3, 4, 7, 8, 9, 100, 1000, 65_537])
def test_slot_search_finds_the_first_free_slot_in_log_probes(used: int) -> None:
    finder = SlotSearch()
    while (slot := finder.probe()) is not None:
        finder.answer(slot, slot < used)
    assert finder.result == used
    assert finder.probes <= 2 * max(1, used).bit_length() + 2


def test_slot_search_never_returns_a_used_slot_around_holes() -> None:
    for hole in range(0, 40):
        used = set(range(50)) - {hole}
        finder = SlotSearch()
        while (slot := finder.probe()) is not None:
            finder.answer(slot, slot in used)
        assert finder.result not in used


def test_records_open_only_in_their_own_slot_and_secret() -> None:
    secret = generate_secret()
    keys = SessionKeys.derive(secret)
    sid = os.urandom(32)
    address, value = seal_record(keys.dial, 5, sid)
    assert address == keys.dial.frame_id(5)
    assert open_record(keys.dial, 5, value) == sid
    # the same session twice gives two different values (random nonces: no reuse)
    assert seal_record(keys.dial, 5, sid)[1] != value
    with pytest.raises(RecordError, match="does not open"):
        open_record(keys.dial, 6, value)  # copied to another slot
    with pytest.raises(RecordError, match="does not open"):
        open_record(keys.claim, 5, value)  # a dial record is no claim
    with pytest.raises(RecordError, match="does not open"):
        open_record(SessionKeys.derive(generate_secret()).dial, 5, value)
    with pytest.raises(RecordError, match="expected"):
        open_record(keys.dial, 5, value[:-1])


def test_each_session_has_its_own_key_schedule() -> None:
    secret = generate_secret()
    first, second = new_session(secret, 0), new_session(secret, 1)
    again = new_session(secret, 0)  # same slot, another dial
    keys = {
        KeySchedule.derive(s.secret, Role.LISTENER).write.frame_id(0)
        for s in (first, second, again)
    }
    assert len(keys) == 3
    plain = KeySchedule.derive(secret, Role.LISTENER).write.frame_id(0)
    assert plain not in keys  # never the bare secret's frames
    assert new_session(secret, 0, first.session_id) == first


# -- sessions over a store ---------------------------------------------------------------------
async def _listener_side(
    store: StoreBackend, secret: bytes, numbers: list[int], got: list[bytes]
) -> None:
    """Take a session per entry of ``numbers`` in turn; each reads what its dialer sent,
    answers with the bytes of its number (contents and size), and ends."""
    listener = SessionListener(store, secret)
    epoch = await listener.first_epoch()
    for number in numbers:
        session = None
        while session is None:
            session = await listener.take(epoch, 5.0)
        await listener.claim(session)
        epoch += 1
        stream = StoreStream.open(store, session.secret, Role.LISTENER, params=PARAMS)
        try:
            data = await stream.read_all()
            got.append(data)
            await stream.write(_reply(number))
            await stream.close_write()
            await stream.wait_finished()
        finally:
            await stream.abort()


def _reply(number: int) -> bytes:
    return random_bytes(SIZES[number], 1000 + number)


def _request(number: int) -> bytes:
    return random_bytes(SIZES[number] // 3 + number, 2000 + number)


async def _dial_once(store: StoreBackend, secret: bytes, number: int) -> bytes:
    session = await dial_session(store, secret)
    stream = StoreStream.open(store, session.secret, Role.DIALER, params=PARAMS)
    try:
        await stream.write(_request(number))
        await stream.close_write()
        data = await stream.read_all()
        await stream.wait_finished()
        return data
    finally:
        await stream.abort()


async def test_sequential_dials_in_memory_each_get_their_own_bytes() -> None:
    store = MemoryStore()
    secret = generate_secret()
    got: list[bytes] = []
    async with asyncio.timeout(60):
        serving = asyncio.ensure_future(_listener_side(store, secret, [0, 1, 2], got))
        for number in range(3):
            assert await _dial_once(store, secret, number) == _reply(number)
        await serving
    assert got == [_request(n) for n in range(3)]


async def test_a_restarted_listener_starts_after_the_claimed_sessions() -> None:
    store = MemoryStore()
    secret = generate_secret()
    got: list[bytes] = []
    async with asyncio.timeout(60):
        serving = asyncio.ensure_future(_listener_side(store, secret, [0], got))
        assert await _dial_once(store, secret, 0) == _reply(0)
        await serving
        # a dialer comes before the new listener: it must not read session 0's reply
        dialing = asyncio.ensure_future(_dial_once(store, secret, 1))
        await asyncio.sleep(0.3)
        assert not dialing.done()
        assert await SessionListener(store, secret).first_epoch() == 1
        later: list[bytes] = []
        serving = asyncio.ensure_future(_listener_side(store, secret, [1], later))
        assert await dialing == _reply(1)
        await serving
    assert got == [_request(0)] and later == [_request(1)]


async def test_old_frames_planted_in_a_new_session_are_rejected() -> None:
    """The worst replay: every value the first session's listener wrote, copied over the
    addresses the second session's dialer reads. None opens there; the real frames overwrite
    them and the dialer gets exactly its own session's bytes."""
    store = MemoryStore()
    secret = generate_secret()
    got: list[bytes] = []
    async with asyncio.timeout(60):
        serving = asyncio.ensure_future(_listener_side(store, secret, [0, 1], got))
        first = await dial_session(store, secret)
        first_keys = KeySchedule.derive(first.secret, Role.LISTENER)
        stream = StoreStream.open(store, first.secret, Role.DIALER, params=PARAMS)
        await stream.write(_request(0))
        await stream.close_write()
        assert await stream.read_all() == _reply(0)
        await stream.wait_finished()
        await stream.abort()
        old = []
        for index in range(1000):
            value = store._lookup(first_keys.write.frame_id(index))
            if value is None:
                break
            old.append(value)
        assert len(old) > 20
        # a copy of the first dial record in the next slot does not open either
        keys = SessionKeys.derive(secret)
        record = store._lookup(keys.dial.frame_id(0))
        assert record is not None
        with pytest.raises(RecordError):
            open_record(keys.dial, 1, record)

        second = await dial_session(store, secret)
        assert second.epoch == 1 and second.secret != first.secret
        second_keys = KeySchedule.derive(second.secret, Role.LISTENER)
        for index, value in enumerate(old):
            store.raw_put(second_keys.write.frame_id(index), value)
        stream = StoreStream.open(
            store,
            second.secret,
            Role.DIALER,
            params=StoreParams(
                window=8, value_size=4096, rto_min=0.05, rto_initial=0.2, bad_frame_tries=1000
            ),
        )
        try:
            await stream.write(_request(1))
            await stream.close_write()
            assert await stream.read_all() == _reply(1)
            await stream.wait_finished()
        finally:
            await stream.abort()
        await serving
    assert stream.rejections, "the planted frames were not even read"
    assert all("failed to decrypt" in r.reason for r in stream.rejections)
    assert got == [_request(0), _request(1)]


async def test_a_dial_record_that_does_not_open_burns_its_slot() -> None:
    store = MemoryStore()
    secret = generate_secret()
    keys = SessionKeys.derive(secret)
    store.raw_put(keys.dial.frame_id(0), b"\x00" * 84)
    listener = SessionListener(store, secret)
    with pytest.raises(RecordError):
        await listener.take(0, 0.0)
    session = await dial_session(store, secret)  # the dialer skips it too
    assert session.epoch == 1
    taken = await listener.take(1, 0.0)
    assert taken == session


async def test_search_against_a_store() -> None:
    store = MemoryStore()
    for slot in range(37):
        store.raw_put(bytes([slot]) * 32, b"x")

    async def used(slot: int) -> bool:
        return slot < 256 and await store.get(bytes([slot]) * 32, 0.0) is not None

    assert await search(used) == 37


# -- through keywire.Server and keywire.dial -----------------------------------------------------
async def _three_dials(spec: str) -> None:
    async with keywire.Server([spec], OPTIONS) as server:
        address = server.address()
        got: list[bytes] = []

        async def serve() -> None:
            for number in range(3):
                conn = await server.accept()
                stream = await conn.accept_stream()
                got.append(await stream.read_all())
                await stream.write(_reply(number))
                await stream.close_write()
                await conn.close()

        serving = asyncio.ensure_future(serve())
        try:
            async with asyncio.timeout(90):
                for number in range(3):
                    conn = await keywire.dial(address, OPTIONS)
                    stream = await conn.open_stream()
                    await stream.write(_request(number))
                    await stream.close_write()
                    assert await stream.read_all() == _reply(number), f"dial {number}"
                    await conn.close()
                await serving
        finally:
            serving.cancel()
    assert got == [_request(n) for n in range(3)]


async def test_three_dials_over_the_map_server() -> None:
    async with MapServer() as map_server:
        await _three_dials(f"{map_server.url}~stream")


async def test_three_dials_over_redis(redis_server: RedisProcess) -> None:
    await _three_dials(f"{redis_server.url}~stream:{format_secret(generate_secret())}")


def test_cli_second_dial_never_gets_the_first_sessions_bytes(tmp_path: Path) -> None:
    """The report of issue 10, as processes: ``listen --echo``, one dial, the listener is gone,
    a second dial waits (printing nothing) until a new listener on the same address echoes
    its own bytes; a third dial of another size follows."""
    here = Path(__file__).resolve()
    env = dict(os.environ, PYTHONPATH=str(here.parents[2] / "src"))
    cli = [sys.executable, "-m", "keywire"]
    mapper = subprocess.Popen(
        [*cli, "map-server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    procs: list[subprocess.Popen[bytes]] = [mapper]
    try:
        assert mapper.stdout is not None
        url = mapper.stdout.readline().decode().strip()
        address = f"{url}~stream:{format_secret(generate_secret())}"

        def listen() -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [*cli, "listen", address, "--echo"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            procs.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline().decode().strip() == address
            return proc

        def dial(data: bytes) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [*cli, "dial", address],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            procs.append(proc)
            return proc

        first_data, second_data = random_bytes(200_000, 1), random_bytes(200_000, 2)
        listener = listen()
        out, err = dial(first_data).communicate(first_data, timeout=60)
        assert out == first_data, err.decode()
        listener.terminate()
        listener.wait(10)
        second = dial(second_data)
        assert second.stdin is not None and second.stdout is not None
        second.stdin.write(second_data)
        second.stdin.close()
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(3)  # no listener: it waits, and reads nothing
        listen()
        out = second.stdout.read()
        assert second.wait(60) == 0
        assert out == second_data
        third_data = random_bytes(1_500_000, 3)
        done = subprocess.run(
            [*cli, "dial", address], input=third_data, capture_output=True, env=env, timeout=90
        )
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == third_data
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class _AnswerLostStore(MemoryStore):
    """Applies a put, then fails its answer (a connection reset after the store acted)."""

    def __init__(self, lose: int) -> None:
        super().__init__()
        self.lose = lose

    async def put(self, address: bytes, value: bytes) -> None:
        await super().put(address, value)
        if self.lose:
            self.lose -= 1
            raise StoreError("connection reset after the put")


async def test_a_put_whose_answer_was_lost_is_not_announced_twice() -> None:
    store = _AnswerLostStore(lose=1)
    secret = generate_secret()
    dialer = SessionDialer(store, secret)
    with pytest.raises(StoreError):
        await dialer.announce()
    session = await dialer.announce()  # the retry finds its own record there
    assert session.epoch == 0
    assert (await dial_session(store, secret)).epoch == 1


async def test_an_abandoned_dial_does_not_block_the_next_one() -> None:
    """A dialer that announced itself and died: the listener takes that session (which never
    answers) and goes on to the next slot, where the real dial is served."""
    async with MapServer() as map_server:
        spec = f"{map_server.url}~stream:{format_secret(generate_secret())}"
        async with keywire.Server([spec], OPTIONS) as server:
            dead = HttpStore(map_server.url)
            try:
                secret = parse_secret(spec.rsplit(":", 1)[1])
                assert (await dial_session(dead, secret, 16384)).epoch == 0
            finally:
                await dead.close()
            async with asyncio.timeout(30):
                conn = await keywire.dial(spec, OPTIONS)
                stream = await conn.open_stream()
                await stream.write(b"the live one")
                await stream.close_write()
                accepted = await server.accept()
                peer = await accepted.accept_stream()
                assert await peer.read_all() == b"the live one"
                await accepted.abort()
                await conn.abort()
