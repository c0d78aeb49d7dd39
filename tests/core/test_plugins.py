"""The plugin layer: entry-point plugins, declared settings, one composition loop."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import keywire
from keywire.address import Section
from keywire.options import Options
from keywire.pipe import Pipe
from keywire.plugin import Transform
from keywire.registry import ENTRY_POINT_GROUP, Registry, registry


@pytest.fixture
def plugin_path(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path where a test can place a distribution with entry points."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("kwtest_")]:
            del sys.modules[name]


def install_plugin(root: Path, dist: str, module: str, source: str, target: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{dist} = {target}\n")


PLUGIN = """
from keywire.plugin import Transform

class Rot13(Transform):
    name = "rot13"
    async def client(self, pipe, section, options, address):
        return pipe
    async def server(self, pipe, section, options, address):
        return pipe

def register(registry):
    registry.add_transform(Rot13())
    registry.declare_settings("rot13", ("rounds",))
"""


def test_entry_point_plugin_is_loaded_after_the_builtins(plugin_path: Path) -> None:
    install_plugin(plugin_path, "kwtest-rot13", "kwtest_rot13", PLUGIN, "kwtest_rot13")
    reg = Registry()
    reg.load()
    assert "rot13" in reg.transforms and "shs" in reg.transforms
    assert reg.settings["rot13"] == frozenset({"rounds"})
    reg.check_settings(Options(extra={"rot13.rounds": 2}))
    with pytest.raises(ValueError, match=r"rot13\.rounds"):
        reg.check_settings(Options(extra={"rot13.round": 2}))


def test_a_broken_plugin_is_logged_and_skipped(
    plugin_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    install_plugin(
        plugin_path,
        "kwtest-broken",
        "kwtest_broken",
        "def register(registry):\n    raise RuntimeError('no pigeons')\n",
        "kwtest_broken:register",
    )
    reg = Registry()
    with caplog.at_level(logging.WARNING, logger="keywire.registry"):
        reg.load()
    assert "net" in reg.transports
    assert "no pigeons" in caplog.text


@pytest.mark.parametrize(
    ("key", "known"),
    [
        ("store.windw", "store.window"),
        ("link.pairing_cod", "link.pairing_code"),
        ("ws.sslx", "ws.ssl"),
        ("kps.idle_timout", "kps.idle_timeout"),
        ("mux.windw", "mux.window"),
        ("webrtc.nope", "webrtc."),
    ],
)
async def test_a_misspelt_setting_is_refused_before_dialing(key: str, known: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown setting '{key}'.*{known}"):
        await keywire.dial("net:127.0.0.1:9~noauth", extra={key: 1}, timeout=1)


async def test_an_unknown_prefix_is_refused_by_the_server() -> None:
    server = keywire.Server(["net:127.0.0.1:0~noauth"], extra={"kpss.idle_timeout": 1})
    with pytest.raises(ValueError, match=r"unknown setting 'kpss.idle_timeout'.*kps\.\*"):
        await server.start()
    await server.close()


class Tagging(Transform):
    """A transform that proves nothing: the server's address shows its announced section."""

    name = "tag"

    async def client(self, pipe: Pipe, section: Section, options: Options, address: str) -> Pipe:
        await pipe.write(b"T")
        return pipe

    async def server(self, pipe: Pipe, section: Section, options: Options, address: str) -> Pipe:
        assert await pipe.read(1) == b"T"
        return pipe


async def test_one_composition_loop_serves_dialer_and_server() -> None:
    registry.load()
    registry.add_transform(Tagging())
    try:
        async with keywire.Server(["net:127.0.0.1:0~tag~shs~mux"]) as server:
            conn = await keywire.dial(server.address())
            peer = await server.accept()
            assert peer.address is not None
            assert peer.address.names[-3:] == ("tag", "shs", "mux")
            assert "~tag~shs:" in str(peer.address)
            stream = await conn.open_stream()
            await stream.write(b"hi")
            await stream.close_write()
            theirs = await peer.accept_stream()
            assert await theirs.read_all() == b"hi"
            await conn.close()
    finally:
        del registry.transforms["tag"]


def test_a_dial_imports_only_the_plugins_its_address_names() -> None:
    """CLI start-up: dialing net~shs~mux must not pay for QUIC, WebRTC or Redis imports."""
    import subprocess

    code = (
        "import asyncio, sys, keywire\n"
        "async def main():\n"
        "    try:\n"
        "        await keywire.dial('net:127.0.0.1:9~shs:' + 'A' * 43 + '=~mux', timeout=2)\n"
        "    except keywire.DialError:\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "heavy = ('qh3', 'aiortc', 'aioice', 'redis', 'keywire.kps', 'keywire.store')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "[]"
