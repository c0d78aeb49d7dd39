"""The former home of the plugin layer, kept so ``from keywire.chain import …`` still works.

The pieces now live in their own modules: ``options`` (Options and the settings reader),
``plugin`` (the Transport/Transform/ChainHandler interfaces), ``registry`` (the registry and its
entry-point group), ``compose`` (the transform loop), ``timeouts`` (``with_timeout``). New code
imports from those.
"""

from __future__ import annotations

from .options import SSB_APP_KEY, Authorize, Options, prefixed_extra, read_settings
from .plugin import ChainHandler, ConnectionHandler, Listening, PipeHandler, Transform, Transport
from .registry import Registry, registry
from .timeouts import with_timeout

__all__ = [
    "SSB_APP_KEY",
    "Authorize",
    "ChainHandler",
    "ConnectionHandler",
    "Listening",
    "Options",
    "PipeHandler",
    "Registry",
    "Transform",
    "Transport",
    "prefixed_extra",
    "read_settings",
    "registry",
    "with_timeout",
]
