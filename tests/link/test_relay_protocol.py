"""The relay's wire protocol against a real relay process, with raw WebSocket clients."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from .conftest import RelayProcess
from .rawclient import RawHost, close_code, recv, registered_host, send, spliced, ws

pytestmark = pytest.mark.timeout(30)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_and_not_found(relay: RelayProcess) -> None:
    assert http_get(relay.http + "/health") == (200, b'{"status":"ok"}')
    assert http_get(relay.http + "/healthz") == (200, b'{"status":"ok"}')
    assert http_get(relay.http + "/nope") == (404, b'{"error":"not_found"}')


async def test_other_upgrade_path_is_refused(relay: RelayProcess) -> None:
    with pytest.raises(Exception, match="404"):
        await ws(relay.http.replace("http", "ws") + "/other")


async def test_introduction_and_verbatim_splice(relay: RelayProcess) -> None:
    control, client, host_end = await spliced(relay.url)
    await client.send(b"\x00binary\xff")
    assert await host_end.recv() == b"\x00binary\xff"
    await host_end.send("a text frame stays text")
    assert await client.recv() == "a text frame stays text"
    await client.close()
    assert await close_code(host_end) == 4003
    await control.close()


async def test_unknown_address_is_not_fatal(relay: RelayProcess) -> None:
    sock = await ws(relay.url)
    await send(sock, {"type": "resolve", "address": "nobody"})
    assert await recv(sock) == {"type": "error", "error": "unknown_address"}
    host, control = await registered_host(relay.url)
    await send(sock, {"type": "resolve", "address": host.address})
    assert (await recv(sock))["type"] == "found"
    await sock.close()
    await control.close()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        '{"no":"type"}',
        '{"type":"dance"}',
        '{"type":"resolve","address":"x","code":"1"}',
        '{"type":"getUsage"}',
        '{"type":"relay","linkId":"x"}',
        "x" * 5000,
    ],
)
async def test_bad_control_frames_close_4000(relay: RelayProcess, frame: str) -> None:
    sock = await ws(relay.url)
    await sock.send(frame)
    assert await close_code(sock) == 4000


async def test_binary_before_splice_closes_4000(relay: RelayProcess) -> None:
    sock = await ws(relay.url)
    await sock.send(b"\x01\x02")
    assert await close_code(sock) == 4000


async def test_register_auth_failures_close_4007(relay: RelayProcess) -> None:
    host = RawHost()
    cases = []
    unsigned = host.register(relay.url)
    del unsigned["auth"]
    cases.append(unsigned)
    old = host.register(relay.url, ts=int(time.time() * 1000) - 30 * 60 * 1000)
    cases.append(old)
    other_origin = host.register(relay.url, origin_url="wss://elsewhere.example/v1/link")
    cases.append(other_origin)
    forged = host.register(relay.url)
    forged["auth"]["sig"] = forged["auth"]["sig"][::-1]
    cases.append(forged)
    squatter = RawHost().register(relay.url)
    squatter["address"] = host.address
    cases.append(squatter)
    for message in cases:
        sock = await ws(relay.url)
        await send(sock, message)
        assert await close_code(sock) == 4007, message


async def test_replace_and_stale(relay: RelayProcess) -> None:
    host, first = await registered_host(relay.url)
    message = host.register(relay.url)
    second = await ws(relay.url)
    await send(second, message)
    assert (await recv(second))["type"] == "registered"
    assert await close_code(first) == 4005
    third = await ws(relay.url)
    await send(third, message)  # the same frame again
    assert await recv(third) == {"type": "error", "error": "register_stale"}
    await second.close()
    await third.close()


async def test_stats_are_redacted_unless_admin(relay_factory) -> None:  # type: ignore[no-untyped-def]
    relay = relay_factory("--admin-token", "s3cret")
    control, client, host_end = await spliced(relay.url)
    status, body = http_get(relay.http + "/v1/stats")
    stats = json.loads(body)
    assert status == 200 and stats["links"]["relaying"] == 1
    assert "liveLinks" not in stats and "recentlyClosed" not in stats
    _, admin = http_get(relay.http + "/v1/stats", {"Authorization": "Bearer s3cret"})
    assert len(json.loads(admin)["liveLinks"]) == 1
    _, wrong = http_get(relay.http + "/v1/stats", {"Authorization": "Bearer nope"})
    assert "liveLinks" not in json.loads(wrong)
    for sock in (control, client, host_end):
        await sock.close()


async def test_metrics_count_rejections(relay: RelayProcess) -> None:
    sock = await ws(relay.url)
    await sock.send("junk")
    await close_code(sock)
    status, body = http_get(relay.http + "/metrics")
    text = body.decode()
    assert status == 200
    assert 'keywire_link_rejections_total{reason="bad_request"} 1' in text
    assert "keywire_link_links_total 0" in text


async def test_graceful_shutdown_closes_with_1001(relay: RelayProcess) -> None:
    _host, control = await registered_host(relay.url)
    relay.proc.send_signal(__import__("signal").SIGTERM)
    assert await close_code(control) == 1001
    assert relay.proc.wait(10) == 0
    logs = relay.stderr_text()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(entry["msg"] == "relay stopped" for entry in lines)
