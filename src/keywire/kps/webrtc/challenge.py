"""The listener's return-routability check for a new WebRTC source (sans-IO).

A valid ICE check proves nothing about its source address: the ICE password derives from the
public certhash, and UDP source addresses can be forged. A real dialer is a full ICE agent,
though, and answers a Binding request from the server with a success response that echoes the
request's transaction id. So the listener sends each unknown source such a request, its
transaction id a ``SourceCookie`` (a keyed MAC of the address and the time window), and believes
the address once the echo comes back: a forged source never sees the cookie. Until then it
holds nothing for the source but one overwritable slot (``admission.HashSlots``).
"""

from __future__ import annotations

from aioice import stun

from .ice import BINDING_SUCCESS, HEADER_SIZE, Admission, looks_like_stun

#: the priority our requests claim (a host candidate's, RFC 8445 §5.1.2.1)
CHALLENGE_PRIORITY = 2130706431


def challenge_request(admission: Admission, transaction_id: bytes, tiebreaker: int) -> bytes:
    """A Binding request to the dialer whose check ``admission`` admitted: USERNAME
    ``dialer-ufrag:server-ufrag``, integrity with the dialer's password, as the listener's
    controlled agent would send it (a dialer's agent answers it like any check)."""
    assert admission.ufrag is not None
    message = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=transaction_id,
    )
    message.attributes["USERNAME"] = f"{admission.remote_ufrag}:{admission.ufrag}"
    message.attributes["PRIORITY"] = CHALLENGE_PRIORITY
    message.attributes["ICE-CONTROLLED"] = tiebreaker
    message.add_message_integrity(admission.remote_password.encode())
    message.add_fingerprint()
    return bytes(message)


def is_binding_success(data: bytes) -> bool:
    """A STUN Binding success response (what a dialer sends back to a challenge)."""
    return looks_like_stun(data) and int.from_bytes(data[:2], "big") == BINDING_SUCCESS


def transaction_id(data: bytes) -> bytes:
    return data[8:HEADER_SIZE]
