"""Link's two handshakes as sans-IO state machines, and the host's book of pairing codes.

* Pairing (mode 1): header + pA → pB → cA → cB + sealed welcome. SPAKE2 with the code as the
  password; the header is the confirmation AAD, so the mode and code id are bound in.
* Recover (mode 2): the same flow with the host's long-lived recovery key as the password. The
  key is never burned and failures are never counted (it has ≥100 bits, so guessing is hopeless);
  only the number of recover runs at once is capped, so a flood cannot tie up the host.
* Reconnect (mode 3): header + Noise NKpsk0 message 1 → message 2 (or a refusal frame).

Each machine takes whole relayed frames and returns the frames to send; the shell moves them.
The host counts failed code guesses on the *code* it handed out (not on the code's text), so
two codes with the same text never share a counter, and reopening a code starts a new one.

Wrong guesses do not lock a code at once (five of them used to, so anyone who knew the host's
address could lock its owner out): after ``FREE_GUESSES`` each wrong guess makes the code rest,
1 s, 2 s, 4 s … up to ``MAX_REST`` s, before it takes another, and only after
``MAX_PAIR_GUESSES`` wrong guesses is it locked for good. A guesser thus has at most
100 chances in 2^40 (under 1e-10) for a default code; with ``MAX_PAIR_CONCURRENT`` tries at
once it needs at least 45 minutes to use them up, and gets at most about 40 guesses in a
default 15-minute code lifetime. The host logs every wrong guess.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import HandshakeError
from . import codes
from .noise import CipherState, HandshakeState, Keys, public_bytes
from .sealed import SealedChannel
from .spake2 import Role, Spake2, Spake2Error, scalar_from_password
from .wire import (
    CODE_ID_SIZE,
    KEY_ID_SIZE,
    NOISE_PROTOCOL,
    SPAKE2_ID_CLIENT,
    SPAKE2_ID_HOST,
    SPAKE2_W_INFO,
    TOKEN_SIZE,
    Credential,
    Header,
    LinkProtocolError,
    Mode,
    Refusal,
    decode_welcome,
    encode_welcome,
    parse_refusal,
    refusal_frame,
    transport_keys,
)

#: wrong guesses after which a code is locked for good (its owner opens a new one)
MAX_PAIR_GUESSES = 100
#: kept for callers of the old name; the bound is now on wrong guesses over the code's life
MAX_PAIR_ATTEMPTS = MAX_PAIR_GUESSES
#: wrong guesses that cost no rest (a person mistyping)
FREE_GUESSES = 3
#: the longest rest between two guesses, seconds
MAX_REST = 60.0
#: pairing handshakes with one code at once
MAX_PAIR_CONCURRENT = 2
DEFAULT_RECOVER_CONCURRENCY = 4
CONFIRM_SIZE = 32

log = logging.getLogger("keywire.link")


class DeviceRevoked(HandshakeError):
    """The host no longer knows this credential (it was revoked): do not retry with it."""

    permanent = True


class PairingRefused(HandshakeError):
    """The host has no live code for this attempt (unknown id, spent, expired or locked)."""


class RecoveryUnavailable(PairingRefused):
    """The host has no recovery key, so it refuses recover mode."""


class RecoverBusy(PairingRefused):
    """The host is already running its maximum of recover handshakes; try again shortly."""


class PairingBusy(PairingRefused):
    """The code is resting after wrong guesses (or being tried already); try again shortly."""


def rest_after(failures: int) -> float:
    """Seconds a code rests after its ``failures``-th wrong guess: 0, then doubling to a cap."""
    if failures <= FREE_GUESSES:
        return 0.0
    return min(MAX_REST, 2.0 ** (failures - FREE_GUESSES - 1))


def password_scalar(code: str) -> int:
    """SPAKE2's ``w`` from a code, after normalising it as a person would have typed it."""
    return scalar_from_password(codes.normalise(code).encode(), SPAKE2_W_INFO, 40)


def recovery_scalar(key: str) -> int:
    """SPAKE2's ``w`` from a recovery key (normalised; weak keys raise ``RecoveryKeyError``)."""
    return scalar_from_password(codes.normalise_recovery_key(key).encode(), SPAKE2_W_INFO, 40)


