"""Pairing and reconnect state machines driven frame by frame, without any I/O."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keywire.errors import HandshakeError, StreamError
from keywire.link.handshake import (
    ClientPairing,
    ClientReconnect,
    CodeBook,
    DeviceRevoked,
    HostContext,
    HostHandshake,
    PairingRefused,
    TokenBook,
)
from keywire.link.sealed import SealedChannel
from keywire.link.spake2 import Spake2Error
from keywire.link.wire import Credential

ADDRESS = "X" * 43


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_host(clock: Clock | None = None) -> HostContext:
    return HostContext(
        X25519PrivateKey.generate(), ADDRESS, CodeBook(clock or Clock()), TokenBook()
    )


def run(client: ClientPairing | ClientReconnect, host: HostHandshake) -> None:
    """Shuttle frames until both ends stop producing them."""
    to_host = client.start()
    while to_host:
        to_client: list[bytes] = []
        for frame in to_host:
            if not host.finished:
                to_client += host.receive(frame)
        to_host = []
        for frame in to_client:
            to_host += client.receive(frame)


def test_pair_then_reconnect_then_sealed_traffic() -> None:
    ctx = make_host()
    entry = ctx.codebook.open("abcd-efgh")
    client = ClientPairing("ABCDEFGH", ADDRESS, entry.code_id)
    host = HostHandshake(ctx)
    run(client, host)
    assert client.credential is not None and host.key_id == client.credential.key_id
    assert ctx.codebook.live() == []  # single use
    _echo(client.channel, host.channel)

    again = ClientReconnect(client.credential)
    host2 = HostHandshake(ctx)
    run(again, host2)
    _echo(again.channel, host2.channel)


def _echo(a: SealedChannel | None, b: SealedChannel | None) -> None:
    assert a is not None and b is not None
    for size in (0, 1, 1000):
        assert b.open(a.seal(b"x" * size)) == b"x" * size
        assert a.open(b.seal(b"y" * size)) == b"y" * size


def test_default_code_without_id() -> None:
    ctx = make_host()
    ctx.codebook.open("1234-5678", with_id=False)
    client = ClientPairing("l234 s678".replace("s", "5"), ADDRESS)
    run(client, HostHandshake(ctx))
    assert client.credential is not None


def test_wrong_codes_rest_the_code_and_only_the_guess_budget_locks_it() -> None:
    clock = Clock()
    ctx = make_host(clock)
    entry = ctx.codebook.open("AAAA-AAAA", max_attempts=6)
    for _ in range(5):
        with pytest.raises(Spake2Error):
            run(ClientPairing("BBBB-BBBB", ADDRESS, entry.code_id), HostHandshake(ctx))
        clock.now += 60
    assert not entry.locked  # five wrong guesses no longer lock the owner out
    with pytest.raises(Spake2Error):
        run(ClientPairing("BBBB-BBBB", ADDRESS, entry.code_id), HostHandshake(ctx))
    assert entry.locked
    clock.now += 60
    with pytest.raises(PairingRefused, match="locked"):
        run(ClientPairing("AAAA-AAAA", ADDRESS, entry.code_id), HostHandshake(ctx))


def test_abandoned_attempt_is_refunded_and_expiry() -> None:
    clock = Clock()
    ctx = make_host(clock)
    entry = ctx.codebook.open("CCCC-CCCC", ttl=60)
    host = HostHandshake(ctx)
    client = ClientPairing("CCCC-CCCC", ADDRESS, entry.code_id)
    header, _share = client.start()
    host.receive(header)
    assert entry.in_flight == 1
    host.abort()
    assert entry.in_flight == 0 and entry.failures == 0
    clock.now += 61
    with pytest.raises(PairingRefused, match="expired"):
        run(ClientPairing("CCCC-CCCC", ADDRESS, entry.code_id), HostHandshake(ctx))


def test_revoked_credential_is_refused() -> None:
    ctx = make_host()
    key_id, token = ctx.tokens.issue()
    from keywire.link.noise import public_bytes

    cred = Credential(ADDRESS, public_bytes(ctx.static), token, key_id)
    ctx.tokens.revoke(key_id)
    with pytest.raises(DeviceRevoked):
        run(ClientReconnect(cred), HostHandshake(ctx))


def test_wrong_token_or_host_key_fails() -> None:
    ctx = make_host()
    key_id, token = ctx.tokens.issue()
    from keywire.link.noise import public_bytes

    wrong_token = Credential(ADDRESS, public_bytes(ctx.static), b"\x00" * 32, key_id)
    with pytest.raises(HandshakeError):
        run(ClientReconnect(wrong_token), HostHandshake(ctx))
    other = X25519PrivateKey.generate()
    wrong_key = Credential(ADDRESS, public_bytes(other), token, key_id)
    with pytest.raises(HandshakeError):
        run(ClientReconnect(wrong_key), HostHandshake(ctx))


def test_tampering_replay_and_reorder_are_fatal() -> None:
    ctx = make_host()
    key_id, token = ctx.tokens.issue()
    from keywire.link.noise import public_bytes

    client = ClientReconnect(Credential(ADDRESS, public_bytes(ctx.static), token, key_id))
    host = HostHandshake(ctx)
    run(client, host)
    assert client.channel and host.channel
    f1, f2 = client.channel.seal(b"one"), client.channel.seal(b"two")
    with pytest.raises(StreamError):
        host.channel.open(f2)  # reordered
    with pytest.raises(StreamError):
        host.channel.open(f1)  # dead after the first failure
    client2 = ClientReconnect(Credential(ADDRESS, public_bytes(ctx.static), token, key_id))
    host2 = HostHandshake(ctx)
    run(client2, host2)
    assert client2.channel and host2.channel
    frame = bytearray(client2.channel.seal(b"hello"))
    frame[0] ^= 1
    with pytest.raises(StreamError):
        host2.channel.open(bytes(frame))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=4))
def test_fuzz_host_handshake(frames: list[bytes]) -> None:
    ctx = make_host()
    ctx.codebook.open("DDDD-DDDD", with_id=False)
    ctx.tokens.issue()
    host = HostHandshake(ctx)
    try:
        for frame in frames:
            host.receive(frame)
    except (HandshakeError, StreamError):
        pass
    entry = ctx.codebook.default
    assert entry is None or entry.in_flight == 0 or not host.finished


def test_sealed_frames_respect_the_noise_limit() -> None:
    from keywire.link.noise import MAX_MESSAGE, CipherState
    from keywire.link.sealed import MAX_CHUNK

    a = SealedChannel(CipherState(b"\x01" * 32), CipherState(b"\x02" * 32))
    b = SealedChannel(CipherState(b"\x02" * 32), CipherState(b"\x01" * 32))
    frames = a.stream_frames(b"z" * (3 * MAX_CHUNK + 5))
    assert len(frames) == 4 and max(len(f) for f in frames) == MAX_MESSAGE
    assert b"".join(b.open(f)[1:] for f in frames) == b"z" * (3 * MAX_CHUNK + 5)
    with pytest.raises(StreamError, match="exceeds"):
        b.open(b"\x00" * (MAX_MESSAGE + 1))
    with pytest.raises(ValueError):
        a.seal(b"\x00" * (MAX_MESSAGE - 15))
