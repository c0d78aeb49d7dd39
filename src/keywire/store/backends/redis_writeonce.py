"""Write-once, expiring puts for Redis (and Redis Cluster): one Lua script, so it is atomic.

Why a script: ``SET NX PX`` alone cannot tell a retransmission (the same bytes again, which
must succeed) from a conflicting put (other bytes at a taken address, which must not replace
them); the script compares in the same atomic step and publishes the wake-up only for a put
that stored something.

Redis's Lua has no Ed25519, so the script cannot check a put's signature. The keywire
Redis module (``keywire.store.redismodule``, loaded with ``--loadmodule``) can: its
``KEYWIRE.PUT`` verifies ``signature || payload`` under the address the key names, then does
what the script does (``SET NX PX``, compare, publish) in one command, with the same replies.
A client uses the module when the server has it (``module_put``) and the script otherwise;
either way every reader also verifies a value against its address before using it (see
docs/store.md "Write capabilities").
"""

from __future__ import annotations

import enum
from typing import Any

from redis.exceptions import ResponseError

#: a put's wake-up: the stored value itself, after ``=``, so a waiting get needs no second
#: read (keywire's module publishes ``1``: read again; so did keywire before 2026-12-03)
PUBLISH_VALUE = "redis.call('PUBLISH', ARGV[4], '=' .. ARGV[1])\n"
#: what a wake-up message's data starts with when it carries the value
VALUE_MARK = b"="

#: KEYS[1] the key; ARGV: value, TTL in ms, the largest value, the wake-up channel
WRITE_ONCE_SCRIPT = f"""
if string.len(ARGV[1]) > tonumber(ARGV[3]) then
  return redis.error_reply('TOOLARGE ' .. string.len(ARGV[1]))
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  {PUBLISH_VALUE}  return 1
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


#: the module's command: ``KEYWIRE.PUT key body ttl_ms max_value [PUBLISH|SPUBLISH channel]``
MODULE_COMMAND = "KEYWIRE.PUT"
#: how a signed put is checked at the server: ``auto`` uses the module where every server
#: has it and the script otherwise (with a warning); ``module`` refuses to run without it;
#: ``script`` never uses it (for comparisons)
SERVER_CHECKS = ("auto", "module", "script")
#: the module's error codes for a put it refuses (KWSIG: not signed for the key's address;
#: KWADDR: the key names no address): retrying cannot help
_REFUSALS = ("KWSIG", "KWADDR")


async def module_put(
    client: Any,
    key: bytes,
    value: bytes,
    ttl: float,
    max_value: int,
    channel: bytes | None,
    publish: str = "PUBLISH",
) -> PutOutcome:
    """One ``KEYWIRE.PUT``; ``publish`` is ``PUBLISH`` or ``SPUBLISH`` (Redis Cluster), and no
    channel means no wake-up. Refusals raise ``ResponseError`` (see ``module_refusal``)."""
    args: list[Any] = [key, value, max(1, int(ttl * 1000)), max_value]
    if channel is not None:
        args += [publish, channel]
    return PutOutcome(int(await client.execute_command(MODULE_COMMAND, *args)))


def module_refusal(exc: ResponseError) -> str | None:
    """The module's reason if ``exc`` is its refusal of an unsigned or forged put."""
    text = str(exc)
    return text if text.startswith(_REFUSALS) else None


def check_server_check(value: str) -> str:
    if value not in SERVER_CHECKS:
        raise ValueError(f"server_check must be one of {', '.join(SERVER_CHECKS)}, got {value!r}")
    return value
