"""Write authorisation of the map server, sans-IO: one bearer token shared by its users.

Frames are authenticated end to end, so a stranger who writes to the store cannot forge data,
but can overwrite frames (denial of service) or fill the byte budget. A token keeps strangers
out of an exposed server. The comparison is of SHA-256 digests with ``hmac.compare_digest``, so
neither the token's bytes nor its length leak through timing, and the token is never part of a
message, a log line or a ``repr``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from .http1 import HttpError

MAX_TOKEN = 4096
TOKEN_ENV = "KEYWIRE_MAP_TOKEN"
#: methods that change nothing; every other method needs the token once one is set
READ_METHODS = frozenset({"GET", "HEAD"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="keywire map"'}


def check_token(token: str) -> str:
    """``token`` if it can travel in an ``Authorization`` header; the error does not show it."""
    if not 1 <= len(token) <= MAX_TOKEN or not all("!" <= c <= "~" for c in token):
        raise ValueError(
            f"a map server token must be 1..{MAX_TOKEN} visible ASCII characters without spaces"
        )
    return token


def load_token(path: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``path`` (surrounding whitespace dropped), else from $KEYWIRE_MAP_TOKEN."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"cannot read the token file {path!r}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        return check_token(text.strip())
    value = (os.environ if environ is None else environ).get(TOKEN_ENV)
    if value is None:
        return None
    return check_token(value.strip())


class TokenPolicy:
    """Which requests need the token: every mutating one, and reads too with ``protect_reads``."""

    def __init__(self, token: str, *, protect_reads: bool = False) -> None:
        self._digest = hashlib.sha256(check_token(token).encode("ascii")).digest()
        self.protect_reads = protect_reads

    def __repr__(self) -> str:
        return f"TokenPolicy(protect_reads={self.protect_reads})"

    def check(self, method: str, headers: dict[str, str]) -> None:
        """Raise ``HttpError(401)`` unless the request may proceed."""
        if method in READ_METHODS and not self.protect_reads:
            return
        action = "read" if method in READ_METHODS else "write"
        scheme, _, presented = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise HttpError(
                401,
                f"missing token: this map server needs 'Authorization: Bearer TOKEN' to {action}",
                headers=_CHALLENGE,
            )
        digest = hashlib.sha256(presented.strip().encode("utf-8", "replace")).digest()
        if not hmac.compare_digest(digest, self._digest):
            raise HttpError(401, f"wrong token: not allowed to {action}", headers=_CHALLENGE)
