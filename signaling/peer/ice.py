"""ICE-lite STUN handling and consent checks, sans-I/O.

The server is an ICE-lite agent (RFC 8445 section 2.5): it gathers only host
candidates and answers the clients' Binding requests. A request authenticated
with our short-term credentials proves the client can reach us from its
source address; the caller then selects that address for the Transport (on
USE-CANDIDATE, or on the first success).

It proves nothing about who receives what we send there: a participant can
sign requests with its own credentials and spoof another's source address.
So consent to receive (RFC 7675) is ours to ask: ConsentChecks sends Binding
requests to the selected address as a full agent's checks, signed with the
client's ice-pwd, and only their authenticated success responses, from that
address, with a transaction id we chose at random, renew it.

The engine already let through only Binding requests whose USERNAME names
a live Transport's ufrag (engine/stun.pyx), and success responses carrying
the transaction id of one of our checks, and tells which Transport; here
aioice's STUN codec checks MESSAGE-INTEGRITY and builds the messages.
"""

from __future__ import annotations

import os
import random
import secrets
import string
import struct
from collections import OrderedDict
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "CONSENT_TIMEOUT",
    "BindingResult",
    "ConsentChecks",
    "StunError",
    "binding_request",
    "error_response",
    "handle_binding",
    "is_stun",
    "new_credentials",
    "parse_stun",
    "TransactionLog",
]

# RFC 8445 section 5.3: ice-char = ALPHA / DIGIT / "+" / "/". Letters and
# digits only keep ufrags safe to use in URLs, logs and lookup keys.
_ICE_CHARS = string.ascii_letters + string.digits
_UFRAG_LENGTH = 16  # RFC minimum 4
_PWD_LENGTH = 32  # RFC minimum 22
_COOKIE = struct.pack("!I", stun.COOKIE)

# RFC 7675 section 5.1: consent expires 30 s after the last authenticated response to our checks; media to the
# address stops. Tests shorten it with TERN_ICE_CONSENT_TIMEOUT (seconds).
CONSENT_TIMEOUT = float(os.environ.get("TERN_ICE_CONSENT_TIMEOUT", "30"))
# RFC 7675 section 5.1: a consent check every 5 s, randomized to 0.8-1.2 times that so checks do not synchronize.
CONSENT_INTERVAL = (4.0, 6.0)
# Checks whose response still counts: a late answer to one of the last few is as good as a prompt one (the engine
# lets up to engine MAX_CONSENT_CHECKS = 8 through; more than a consent period's worth is pointless).
OUTSTANDING_CHECKS = 6
# Transaction ids remembered per Transport to refuse replays: more than a client sends in a consent period
# (libwebrtc: one check per 2.5 s per pair, a few pairs, plus retransmissions while connecting). A replay older
# than that is answered, but cannot move media: a new address must answer our own check first.
REMEMBERED_TRANSACTIONS = 64
# PRIORITY of our checks: what the client would give a peer-reflexive candidate of ours (RFC 8445 5.1.2.1: type
# preference 110, local preference 65535, component 1).
_CHECK_PRIORITY = (110 << 24) | (65535 << 8) | 255


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
        self._sources: OrderedDict[bytes, tuple] = OrderedDict()

    def first_source(self, transaction_id: bytes, source: tuple) -> tuple:
        """Where `transaction_id` was first seen from (`source` when it is new, and then remembered)."""
        first = self._sources.get(transaction_id)
        if first is not None:
            return first
        self._sources[transaction_id] = source
        if len(self._sources) > REMEMBERED_TRANSACTIONS:
            self._sources.popitem(last=False)
        return source


def parse_stun(data: bytes) -> stun.Message:
    """A well-formed STUN message (FINGERPRINT checked when present), or StunError."""
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
    message = parse_stun(data)
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


def binding_request(remote_ufrag: str, local_ufrag: str, remote_pwd: str, priority: int, *, controlling: bool,
                    tie_breaker: int, nominate: bool = False) -> stun.Message:
    """A connectivity check to a peer (USERNAME "<its ufrag>:<ours>", PRIORITY, our ICE role with its tie-breaker,
    USE-CANDIDATE when nominating, MESSAGE-INTEGRITY with the peer's pwd and FINGERPRINT), with a fresh random
    transaction id. The server sends these as consent checks; tern's load clients as their connectivity checks."""
    attributes: dict[str, object] = {
        "USERNAME": f"{remote_ufrag}:{local_ufrag}",
        "PRIORITY": priority,
        "ICE-CONTROLLING" if controlling else "ICE-CONTROLLED": tie_breaker,
    }
    if nominate:
        attributes["USE-CANDIDATE"] = None
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           transaction_id=secrets.token_bytes(12), attributes=attributes)
    message.add_message_integrity(remote_pwd.encode("utf8"))  # also adds FINGERPRINT
    return message


def is_response(data: bytes) -> bool:
    """A STUN success response (the engine lets up only those answering our checks) rather than a request."""
    return data[:2] == b"\x01\x01"


class ConsentChecks:
    """Our consent checks (RFC 7675) to a client, sans-I/O: requests built as a full ICE agent's connectivity checks
    from the controlled side (USERNAME "<client ufrag>:<our ufrag>", PRIORITY, ICE-CONTROLLED with a tie-breaker,
    MESSAGE-INTEGRITY with the client's ice-pwd, FINGERPRINT), which every full agent answers; and their responses,
    accepted only from the address a still outstanding check went to."""

    def __init__(self, local_ufrag: str) -> None:
        self.local_ufrag = local_ufrag
        self._tie_breaker = secrets.randbits(64)
        # id -> (address, pwd); an address is (host, port), or (host, port, connection) over ICE-TCP
        self._outstanding: OrderedDict[bytes, tuple[tuple, str]] = OrderedDict()

    @staticmethod
    def next_delay() -> float:
        return random.uniform(*CONSENT_INTERVAL)

    def request(self, address: tuple, remote_ufrag: str, remote_pwd: str) -> tuple[bytes, bytes]:
        """A check to `address`: (datagram, its fresh random transaction id)."""
        message = binding_request(remote_ufrag, self.local_ufrag, remote_pwd, _CHECK_PRIORITY, controlling=False,
                                  tie_breaker=self._tie_breaker)
        self._outstanding[message.transaction_id] = (address, remote_pwd)
        if len(self._outstanding) > OUTSTANDING_CHECKS:
            self._outstanding.popitem(last=False)
        return bytes(message), message.transaction_id

    def response(self, data: bytes, source: tuple) -> bool:
        """Whether `data` from `source` is an authenticated success response to an outstanding check sent there
        (that check is then settled)."""
        try:
            message = parse_stun(data)
        except StunError:
            return False
        address, pwd = self._outstanding.get(message.transaction_id, (None, ""))
        if (
            address != source
            or message.message_method != stun.Method.BINDING
            or message.message_class != stun.Class.RESPONSE
            or not message.check_message_integrity(pwd.encode("utf8"))
        ):
            return False
        del self._outstanding[message.transaction_id]
        return True
