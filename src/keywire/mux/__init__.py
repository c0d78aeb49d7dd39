"""``~mux``: many streams over one byte pipe, on the yamux wire format with keywire's codes.

``frame`` is the header codec, ``session`` the sans-IO protocol core, ``connection`` the asyncio
shell (``MuxConnection`` / ``MuxStream``) and ``transform`` the ``mux`` address section.
"""

from __future__ import annotations

from .frame import MuxProtocolError
from .session import MuxConfig, MuxSession

__all__ = ["MuxConfig", "MuxProtocolError", "MuxSession"]
