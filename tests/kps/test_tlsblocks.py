"""qh3's TLS blocks without generator context managers (``keywire.kps.quic.tlsblocks``) read
and write exactly what qh3's own helpers do: real handshake messages parsed and written with
both, and the same errors on malformed input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import pytest
import qh3.tls as tls
from qh3._hazmat import Buffer, BufferReadError, Certificate

from keywire.identity import Identity
from keywire.kps.quic import tlsblocks

FAST = {name: getattr(tlsblocks, name) for name in tlsblocks.ORIGINALS}


@contextlib.contextmanager
def helpers(which: dict[str, object]) -> Iterator[None]:
    saved = {name: getattr(tls, name) for name in tlsblocks.ORIGINALS}
    for name, func in which.items():
        setattr(tls, name, func)
    try:
        yield
    finally:
        for name, func in saved.items():
            setattr(tls, name, func)


def test_installed() -> None:
    # keywire.kps's import installs them; qh3's TLS code looks them up at call time
    import keywire.kps.quic.configuration  # noqa: F401

    for name in tlsblocks.ORIGINALS:
        assert getattr(tls, name) is FAST[name]


def _handshake_messages() -> dict[str, bytes]:
    """A ClientHello and the server's flight from a real qh3 handshake (one message each)."""
    identity = Identity.generate()
    client = tls.Context(is_client=True, alpn_protocols=["h3"], verify_mode=0)
    client.handshake_extensions = [(0x39, b"\x01\x02\x03")]
    server = tls.Context(is_client=False, alpn_protocols=["h3"])
    server.certificate = Certificate(identity.certificate_der)
    server.certificate_private_key = tls.load_pem_private_key(identity.private_key_pem)
    server.handshake_extensions = [(0x39, b"\x04\x05")]
    c_out = {epoch: Buffer(capacity=8192) for epoch in tls.Epoch}
    s_out = {epoch: Buffer(capacity=8192) for epoch in tls.Epoch}
    client.handle_message(b"", c_out)
    hello = c_out[tls.Epoch.INITIAL].data
    server.handle_message(hello, s_out)
    return {
        "client_hello": hello,
        "server_hello": s_out[tls.Epoch.INITIAL].data,
        "server_flight": s_out[tls.Epoch.HANDSHAKE].data,
    }


def _split(flight: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(flight):
        length = int.from_bytes(flight[i + 1 : i + 4], "big")
        out.append(flight[i : i + 4 + length])
        i += 4 + length
    return out


def _roundtrip(data: bytes, pull: object, push: object) -> tuple[object, bytes]:
    message = pull(Buffer(data=data))  # type: ignore[operator]
    buf = Buffer(capacity=8192)
    push(buf, message)  # type: ignore[operator]
    return message, buf.data


def test_same_messages_as_qh3() -> None:
    with helpers(tlsblocks.ORIGINALS):
        messages = _handshake_messages()
    encrypted_extensions, certificate, verify, finished = _split(messages["server_flight"])
    cases = [
        (messages["client_hello"], tls.pull_client_hello, tls.push_client_hello),
        (messages["server_hello"], tls.pull_server_hello, tls.push_server_hello),
        (encrypted_extensions, tls.pull_encrypted_extensions, tls.push_encrypted_extensions),
        (certificate, tls.pull_certificate, tls.push_certificate),
        (verify, tls.pull_certificate_verify, tls.push_certificate_verify),
        (finished, tls.pull_finished, tls.push_finished),
    ]
    for data, pull, push in cases:
        with helpers(tlsblocks.ORIGINALS):
            theirs = _roundtrip(data, pull, push)
        with helpers(FAST):
            ours = _roundtrip(data, pull, push)
        assert ours == theirs
        if pull is not tls.pull_client_hello:  # (qh3 writes a ClientHello's GREASE elsewhere)
            assert ours[1] == data  # and both write the message back byte for byte


def test_a_whole_handshake_with_the_fast_helpers() -> None:
    with helpers(FAST):
        messages = _handshake_messages()
    with helpers(tlsblocks.ORIGINALS):  # what they wrote, qh3's own helpers read back
        hello = tls.pull_client_hello(Buffer(data=messages["client_hello"]))
    assert hello.alpn_protocols == ["h3"]
    assert (0x39, b"\x01\x02\x03") in hello.other_extensions


@pytest.mark.parametrize("which", [tlsblocks.ORIGINALS, FAST], ids=["qh3", "fast"])
def test_same_errors(which: dict[str, object]) -> None:
    with helpers(which):
        buf = Buffer(data=b"\x00\x03abcd")  # a 3-byte block, 4 bytes read inside it
        with pytest.raises(tls.AlertDecodeError), tls.pull_block(buf, 2):
            buf.pull_bytes(4)
        with pytest.raises(BufferReadError):
            tls.pull_opaque(Buffer(data=b"\x00\x09abc"), 2)
        with pytest.raises(OverflowError):
            tls.push_opaque(Buffer(capacity=512), 1, bytes(300))
        # an error inside a block propagates unchanged
        with pytest.raises(KeyError), tls.push_block(Buffer(capacity=16), 2):
            raise KeyError("inside")
        buf = Buffer(data=b"\x00\x04\x00\x01\x00\x02")
        assert tls.pull_list(buf, 2, buf.pull_uint16) == [1, 2]
        out = Buffer(capacity=64)
        tls.push_list(out, 2, out.push_uint16, [7, 8])
        with tls.push_extension(out, 0x10):
            out.push_bytes(b"xy")
        assert out.data == b"\x00\x04\x00\x07\x00\x08\x00\x10\x00\x02xy"
        assert partial(tls.pull_opaque, Buffer(data=b"\x01z"), 1)() == b"z"
