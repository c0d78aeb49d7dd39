"""Every benchmark in bench/ still runs and prints its ratios (tiny sizes; figures not judged).

The figures themselves are recorded in docs/performance.md from full-size runs; this only keeps
the scripts from rotting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "bench_cli.py": ["--size-mb", "2"],
    "bench_shs.py": ["--size-mb", "2", "--connects", "5"],
    "bench_mux.py": ["--size-mb", "2", "--requests", "50", "--rounds", "1"],
    "bench_kps.py": [
        "--size-mb",
        "2",
        "--connects",
        "5",
        "--streams",
        "50",
        "--datagrams",
        "200",
        "--rounds",
        "1",
    ],
    "bench_link.py": ["--size-mb", "2", "--hosts", "50", "--intros", "20"],
    "bench_store.py": [
        "--size",
        "200000",
        "--windows",
        "1,8",
        "--losses",
        "0",
        "--backends",
        "memory,http,http-signed,redis",
    ],
    "bench_quic_stacks.py": ["--size-mb", "2", "qh3", "aioquic"],
    "bench_webrtc.py": ["--size-mb", "1", "--dials", "2", "--peers", "2", "--rounds", "1"],
    "bench_link_cluster.py": [
        *("--size-mb", "2", "--hosts", "50", "--intros", "20", "--rounds", "1", "--latency", "5"),
        *("--intro-hosts", "20", "--intro-rounds", "1", "--pinned-rounds", "1"),
    ],
    "bench_store_storage.py": ["--size", "2000000", "--ttl", "1", "--backends", "http,redis"],
    "bench_webtransport.py": ["--size-mb", "2", "--runs", "1"],
    # the NAT lab: root, as tests/nat (one pair, one dial)
    "bench_nat.py": [
        "--dials",
        "1",
        "--pairs",
        "full-cone/eim-apdf",
        "--size-mb",
        "1",
        "--rounds",
        "1",
    ],
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs(script: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *CASES[script]],
        capture_output=True,
        timeout=170,
        env=env,
        cwd=ROOT,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output[-3000:]
    assert any(word in output.lower() for word in ("×", "ratio", "mb/s", "mib/s")), output[-3000:]
