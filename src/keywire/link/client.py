"""The client side of Link: pair with a code (or recover with the host's recovery key),
reconnect with the saved credential, fail over.

``pair``, ``recover`` and ``connect`` take a multiaddress that lists the host on one or more relays
(``wss://R1/v1/link~link:ADDRESS;wss://R2/v1/link~link:ADDRESS``) and try the relays in order;
any failure moves on to the next, except a revoked credential, which stops at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from websockets.exceptions import ConnectionClosed as WsClosed

from ..address import Alternative, MultiAddress, parse
from ..errors import AddressError, Attempt, DialError, HandshakeError
from ..stream import RemoteIdentity
from .codes import normalise_recovery_key
from .handshake import ClientPairing, ClientReconnect, ClientRecovery, DeviceRevoked, Step
from .relayconn import RelayError, introduce
from .session import LinkPipe, describe_close
from .spake2 import Spake2Error
from .store import ClientStore
from .wire import CODE_ID_SIZE, Credential, LinkProtocolError, from_b64u

HANDSHAKE_TIMEOUT = 15.0


def is_link_alternative(alt: Alternative) -> bool:
    return (
        len(alt.sections) == 2
        and alt.sections[0].name in ("ws", "wss")
        and alt.sections[1].name == "link"
    )


def link_target(alt: Alternative) -> tuple[str, str]:
    """(relay URL, host address) of ``wss://RELAY/v1/link~link:ADDRESS``."""
    section = alt.sections[1]
    if len(section.args) != 1 or not section.args[0]:
        raise AddressError(
            str(alt),
            len(str(alt.sections[0])) + 1,
            "'link:ADDRESS' (the host's 43-character address)",
        )
    url = alt.sections[0].url
    assert url is not None
    return url, section.args[0]


def relays_of(address: str | MultiAddress) -> tuple[str, list[str]]:
    """The host address and every relay URL a multiaddress lists for it."""
    parsed = parse(address)
    host: str | None = None
    urls: list[str] = []
    for alt in parsed.alternatives:
        if not is_link_alternative(alt):
            continue
        url, addr = link_target(alt)
        if host is not None and addr != host:
            raise AddressError(str(parsed), 0, "one host address in every link alternative")
        host = addr
        urls.append(url)
    if host is None:
        raise AddressError(str(parsed), 0, "at least one 'wss://RELAY/v1/link~link:ADDRESS'")
    return host, urls


def parse_code_id(text: str | bytes | None) -> bytes | None:
    if text is None or isinstance(text, bytes):
        return text
    try:
        return bytes.fromhex(text)
    except ValueError:
        return from_b64u(text, CODE_ID_SIZE, "code id")


async def run_handshake(
    url: str,
    address: str,
    machine: ClientPairing | ClientReconnect,
    timeout: float,
    remote: RemoteIdentity | None = None,
) -> LinkPipe:
    """Introduce ourselves through ``url`` and run ``machine`` over the fresh splice."""
    ws = await introduce(url, address, timeout)
    try:
        async with asyncio.timeout(timeout):
            for frame in machine.start():
                await ws.send(frame)
            while not machine.finished:
                try:
                    received = await ws.recv()
                except WsClosed as exc:
                    if isinstance(machine, ClientPairing) and machine.step is Step.CONFIRM:
                        raise Spake2Error(
                            f"the host rejected the {machine.secret_name} (key confirmation "
                            f"failed): wrong {machine.secret_short}?"
                        ) from None
                    raise RelayError(f"during the handshake: {describe_close(exc)}") from None
                if isinstance(received, str):
                    raise LinkProtocolError("text frame during the Link handshake")
                for out in machine.receive(received):
                    await ws.send(out)
    except TimeoutError:
        await ws.close()
        raise HandshakeError(f"Link handshake via {url} timed out after {timeout:g} s") from None
    except BaseException:
        await ws.close()
        raise
    assert machine.channel is not None
    return LinkPipe(ws, machine.channel, f"{url}~link:{address}", remote)


async def reconnect(
    url: str, credential: Credential, timeout: float = HANDSHAKE_TIMEOUT
) -> LinkPipe:
    """A session with a paired host, through one relay."""
    return await run_handshake(
        url,
        credential.address,
        ClientReconnect(credential),
        timeout,
        RemoteIdentity(host_key=credential.host_static),
    )


