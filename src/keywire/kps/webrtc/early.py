"""Early retransmission for the Python dialer: a late-answering server costs ~30 ms, not 1.5 s.

KPS servers drop the first packets of a new peer: a libjuice/pion server creates its ICE agent
on the first STUN check and does not answer that check, and its DTLS side may not be ready for
the first ClientHello. aioice retransmits a check after 0.5 s and OpenSSL a DTLS flight after
1 s, so such a dial took 1.5–2 s. The dialer talks to exactly one server, so it can afford to
chase: ``EarlyRetransmitProtocol`` resends its pending connectivity checks and its first
ClientHello, byte for byte (a retransmission, as the RFCs define it), after 30, 90, 210 and
450 ms until an answer arrives; then aioice's and OpenSSL's own timers take over. That is at
most four extra small packets per lost packet, and none once the server answers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from aioice import Candidate, stun
from aioice import Connection as IceConnection
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol

#: gaps between early resends (cumulative 30, 90, 210, 450 ms); aioice's first RTO is 500 ms
EARLY_RESENDS = (0.03, 0.06, 0.12, 0.24)
#: RFC 7983: a first byte in 20..63 is DTLS
_DTLS_FIRST = range(20, 64)
_DTLS_HANDSHAKE = 22
_CLIENT_HELLO = 1


def is_client_hello(data: bytes) -> bool:
    """A DTLS record carrying a ClientHello (record header 13 bytes, then msg_type)."""
    return len(data) > 13 and data[0] == _DTLS_HANDSHAKE and data[13] == _CLIENT_HELLO


class EarlyRetransmitProtocol(StunProtocol):
    """A dialer's host-candidate socket that resends unanswered setup packets early."""

    def __init__(self, receiver: IceConnection) -> None:
        super().__init__(receiver)
        self.heard_dtls = False
        self.early_resends = 0
        self._hello_chased = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._chasing: set[bytes] = set()

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        super().send_stun(message, addr)
        txid = message.transaction_id
        if (
            message.message_class == stun.Class.REQUEST
            and not self.heard_dtls
            and txid in self.transactions
            and txid not in self._chasing
        ):
            self._chasing.add(txid)
            self._chase(
                lambda: txid in self.transactions and not self.heard_dtls, bytes(message), addr
            )

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        await super().send_data(data, addr)
        if not self._hello_chased and not self.heard_dtls and is_client_hello(data):
            self._hello_chased = True
            self._chase(lambda: not self.heard_dtls, data, addr)

    def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if isinstance(data, bytes) and data and data[0] in _DTLS_FIRST:
            self.heard_dtls = True
        super().datagram_received(data, addr)

    def _chase(self, pending: Callable[[], bool], data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        delays = iter(EARLY_RESENDS)

        def fire(handle_box: list[asyncio.TimerHandle]) -> None:
            self._timers.discard(handle_box[0])
            if pending() and not self.transport.is_closing():
                self.transport.sendto(data, addr)
                self.early_resends += 1
                schedule()

        def schedule() -> None:
            delay = next(delays, None)
            if delay is not None:
                box: list[asyncio.TimerHandle] = []
                box.append(loop.call_later(delay, fire, box))
                self._timers.add(box[0])

        schedule()

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        await super().close()


async def bind_host_candidate(
    connection: IceConnection, address: str, component: int = 1
) -> tuple[EarlyRetransmitProtocol, Candidate]:
    """Bind ``address:0`` with an ``EarlyRetransmitProtocol`` and describe it as a host
    candidate (what aioice's gathering does, with this protocol class)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: EarlyRetransmitProtocol(connection), local_addr=(address, 0)
    )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    host, port = transport.get_extra_info("sockname")[:2]
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=port,
        type="host",
    )
    return protocol, protocol.local_candidate
