"""The shared secret of a store stream and its text form in addresses.

Katzenpost writes the secret as standard base64; keywire writes base64url without padding
(43 characters for 32 bytes) because ``+``, ``/`` and ``=`` are awkward on command lines.
Both spellings parse, so a Katzenpost secret can be pasted as it is.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

#: Katzenpost refuses secrets shorter than its key size
MIN_SECRET_BYTES = 32
#: an upper bound so an address cannot smuggle in megabytes
MAX_SECRET_BYTES = 64

_URLSAFE = re.compile(r"[A-Za-z0-9_-]+")
_STANDARD = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class SecretError(ValueError):
    """A stream secret that is not base64 of 32 to 64 bytes."""


def generate_secret() -> bytes:
    """32 fresh random bytes, as Katzenpost's ``generate()``."""
    return secrets.token_bytes(MIN_SECRET_BYTES)


def format_secret(secret: bytes) -> str:
    """The canonical text form: base64url without padding."""
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")


def parse_secret(text: str) -> bytes:
    """Decode base64url (no padding) or standard base64; raises ``SecretError`` saying why."""
    if not isinstance(text, str) or text == "":
        raise SecretError("stream secret is empty: expected base64url of 32 random bytes")
    if len(text) > 4 * MAX_SECRET_BYTES:
        raise SecretError(
            f"stream secret is {len(text)} characters long; at most "
            f"{MAX_SECRET_BYTES} bytes of base64 are allowed"
        )
    try:
        if _URLSAFE.fullmatch(text):
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        elif _STANDARD.fullmatch(text) and len(text) % 4 == 0:
            raw = base64.b64decode(text, validate=True)
        else:
            bad = next((c for c in text if not (c.isalnum() or c in "-_+/=")), None)
            why = f"character {bad!r} is not base64" if bad else "mixed or misplaced padding"
            raise SecretError(f"stream secret is not base64url: {why}")
    except binascii.Error as exc:
        raise SecretError(f"stream secret is not valid base64: {exc}") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise SecretError(
            f"stream secret decodes to {len(raw)} bytes; at least {MIN_SECRET_BYTES} are required"
        )
    if len(raw) > MAX_SECRET_BYTES:
        raise SecretError(
            f"stream secret decodes to {len(raw)} bytes; at most {MAX_SECRET_BYTES} are allowed"
        )
    return raw
