"""The CLI as netcat: a file through `keywire listen --stdio` and `keywire dial`, against socat.

For each transport and direction it runs, as a user would,

    keywire listen SPEC --stdio < FILE          keywire dial ADDRESS > OUT      (l2d)
    keywire listen SPEC --stdio > OUT           keywire dial ADDRESS < FILE     (d2l)

with the other side's stdin on /dev/null, and times it from the start of the dialing
process until both processes have exited (process start-up and handshake included, as a user
sees them). The reference, measured in the same run, is socat over plain TCP on loopback
(`socat -u FILE:… TCP-LISTEN:…` → `socat -u TCP:… STDOUT > OUT`). Every output is checked
against the input's sha256 and both exit codes must be 0; a failure is printed and makes
the exit status 1.

Usage: .venv/bin/python bench/bench_cli.py [--size-mb 1000] [--transports net~shs,kps]
       [--directions l2d,d2l] [--rounds 1]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from keywire.address import parse
from keywire.errors import AddressError

MB = 1_000_000
SPECS = {
    "net~shs": "net:127.0.0.1:0~shs",
    "kps": "kps:127.0.0.1:0",
    "net~shs~mux": "net:127.0.0.1:0~shs~mux",
    "ws~shs~mux": "ws://127.0.0.1:0~shs~mux",
}


def keywire_command() -> list[str]:
    script = Path(sys.executable).parent / "keywire"
    return [str(script)] if script.exists() else [sys.executable, "-m", "keywire"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MB))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    label: str
    seconds: float
    cpu: float
    error: str | None = None


def address_in(*paths: Path) -> str | None:
    """The first token on the listener's stdout or stderr that is a complete address."""
    for path in paths:
        for token in path.read_text(errors="replace").split():
            token = token.strip("'\"")
            if ("~shs:" in token or token.startswith("kps:")) and ":0~" not in token:
                try:
                    parse(token)
                except AddressError:
                    continue
                return token
    return None


def finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> list[int | None]:
    deadline = time.monotonic() + timeout
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def run_keywire(
    transport: str, direction: str, src: Path, out: Path, work: Path, timeout: float
) -> Result:
    kw = keywire_command()
    lerr, derr, lout = work / "listener.err", work / "dialer.err", work / "listener.out"
    sending_listener = direction == "l2d"
    cpu0 = children_cpu()
    with (
        open(src if sending_listener else os.devnull, "rb") as lin,
        (lout if sending_listener else out).open("wb") as lo,
        lerr.open("wb") as le,
    ):
        lis = subprocess.Popen(
            [
                *kw,
                "listen",
                SPECS[transport],
                "--stdio",
                "--no-qr",
                "--key",
                str(work / "listener.pem"),
            ],
            stdin=lin,
            stdout=lo,
            stderr=le,
        )
    listener_stdout = lout if sending_listener else out
    deadline = time.monotonic() + 30
    address = None
    while address is None and time.monotonic() < deadline and lis.poll() is None:
        address = address_in(listener_stdout, lerr)
        time.sleep(0.02)
    if address is None:
        lis.kill()
        lis.wait()
        return Result(f"keywire {transport}", 0, 0, "no address: " + lerr.read_text()[-300:])
    started = time.perf_counter()
    with (
        open(os.devnull if sending_listener else src, "rb") as din,
        (out if sending_listener else work / "dialer.out").open("wb") as do,
        derr.open("wb") as de,
    ):
        dia = subprocess.Popen(
            [*kw, "dial", address, "--key", str(work / "dialer.pem")],
            stdin=din,
            stdout=do,
            stderr=de,
        )
    codes = finish([dia, lis], timeout)
    seconds = time.perf_counter() - started
    error = None
    if codes != [0, 0]:
        error = (
            f"exit codes dial={codes[0]} listen={codes[1]}; dial: "
            f"{derr.read_text()[-300:]!r} listen: {lerr.read_text()[-300:]!r}"
        )
    return Result(f"keywire {transport}", seconds, children_cpu() - cpu0, error)


def run_socat(src: Path, out: Path, timeout: float) -> Result:
    port = free_port()
    cpu0 = children_cpu()
    lis = subprocess.Popen(
        ["socat", "-u", f"FILE:{src}", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"],
        stderr=subprocess.PIPE,
    )
    time.sleep(0.05)  # socat listens within a millisecond; the dialer retries anyway
    started = time.perf_counter()
    with out.open("wb") as o:
        dia = subprocess.Popen(
            ["socat", "-u", f"TCP:127.0.0.1:{port},retry=200,interval=0.01", "STDOUT"],
            stdout=o,
            stderr=subprocess.PIPE,
        )
    codes = finish([dia, lis], timeout)
    seconds = time.perf_counter() - started
    error = None if codes == [0, 0] else f"socat exit codes {codes}"
    return Result("socat TCP", seconds, children_cpu() - cpu0, error)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=float, default=1000.0, help="file size in MB (default 1000 = 1 GB)"
    )
    parser.add_argument(
        "--transports", default="net~shs,kps", help=f"comma separated, of {', '.join(SPECS)}"
    )
    parser.add_argument(
        "--directions",
        default="l2d,d2l",
        help="l2d: listen --stdio < FILE; d2l: dial < FILE (default both)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="best of N per figure")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound per transfer (s)")
    args = parser.parse_args()
    transports = [t for t in args.transports.split(",") if t]
    directions = [d for d in args.directions.split(",") if d]
    unknown = [t for t in transports if t not in SPECS] + [
        d for d in directions if d not in ("l2d", "d2l")
    ]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    if shutil.which("socat") is None:
        print("bench_cli: socat is not installed (bash scripts/install.sh --test)", file=sys.stderr)
        return 2
    size = int(args.size_mb * MB)
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        src, out = work / "input", work / "output"
        want = make_file(src, size)
        print(
            f"{size / MB:g} MB file through the CLI (wall time from starting the dialing "
            f"process until both exited; sha256 checked; best of {args.rounds})"
        )

        def best(run: Callable[[], Result]) -> Result:
            results = []
            for _ in range(args.rounds):
                r = run()
                if r.error is None and sha256_of(out) != want:
                    r.error = f"output differs from input ({out.stat().st_size} bytes)"
                out.unlink(missing_ok=True)
                results.append(r)
                if r.error is not None:
                    return r
            return min(results, key=lambda r: r.seconds)

        reference = best(lambda: run_socat(src, out, args.timeout))
        rows = [("socat -u, plain TCP", reference)]
        for direction in directions:
            for transport in transports:
                r = best(partial(run_keywire, transport, direction, src, out, work, args.timeout))
                rows.append((f"keywire {transport} {direction}", r))
        ref_rate = size / MB / reference.seconds if reference.error is None else None
        for label, r in rows:
            if r.error is not None:
                failed = True
                print(f"  {label:28s} FAILED: {r.error}")
                continue
            rate = size / MB / r.seconds
            ratio = f"{rate / ref_rate:6.3f}× socat" if ref_rate else "   (no reference)"
            print(
                f"  {label:28s} {rate:9.1f} MB/s  {ratio}  {r.seconds:7.2f} s  cpu {r.cpu:6.2f} s"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
