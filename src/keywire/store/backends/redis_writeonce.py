"""Write-once, expiring puts for Redis (and Redis Cluster): one Lua script, so it is atomic.

Why a script: ``SET NX PX`` alone cannot tell a retransmission (the same bytes again, which
must succeed) from a conflicting put (other bytes at a taken address, which must not replace
them); the script compares in the same atomic step and publishes the wake-up only for a put
that stored something.

Redis's Lua has no Ed25519, so Redis does not check a put's signature: Redis is the
operator's storage, reached only by clients the operator lets in (``requirepass``/ACL). The
signed body (``signature || payload``, see ``capability.py``) is stored as it is, so every
reader verifies it against the address before it uses a frame; a store that must refuse
unsigned puts itself is the map server (see docs/store.md "Write capabilities").
"""

from __future__ import annotations

import enum
from typing import Any

#: KEYS[1] the key; ARGV: value, TTL in ms, the largest value, the wake-up channel
WRITE_ONCE_SCRIPT = """
if string.len(ARGV[1]) > tonumber(ARGV[3]) then
  return redis.error_reply('TOOLARGE ' .. string.len(ARGV[1]))
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('PUBLISH', ARGV[4], '1')
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return 0
end
return -1
"""


class PutOutcome(enum.IntEnum):
    """What a write-once put did."""

    STORED = 1
    #: the same bytes were there already (a retransmission): done, nothing changed
    ALREADY = 0
    #: other bytes hold the address: refused, what is there stays
    CONFLICT = -1


async def put_once(
    script: Any, key: bytes, value: bytes, ttl: float, max_value: int, channel: bytes
) -> PutOutcome:
    """Run the script (``client.register_script(WRITE_ONCE_SCRIPT)``) for one put."""
    result = await script(keys=[key], args=[value, max(1, int(ttl * 1000)), max_value, channel])
    return PutOutcome(int(result))
