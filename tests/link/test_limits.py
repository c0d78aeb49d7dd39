"""Relay limits against real relay processes: shaping, quota, idle, per-IP, allowlist, slow peer."""

from __future__ import annotations

import asyncio
import time

import pytest

from .rawclient import RawHost, close_code, recv, registered_host, send, spliced, ws

pytestmark = pytest.mark.timeout(30)


async def _send_and_time(sender, receiver, frames: int, size: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Send ``frames`` binary frames; the arrival time of each at the receiver."""
    arrivals: list[float] = []

    async def reader() -> None:
        for _ in range(frames):
            data = await receiver.recv()
            assert len(data) == size
            arrivals.append(time.monotonic())

    task = asyncio.create_task(reader())
    for i in range(frames):
        await sender.send(bytes([i % 256]) * size)
    await asyncio.wait_for(task, 25)
    return arrivals


async def test_shaping_holds_the_rate_within_ten_percent(relay_factory) -> None:  # type: ignore[no-untyped-def]
    rate, size, frames = 200_000, 25_000, 40
    relay = relay_factory("--max-bps", str(rate))
    control, client, host_end = await spliced(relay.url)
    start = time.monotonic()
    arrivals = await _send_and_time(client, host_end, frames, size)
    burst_frames = 2 * rate // size  # the bucket's capacity passes at once
    paced = arrivals[burst_frames:]
    measured = (len(paced) - 1) * size / (paced[-1] - paced[0])
    assert abs(measured - rate) / rate < 0.10, measured
    assert arrivals[burst_frames - 1] - start < 0.5  # the burst was not held
    for sock in (control, client, host_end):
        await sock.close()


async def test_quota_drops_to_the_trickle_floor(relay_factory) -> None:  # type: ignore[no-untyped-def]
    hourly, trickle, size = 200_000, 40_000, 10_000
    relay = relay_factory(
        "--max-bps", "0", "--hourly-bytes", str(hourly), "--trickle-bps", str(trickle)
    )
    control, client, host_end = await spliced(relay.url)
    frames = hourly // size + 2 * trickle // size + 12
    arrivals = await _send_and_time(client, host_end, frames, size)
    quick = hourly // size + 2 * trickle // size
    assert arrivals[quick - 1] - arrivals[0] < 1.0  # allowance + trickle burst pass quickly
    paced = arrivals[quick:]
    measured = (len(paced) - 1) * size / (paced[-1] - paced[0])
    assert abs(measured - trickle) / trickle < 0.15, measured  # the floor, not floor + refill
    usage = None
    while usage is None or not usage["connections"][0].get("throttled"):
        usage = await asyncio.wait_for(recv(control), 5)
    assert usage["connections"][0]["used"] == 1
    for sock in (control, client, host_end):
        await sock.close()


async def test_idle_links_are_reaped(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("--idle-sec", "1")
    control, client, host_end = await spliced(relay.url)
    started = time.monotonic()
    codes = await asyncio.gather(close_code(client), close_code(host_end))
    assert codes == [4004, 4004]
    assert time.monotonic() - started < 3
    await control.close()


async def test_per_ip_limit_closes_with_4002(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("--ip-rate-per-min", "2")
    host, control = await registered_host(relay.url)  # 1st counted message
    sock = await ws(relay.url)
    await send(sock, {"type": "resolve", "address": host.address})  # 2nd
    assert (await recv(sock))["type"] == "found"
    third = await ws(relay.url)
    await send(third, {"type": "resolve", "address": host.address})
    assert await close_code(third) == 4002
    await sock.close()
    await control.close()


async def test_allowlist_closes_with_4010(relay_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    allowed = RawHost()
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# the only host\n{allowed.pub_b64u}\n")
    relay = relay_factory(env={"LINK_ALLOWED_REGISTER_KEYS_FILE": str(key_file)})
    stranger = RawHost()
    sock = await ws(relay.url)
    await send(sock, stranger.register(relay.url))
    assert await close_code(sock) == 4010
    ok = await ws(relay.url)
    await send(ok, allowed.register(relay.url))
    assert (await recv(ok))["type"] == "registered"
    await ok.close()


async def test_environment_variables_configure_the_relay(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory(env={"LINK_IP_RATE_PER_MIN": "1", "LINK_ORIGIN": "relay.example"})
    host = RawHost()
    sock = await ws(relay.url)
    await send(sock, host.register(relay.url))  # signed for 127.0.0.1:port, not relay.example
    assert await close_code(sock) == 4007
    sock = await ws(relay.url)
    await send(sock, host.register("wss://relay.example/v1/link"))
    assert await close_code(sock) == 4002  # second message from this IP in the minute


async def test_slow_peer_is_cut_with_4006(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("--max-bps", "0", "--slow-peer-sec", "1")
    host, control = await registered_host(relay.url)
    client = await ws(relay.url)
    await send(client, {"type": "resolve", "address": host.address})
    link_id = (await recv(client))["linkId"]
    await recv(control)
    await send(client, {"type": "relay", "linkId": link_id})
    ticket = (await recv(control))["ticket"]
    stuck = await ws(relay.url, max_queue=1)  # reads into a 1-frame queue, then stops reading
    await send(stuck, {"type": "accept", "linkId": link_id, "ticket": ticket})
    assert (await recv(client))["type"] == "relaying"

    async def flood() -> None:
        try:
            while True:
                await client.send(b"\x00" * 65536)
        except Exception:
            pass

    task = asyncio.create_task(flood())
    assert await asyncio.wait_for(close_code(client), 15) == 4006
    task.cancel()
    await control.close()
    stuck.transport.abort()


async def test_heartbeat_drops_a_silent_socket(relay_factory) -> None:  # type: ignore[no-untyped-def]
    import base64
    import os

    relay = relay_factory("--heartbeat-sec", "0.6")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/link HTTP/1.1\r\nHost: 127.0.0.1:{relay.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b" 101 " in head
    started = time.monotonic()
    received = b""
    while chunk := await asyncio.wait_for(reader.read(100), 5):  # never answer the pings
        received += chunk
    assert received[:1] == b"\x89"  # the relay pinged us first
    assert time.monotonic() - started < 3
    writer.close()
