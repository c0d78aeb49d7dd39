"""Session rendezvous against a store: the asyncio shell of ``keywire.store.session``.

``dial_session`` announces a fresh session in the first free slot and returns once the store
holds the announcement (so an unreachable or full store fails the dial there, with the
store's own error). ``SessionListener`` finds where a listener starts (the first slot without
a claim), waits for each dial in turn and claims it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .backends import StoreBackend, StoreError
from .capability import CapabilityError, SlotSigner
from .session import (
    RECORD_SIZE,
    RecordError,
    Session,
    SessionKeys,
    SlotSearch,
    new_session,
    open_record,
    seal_record,
)

log = logging.getLogger("keywire.store")

#: slots a dialer tries when other dialers of the same secret keep taking them
DIAL_TRIES = 8


async def search(used: Callable[[int], Awaitable[bool]], start: int = 0) -> int:
    """Run a ``SlotSearch`` against ``used(slot)``."""
    finder = SlotSearch(start)
    while (slot := finder.probe()) is not None:
        finder.answer(slot, await used(slot))
    assert finder.result is not None
    return finder.result


class _Slots:
    """The dial and claim records of each slot in a store; on a store that takes signed
    puts they live at the rendezvous capabilities' addresses, signed (``SlotSigner``)."""

    def __init__(self, backend: StoreBackend, keys: SessionKeys, secret: bytes) -> None:
        self._backend = backend
        self._keys = keys
        self._secret = secret
        self._signer: SlotSigner | None = None

    @property
    def signer(self) -> SlotSigner | None:
        """Asked at each use: an ``HttpStore`` learns that its server wants signed puts
        from its ``probe``, which may come after this object was made."""
        if self._backend.signed and self._signer is None:
            self._signer = SlotSigner(self._secret)
        return self._signer if self._backend.signed else None

    def _address(self, claim: bool, slot: int) -> bytes:
        signer = self.signer
        if signer is not None:
            return signer.address(claim, slot)
        return (self._keys.claim if claim else self._keys.dial).frame_id(slot)

    async def get(self, claim: bool, slot: int, wait: float) -> bytes | None:
        body = await self._backend.get(self._address(claim, slot), wait)
        signer = self.signer
        if body is None or signer is None:
            return body
        try:
            return signer.open(claim, slot, body)
        except CapabilityError:
            return body  # no record: opening it fails, and the slot is skipped

    async def put(self, claim: bool, slot: int, address: bytes, value: bytes) -> None:
        signer = self.signer
        if signer is not None:
            address, value = signer.put(claim, slot, value)
        await self._backend.put(address, value)


class _Rendezvous:
    """One secret's slots in one store: what the dialer's and the listener's side share."""

    def __init__(self, backend: StoreBackend, secret: bytes, size: int = RECORD_SIZE) -> None:
        self._backend = backend
        self._secret = secret
        self._size = size
        self.keys = SessionKeys.derive(secret)
        self._slots = _Slots(backend, self.keys, secret)


class SessionDialer(_Rendezvous):
    """Announces one new session in the first slot with neither a dial nor a claim record.

    ``announce`` may be called again after it failed (a store error): it keeps the session it
    chose, so a put that landed although its answer was lost is recognised on read-back
    instead of leaving a second, abandoned announcement behind.
    """

    def __init__(self, backend: StoreBackend, secret: bytes, size: int = RECORD_SIZE) -> None:
        super().__init__(backend, secret, size)
        self._session: Session | None = None
        self._start = 0

    async def _used(self, slot: int) -> bool:
        dial, claim = await asyncio.gather(
            self._slots.get(False, slot, 0.0), self._slots.get(True, slot, 0.0)
        )
        return dial is not None or claim is not None

    async def announce(self) -> Session:
        for _ in range(DIAL_TRIES):
            if self._session is None:
                self._session = new_session(self._secret, await search(self._used, self._start))
            session = self._session
            address, value = seal_record(
                self.keys.dial, session.epoch, session.session_id, self._size
            )
            await self._slots.put(False, session.epoch, address, value)
            back = await self._slots.get(False, session.epoch, 0.0)
            if back is None:
                continue  # the store lost the put: the slot is still ours to take
            try:
                named: bytes | None = open_record(self.keys.dial, session.epoch, back)
            except RecordError:
                named = None
            if named == session.session_id:
                return session
            # another dialer of this secret took the slot at the same moment: the next one
            self._session, self._start = None, session.epoch + 1
        raise StoreError(
            f"{self._backend.description}: could not announce a session in "
            f"{DIAL_TRIES} tries (other dialers of this secret keep taking "
            "the slots)"
        )


async def dial_session(backend: StoreBackend, secret: bytes, size: int = RECORD_SIZE) -> Session:
    """Announce a new session (see ``SessionDialer``); ``size`` is the record's length (the
    stream's value size)."""
    return await SessionDialer(backend, secret, size).announce()


class SessionListener(_Rendezvous):
    """The listener's side of the rendezvous, one slot after another."""

    async def first_epoch(self) -> int:
        """The first slot no listener has claimed: where this one starts waiting."""

        async def used(slot: int) -> bool:
            return await self._slots.get(True, slot, 0.0) is not None

        return await search(used)

    async def take(self, epoch: int, wait: float) -> Session | None:
        """The session a dialer announced in ``epoch``, waiting up to ``wait`` seconds (None:
        none yet). A value there that is no valid record raises ``RecordError``: the slot is
        burnt (dialers skip it too) and the caller moves on to the next."""
        value = await self._slots.get(False, epoch, wait)
        if value is None:
            return None
        return new_session(self._secret, epoch, open_record(self.keys.dial, epoch, value))

    async def claim(self, session: Session) -> None:
        """Record that ``session`` was taken, so a restarted listener starts after it."""
        address, value = seal_record(self.keys.claim, session.epoch, session.session_id, self._size)
        await self._slots.put(True, session.epoch, address, value)


__all__ = ["RecordError", "SessionDialer", "SessionListener", "dial_session", "search"]
