"""Fixtures for the CLI end-to-end tests: payload files made once per session, and real
servers (a Link relay, a map server, a redis-server) started once per module by the
``keywire`` command or the redis binary, on free loopback ports."""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import (
    KEYWIRE,
    MB,
    Payload,
    Proc,
    free_port,
    make_payload,
    side_env,
    spawn,
    wait_for_address,
)

#: the payload sizes of the matrix
SIZES = (0, 1, 3 * MB, 64 * MB)
#: what "the other side's stdin is full" carries
FULL = 3 * MB
PAIRING_CODE = "KWE2-E2E7"


@dataclass(frozen=True)
class Payloads:
    """Distinct inputs for the two sides, so an echo or a mix-up cannot pass for delivery."""

    listener: dict[int, Payload]
    dialer: dict[int, Payload]


@pytest.fixture(scope="session")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> Payloads:
    directory = tmp_path_factory.mktemp("payloads")
    return Payloads(
        {size: make_payload(directory / f"listener-{size}", size) for size in SIZES},
        {size: make_payload(directory / f"dialer-{size}", size) for size in SIZES},
    )


class ServerProcess:
    """A long-running process whose first stdout line is its URL."""

    def __init__(self, args: list[str], workdir: Path, timeout: float = 20.0) -> None:
        self.workdir = workdir
        with (workdir / "server.err").open("wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(
                f"{args[:3]} printed no URL: {(workdir / 'server.err').read_text()[-1000:]}"
            )
        self.url = line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``keywire relay`` with shaping and the per-IP rate limit off (a 64 MB transfer at
    Link's default 1 MB/s would take a minute; the matrix dials far more than 60 times a
    minute from one IP)."""
    server = ServerProcess(
        [
            *KEYWIRE,
            "relay",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-bps",
            "0",
            "--ip-rate-per-min",
            "0",
        ],
        tmp_path_factory.mktemp("relay"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def map_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``keywire map-server`` with room for every 64 MB session of a module."""
    server = ServerProcess(
        [*KEYWIRE, "map-server", "--port", "0", "--ttl", "300", "--max-bytes", str(2_000 * MB)],
        tmp_path_factory.mktemp("map"),
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signed_map_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``keywire map-server --signed``: every put signed by its address's blinded key, each
    address written once (the listener's probe finds out and both sides sign)."""
    server = ServerProcess(
        [
            *KEYWIRE,
            "map-server",
            "--port",
            "0",
            "--ttl",
            "300",
            "--max-bytes",
            str(2_000 * MB),
            "--signed",
        ],
        tmp_path_factory.mktemp("signed-map"),
    )
    yield server
    server.stop()


def _run_redis(directory: Path, modules: tuple[Path, ...] = ()) -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence), ``modules`` loaded."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (bash scripts/install.sh --test)")
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    args += ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--logfile", ""]
    for module in modules:
        args += ["--loadmodule", str(module)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain redis-server: signed puts fall back to keywire's write-once script."""
    yield from _run_redis(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="module")
def redis_module_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server with keywire's module: the CLI's probe turns signing on, and every
    put is checked by the server (``KEYWIRE.PUT``)."""
    from keywire.store.redismodule import build

    module = build(tmp_path_factory.mktemp("redismodule"))
    yield from _run_redis(tmp_path_factory.mktemp("redis-module"), (module,))


@dataclass
class LinkWorld:
    """A relay, and a host identity (key + config dir) that a client (config dir) paired
    with once through the CLI; later listeners of that identity accept the client."""

    relay: ServerProcess
    host_home: Path
    client_home: Path

    @property
    def host_key(self) -> Path:
        return self.host_home / "host.pem"

    def host_env(self) -> dict[str, str]:
        return side_env(self.host_home)

    def client_env(self) -> dict[str, str]:
        return side_env(self.client_home)


def pair_once(
    relay: ServerProcess,
    host_home: Path,
    client_home: Path,
    workdir: Path,
    code: str = PAIRING_CODE,
    stdin: Path | None = None,
) -> tuple[Proc, str]:
    """``keywire listen RELAY~link --pairing-code CODE --stdio`` then ``keywire pair``;
    returns the host process (still running, or ended) and its address."""
    host = spawn(
        "pairing-host",
        [
            "listen",
            f"{relay.url}~link",
            "--pairing-code",
            code,
            "--stdio",
            "--no-qr",
            "--key",
            str(host_home / "host.pem"),
        ],
        workdir,
        env=side_env(host_home),
        stdin=stdin,
    )
    address = wait_for_address(host)
    done = subprocess.run(
        [*KEYWIRE, "pair", address, code],
        capture_output=True,
        timeout=30,
        env=side_env(client_home),
    )
    if done.returncode != 0:
        host.kill()
        raise AssertionError(f"keywire pair exited {done.returncode}: {done.stderr.decode()}")
    return host, address


@pytest.fixture(scope="module")
def link_world(
    relay: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LinkWorld]:
    """Pair once through the CLI, then stop the pairing listener (whether pairing used up its
    ``--stdio`` session is test_cli_link_pairing's question, not every link case's)."""
    base = tmp_path_factory.mktemp("link")
    world = LinkWorld(relay, base / "host", base / "client")
    host_home, client_home = world.host_home, world.client_home
    host_home.mkdir()
    client_home.mkdir()
    host, _ = pair_once(relay, host_home, client_home, base)
    host.kill()
    yield world


@pytest.fixture(scope="module")
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (sun_path holds 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="kwe", dir="/tmp"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