async def enrol_via(
    url: str, machine: ClientPairing, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[LinkPipe, Credential]:
    """Run a pairing or recover machine through one relay: the live session and credential."""
    pipe = await run_handshake(url, machine.address, machine, timeout)
    assert machine.credential is not None
    pipe.remote = RemoteIdentity(host_key=machine.credential.host_static)
    return pipe, machine.credential


async def pair_via(
    url: str,
    address: str,
    code: str,
    code_id: bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
) -> tuple[LinkPipe, Credential]:
    """Pair through one relay; returns the live session and the new credential."""
    return await enrol_via(url, ClientPairing(code, address, code_id), timeout)


async def recover_via(
    url: str, address: str, recovery_key: str, timeout: float = HANDSHAKE_TIMEOUT
) -> tuple[LinkPipe, Credential]:
    """Recover through one relay; returns the live session and the new credential."""
    return await enrol_via(url, ClientRecovery(recovery_key, address), timeout)


async def _enrol(
    address: str | MultiAddress,
    make: Callable[[str], ClientPairing],
    timeout: float,
    store_dir: Path | None,
) -> tuple[Credential, str]:
    """Try each relay in order (only relay/network failures move on); save what we get."""
    host, urls = relays_of(address)
    attempts: list[Attempt] = []
    for url in urls:
        try:
            pipe, credential = await enrol_via(url, make(host), timeout)
        except (RelayError, OSError) as exc:
            attempts.append(Attempt(url, str(exc)))
            continue
        ClientStore(store_dir).save(credential, urls)
        await pipe.close()
        return credential, url
    raise DialError(str(address), attempts)


async def pair(
    address: str | MultiAddress,
    code: str,
    *,
    code_id: str | bytes | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    store_dir: Path | None = None,
) -> tuple[Credential, str]:
    """Pair with the host using its code, save the credential (0600), and return it."""
    cid = parse_code_id(code_id)
    return await _enrol(address, lambda host: ClientPairing(code, host, cid), timeout, store_dir)


async def recover(
    address: str | MultiAddress,
    recovery_key: str,
    *,
    timeout: float = HANDSHAKE_TIMEOUT,
    store_dir: Path | None = None,
) -> tuple[Credential, str]:
    """Get a NEW credential with the host's recovery key (a lost device, a new one), save it
    (0600, replacing any credential for that host) and return it. The key stays valid."""
    normalise_recovery_key(recovery_key)  # a malformed or weak key fails before any network
    return await _enrol(
        address, lambda host: ClientRecovery(recovery_key, host), timeout, store_dir
    )


async def connect(
    address: str | MultiAddress,
    *,
    credential: Credential | None = None,
    timeout: float = HANDSHAKE_TIMEOUT,
    store_dir: Path | None = None,
    retries: int = 0,
    backoff: float = 0.4,
    max_backoff: float = 8.0,
) -> LinkPipe:
    """A session with a paired host, trying each relay in order (``retries`` more rounds,
    with doubling backoff). A revoked credential raises ``DeviceRevoked`` at once."""
    host, urls = relays_of(address)
    cred = credential or ClientStore(store_dir).get(host)
    if cred is None:
        raise HandshakeError(f"no credential for {host}: pair first (keywire pair ADDRESS CODE)")
    return await failover(urls, cred, timeout, retries, backoff, max_backoff)


async def failover(
    urls: Sequence[str],
    credential: Credential,
    timeout: float,
    retries: int = 0,
    backoff: float = 0.4,
    max_backoff: float = 8.0,
) -> LinkPipe:
    attempts: list[Attempt] = []
    delay = backoff
    for round_ in range(retries + 1):
        for url in urls:
            try:
                return await reconnect(url, credential, timeout)
            except DeviceRevoked:
                raise
            except (HandshakeError, OSError) as exc:
                attempts.append(Attempt(url, str(exc)))
        if round_ < retries:
            await asyncio.sleep(delay)
            delay = min(max_backoff, delay * 2)
    raise DialError(";".join(urls), attempts)
