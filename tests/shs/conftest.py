"""shs tests run with the shs transform registered (until the lead wires it into BUILTIN)."""

from __future__ import annotations

import pytest

from keywire.registry import registry
from keywire.shs.transform import register


@pytest.fixture(autouse=True)
def _shs_registered() -> None:
    if "shs" not in registry.transforms:
        register(registry)
