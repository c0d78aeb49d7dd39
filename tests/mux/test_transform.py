"""The ``mux`` section: options, arguments, announcement, registration."""

from __future__ import annotations

import asyncio

import pytest

from keywire.address import Section
from keywire.errors import KeywireError
from keywire.mux.connection import MuxConnection
from keywire.mux.session import MuxConfig
from keywire.mux.transform import MuxTransform, config_from_options, register
from keywire.options import Options
from keywire.pipe import StreamPipe
from keywire.registry import Registry

pytestmark = pytest.mark.timeout(20)


def test_options_become_a_config() -> None:
    options = Options(
        max_streams=7,
        extra={
            "mux.window": 512 * 1024,
            "mux.max_window": 1 << 20,
            "mux.keepalive_interval": None,
            "other.key": 1,
        },
    )
    config = config_from_options(options)
    assert config == MuxConfig(
        max_streams=7, window=512 * 1024, max_window=1 << 20, keepalive_interval=None
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mux.windw": 1}, "unknown setting 'mux.windw'"),
        ({"mux.window": 1000}, "bad mux option: mux window must be 262144"),
        ({"mux.keepalive_timeout": 0}, "keepalive_timeout must be positive"),
    ],
)
def test_bad_options_are_named(extra: dict[str, object], message: str) -> None:
    with pytest.raises(KeywireError, match=message):
        config_from_options(Options(extra=extra))


def test_registration_and_announcement() -> None:
    registry = Registry()
    register(registry)
    transform = registry.transforms["mux"]
    assert isinstance(transform, MuxTransform)
    assert transform.announce(Section("mux"), Options()) == Section("mux")


async def test_client_and_server_sides_over_a_socket_pair() -> None:
    accepted: asyncio.Future[StreamPipe] = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(StreamPipe(reader, writer))

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    transform = MuxTransform()
    with pytest.raises(KeywireError, match="takes no arguments"):
        await transform.client(StreamPipe(reader, writer), Section("mux", ("x",)), Options(), "")
    client = await transform.client(
        StreamPipe(reader, writer), Section("mux"), Options(), "net:127.0.0.1:1~mux"
    )
    srv = await transform.server(await accepted, Section("mux"), Options(), "peer~mux")
    assert isinstance(client, MuxConnection) and isinstance(srv, MuxConnection)
    assert client.session.client and not srv.session.client
    stream = await client.open_stream()
    assert stream.id % 2 == 1
    await stream.write(b"odd ids from the dialer")
    await stream.close_write()
    assert await (await srv.accept_stream()).read_all() == b"odd ids from the dialer"
    back = await srv.open_stream()
    assert back.id % 2 == 0
    await client.close()
    await srv.wait_closed()
    server.close()
