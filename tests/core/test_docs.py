"""Every public name (each module's ``__all__``) is documented somewhere in docs/."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import keywire

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_public_name_is_in_the_docs() -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in DOCS.glob("*.md"))
    modules = [keywire] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(keywire.__path__, "keywire.")
        if not info.name.endswith("__main__")
    ]
    undocumented = [
        f"{module.__name__}.{name}"
        for module in modules
        for name in getattr(module, "__all__", ())
        if not re.search(rf"\b{re.escape(name)}\b", text)
    ]
    assert undocumented == [], "public names missing from docs/*.md"
