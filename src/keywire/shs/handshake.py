"""Sans-IO shs1 client and server: bytes in, bytes out, an outcome or a ``HandshakeError``.

The machines never read a socket or a clock. The shell asks ``bytes_needed`` (how much the next
step waits for), feeds what arrives with ``receive_data`` and sends what it returns; a peer that
hangs up is reported with ``receive_eof``, which names the phase so a user can tell a wrong app
key (the server hangs up after our challenge) from a wrong server key (after our hello).

On any failed check the server sends nothing more: the shell should just hang up, as the JS
server does, so a prober learns nothing about which check failed.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from ..errors import HandshakeError
from .steps import (
    CHALLENGE_LENGTH,
    CLIENT_AUTH_LENGTH,
    SERVER_ACCEPT_LENGTH,
    Transcript,
    _curve_public,
    keypair_from_seed,
)


class ShsHandshakeError(HandshakeError):
    """A failed shs1 handshake; ``side`` is ``client``/``server``, ``phase`` 1–4 (0 if none)."""

    def __init__(self, side: str, phase: int, message: str) -> None:
        self.side = side
        self.phase = phase
        super().__init__(f"shs.{side}: {message}")


@dataclass(frozen=True)
class SessionKeys:
    """What box-stream needs after a handshake, and who the peer proved to be."""

    encrypt_key: bytes
    encrypt_nonce: bytes
    decrypt_key: bytes
    decrypt_nonce: bytes
    remote_public_key: bytes
    local_public_key: bytes

    def as_bytes(self) -> bytes:
        """``encKey‖encNonce‖decKey‖decNonce`` (112 bytes), the shs1-test adapter output."""
        return self.encrypt_key + self.encrypt_nonce + self.decrypt_key + self.decrypt_nonce


def _keys_of(transcript: Transcript) -> SessionKeys:
    enc_key, enc_nonce, dec_key, dec_nonce = transcript.box_keys()
    assert transcript.remote_public is not None
    return SessionKeys(
        enc_key, enc_nonce, dec_key, dec_nonce, transcript.remote_public, transcript.local_public
    )


def _check_key(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 32:
        size = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ValueError(f"{what} must be 32 bytes, got {size}")
    return bytes(value)


class _Phase(Enum):
    CHALLENGE = "challenge"
    AUTH = "auth"
    AUTHORIZING = "authorizing"
    DONE = "done"
    FAILED = "failed"


class _Machine:
    """Byte accumulation shared by both sides; subclasses say what each message means."""

    side = ""

    def __init__(self, transcript: Transcript) -> None:
        self._transcript = transcript
        self._buffer = bytearray()
        self._phase = _Phase.CHALLENGE
        self._keys: SessionKeys | None = None
        self._error: ShsHandshakeError | None = None

    @property
    def transcript(self) -> Transcript:
        """The intermediate values (for tests; secrets: never log them)."""
        return self._transcript

    @property
    def done(self) -> bool:
        return self._phase is _Phase.DONE

    @property
    def failed(self) -> bool:
        return self._phase is _Phase.FAILED

    @property
    def keys(self) -> SessionKeys:
        """The outcome; only after ``done``."""
        if self._keys is None:
            raise RuntimeError("the handshake has not finished")
        return self._keys

    @property
    def bytes_needed(self) -> int:
        """How many more bytes the current step waits for (0 when none: done or deciding)."""
        want = self._message_length()
        return max(0, want - len(self._buffer)) if want else 0

    def take_leftover(self) -> bytes:
        """Bytes that arrived after the last handshake message (box-stream data)."""
        if self._phase is not _Phase.DONE:
            return b""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def receive_data(self, data: bytes) -> bytes:
        """Feed received bytes; returns bytes to send (possibly empty)."""
        if self._error is not None:
            raise self._error
        self._buffer += data  # after the last message: early box-stream bytes, kept as leftover
        if self._phase in (_Phase.DONE, _Phase.AUTHORIZING):
            return b""
        out = bytearray()
        while True:
            want = self._message_length()
            if not want or len(self._buffer) < want:
                return bytes(out)
            message = bytes(self._buffer[:want])
            del self._buffer[:want]
            out += self._step(message)
            if self._phase in (_Phase.DONE, _Phase.AUTHORIZING):
                return bytes(out)

    def receive_eof(self) -> NoReturn:
        """The peer hung up before the handshake finished: raise the error naming the phase."""
        if self._error is not None:
            raise self._error
        if self._phase is _Phase.DONE:
            raise RuntimeError("receive_eof after the handshake finished: box-stream's job")
        raise self._fail(*self._hangup_reason(len(self._buffer)))

    def timed_out(self, seconds: float) -> ShsHandshakeError:
        """The shell's read deadline passed: fail, naming what we were waiting for."""
        if self._error is not None:
            return self._error
        phase, what = self._waiting_for()
        return self._fail(phase, f"timed out after {seconds:g} s waiting for {what}")

    def _fail(self, phase: int, message: str) -> ShsHandshakeError:
        self._phase = _Phase.FAILED
        self._error = ShsHandshakeError(self.side, phase, message)
        self._buffer.clear()
        return self._error

    def _finish(self) -> None:
        self._keys = _keys_of(self._transcript)
        self._phase = _Phase.DONE

    def _message_length(self) -> int:
        raise NotImplementedError

    def _step(self, message: bytes) -> bytes:
        raise NotImplementedError

    def _hangup_reason(self, partial: int) -> tuple[int, str]:
        raise NotImplementedError

    def _waiting_for(self) -> tuple[int, str]:
        raise NotImplementedError


