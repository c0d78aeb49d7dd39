"""Real ``keywire`` processes used like netcat: files on stdin and stdout, bounded waits.

Every process gets its own key file and config directory, reads its stdin from a file (or
/dev/null) and writes stdout and stderr to files, exactly as `keywire listen --stdio < a > b`
would in a shell. The listener's dialable address is taken from the first line on either
stream that parses as an address (the CLI prints it on stderr when stdout carries data), and
the listener's stdout is then checked to hold the peer's bytes and nothing else.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from keywire.address import parse
from keywire.errors import AddressError

MB = 1_000_000


def keywire_command() -> list[str]:
    """``$KEYWIRE_E2E_COMMAND`` (e.g. another build's ``python -m keywire``), else the installed
    ``keywire`` script next to this interpreter, else ``python -m keywire``."""
    override = os.environ.get("KEYWIRE_E2E_COMMAND")
    if override:
        return shlex.split(override)
    script = Path(sys.executable).parent / "keywire"
    return [str(script)] if script.exists() else [sys.executable, "-m", "keywire"]


KEYWIRE = keywire_command()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Payload:
    """A file to put on a process's stdin, with its size and digest."""

    path: Path
    size: int
    sha256: str


def human(size: int) -> str:
    if size >= MB:
        return f"{size // MB}MB"
    return f"{size}B"


def make_payload(path: Path, size: int) -> Payload:
    """Random (incompressible) bytes written in 1 MB chunks."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, MB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return Payload(path, size, digest.hexdigest())


def file_digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    return path.stat().st_size, digest.hexdigest()


#: transports that are not URLs (``ws://``, ``http://``, ``redis://`` sections are)
TRANSPORT_NAMES = frozenset({"net", "unix", "onion"})
#: sections that name the peer or the session, so a dialable address gives them a value
KEYED = frozenset({"shs", "link", "stream"})
_PORT_ZERO = re.compile(r":0(?=[~/;]|$)")


#: one-section alternatives that name their peer → the arguments they need to do so
SELF_NAMING = {"kps": 3, "webtransport": 5}


def dialable(text: str) -> bool:
    """A complete address someone could dial: it parses, has no port 0 or wildcard host, and
    every alternative ends in a section that names the peer (or says ``noauth``)."""
    if not text or _PORT_ZERO.search(text) or "0.0.0.0" in text or "[::]" in text:
        return False
    try:
        addr = parse(text)
    except (AddressError, ValueError):
        return False
    alts = list(addr.alternatives)
    if not alts:
        return False
    for alt in alts:
        first, rest = alt.sections[0], alt.sections[1:]
        # these name the peer inside their one section (certhash; key and certhashes)
        if first.name in SELF_NAMING:
            if len(first.args) < SELF_NAMING[first.name]:
                return False
            continue
        if not (first.is_url or first.name in TRANSPORT_NAMES) or not rest:
            return False
        if not any(s.name == "noauth" or (s.args and all(s.args)) for s in rest):
            return False
        if any(not (s.args and all(s.args)) for s in rest if s.name in KEYED):
            return False
    return True


def find_address(text: str) -> str | None:
    """The first line of ``text`` that is, or carries one token that is, a dialable address."""
    for line in text.splitlines():
        candidates = [line.strip()]
        candidates += [tok.strip("'\"()[],.") for tok in line.split()]
        for candidate in candidates:
            if dialable(candidate):
                return candidate
    return None


@dataclass
class Proc:
    """One running ``keywire`` process with its stdout and stderr in files."""

    name: str
    args: list[str]
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    killed_at_bound: bool = False

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.monotonic()
        return code

    def wait(self, deadline: float) -> int | None:
        """Exit code, or None after killing it when it outlived ``deadline`` (monotonic)."""
        try:
            code = self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.killed_at_bound = True
            self.kill()
            return None
        if self.ended is None:
            self.ended = time.monotonic()
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(10)
        if self.ended is None:
            self.ended = time.monotonic()

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def stdout_text(self) -> str:
        return self.out.read_bytes()[:4096].decode(errors="replace")

    def stderr_text(self, tail: int = 1500) -> str:
        text = self.err.read_bytes().decode(errors="replace")
        # QR codes are noise in a failure message
        lines = [ln for ln in text.splitlines() if "█" not in ln and "▀" not in ln]
        return "\n".join(lines)[-tail:]

    def describe(self) -> str:
        code = (
            "killed at its time bound" if self.killed_at_bound else f"exit {self.proc.returncode}"
        )
        return f"[{self.name}: {code} after {self.seconds:.1f} s; stderr: {self.stderr_text()!r}]"


def spawn(
    name: str,
    args: list[str],
    workdir: Path,
    *,
    stdin: Path | None = None,
    env: dict[str, str] | None = None,
    stdin_pipe: bool = False,
) -> Proc:
    """Start ``keywire ARGS`` with stdin from a file (/dev/null if None) or a pipe."""
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        if stdin_pipe:
            proc = subprocess.Popen(
                [*KEYWIRE, *args], stdin=subprocess.PIPE, stdout=o, stderr=e, env=env
            )
        else:
            with open(stdin if stdin is not None else os.devnull, "rb") as i:
                proc = subprocess.Popen([*KEYWIRE, *args], stdin=i, stdout=o, stderr=e, env=env)
    return Proc(name, args, proc, out, err)


def wait_for_address(p: Proc, timeout: float = 20.0) -> str:
    """The dialable address a listener printed, on stdout or stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (p.out, p.err):
            found = find_address(path.read_bytes()[:65536].decode(errors="replace"))
            if found is not None:
                return found
        if p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    raise AssertionError(
        f"{p.name} printed no dialable address {p.describe()}; stdout {p.stdout_text()[:300]!r}"
    )


def side_env(home: Path) -> dict[str, str]:
    """The environment of one side: its own config directory, nothing inherited from ours."""
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["HOME"] = str(home)
    env.pop("KEYWIRE_KEY", None)
    home.mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Outcome:
    """What both sides of one transfer did."""

    listener: Proc
    dialer: Proc
    listener_code: int | None
    dialer_code: int | None
    listener_got: tuple[int, str]
    dialer_got: tuple[int, str]
    seconds: float


def run_transfer(
    listen_args: list[str],
    workdir: Path,
    *,
    listener_in: Payload,
    dialer_in: Payload,
    bound: float,
    listener_env: dict[str, str],
    dialer_env: dict[str, str],
    dial_args: list[str] | None = None,
) -> Outcome:
    """``keywire listen ARGS --stdio < A > a`` and ``keywire dial ADDR < B > b`` at once."""
    started = time.monotonic()
    lis = spawn(
        "listener",
        ["listen", *listen_args, "--stdio", "--no-qr"],
        workdir,
        stdin=listener_in.path,
        env=listener_env,
    )
    try:
        address = wait_for_address(lis)
    except BaseException:
        lis.kill()
        raise
    return finish_transfer(
        lis,
        address,
        workdir,
        dialer_in=dialer_in,
        deadline=started + bound,
        dialer_env=dialer_env,
        dial_args=dial_args,
    )


def finish_transfer(
    lis: Proc,
    address: str,
    workdir: Path,
    *,
    dialer_in: Payload,
    deadline: float,
    dialer_env: dict[str, str],
    dial_args: list[str] | None = None,
) -> Outcome:
    """Dial a running ``listen --stdio`` and wait for both ends (killed at ``deadline``)."""
    started = lis.started
    dia: Proc | None = None
    try:
        dia = spawn(
            "dialer",
            ["dial", address, *(dial_args or [])],
            workdir,
            stdin=dialer_in.path,
            env=dialer_env,
        )
        dialer_code = dia.wait(deadline)
        # the listener gets a short grace after the dialer, within the same bound
        listener_code = lis.wait(max(deadline, time.monotonic() + 5.0))
        return Outcome(
            lis,
            dia,
            listener_code,
            dialer_code,
            file_digest(lis.out),
            file_digest(dia.out),
            time.monotonic() - started,
        )
    finally:
        for p in (lis, dia):
            if p is not None and p.proc.poll() is None:
                p.kill()


def check_transfer(o: Outcome, listener_in: Payload, dialer_in: Payload) -> list[str]:
    """Every way the transfer fell short of netcat semantics, as readable lines."""
    problems: list[str] = []
    for who, got, want in (
        ("dialer stdout", o.dialer_got, listener_in),
        ("listener stdout", o.listener_got, dialer_in),
    ):
        size, digest = got
        if (size, digest) != (want.size, want.sha256):
            detail = (
                "same size, different bytes"
                if size == want.size
                else f"{size} bytes of {want.size}"
            )
            problems.append(f"{who} is not the peer's input: {detail}")
    if o.listener_got[0] != dialer_in.size and o.listener_got[0] > 0:
        head = o.listener.out.read_bytes()[:120]
        if head.isascii() and b"\n" in head:
            problems.append(f"listener stdout starts with text: {head[:100]!r}")
    for name, code, p in (
        ("listener", o.listener_code, o.listener),
        ("dialer", o.dialer_code, o.dialer),
    ):
        if code != 0:
            problems.append(f"{name} did not exit 0: {p.describe()}")
    return problems
