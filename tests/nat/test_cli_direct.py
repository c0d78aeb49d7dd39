"""`keywire dial` of a Link address as a real process in the NAT lab: it waits a bounded time for
the direct path before opening its one stream, so a CLI transfer goes direct when the NATs allow
it, keeps going over the relay when the direct path is cut, and opens over the relay after the
bound when no direct path comes. `keywire listen --stdio` is the host; the relay's `/v1/stats`
counters tell which path carried the bytes."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from .lab import KEYWIRE, Lab, NsLoop
from .test_link_direct import _env, _events, _stats

MIB = 1 << 20
SIZE = 16 * MIB
CODE = "ABCD-EFGH"


@dataclass
class Feeder:
    """Writes ``payload`` into a process's stdin, then EOF; with ``gate``, stops after ``split``
    bytes until the gate opens."""

    pipe: IO[bytes]
    payload: bytes
    split: int = 0
    gate: threading.Event | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            view = memoryview(self.payload)
            end = self.split if self.gate is not None else len(view)
            for start in range(0, end, MIB):
                self.pipe.write(view[start : min(start + MIB, end)])
            if self.gate is not None:
                self.pipe.flush()
                if not self.gate.wait(60):
                    raise TimeoutError("the gate never opened")
                for start in range(end, len(view), MIB):
                    self.pipe.write(view[start : start + MIB])
            self.pipe.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


@dataclass
class Sink:
    """Reads a process's stdout to EOF: how much, and its sha256."""

    pipe: IO[bytes]
    got: int = 0
    digest: str = ""
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        h = hashlib.sha256()
        while chunk := self.pipe.read1(1 << 16):  # type: ignore[attr-defined]
            h.update(chunk)
            self.got += len(chunk)
        self.digest = h.hexdigest()


@dataclass
class Transfer:
    """`keywire listen --stdio` in the host's namespace, `keywire dial` in the client's."""

    lab: Lab
    inet: NsLoop
    listen: subprocess.Popen[bytes]
    dial: subprocess.Popen[bytes]
    listen_err: Path
    dial_err: Path
    feeders: list[Feeder]
    at_host: Sink  # what the host read from the client
    at_client: Sink  # what the client read from the host
    relayed_before: int
    dial_started: float

    def relayed(self) -> int:
        return self.inet.run(_stats())

    def finish(self, timeout: float) -> tuple[int, int, float]:
        """Both exit codes, and seconds from the dial's start to the dial's exit."""
        deadline = time.monotonic() + timeout
        dial_rc = self.dial.wait(max(1.0, deadline - time.monotonic()))
        took = time.monotonic() - self.dial_started
        listen_rc = self.listen.wait(max(1.0, deadline - time.monotonic()))
        for t in (*[f.thread for f in self.feeders], self.at_host.thread, self.at_client.thread):
            t.join(10)
        for f in self.feeders:
            assert f.error is None, f.error
        return listen_rc, dial_rc, took

    def logs(self) -> str:
        return f"listen:\n{self.listen_err.read_text()}\ndial:\n{self.dial_err.read_text()}"


