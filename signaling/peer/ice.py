"""ICE-lite STUN handling, sans-I/O.

The server is an ICE-lite agent (RFC 8445 section 2.5): it gathers only host
candidates, never sends checks, and only answers the clients' Binding
requests. A request authenticated with our short-term credentials proves the
client can reach us from its source address; the caller then selects that
address for the Transport (on USE-CANDIDATE, or on the first success).

Messages are parsed and built with aioice's STUN codec.
"""

from __future__ import annotations

import secrets
import string
import struct
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "BindingResult",
    "StunError",
    "handle_binding",
    "is_stun",
    "local_ufrag",
    "new_credentials",
]

# RFC 8445 section 5.3: ice-char = ALPHA / DIGIT / "+" / "/". Letters and
# digits only keep ufrags safe to use in URLs, logs and lookup keys.
_ICE_CHARS = string.ascii_letters + string.digits
_UFRAG_LENGTH = 16  # RFC minimum 4
_PWD_LENGTH = 32  # RFC minimum 22
_COOKIE = struct.pack("!I", stun.COOKIE)


class StunError(ValueError):
    """The bytes are not a well-formed STUN message."""


@dataclass
class BindingResult:
    response: bytes
    """What to send back to the source address."""
    use_candidate: bool
    """USE-CANDIDATE was present: the controlling client nominated this pair."""
    authenticated: bool
    """False means `response` is an error response; do not select the address."""


def new_credentials() -> tuple[str, str]:
    """A fresh (ufrag, pwd) pair for one Transport."""
    ufrag = "".join(secrets.choice(_ICE_CHARS) for _ in range(_UFRAG_LENGTH))
    pwd = "".join(secrets.choice(_ICE_CHARS) for _ in range(_PWD_LENGTH))
    return ufrag, pwd


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 7983: first byte 0..3, plus magic cookie)."""
    return (
        len(data) >= stun.HEADER_LENGTH
        and data[0] < 4
        and data[4:8] == _COOKIE
    )


def _parse(data: bytes) -> stun.Message:
    if not is_stun(data):
        raise StunError("not a STUN message")
    try:
        return stun.parse_message(data)
    except (ValueError, struct.error) as exc:  # codec errors, incl. bad FINGERPRINT
        raise StunError(f"malformed STUN message: {exc}") from exc


def _is_binding_request(message: stun.Message) -> bool:
    return (
        message.message_method == stun.Method.BINDING
        and message.message_class == stun.Class.REQUEST
    )


def local_ufrag(data: bytes) -> str | None:
    """The ufrag of ours a Binding request is addressed to (USERNAME before ':').

    This is how the server finds the Transport a request belongs to. None if
    the bytes are not a parsable Binding request with a USERNAME of that form.
    """
    try:
        message = _parse(data)
    except StunError:
        return None
    if not _is_binding_request(message):
        return None
    ours, sep, _ = message.attributes.get("USERNAME", "").partition(":")
    return ours if sep and ours else None


def _error_response(request: stun.Message, code: int, reason: str) -> bytes:
    # Without valid credentials we cannot sign, so the error carries only a
    # FINGERPRINT (RFC 8489 section 9.1.3).
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.ERROR,
        transaction_id=request.transaction_id,
        attributes={"ERROR-CODE": (code, reason)},
    )
    response.add_fingerprint()
    return bytes(response)


def handle_binding(
    data: bytes,
    source: tuple[str, int],
    local_ufrag: str,
    local_pwd: str,
    remote_ufrag: str | None,
) -> BindingResult | None:
    """Answer one STUN message received from `source`.

    Returns None for messages that are not Binding requests (indications,
    responses, other methods) so the caller can count and drop them. Raises
    StunError for bytes that are not a well-formed STUN message.
    """
    message = _parse(data)
    if not _is_binding_request(message):
        return None

    username = message.attributes.get("USERNAME")
    if username is None or "MESSAGE-INTEGRITY" not in message.attributes:
        return BindingResult(
            response=_error_response(message, 400, "Bad Request"),
            use_candidate=False,
            authenticated=False,
        )

    ours, sep, theirs = username.partition(":")
    username_ok = (
        sep == ":"
        and ours == local_ufrag
        and bool(theirs)
        and (remote_ufrag is None or theirs == remote_ufrag)
    )
    if not username_ok or not message.check_message_integrity(local_pwd.encode("utf8")):
        return BindingResult(
            response=_error_response(message, 401, "Unauthorized"),
            use_candidate=False,
            authenticated=False,
        )

    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=message.transaction_id,
        attributes={"XOR-MAPPED-ADDRESS": source},
    )
    response.add_message_integrity(local_pwd.encode("utf8"))  # also adds FINGERPRINT
    return BindingResult(
        response=bytes(response),
        use_candidate="USE-CANDIDATE" in message.attributes,
        authenticated=True,
    )
