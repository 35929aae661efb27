"""ICE-lite STUN handling, sans-I/O.

The server is an ICE-lite agent (RFC 8445 section 2.5): it gathers only host
candidates, never sends checks, and only answers the clients' Binding
requests. A request authenticated with our short-term credentials proves the
client can reach us from its source address; the caller then selects that
address for the Transport (on USE-CANDIDATE, or on the first success).

The engine already let through only Binding requests whose USERNAME names
a live Transport's ufrag (engine/stun.pyx) and tells which Transport; here
aioice's STUN codec checks MESSAGE-INTEGRITY and builds the response.
"""

from __future__ import annotations

import os
import secrets
import string
import struct
from collections import OrderedDict
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "CONSENT_TIMEOUT",
    "BindingResult",
    "StunError",
    "error_response",
    "handle_binding",
    "is_stun",
    "new_credentials",
    "TransactionLog",
]

# RFC 8445 section 5.3: ice-char = ALPHA / DIGIT / "+" / "/". Letters and
# digits only keep ufrags safe to use in URLs, logs and lookup keys.
_ICE_CHARS = string.ascii_letters + string.digits
_UFRAG_LENGTH = 16  # RFC minimum 4
_PWD_LENGTH = 32  # RFC minimum 22
_COOKIE = struct.pack("!I", stun.COOKIE)

# RFC 7675 section 5.1: consent expires 30 s after the last authenticated check from the address; media to it stops.
# Clients renew it all the time (libwebrtc checks every 2.5 s once connected, aioice every 5 s). Tests shorten it
# with TERN_ICE_CONSENT_TIMEOUT (seconds).
CONSENT_TIMEOUT = float(os.environ.get("TERN_ICE_CONSENT_TIMEOUT", "30"))
# Transaction ids remembered per Transport to refuse replays: more than a client sends in a consent period
# (libwebrtc: one check per 2.5 s per pair, a few pairs, plus retransmissions while connecting).
REMEMBERED_TRANSACTIONS = 64


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


class TransactionLog:
    """The last REMEMBERED_TRANSACTIONS transaction ids of a Transport and where each came from.

    A request signed with our password can be captured and sent again from elsewhere (MESSAGE-INTEGRITY covers the
    transaction id, not the source address): a known id from another address is a replay. The same id from the
    same address is a retransmission (RFC 8489 section 6.2.1) and is answered again."""

    def __init__(self) -> None:
        self._sources: OrderedDict[bytes, tuple[str, int]] = OrderedDict()

    def first_source(self, transaction_id: bytes, source: tuple[str, int]) -> tuple[str, int]:
        """Where `transaction_id` was first seen from (`source` when it is new, and then remembered)."""
        first = self._sources.get(transaction_id)
        if first is not None:
            return first
        self._sources[transaction_id] = source
        if len(self._sources) > REMEMBERED_TRANSACTIONS:
            self._sources.popitem(last=False)
        return source


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


def error_response(transaction_id: bytes, code: int, reason: str) -> bytes:
    """A Binding error response. Unsigned (for an unauthenticated request we cannot sign; RFC 8489 section 9.1.3),
    with a FINGERPRINT."""
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.ERROR,
        transaction_id=transaction_id,
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
            response=error_response(message.transaction_id, 400, "Bad Request"),
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
            response=error_response(message.transaction_id, 401, "Unauthorized"),
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
