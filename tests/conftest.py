"""Shared test set-up: every test gets its own identity file, never the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("KEYWIRE_KEY", str(tmp_path / "config" / "keywire" / "identity.pem"))


# CI runs the same examples every time (a reproducible gate); local runs explore new ones.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("ci", derandomize=True, database=None, deadline=None)
_hsettings.register_profile("dev", deadline=None)
_hsettings.load_profile("ci" if os.environ.get("CI") else "dev")
