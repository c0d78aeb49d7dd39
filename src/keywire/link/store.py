"""Where Link secrets live on disk: a client's credentials and a host's paired devices.

Both are JSON files under ``keywire.identity.config_dir()/link`` written atomically with mode
0600 (the token in each is a Noise pre-shared key). The host re-reads its device file when it
changes, so ``keywire credentials revoke`` in another process takes effect on the next
reconnect, and live sessions of a revoked device are ended.

A host's generated recovery key is saved as SPAKE2's ``w`` only (``recovery-ADDRESS.json``), so
its text is shown once, when it is made, and never written to disk.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ..identity import config_dir
from .handshake import TokenBook
from .spake2 import ORDER
from .wire import Credential, LinkProtocolError, b64u, from_b64u


def link_dir(base: Path | None = None) -> Path:
    return (base or config_dir()) / "link"


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(data, indent=1, sort_keys=True).encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LinkProtocolError(f"unreadable Link store {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LinkProtocolError(f"Link store {path} is not a JSON object")
    return data


class ClientStore:
    """Credentials this device holds, by host address (``credentials.json``)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.path = link_dir(directory) / "credentials.json"

    def get(self, address: str) -> Credential | None:
        entry = _read(self.path).get(address)
        return Credential.from_json(entry) if entry is not None else None

    def save(self, credential: Credential, relays: list[str] | None = None) -> None:
        data = _read(self.path)
        entry: dict[str, Any] = dict(credential.to_json())
        entry["relays"] = relays or []
        entry["saved"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        data[credential.address] = entry
        _write_private(self.path, data)

    def forget(self, address: str) -> bool:
        data = _read(self.path)
        if data.pop(address, None) is None:
            return False
        _write_private(self.path, data)
        return True

    def all(self) -> list[Credential]:
        return [Credential.from_json(v) for v in _read(self.path).values()]


class HostStore(TokenBook):
    """A host's paired devices (``host-ADDRESS.json``): keyId → token, reloaded on change."""

    def __init__(self, address: str, directory: Path | None = None) -> None:
        super().__init__()
        self.address = address
        self.path = link_dir(directory) / f"host-{address}.json"
        self._mtime: float | None = None
        self._info: dict[str, str] = {}
        self.reload()

    @classmethod
    def all_hosts(cls, directory: Path | None = None) -> list[HostStore]:
        folder = link_dir(directory)
        return [cls(p.name[5:-5], directory) for p in sorted(folder.glob("host-*.json"))]

    def reload(self) -> bool:
        """Re-read the file if it changed; True if it did."""
        try:
            mtime = self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and mtime is not None:
            return False
        self._mtime = mtime
        devices = _read(self.path).get("devices", {})
        tokens: dict[bytes, bytes] = {}
        info: dict[str, str] = {}
        if isinstance(devices, dict):
            for key_id, entry in devices.items():
                try:
                    tokens[from_b64u(key_id, 16, "keyId")] = from_b64u(entry["token"], 32, "token")
                    info[key_id] = str(entry.get("paired", ""))
                except (LinkProtocolError, KeyError, TypeError):
                    continue
        self.tokens, self._info = tokens, info
        return True

    def _save(self) -> None:
        devices = {
            b64u(k): {"token": b64u(v), "paired": self._info.get(b64u(k), "")}
            for k, v in self.tokens.items()
        }
        _write_private(self.path, {"address": self.address, "devices": devices})
        self._mtime = self.path.stat().st_mtime_ns / 1e9

    def issue(self) -> tuple[bytes, bytes]:
        self.reload()
        key_id, token = super().issue()
        self._info[b64u(key_id)] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._save()
        return key_id, token

    def get(self, key_id: bytes) -> bytes | None:
        self.reload()
        return super().get(key_id)

    def revoke(self, key_id: bytes | str) -> bool:  # type: ignore[override]
        self.reload()
        raw = key_id if isinstance(key_id, bytes) else from_b64u(key_id, 16, "keyId")
        if not super().revoke(raw):
            return False
        self._info.pop(b64u(raw), None)
        self._save()
        return True

    def devices(self) -> dict[str, str]:
        self.reload()
        return dict(self._info)


class RecoveryStore:
    """A host's saved recovery key as SPAKE2's ``w`` (``recovery-ADDRESS.json``, 0600).

    ``w`` is as good as the key for recovering, so the file is as secret as the device tokens;
    deleting it (and restarting with a new key) retires the old key.
    """

    def __init__(self, address: str, directory: Path | None = None) -> None:
        self.address = address
        self.path = link_dir(directory) / f"recovery-{address}.json"

    def load(self) -> int | None:
        data = _read(self.path)
        if "w" not in data:
            return None
        w = int.from_bytes(from_b64u(data["w"], 32, f"'w' in {self.path}"), "big")
        if not 0 < w < ORDER:
            raise LinkProtocolError(f"'w' in {self.path} is outside 1..n-1")
        return w

    def save(self, w: int) -> None:
        _write_private(
            self.path,
            {
                "address": self.address,
                "w": b64u(w.to_bytes(32, "big")),
                "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
        )

    def forget(self) -> bool:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