def _start(
    lab: Lab,
    tmp_path: Path,
    host_preset: str,
    client_preset: str,
    up: bytes,
    down: bytes,
    *,
    gate: threading.Event | None = None,
    split: int = 0,
    dial_json: bool = True,
    dial_args: tuple[str, ...] = (),
) -> Transfer:
    url = lab.relay("--max-bps", "0", host="0.0.0.0", port=8080, stun_ports=(3478, 3479))
    h_peer, c_peer = lab.add_peer("h", host_preset), lab.add_peer("c", client_preset)
    listen_err, dial_err = tmp_path / "listen.err", tmp_path / "dial.err"
    with listen_err.open("wb") as err:
        listen = lab.popen(
            h_peer.ns,
            KEYWIRE,
            "listen",
            f"{url}~link",
            "--stdio",
            "--pairing-code",
            CODE,
            "--json",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_env(tmp_path / "h"),
        )
    deadline = time.monotonic() + 20
    address = ""
    while not address and time.monotonic() < deadline and listen.poll() is None:
        time.sleep(0.05)
        address = next(
            (str(e["address"]) for e in _events(listen_err) if e.get("event") == "listening"), ""
        )
    assert "~link:" in address, listen_err.read_text()
    subprocess.run(
        lab.exec_cmd(c_peer.ns, KEYWIRE, "pair", address, CODE.replace("-", "").lower()),
        env=_env(tmp_path / "c"),
        check=True,
        timeout=30,
        capture_output=True,
    )
    inet = lab.ns_loop(lab.inet)
    before = inet.run(_stats())
    started = time.monotonic()
    with dial_err.open("wb") as err:
        dial = lab.popen(
            c_peer.ns,
            KEYWIRE,
            "dial",
            address,
            *(["--json"] if dial_json else []),
            *dial_args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            env=_env(tmp_path / "c"),
        )
    assert listen.stdin and listen.stdout and dial.stdin and dial.stdout
    feeders = [
        Feeder(dial.stdin, up, split, gate),
        Feeder(listen.stdin, down, split, gate),
    ]
    return Transfer(
        lab,
        inet,
        listen,
        dial,
        listen_err,
        dial_err,
        feeders,
        Sink(listen.stdout),
        Sink(dial.stdout),
        before,
        started,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _path_wait(t: Transfer) -> dict[str, object]:
    (event,) = [e for e in _events(t.dial_err) if e.get("event") == "path_wait"]
    return event


@pytest.mark.timeout(180)
def test_dial_moves_16_mib_each_way_over_the_direct_path(lab: Lab, tmp_path: Path) -> None:
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    t = _start(lab, tmp_path, "full-cone", "eim-apdf", up, down)
    listen_rc, dial_rc, took = t.finish(120)
    relayed = t.relayed() - t.relayed_before
    wait = _path_wait(t)
    print(
        f"direct after {wait['seconds']} s of waiting; 2 × 16 MiB done {took:.2f} s after the "
        f"dial started; relay carried {relayed} bytes"
    )
    assert (listen_rc, dial_rc) == (0, 0), t.logs()
    assert t.at_host.digest == _sha(up) and t.at_client.digest == _sha(down)
    assert wait["path"] == "direct", t.logs()
    assert float(str(wait["seconds"])) < 1.5
    opened = [e for e in _events(t.dial_err) if e.get("event") in ("path", "stream_opened")]
    assert [e["event"] for e in opened][:3] == ["path", "path", "stream_opened"], opened
    assert relayed < MIB, relayed  # the data went direct: the relay saw keep-alives only


@pytest.mark.timeout(180)
def test_dial_survives_a_cut_of_the_direct_path(lab: Lab, tmp_path: Path) -> None:
    """Both sides write 4 MiB, the client's UDP is cut once both have read them, then the
    other 12 MiB each way can only go over the relay: the stream resumes there."""
    up, down = os.urandom(SIZE), os.urandom(SIZE)
    gate, split = threading.Event(), 4 * MIB
    t = _start(lab, tmp_path, "full-cone", "eim-apdf", up, down, gate=gate, split=split)
    deadline = time.monotonic() + 60
    while (t.at_host.got < split or t.at_client.got < split) and time.monotonic() < deadline:
        assert t.dial.poll() is None and t.listen.poll() is None, t.logs()
        time.sleep(0.01)
    assert t.at_host.got == split and t.at_client.got == split, t.logs()
    assert _path_wait(t)["path"] == "direct", t.logs()
    lab.block_udp(lab.peers["c"])
    cut = t.relayed()
    gate.set()
    listen_rc, dial_rc, took = t.finish(120)
    after_cut = t.relayed() - cut
    print(
        f"done {took:.2f} s after the dial started; relay carried {after_cut} bytes after the cut"
    )
    assert (listen_rc, dial_rc) == (0, 0), t.logs()
    assert t.at_host.digest == _sha(up) and t.at_client.digest == _sha(down)
    # everything written after the cut went through the relay, both ways
    assert after_cut >= 2 * (SIZE - split), after_cut
    paths = [e.get("path") for e in _events(t.dial_err) if e.get("event") == "path"]
    assert paths[:3] == ["relay", "direct", "relay"], t.logs()


@pytest.mark.timeout(180)
def test_dial_opens_over_the_relay_after_the_bound(lab: Lab, tmp_path: Path) -> None:
    """Both sides map randomly: no direct path comes, so after --direct-wait (1.5 s by
    default) the stream opens over the relay and the transfer completes there."""
    up, down = os.urandom(SIZE), b""
    t = _start(lab, tmp_path, "edm-random", "edm-random", up, down, dial_json=False)
    listen_rc, dial_rc, took = t.finish(120)
    relayed = t.relayed() - t.relayed_before
    err = t.dial_err.read_text()
    print(f"done {took:.2f} s after the dial started; relay carried {relayed} bytes\n{err}")
    assert (listen_rc, dial_rc) == (0, 0), t.logs()
    assert t.at_host.digest == _sha(up) and t.at_client.got == 0
    assert "keywire: path: waiting up to 1.5 s for a direct path" in err
    waited = re.search(r"keywire: path: (none yet|the punch found none) after ([0-9.]+) s", err)
    assert waited is not None, err
    assert float(waited.group(2)) < 2.5  # the bound, or the first exchange giving up sooner
    if waited.group(1) == "none yet":
        assert float(waited.group(2)) >= 1.45
    assert "keywire: path: direct" not in err
    assert relayed >= SIZE, relayed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags", [("--direct-wait", "0"), ("--no-direct",)])
def test_dial_can_open_over_the_relay_at_once(
    lab: Lab, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    """`--direct-wait 0` and `--no-direct` do not wait: the stream opens over the relay even
    where a direct path would come."""
    up = os.urandom(4 * MIB)
    t = _start(lab, tmp_path, "full-cone", "eim-apdf", up, b"", dial_json=False, dial_args=flags)
    listen_rc, dial_rc, took = t.finish(60)
    relayed = t.relayed() - t.relayed_before
    err = t.dial_err.read_text()
    print(f"{flags}: done {took:.2f} s after the dial started; relay carried {relayed} bytes")
    assert (listen_rc, dial_rc) == (0, 0), t.logs()
    assert t.at_host.digest == _sha(up)
    assert "waiting up to" not in err, err
    assert relayed >= len(up), relayed
