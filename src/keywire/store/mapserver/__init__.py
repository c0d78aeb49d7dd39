"""The HTTP map server (``keywire map-server``): a small key-value store for store streams,
with its HTTP/1.1 framing and bearer tokens, which its client (``backends.mapclient``) shares."""

from __future__ import annotations

from .mapserver import MapServer

__all__ = ["MapServer"]
