"""Pairing codes: short one-time secrets a person reads from one screen and types on another.

A code is Crockford base32 (no I, L, O, U), 8 characters (40 bits) by default, shown as
``XXXX-XXXX``. What a person types is normalised before it keys SPAKE2, so ``abcd efgh``,
``ABCD-EFGH`` and ``AbcdEfgh`` are the same code and ``O``/``I``/``L`` typed for ``0``/``1``
still match. Both sides normalise, so the host and the client always derive the same ``w``.
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


class CodeError(ValueError):
    """A pairing code that cannot be normalised; says which character is wrong."""


def normalise(text: str) -> str:
    """The canonical form of a typed code.

    Case is folded, dashes and spaces dropped, I/L read as 1 and O as 0. An 8-character code
    comes back as ``XXXX-XXXX`` (the form that is shown and that keys SPAKE2); codes of other
    lengths (a host may pick its own) come back as the bare characters.
    """
    if not isinstance(text, str):
        raise CodeError(f"a pairing code is text, got {type(text).__name__}")
    chars: list[str] = []
    for position, ch in enumerate(text):
        if ch in _SEPARATORS:
            continue
        up = ch.upper()
        up = _ALIASES.get(up, up)
        if len(up) != 1 or up not in ALPHABET:
            raise CodeError(
                f"pairing code character {ch!r} at position {position} is not Crockford base32 "
                f"(0-9 and A-Z without U)"
            )
        chars.append(up)
    if not MIN_LENGTH <= len(chars) <= MAX_LENGTH:
        raise CodeError(
            f"a pairing code has {MIN_LENGTH} to {MAX_LENGTH} characters besides dashes and "
            f"spaces, got {len(chars)}"
        )
    bare = "".join(chars)
    return f"{bare[:4]}-{bare[4:]}" if len(bare) == DEFAULT_LENGTH else bare


def generate(length: int = DEFAULT_LENGTH) -> str:
    """A fresh random code in canonical form (5 bits of secret per character)."""
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise CodeError(f"code length must be {MIN_LENGTH}..{MAX_LENGTH}, got {length}")
    return normalise("".join(secrets.choice(ALPHABET) for _ in range(length)))


def entropy_bits(code: str) -> int:
    """Bits of secret in a canonical code."""
    return 5 * len(code.replace("-", ""))
