"""TLS for the store backends: contexts for the map server and its clients, and telling an
untrusted certificate (permanent: the stream must fail) from a network hiccup (retried).
"""

from __future__ import annotations

import ssl


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verify the server's certificate and host name: against ``cafile`` alone when it is given
    (a private CA), else against the system trust store."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"store.cafile {cafile!r}: cannot load CA certificates: {_reason(exc)}"
        ) from None


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """The map server's side: a PEM certificate chain and its private key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load the TLS certificate {certfile!r} with key {keyfile!r}: {_reason(exc)}"
        ) from None
    return context


def verify_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc`` (libraries wrap it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def explain(error: ssl.SSLCertVerificationError) -> str:
    """One line for the user: what was wrong with the certificate, and the setting that helps."""
    what = (error.verify_message or _reason(error)).rstrip(".")
    if "mismatch" in what.lower():
        hint = "the certificate names another host: dial the name it was issued for"
    else:
        hint = (
            "give the issuing CA with the store.cafile setting, or use a certificate the "
            "system trusts"
        )
    return f"TLS certificate not trusted: {what} ({hint})"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
