"""A toy transport added the way a third party would, and the whole suite run on it.

``toy:NAME`` carries pipes through process memory (``keywire.testing.memory_pipe_pair``) to a
listener of that name: one adapter class and one registry line, then ``keywire.Server`` and
``keywire.dial`` compose ``~mux`` (or nothing: one stream) over it like over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

import pytest

import keywire
from keywire.address import Alternative, Scope, Section
from keywire.errors import Code, StreamError
from keywire.identity import Identity
from keywire.options import Options
from keywire.pipe import Pipe
from keywire.plugin import Listening, PipeHandler, Transport
from keywire.registry import registry
from keywire.stream import Connection
from keywire.testing import CHECKS, Capabilities, MakePair, memory_pipe_pair

from .test_contract import DIVERGENCES


class ToyTransport(Transport):
    """``toy:NAME``: the adapter. Dialing hands one end of a memory pipe pair to the listener."""

    name = "toy"

    def __init__(self) -> None:
        self._listeners: dict[str, PipeHandler] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def connect(self, section: Section, options: Options) -> Pipe:
        name = ":".join(section.args)
        on_pipe = self._listeners.get(name)
        if on_pipe is None:
            raise StreamError(Code.NETWORK_ERROR, f"nobody listens on toy:{name}")
        ours, theirs = memory_pipe_pair(names=("toy:dialer", f"toy:{name}"))
        task = asyncio.ensure_future(on_pipe(theirs))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ours

    async def listen(self, section: Section, options: Options, on_pipe: PipeHandler) -> Listening:
        name = ":".join(section.args)
        if name in self._listeners:
            raise OSError(f"toy:{name} is already listening")
        self._listeners[name] = on_pipe
        return _ToyListening(self, name)


class _ToyListening(Listening):
    def __init__(self, transport: ToyTransport, name: str) -> None:
        self._transport = transport
        self._name = name

    def announce(self, scope: Scope) -> list[Alternative]:
        return [Alternative((Section("toy", (self._name,)),))]

    async def close(self) -> None:
        self._transport._listeners.pop(self._name, None)


# the registry line
if "toy" not in registry.transports:
    registry.add_transport(ToyTransport())

_names = itertools.count()


@contextlib.asynccontextmanager
async def toy_server(chain: str) -> AsyncIterator[MakePair]:
    spec = f"toy:t{next(_names)}{chain}"
    async with keywire.Server([spec], Options(identity=Identity.generate())) as server:
        address = server.address()

        @contextlib.asynccontextmanager
        async def make_pair() -> AsyncIterator[tuple[Connection, Connection]]:
            client = await keywire.dial(address, Options(identity=Identity.generate()))
            try:
                accepted = await asyncio.wait_for(server.accept(), 5)
            except BaseException:
                await client.abort()
                raise
            try:
                yield client, accepted
            finally:
                for conn in (client, accepted):
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.abort(), 3)

        yield make_pair


#: the toy chains and what they declare (a memory pipe's FIN is authenticated: only
#: close_write makes EOF, an abort reads as network-error)
TOYS: dict[str, tuple[str, Capabilities]] = {
    "toy~mux": ("~mux", Capabilities(timeout=10.0)),
    "toy": (
        "",
        Capabilities(multiplexed=False, stream_codes=False, close_codes=False, timeout=10.0),
    ),
}


def _cases() -> list[object]:
    cases: list[object] = []
    for toy, (_, capabilities) in TOYS.items():
        # the one-stream toy shares the one-stream chains' divergences (same shell)
        like = "net~shs" if not capabilities.multiplexed else "mux-memory"
        for check in CHECKS:
            reason = DIVERGENCES.get((like, check))
            marks = (
                [pytest.mark.xfail(strict=True, reason=f"divergence: {reason}")] if reason else []
            )
            cases.append(
                pytest.param(toy, check, marks=marks, id=f"{toy.replace('~', '_')}-{check}")
            )
    return cases


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("toy", "check"), _cases())
async def test_toy_transport_passes_the_suite(toy: str, check: str) -> None:
    chain, capabilities = TOYS[toy]
    async with toy_server(chain) as make_pair:
        await CHECKS[check](make_pair, capabilities)


async def test_check_connection_runs_everything_on_the_toy() -> None:
    """The one-call form a third party would use passes on the multiplexed toy."""
    async with asyncio.timeout(60):
        async with toy_server("~mux") as make_pair:
            await keywire.testing.check_connection(make_pair, TOYS["toy~mux"][1])


async def test_unknown_toy_name_is_a_clear_dial_error() -> None:
    with pytest.raises(keywire.DialError, match="nobody listens on toy:absent"):
        await keywire.dial("toy:absent~mux", Options(identity=Identity.generate(), timeout=2))