@dataclass(eq=False)
class RecoveryGate:
    """The host's recovery key, kept only as SPAKE2's ``w``, and its concurrency cap.

    Nothing is counted per failure: a wrong guess is refunded like a timeout, so no one can
    lock the owner out. ``reserve`` takes one of ``max_concurrent`` slots before SPAKE2 starts.
    """

    w: int
    max_concurrent: int = DEFAULT_RECOVER_CONCURRENCY
    in_flight: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_concurrent, bool)
            or not isinstance(self.max_concurrent, int)
            or self.max_concurrent < 1
        ):
            raise ValueError(
                f"the recover concurrency cap must be an integer >= 1, got {self.max_concurrent!r}"
            )

    @classmethod
    def from_key(cls, key: str, max_concurrent: int = DEFAULT_RECOVER_CONCURRENCY) -> RecoveryGate:
        return cls(recovery_scalar(key), max_concurrent)

    def reserve(self) -> None:
        if self.in_flight >= self.max_concurrent:
            raise RecoverBusy(
                f"{self.in_flight} recover attempts are already running "
                f"(the cap is {self.max_concurrent})"
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)


# -- the host's pairing codes ------------------------------------------------------------------


@dataclass(eq=False)
class PairingCode:
    """One code the host handed out: single use, optional expiry, resting after wrong guesses
    and locked only after ``max_attempts`` of them."""

    code: str
    code_id: bytes | None
    expires_at: float | None
    max_attempts: int = MAX_PAIR_GUESSES
    failures: int = 0
    in_flight: int = 0
    spent: bool = False
    #: no guess is taken before this time (the rest after the last wrong guess)
    resting_until: float = 0.0

    @property
    def locked(self) -> bool:
        return self.failures >= self.max_attempts

    @property
    def name(self) -> str:
        return f"code id {self.code_id.hex()}" if self.code_id else "the default code"

    def unavailable_reason(self, now: float) -> str | None:
        if self.spent:
            return "already used"
        if self.locked:
            return f"locked after {self.failures} failed attempts"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None

    def busy_reason(self, now: float) -> str | None:
        """Why the code takes no guess right now, though it is live."""
        if now < self.resting_until:
            return f"resting {self.resting_until - now:.0f} s after {self.failures} wrong guesses"
        if self.in_flight >= MAX_PAIR_CONCURRENT:
            return "being tried already"
        if self.failures + self.in_flight >= self.max_attempts:
            return "out of guesses"
        return None


