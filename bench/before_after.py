"""Run benchmarks on an older commit and on the working tree in the same run, side by side.

    .venv/bin/python bench/before_after.py REF [--only mux,kps] [--rounds 2]

A refactor must not cost speed; comparing against figures recorded on another day compares
machines as much as code. This checks ``REF`` out into a temporary git worktree and runs each
benchmark alternately on that tree and on this one (``PYTHONPATH`` points at the tree's
``src``, so the same interpreter and dependencies serve both), ``--rounds`` times each. Every
benchmark already reports ratios against its own reference measured in the same process run;
this prints each figure line's numbers (the figure and its in-run ratio) for the old tree and
then the new one. Lines are matched by their label (the text before the first number).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: each benchmark with arguments short enough for a side-by-side run (a few minutes in all)
BENCHES: dict[str, list[str]] = {
    "shs": ["bench_shs.py", "--size-mb", "64", "--connects", "50", "--no-node"],
    "mux": ["bench_mux.py", "--size-mb", "32", "--requests", "300", "--rounds", "1"],
    "kps": [
        "bench_kps.py",
        *("--size-mb", "32", "--connects", "30", "--streams", "300", "--datagrams", "3000"),
    ],
    "link": ["bench_link.py", "--size-mb", "16", "--hosts", "300", "--intros", "100"],
    "store": ["bench_store.py", "--size", "500000", "--windows", "1,8", "--losses", "0"],
    "webrtc": ["bench_webrtc.py", "--size-mb", "16", "--rounds", "1", "--dials", "10"],
}
#: untracked npm installs the browser benchmarks need in both trees
NODE_MODULES = ("web/node_modules", "tests/interop/npm/node_modules")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
#: a label must hold a letter, so table rules and bare numbers are not figures
LABEL = re.compile(r"[A-Za-z]")


def figures(output: str) -> dict[str, str]:
    """The numbers of each labelled line (its figure and in-run ratio), keyed by its label."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        match = NUMBER.search(line)
        if match is None:
            continue
        label = " ".join(line[: match.start()].split())
        if LABEL.search(label):
            key, seen = label, 1
            while key in found:  # a table's rows may share a label (one per window, say)
                seen += 1
                key = f"{label} #{seen}"
            found[key] = " ".join(NUMBER.findall(line[match.start() :]))
    return found


def run(tree: Path, bench: list[str], timeout: float) -> str:
    """One benchmark run on ``tree``; its stdout, or the failure as text."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    try:
        done = subprocess.run(
            [sys.executable, str(tree / "bench" / bench[0]), *bench[1:]],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "timed out\n"
    if done.returncode != 0:
        return f"failed with exit code {done.returncode}: {done.stderr[-500:]}\n"
    return done.stdout


def compare(name: str, old_tree: Path, rounds: int, timeout: float) -> None:
    bench = BENCHES[name]
    print(f"== {name}: {' '.join(bench)}")
    for round_ in range(1, rounds + 1):
        old = figures(run(old_tree, bench, timeout))
        new = figures(run(ROOT, bench, timeout))
        for label in [*old, *(label for label in new if label not in old)]:
            print(f"  [{round_}] {label[:44]:44} {old.get(label, '-'):>26} | {new.get(label, '-')}")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref", help="the commit to compare against")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated bench names")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="per benchmark run, seconds")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench {unknown}; known: {sorted(BENCHES)}")
    with tempfile.TemporaryDirectory(prefix="keywire-before-") as tmp:
        old_tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), args.ref],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        for installed in NODE_MODULES:  # npm's installs are not in git: share this tree's
            if (ROOT / installed).is_dir():
                (old_tree / installed).symlink_to(ROOT / installed)
        try:
            print(f"old = {args.ref} | new = the working tree")
            for name in names:
                compare(name, old_tree, args.rounds, args.timeout)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old_tree)],
                cwd=ROOT,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
