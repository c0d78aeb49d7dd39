"""The Link relay: introduces clients to registered hosts and splices their WebSockets.

``core`` holds the protocol logic (registrations, links, auth, limits) with an injected clock;
``server`` is the asyncio shell around websockets' sans-IO protocol; ``config`` reads Link's
environment variables and the matching flags.
"""

from .config import RelayConfig
from .core import RelayCore

__all__ = ["RelayConfig", "RelayCore"]
