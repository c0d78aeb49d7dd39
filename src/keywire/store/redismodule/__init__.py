"""keywire-redis: the Redis module that makes Redis refuse unsigned or forged store puts.

Why shipped as C source and built here: a Redis module is a shared library built against the
machine's libsodium, and Redis loads it by path (``redis-server --loadmodule PATH`` or
``loadmodule PATH`` in redis.conf). ``build()`` compiles ``keywire_redis.c`` with the system C
compiler (Debian: ``gcc`` and ``libsodium-dev``, installed by ``scripts/install.sh``) into a
file named after the source's hash, so a rebuild happens only when the source changed.
``python -m keywire.store.redismodule build [--out DIR]`` prints the path. See docs/store.md
"Redis: server-side signature checks".
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("keywire_redis.c", "kw_redismodule.h")
#: what the module registers: ``KEYWIRE.PUT key body ttl_ms max_value [PUBLISH|SPUBLISH ch]``
COMMAND = "keywire.put"


class BuildError(RuntimeError):
    """The module could not be compiled (no compiler, no libsodium headers, ...)."""


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/keywire`` (or ``~/.cache/keywire``): where builds are kept."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "keywire"


def source_digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def build(out: Path | None = None, *, compiler: str | None = None) -> Path:
    """The path of ``keywire_redis-<hash>.so`` in ``out``, compiled now if it is not there."""
    directory = default_dir() if out is None else out
    target = directory / f"keywire_redis-{source_digest()}.so"
    if target.exists():
        return target
    cc = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise BuildError("no C compiler found: apt-get install gcc libsodium-dev")
    directory.mkdir(parents=True, exist_ok=True)
    # compile to a temporary name and rename: concurrent builders never load half a file
    fd, partial = tempfile.mkstemp(dir=directory, prefix=".keywire_redis-", suffix=".so")
    os.close(fd)
    args = [
        cc, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-D_DEFAULT_SOURCE",
        "-shared", "-fPIC", "-fvisibility=hidden", "-o", partial,
        str(SOURCE_DIR / "keywire_redis.c"), "-lsodium",
    ]  # fmt: skip
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            hint = " (apt-get install libsodium-dev)" if "sodium.h" in done.stderr else ""
            raise BuildError(f"{cc} failed{hint}:\n{done.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
