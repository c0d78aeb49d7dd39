"""Pairing codes and recovery keys: secrets a person reads from one screen and types on another.

A code is Crockford base32 (no I, L, O, U), 8 characters (40 bits) by default, shown as
``XXXX-XXXX``. What a person types is normalised before it keys SPAKE2, so ``abcd efgh``,
``ABCD-EFGH`` and ``AbcdEfgh`` are the same code and ``O``/``I``/``L`` typed for ``0``/``1``
still match. Both sides normalise, so the host and the client always derive the same ``w``.

A recovery key is the long-lived sibling of a pairing code: it is never burned and never locks,
so only its entropy stops an online guesser. keywire generates 28 characters (140 bits) and
refuses to configure one below 100 bits; it is shown in groups of four (``XXXX-XXXX-…``), and
that grouped form is what keys SPAKE2.
"""

from __future__ import annotations

import secrets

#: Crockford's base32 alphabet: digits and letters without I, L, O, U
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
DEFAULT_LENGTH = 8
MIN_LENGTH = 4
MAX_LENGTH = 32
_ALIASES = {"I": "1", "L": "1", "O": "0"}
_SEPARATORS = frozenset("- \t")
RECOVERY_LENGTH = 28
MIN_RECOVERY_BITS = 100
MAX_RECOVERY_LENGTH = 64
#: fewer distinct characters than this in a recovery key means it was not drawn at random
MIN_RECOVERY_DISTINCT = 8
_GROUP = 4


class CodeError(ValueError):
    """A pairing code that cannot be normalised; says which character is wrong."""


class RecoveryKeyError(CodeError):
    """A recovery key that cannot be normalised or is too weak; says what is wrong."""


def _fold(text: str, what: str, error: type[CodeError]) -> str:
    """Case folded, separators dropped, I/L → 1 and O → 0; raises on any other character."""
    chars: list[str] = []
    for position, ch in enumerate(text):
        if ch in _SEPARATORS:
            continue
        up = ch.upper()
        up = _ALIASES.get(up, up)
        if len(up) != 1 or up not in ALPHABET:
            raise error(
                f"{what} character {ch!r} at position {position} is not Crockford base32 "
                f"(0-9 and A-Z without U)"
            )
        chars.append(up)
    return "".join(chars)


def normalise(text: str) -> str:
    """The canonical form of a typed code.

    Case is folded, dashes and spaces dropped, I/L read as 1 and O as 0. An 8-character code
    comes back as ``XXXX-XXXX`` (the form that is shown and that keys SPAKE2); codes of other
    lengths (a host may pick its own) come back as the bare characters.
    """
    if not isinstance(text, str):
        raise CodeError(f"a pairing code is text, got {type(text).__name__}")
    chars = _fold(text, "pairing code", CodeError)
    if not MIN_LENGTH <= len(chars) <= MAX_LENGTH:
        raise CodeError(
            f"a pairing code has {MIN_LENGTH} to {MAX_LENGTH} characters besides dashes and "
            f"spaces, got {len(chars)}"
        )
    return f"{chars[:4]}-{chars[4:]}" if len(chars) == DEFAULT_LENGTH else chars


def generate(length: int = DEFAULT_LENGTH) -> str:
    """A fresh random code in canonical form (5 bits of secret per character)."""
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise CodeError(f"code length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}")
    return normalise("".join(secrets.choice(ALPHABET) for _ in range(length)))


def entropy_bits(code: str) -> int:
    """Bits of secret in a canonical code."""
    return 5 * len(code.replace("-", ""))


def normalise_recovery_key(text: str) -> str:
    """The canonical (grouped) form of a typed recovery key; weak keys are refused.

    Folding is the same as for pairing codes. The key must carry at least 100 bits (20
    characters) and look random (at least 8 distinct characters), because a recovery key is
    never burned or locked out: each failed guess is refunded.
    """
    if not isinstance(text, str):
        raise RecoveryKeyError(f"a recovery key is text, got {type(text).__name__}")
    bare = _fold(text, "recovery key", RecoveryKeyError)
    bits = 5 * len(bare)
    if bits < MIN_RECOVERY_BITS:
        raise RecoveryKeyError(
            f"a recovery key needs at least {MIN_RECOVERY_BITS} bits of entropy "
            f"({MIN_RECOVERY_BITS // 5} Crockford base32 characters); this one has "
            f"{len(bare)} characters ({bits} bits)"
        )
    if len(bare) > MAX_RECOVERY_LENGTH:
        raise RecoveryKeyError(
            f"a recovery key has at most {MAX_RECOVERY_LENGTH} characters, got {len(bare)}"
        )
    distinct = len(set(bare))
    if distinct < MIN_RECOVERY_DISTINCT:
        raise RecoveryKeyError(
            f"a recovery key must be random; this one uses only {distinct} distinct "
            f"characters (generate one instead)"
        )
    return "-".join(bare[i : i + _GROUP] for i in range(0, len(bare), _GROUP))


def generate_recovery_key(length: int = RECOVERY_LENGTH) -> str:
    """A fresh random recovery key in canonical form (28 characters = 140 bits by default)."""
    if not MIN_RECOVERY_BITS <= 5 * length <= 5 * MAX_RECOVERY_LENGTH:
        raise RecoveryKeyError(
            f"recovery key length must be {MIN_RECOVERY_BITS // 5}..{MAX_RECOVERY_LENGTH}, "
            f"got {length}"
        )
    while True:  # a draw with under 8 distinct characters is ~1e-12 likely; redraw it
        bare = "".join(secrets.choice(ALPHABET) for _ in range(length))
        if len(set(bare)) >= MIN_RECOVERY_DISTINCT:
            return normalise_recovery_key(bare)
