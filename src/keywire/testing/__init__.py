"""Public conformance suite for keywire transports (on the model of ``trio.testing``).

```python
from keywire.testing import Capabilities, check_connection, memory_pipe_pair

await check_connection(make_pair, Capabilities(multiplexed=False, stream_codes=False))
```

``make_pair`` is an async context manager factory giving ``(client, server)`` connections of
the transport under test; ``Capabilities`` declares what it can do, and the suite checks the
declared behaviour where a transport cannot do something. See docs/testing.md.
"""

from __future__ import annotations

from ._util import Check, ContractError
from .capabilities import Capabilities, DatagramSupport, MakePair
from .lifecycle import (
    check_abort,
    check_close_with_code,
    check_concurrent_accept,
    check_datagrams,
    check_graceful_close,
    check_wait_closed,
)
from .memory import MemoryPipe, memory_pipe_pair
from .naming import check_addresses
from .streams import (
    check_backpressure,
    check_echo,
    check_eof_iff_fin,
    check_many_streams,
    check_reset_codes,
    check_stop_sending_codes,
)
from .suite import CHECKS, check_connection

__all__ = [
    "CHECKS",
    "Capabilities",
    "Check",
    "ContractError",
    "DatagramSupport",
    "MakePair",
    "MemoryPipe",
    "check_abort",
    "check_addresses",
    "check_backpressure",
    "check_close_with_code",
    "check_concurrent_accept",
    "check_connection",
    "check_datagrams",
    "check_echo",
    "check_eof_iff_fin",
    "check_graceful_close",
    "check_many_streams",
    "check_reset_codes",
    "check_stop_sending_codes",
    "check_wait_closed",
    "memory_pipe_pair",
]