class CodeBook:
    """Live pairing codes; ``reserve`` takes an attempt slot atomically before SPAKE2 starts."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_id: dict[bytes, PairingCode] = {}
        self.default: PairingCode | None = None

    def open(
        self,
        code: str | None = None,
        ttl: float | None = None,
        *,
        with_id: bool = True,
        max_attempts: int = MAX_PAIR_ATTEMPTS,
    ) -> PairingCode:
        """Open a code (random if None). ``with_id=False`` makes it the default code, the one
        a client reaches without a code id (Link's ``setPairingCode``)."""
        canonical = codes.normalise(code) if code is not None else codes.generate()
        expires = self._clock() + ttl if ttl is not None else None
        if with_id:
            code_id = secrets.token_bytes(CODE_ID_SIZE)
            entry = PairingCode(canonical, code_id, expires, max_attempts)
            self._by_id[code_id] = entry
        else:
            entry = PairingCode(canonical, None, expires, max_attempts)
            self.default = entry
        return entry

    def close(self, entry: PairingCode) -> None:
        entry.spent = True
        if entry.code_id is not None:
            self._by_id.pop(entry.code_id, None)
        if self.default is entry:
            self.default = None

    def live(self) -> list[PairingCode]:
        now = self._clock()
        entries = [*self._by_id.values(), *([self.default] if self.default else [])]
        return [e for e in entries if e.unavailable_reason(now) is None]

    def reserve(self, code_id: bytes | None) -> PairingCode:
        entry = self.default if code_id is None else self._by_id.get(code_id)
        if entry is None:
            raise PairingRefused("no such pairing code" if code_id else "no pairing code is open")
        now = self._clock()
        reason = entry.unavailable_reason(now)
        if reason is not None:
            raise PairingRefused(f"the pairing code is {reason}")
        busy = entry.busy_reason(now)
        if busy is not None:
            raise PairingBusy(f"the pairing code is {busy}")
        entry.in_flight += 1
        return entry

    def refund(self, entry: PairingCode) -> None:
        entry.in_flight = max(0, entry.in_flight - 1)

    def failed(self, entry: PairingCode) -> None:
        """A wrong guess: the code rests, the host is told (a status line on stderr)."""
        self.refund(entry)
        entry.failures += 1
        rest = rest_after(entry.failures)
        entry.resting_until = max(entry.resting_until, self._clock() + rest)
        if entry.locked:
            log.warning(
                "pairing: %s is locked after %d wrong guesses; open a new code",
                entry.name,
                entry.failures,
            )
        else:
            log.warning(
                "pairing: a wrong guess at %s (%d of %d allowed)%s",
                entry.name,
                entry.failures,
                entry.max_attempts,
                f"; it takes no guess for {rest:.0f} s" if rest else "",
            )

    def succeeded(self, entry: PairingCode) -> None:
        self.refund(entry)
        self.close(entry)


class TokenBook:
    """keyId → token for paired devices; the token is the Noise PSK so it is kept as is."""

    def __init__(self, tokens: dict[bytes, bytes] | None = None) -> None:
        self.tokens: dict[bytes, bytes] = dict(tokens or {})

    def issue(self) -> tuple[bytes, bytes]:
        key_id, token = secrets.token_bytes(KEY_ID_SIZE), secrets.token_bytes(TOKEN_SIZE)
        self.tokens[key_id] = token
        return key_id, token

    def get(self, key_id: bytes) -> bytes | None:
        return self.tokens.get(key_id)

    def revoke(self, key_id: bytes) -> bool:
        return self.tokens.pop(key_id, None) is not None


# -- state machines ------------------------------------------------------------------------------


class Step(Enum):
    HEADER = "header"
    SHARE = "share"
    CONFIRM = "confirm"
    WELCOME = "welcome"
    NOISE = "noise"
    DONE = "done"
    REFUSED = "refused"


@dataclass
class HostContext:
    """What the host side needs: its static key, address, codes and device tokens."""

    static: X25519PrivateKey
    address: str
    codebook: CodeBook
    tokens: TokenBook
    on_paired: Callable[[bytes], None] | None = None
    recovery: RecoveryGate | None = None


@dataclass
class HostHandshake:
    """The host end: reads the header, then runs pairing or reconnect for it."""

    ctx: HostContext
    step: Step = Step.HEADER
    header: Header | None = None
    channel: SealedChannel | None = None
    key_id: bytes | None = None
    refusal: str | None = None
    _slot: PairingCode | None = None
    _gate: RecoveryGate | None = None
    _spake: Spake2 | None = None
    _noise: HandshakeState | None = None
    _keys: tuple[bytes, bytes] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.step in (Step.DONE, Step.REFUSED)

    def receive(self, frame: bytes) -> list[bytes]:
        try:
            return self._receive(frame)
        except BaseException:
            self.abort()
            raise

    def _receive(self, frame: bytes) -> list[bytes]:
        if self.step is Step.HEADER:
            self.header = Header.decode(frame)
            if self.header.mode is Mode.RECOVER:
                return self._start_recover(frame)
            if self.header.mode is Mode.PAIR:
                try:
                    self._slot = self.ctx.codebook.reserve(self.header.code_id)
                except PairingBusy as exc:
                    self.step, self.refusal = Step.REFUSED, str(exc)
                    return [refusal_frame(Refusal.RECOVER_BUSY)]  # "busy: try again shortly"
                except PairingRefused as exc:
                    self.step, self.refusal = Step.REFUSED, str(exc)
                    return [refusal_frame(Refusal.CODE_UNAVAILABLE)]
                self._spake = Spake2(
                    Role.B,
                    password_scalar(self._slot.code),
                    SPAKE2_ID_CLIENT,
                    SPAKE2_ID_HOST,
                    aad=frame,
                )
                self.step = Step.SHARE
                return []
            assert self.header.key_id is not None
            token = self.ctx.tokens.get(self.header.key_id)
            if token is None:
                self.step, self.refusal = Step.REFUSED, "unknown or revoked keyId"
                return [refusal_frame(Refusal.REVOKED)]
            self.key_id = self.header.key_id
            self._noise = HandshakeState(
                NOISE_PROTOCOL, False, Keys(s=self.ctx.static, psks=(token,)), prologue=frame
            )
            self.step = Step.NOISE
            return []
        if self.step is Step.SHARE:
            assert self._spake is not None
            result = self._spake.finish(frame)
            self._keys = transport_keys(result.ke, result.ke + result.ka)
            self.step = Step.CONFIRM
            return [self._spake.share()]
        if self.step is Step.CONFIRM:
            assert self._spake is not None and self._spake.result is not None
            assert self._keys is not None
            try:
                self._spake.result.check_peer_confirmation(Role.B, frame)
            except Spake2Error:
                self._settle(confirmed=False)
                raise
            self._settle(confirmed=True)
            key_id, token = self.ctx.tokens.issue()
            self.key_id = key_id
            c2h, h2c = self._keys
            self.channel = SealedChannel(CipherState(h2c), CipherState(c2h))
            welcome = Credential(self.ctx.address, public_bytes(self.ctx.static), token, key_id)
            sealed = self.channel.seal(encode_welcome(welcome))
            self.step = Step.DONE
            if self.ctx.on_paired is not None:
                self.ctx.on_paired(key_id)
            return [self._spake.result.confirm_b, sealed]
        if self.step is Step.NOISE:
            assert self._noise is not None
            self._noise.read_message(frame)
            reply = self._noise.write_message()
            assert self._noise.send_cipher and self._noise.receive_cipher
            self.channel = SealedChannel(self._noise.send_cipher, self._noise.receive_cipher)
            self.step = Step.DONE
            return [reply]
        raise LinkProtocolError(f"no handshake frame expected in step {self.step.value}")

    def _start_recover(self, header: bytes) -> list[bytes]:
        gate = self.ctx.recovery
        if gate is None:
            self.step, self.refusal = Step.REFUSED, "recover mode: this host has no recovery key"
            return [refusal_frame(Refusal.NO_RECOVERY_KEY)]
        try:
            gate.reserve()
        except RecoverBusy as exc:
            self.step, self.refusal = Step.REFUSED, f"recover mode: {exc}"
            return [refusal_frame(Refusal.RECOVER_BUSY)]
        self._gate = gate
        self._spake = Spake2(Role.B, gate.w, SPAKE2_ID_CLIENT, SPAKE2_ID_HOST, aad=header)
        self.step = Step.SHARE
        return []

    def _settle(self, *, confirmed: bool) -> None:
        """The confirmation was checked: a pairing code counts it, a recovery key never does."""
        if self._slot is not None:
            if confirmed:
                self.ctx.codebook.succeeded(self._slot)
            else:
                self.ctx.codebook.failed(self._slot)
            self._slot = None
        if self._gate is not None:
            self._gate.release()
            self._gate = None

    def abort(self) -> None:
        """The attempt ended early (timeout, network): give back a reserved attempt slot."""
        if self._slot is not None:
            self.ctx.codebook.refund(self._slot)
            self._slot = None
        if self._gate is not None:
            self._gate.release()
            self._gate = None


def _refusal_error(refusal: Refusal, pairing: bool = False) -> HandshakeError:
    """The error a pairing or recovering client raises for the host's refusal frame."""
    if refusal is Refusal.RECOVER_BUSY and pairing:
        return PairingBusy(
            "the host is not taking guesses at this pairing code right now "
            "(it rests after wrong guesses); try again shortly"
        )
    if refusal is Refusal.CODE_UNAVAILABLE:
        return PairingRefused(
            "the host has no live pairing code for this attempt "
            "(unknown code id, used, expired or locked)"
        )
    if refusal is Refusal.NO_RECOVERY_KEY:
        return RecoveryUnavailable("the host has no recovery key, so it refuses recover mode")
    if refusal is Refusal.RECOVER_BUSY:
        return RecoverBusy(
            "the host is already running its maximum of recover attempts; try again shortly"
        )
    return LinkProtocolError(f"the host answered with a {refusal.name} refusal while pairing")


class ClientPairing:
    """The client end of pairing: ``start()`` frames, then ``receive`` until ``credential``."""

    #: how errors name the secret, e.g. "the host rejected the pairing code … wrong code?"
    secret_name = "pairing code"
    secret_short = "code"

    def __init__(self, code: str, address: str, code_id: bytes | None = None) -> None:
        self._begin(Header.pair(code_id), password_scalar(code), address)

    def _begin(self, header: Header, w: int, address: str) -> None:
        self.header = header
        self.address = address
        self._spake = Spake2(Role.A, w, SPAKE2_ID_CLIENT, SPAKE2_ID_HOST, aad=header.encode())
        self.step = Step.SHARE
        self.channel: SealedChannel | None = None
        self.credential: Credential | None = None

    def start(self) -> list[bytes]:
        return [self.header.encode(), self._spake.share()]

    @property
    def finished(self) -> bool:
        return self.step is Step.DONE

    def receive(self, frame: bytes) -> list[bytes]:
        if self.step is Step.SHARE:
            refusal = parse_refusal(frame)
            if refusal is not None:
                raise _refusal_error(refusal, pairing=not isinstance(self, ClientRecovery))
            result = self._spake.finish(frame)
            self.step = Step.CONFIRM
            return [result.confirm_a]
        if self.step is Step.CONFIRM:
            confirmed = self._spake.result
            assert confirmed is not None
            if len(frame) != CONFIRM_SIZE:
                raise Spake2Error(
                    f"the host refused the {self.secret_name} "
                    f"(wrong {self.secret_short}?): no confirmation"
                )
            confirmed.check_peer_confirmation(Role.A, frame)
            c2h, h2c = transport_keys(confirmed.ke, confirmed.ke + confirmed.ka)
            self.channel = SealedChannel(CipherState(c2h), CipherState(h2c))
            self.step = Step.WELCOME
            return []
        if self.step is Step.WELCOME:
            assert self.channel is not None
            credential = decode_welcome(self.channel.open(frame))
            if credential.address != self.address:
                raise LinkProtocolError(
                    f"the host welcomed us as {credential.address!r}, not {self.address!r}"
                )
            self.credential = credential
            self.step = Step.DONE
            return []
        raise LinkProtocolError("no pairing frame expected after the welcome")


class ClientRecovery(ClientPairing):
    """The client end of Recover (mode 2): pairing's flow keyed by the host's recovery key."""

    secret_name = "recovery key"
    secret_short = "recovery key"

    def __init__(self, recovery_key: str, address: str) -> None:
        self._begin(Header.recover(), recovery_scalar(recovery_key), address)


class ClientReconnect:
    """The client end of a reconnect with a saved credential (Noise NKpsk0)."""

    def __init__(self, credential: Credential) -> None:
        self.header = Header.reconnect(credential.key_id)
        self._noise = HandshakeState(
            NOISE_PROTOCOL,
            True,
            Keys(rs=credential.host_static, psks=(credential.token,)),
            prologue=self.header.encode(),
        )
        self.channel: SealedChannel | None = None

    def start(self) -> list[bytes]:
        return [self.header.encode(), self._noise.write_message()]

    @property
    def finished(self) -> bool:
        return self.channel is not None

    def receive(self, frame: bytes) -> list[bytes]:
        if self.channel is not None:
            raise LinkProtocolError("no handshake frame expected after Noise message 2")
        refusal = parse_refusal(frame)
        if refusal is Refusal.REVOKED:
            raise DeviceRevoked("the host refused this device's credential: it was revoked")
        if refusal is not None:
            raise LinkProtocolError(f"the host refused the reconnect ({refusal.name})")
        self._noise.read_message(frame)
        assert self._noise.send_cipher and self._noise.receive_cipher
        self.channel = SealedChannel(self._noise.send_cipher, self._noise.receive_cipher)
        return []