def _partial(partial: int, total: int) -> str:
    return f" (after {partial} of its {total} bytes)" if partial else ""


class ShsClient(_Machine):
    """The dialing side (Alice). ``initiate()`` gives message 1; then feed what arrives.

    ``seed`` is the client's Ed25519 seed, which is the identity it authenticates as; for an
    invite (``shs:KEY:SEED``) it is the invite's seed, so the server sees the seed's key.
    """

    side = "client"

    def __init__(
        self,
        app_key: bytes,
        seed: bytes,
        server_public_key: bytes,
        *,
        ephemeral_random: bytes | None = None,
    ) -> None:
        app_key = _check_key(app_key, "the app key")
        server_public_key = _check_key(server_public_key, "the server's public key")
        _, secret = keypair_from_seed(_check_key(seed, "the client's Ed25519 seed"))
        random = ephemeral_random if ephemeral_random is not None else secrets.token_bytes(32)
        super().__init__(Transcript.start(app_key, secret, random, server_public_key))
        self._started = False

    def initiate(self) -> bytes:
        """Message 1, sent as soon as the transport is up."""
        if self._started:
            raise RuntimeError("initiate() called twice")
        self._started = True
        return self._transcript.challenge()

    def _message_length(self) -> int:
        if not self._started:
            return 0
        if self._phase is _Phase.CHALLENGE:
            return CHALLENGE_LENGTH
        if self._phase is _Phase.AUTH:
            return SERVER_ACCEPT_LENGTH
        return 0

    def _step(self, message: bytes) -> bytes:
        t = self._transcript
        if self._phase is _Phase.CHALLENGE:
            if not t.client_verify_challenge(message):
                if t.remote_public is not None and _curve_public(t.remote_public) is None:
                    bad_key = self._fail(
                        2,
                        "the server key we dialed is not a valid Ed25519 "
                        "public key (no usable curve point): check the "
                        "address's shs:KEY",
                    )
                    bad_key.permanent = True  # no other round can make the key valid
                    raise bad_key
                raise self._fail(
                    2,
                    "the server's challenge is invalid (phase 2): it uses a "
                    "different application cap (app key), or does not speak shs",
                )
            self._phase = _Phase.AUTH
            return t.client_create_auth()
        if not t.client_verify_accept(message):
            raise self._fail(
                4,
                "the server's accept is invalid (phase 4): it did not sign our "
                "hello with the key we dialed",
            )
        self._finish()
        return b""

    def _waiting_for(self) -> tuple[int, str]:
        if self._phase is _Phase.CHALLENGE:
            return 2, "the server's challenge (phase 2)"
        return 4, "the server's accept (phase 4)"

    def _hangup_reason(self, partial: int) -> tuple[int, str]:
        if self._phase is _Phase.CHALLENGE:
            return 1, (
                "the server hung up after our challenge (phase 1)"
                f"{_partial(partial, CHALLENGE_LENGTH)}: different application cap "
                "(app key)? or the server is busy or does not speak shs"
            )
        return 3, (
            "the server hung up after our hello (phase 3)"
            f"{_partial(partial, SERVER_ACCEPT_LENGTH)}: we dialed a wrong number "
            "(wrong server key), or the server does not authorize us"
        )


class ShsServer(_Machine):
    """The listening side (Bob). Feed bytes; once ``awaiting_authorization`` is true, ask the
    application about ``client_public_key`` and call ``authorize(True/False)``.
    """

    side = "server"

    def __init__(
        self, app_key: bytes, seed: bytes, *, ephemeral_random: bytes | None = None
    ) -> None:
        app_key = _check_key(app_key, "the app key")
        _, secret = keypair_from_seed(_check_key(seed, "the server's Ed25519 seed"))
        random = ephemeral_random if ephemeral_random is not None else secrets.token_bytes(32)
        super().__init__(Transcript.start(app_key, secret, random))

    @property
    def awaiting_authorization(self) -> bool:
        return self._phase is _Phase.AUTHORIZING

    @property
    def client_public_key(self) -> bytes:
        """The key the client proved it holds (after message 3)."""
        if self._transcript.remote_public is None or self._phase is _Phase.FAILED:
            raise RuntimeError("the client has not authenticated yet")
        return self._transcript.remote_public

    def authorize(self, allowed: bool) -> bytes:
        """The application's verdict: message 4 to send, or ``ShsHandshakeError`` (send nothing)."""
        if self._phase is not _Phase.AUTHORIZING:
            raise RuntimeError("authorize() outside the authorization step")
        if not allowed:
            who = base64.b64encode(self.client_public_key).decode()
            raise self._fail(3, f"client @{who}.ed25519 is not authorized")
        accept = self._transcript.server_create_accept()
        self._finish()
        return accept

    def _message_length(self) -> int:
        if self._phase is _Phase.CHALLENGE:
            return CHALLENGE_LENGTH
        if self._phase is _Phase.AUTH:
            return CLIENT_AUTH_LENGTH
        return 0

    def _step(self, message: bytes) -> bytes:
        t = self._transcript
        if self._phase is _Phase.CHALLENGE:
            if not t.verify_challenge(message):
                raise self._fail(
                    1,
                    "the client's challenge is invalid (phase 1): it uses a "
                    "different application cap (app key), or does not speak shs",
                )
            self._phase = _Phase.AUTH
            return t.challenge()
        if not t.server_verify_auth(message):
            raise self._fail(
                3,
                "the client's hello is invalid (phase 3): it dialed a wrong "
                "number (no server with this key here) or forged its signature",
            )
        self._phase = _Phase.AUTHORIZING
        return b""

    def _waiting_for(self) -> tuple[int, str]:
        if self._phase is _Phase.CHALLENGE:
            return 1, "the client's challenge (phase 1)"
        if self._phase is _Phase.AUTH:
            return 3, "the client's hello (phase 3)"
        return 3, "the application to authorize the client"

    def _hangup_reason(self, partial: int) -> tuple[int, str]:
        if self._phase is _Phase.CHALLENGE:
            return 1, (
                "the client hung up before its challenge (phase 1)"
                f"{_partial(partial, CHALLENGE_LENGTH)}"
            )
        if self._phase is _Phase.AUTH:
            return 3, (
                "the client hung up before its hello (phase 3)"
                f"{_partial(partial, CLIENT_AUTH_LENGTH)}"
            )
        return 3, "the client hung up while we were deciding whether to authorize it"
