"""Embedded TURN server's control (RFC 8656 subset), sans-I/O: long-term credentials derived from the participant,
Allocate / Refresh / CreatePermission / ChannelBind, lifetimes and quotas.

The only permitted peer is this node's own media address (the engine's UDP port): a relayed client is one more path
into the engine (engine/turnmux.pyx moves its ChannelData and Send indications, in C), never a relay to anywhere
else, so there are no relay sockets and no open relay. Requests reach this class as EV_TURN events within the
engine's TURN_REQUESTS_PER_SECOND; answers go back through the engine (turn_send).

Credentials are stateless: username "<expiry>:<participant sid>", password base64(HMAC-SHA1(secret, username)) (the
convention coturn's REST API and LiveKit's external TURN use), so any node sharing the API secret can check them; the
expiry is checked on every authenticated request and the participant must still be on this node. MESSAGE-INTEGRITY is
keyed with MD5(username:realm:password) (RFC 8489 section 9.2.2); the NONCE carries its own time and MAC, so it needs
no storage either.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aioice import stun

from .ice import StunError, parse_stun

log = logging.getLogger(__name__)

REALM = "tern"
# How long credentials handed to a client stay valid. A client keeps the ICE servers of its JoinResponse for every
# peer connection it makes later (a publisher PC created an hour in), and each ReconnectResponse brings fresh ones;
# the participant must also still be here, which is what really binds them.
CREDENTIAL_TTL_S = 6 * 3600
NONCE_LIFETIME_S = 600  # a nonce older than this gets 438 Stale Nonce with a fresh one (RFC 8489 section 9.2.4)
# Lifetimes (RFC 8656): an allocation 600 s unless the client asks otherwise, at most 3600 s (sections 2.2, 7.2);
# a permission 300 s (section 9); a channel binding 600 s (section 12).
ALLOCATION_LIFETIME_S = 600
MAX_ALLOCATION_LIFETIME_S = 3600
PERMISSION_LIFETIME_S = 300
CHANNEL_LIFETIME_S = 600
# Allocations one participant may hold at once (LiveKit's turn.per_user_relay_allocation_limit): a client allocates
# once per peer connection and candidate, and again on an ICE restart before the old one expires. The engine bounds
# the total (MAX_TURN_ALLOCATIONS, 508 past it). One permission and one channel per allocation at most: the only
# permitted peer is this node's media address.
MAX_ALLOCATIONS_PER_PARTICIPANT = 12
# Relayed addresses are labels (nothing listens there): the client's relay candidate, and the address our ICE-lite
# answers name. Ports are drawn from here so two allocations rarely share one.
RELAYED_PORTS = range(49152, 65536)
# RFC 8656 narrowed channel numbers to 0x4000-0x4FFF, but RFC 5766's 0x4000-0x7FFF is what clients use (libwebrtc,
# coturn's): all of it is accepted.
CHANNEL_NUMBERS = range(0x4000, 0x8000)
UDP = 17  # REQUESTED-TRANSPORT: the only one browsers ask for


def turn_secret(api_secret: str) -> bytes:
    """The node's TURN secret, derived from an API secret so every node sharing it accepts the same credentials."""
    return hmac.new(api_secret.encode(), b"tern TURN credentials", hashlib.sha256).digest()


def credentials(secret: bytes, participant_sid: str, now: float, ttl: float = CREDENTIAL_TTL_S) -> tuple[str, str]:
    """(username, password) for a participant, valid for `ttl` seconds."""
    username = f"{int(now + ttl)}:{participant_sid}"
    return username, _password(secret, username)


def _password(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


class Relay(Protocol):
    """What the server drives in the engine (engine.Engine's turn_* methods)."""

    def turn_allocate(self, host: str, port: int, connection: int, relayed_host: str,
                      relayed_port: int) -> int | None: ...

    def turn_release(self, handle: int) -> None: ...

    def turn_peer(self, handle: int, host: str, port: int, permitted: bool, channel: int = 0) -> bool: ...

    def turn_open(self, handle: int) -> bool: ...


@dataclass
class Allocation:
    handle: int
    client: tuple                 # (host, port) on the TURN socket, or (host, port, connection) on a stream
    sid: str                      # the participant whose credentials made it
    username: str
    key: bytes
    relayed: tuple[str, int]
    expires: float
    allocate_id: bytes            # the Allocate's transaction id: a retransmission gets the same answer
    allocate_response: bytes
    peer: tuple[str, int] | None = None  # the media address the client named
    permission_expires: float = 0.0
    channel: int = 0
    channel_expires: float = 0.0


class TurnError(Exception):
    def __init__(self, code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.counter = counter


class TurnServer:
    """Answers TURN clients' requests and keeps their allocations (see the module docstring). `media` are the
    addresses (host, port) clients may name as peer: this node's media candidates; `participants()` the sids of
    the participants on this node (a credential is good only while its participant is here)."""

    def __init__(self, relay: Relay, secret: bytes, media: list[tuple[str, int]],
                 participants: Callable[[], Iterable[str]], counters: Counter[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.relay = relay
        self.secret = secret
        self.media = [(str(ipaddress.ip_address(host)), port) for host, port in media]
        self.participants = participants
        self._live: set[str] = set()  # participants() as last read (each sweep; a signed request's miss re-reads)
        self.counters = counters
        self.clock = clock
        self.allocations: dict[object, Allocation] = {}  # client key -> allocation
        self._per_participant: Counter[str] = Counter()
        self._ports = itertools.cycle(RELAYED_PORTS)
        self._handlers = {
            stun.Method.ALLOCATE: self._allocate,
            stun.Method.REFRESH: self._refresh,
            stun.Method.CREATE_PERMISSION: self._create_permission,
            stun.Method.CHANNEL_BIND: self._channel_bind,
        }

    # -- requests
    def handle(self, data: bytes, client: tuple) -> bytes | None:
        """A request from `client`: the answer to send back (None: nothing to say, counted)."""
        try:
            message = parse_stun(data)
        except StunError:
            self.counters["turn_malformed"] += 1
            return None
        if message.message_class != stun.Class.REQUEST:
            self.counters["turn_malformed"] += 1
            return None
        if message.message_method == stun.Method.BINDING:  # a TURN URL is a STUN server too
            return self._answer(message, None, {"XOR-MAPPED-ADDRESS": client[:2]})
        handler = self._handlers.get(message.message_method)
        if handler is None:
            self.counters["turn_bad_request"] += 1
            return self._error(message, None, 400, "Bad Request")
        now = self.clock()
        key: bytes | None = None  # errors after authentication are signed (RFC 8489 section 9.2.4)
        try:
            username, key = self._authenticate(message, now)
            return handler(message, client, username, key, now)
        except TurnError as error:
            self.counters[error.counter] += 1
            log.debug("TURN %s from %s: %d %s %s", message.message_method.name, client, error.code, error.reason,
                      {name: value for name, value in message.attributes.items() if name != "MESSAGE-INTEGRITY"})
            if error.code in (401, 438):  # a challenge: REALM and a fresh NONCE, unsigned
                return self._error(message, None, error.code, error.reason, {"REALM": REALM, "NONCE": self._nonce(now)})
            return self._error(message, key, error.code, error.reason)

    def _authenticate(self, message: stun.Message, now: float) -> tuple[str, bytes]:
        attributes = message.attributes
        if "MESSAGE-INTEGRITY" not in attributes:
            raise TurnError(401, "Unauthorized", "turn_challenged")  # the first request of every client
        username, realm, nonce = attributes.get("USERNAME"), attributes.get("REALM"), attributes.get("NONCE")
        if not username or realm is None or nonce is None:
            raise TurnError(400, "Bad Request", "turn_bad_request")
        if not self._nonce_valid(nonce, now):
            raise TurnError(438, "Stale Nonce", "turn_stale_nonce")
        expiry, _, sid = username.partition(":")
        if not expiry.isdigit() or int(expiry) < now or not sid:
            raise TurnError(401, "Unauthorized", "turn_unauthorized")
        key = hashlib.md5(f"{username}:{REALM}:{_password(self.secret, username)}".encode()).digest()
        if realm != REALM or not message.check_message_integrity(key):
            raise TurnError(401, "Unauthorized", "turn_unauthorized")
        # Only signed requests get this far, so only a past participant's own credentials can make it look again.
        if sid not in self._live and sid not in self._refresh_live():
            raise TurnError(401, "Unauthorized", "turn_unauthorized")
        return username, key

    def _allocate(self, message: stun.Message, client: tuple, username: str, key: bytes, now: float) -> bytes:
        existing = self.allocations.get(_client_key(client))
        if existing is not None:
            if existing.allocate_id == message.transaction_id:  # a retransmission (RFC 8656 section 7.2)
                return existing.allocate_response
            raise TurnError(437, "Allocation Mismatch", "turn_allocation_mismatch")
        if message.attributes.get("REQUESTED-TRANSPORT") != UDP << 24:
            raise TurnError(442, "Unsupported Transport Protocol", "turn_bad_request")
        sid = username.partition(":")[2]
        if self._per_participant[sid] >= MAX_ALLOCATIONS_PER_PARTICIPANT:
            raise TurnError(486, "Allocation Quota Reached", "turn_quota")
        relayed = (self._media_for(client[0])[0], next(self._ports))
        handle = self.relay.turn_allocate(client[0], client[1], client[2] if len(client) > 2 else 0, *relayed)
        if handle is None:
            raise TurnError(508, "Insufficient Capacity", "turn_capacity")
        lifetime = self._lifetime(message)
        response = self._answer(message, key, {"XOR-RELAYED-ADDRESS": relayed, "LIFETIME": lifetime,
                                               "XOR-MAPPED-ADDRESS": client[:2]})
        self.allocations[_client_key(client)] = Allocation(handle, client, sid, username, key, relayed,
                                                           now + lifetime, message.transaction_id, response)
        self._per_participant[sid] += 1
        self.counters["turn_allocations"] += 1
        return response

    def _refresh(self, message: stun.Message, client: tuple, username: str, key: bytes, now: float) -> bytes:
        allocation = self._own(client, username)
        requested = message.attributes.get("LIFETIME")
        lifetime = 0 if requested == 0 else self._lifetime(message)
        if lifetime == 0:
            self._release(allocation)
        else:
            allocation.expires = now + lifetime
        return self._answer(message, key, {"LIFETIME": lifetime})

    def _create_permission(self, message: stun.Message, client: tuple, username: str, key: bytes,
                           now: float) -> bytes:
        allocation = self._own(client, username)
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        if peer is None:
            raise TurnError(400, "Bad Request", "turn_bad_request")
        host = _host(peer[0])
        media = next((address for address in self.media if address[0] == host), None)
        if media is None:  # RFC 8656 section 9.1: permissions are per IP address; only ours is one
            raise TurnError(403, "Forbidden", "turn_forbidden_peer")
        allocation.peer = media
        allocation.permission_expires = now + PERMISSION_LIFETIME_S
        self._install(allocation, now)
        return self._answer(message, key, {})

    def _channel_bind(self, message: stun.Message, client: tuple, username: str, key: bytes, now: float) -> bytes:
        allocation = self._own(client, username)
        number = message.attributes.get("CHANNEL-NUMBER")
        peer = message.attributes.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or number not in CHANNEL_NUMBERS:
            raise TurnError(400, "Bad Request", "turn_bad_request")
        if (_host(peer[0]), peer[1]) not in self.media:
            raise TurnError(403, "Forbidden", "turn_forbidden_peer")
        if allocation.channel and allocation.channel_expires > now and allocation.channel != number:
            # The peer is bound to another channel already (RFC 8656 section 11.2).
            raise TurnError(400, "Bad Request", "turn_bad_request")
        allocation.peer = (_host(peer[0]), peer[1])
        allocation.channel = number
        allocation.channel_expires = now + CHANNEL_LIFETIME_S
        allocation.permission_expires = max(allocation.permission_expires, now + PERMISSION_LIFETIME_S)
        self._install(allocation, now)
        return self._answer(message, key, {})

    # -- lifetimes
    def sweep(self) -> None:
        """Ends allocations that expired, lost their stream or their participant; expires permissions and channels.
        Called every second or so."""
        now = self.clock()
        self._refresh_live()
        for allocation in list(self.allocations.values()):
            if (allocation.expires <= now or allocation.sid not in self._live
                    or not self.relay.turn_open(allocation.handle)):
                self.counters["turn_allocations_ended"] += 1
                self._release(allocation)
            elif allocation.peer is not None and (
                    (allocation.permission_expires and allocation.permission_expires <= now)
                    or (allocation.channel and allocation.channel_expires <= now)):
                if allocation.channel_expires <= now:
                    allocation.channel = 0
                if allocation.permission_expires <= now:
                    allocation.permission_expires = 0.0
                self._install(allocation, now)

    def close(self) -> None:
        for allocation in list(self.allocations.values()):
            self._release(allocation)

    # -- helpers
    def _refresh_live(self) -> set[str]:
        self._live = set(self.participants())
        return self._live

    def _own(self, client: tuple, username: str) -> Allocation:
        allocation = self.allocations.get(_client_key(client))
        if allocation is None:
            raise TurnError(437, "Allocation Mismatch", "turn_allocation_mismatch")
        if allocation.username != username:
            raise TurnError(441, "Wrong Credentials", "turn_wrong_credentials")
        return allocation

    def _install(self, allocation: Allocation, now: float) -> None:
        assert allocation.peer is not None
        self.relay.turn_peer(allocation.handle, *allocation.peer, allocation.permission_expires > now,
                             allocation.channel)

    def _release(self, allocation: Allocation) -> None:
        if self.allocations.pop(_client_key(allocation.client), None) is None:
            return
        self.relay.turn_release(allocation.handle)
        self._per_participant[allocation.sid] -= 1
        if self._per_participant[allocation.sid] <= 0:
            del self._per_participant[allocation.sid]

    def _media_for(self, client_host: str) -> tuple[str, int]:
        """The media address of the client's family (the relayed address is of it too), else the first."""
        family = ipaddress.ip_address(_host(client_host)).version
        return next((m for m in self.media if ipaddress.ip_address(m[0]).version == family), self.media[0])

    @staticmethod
    def _lifetime(message: stun.Message) -> int:
        """RFC 8656 section 7.2: what the client asks for within the maximum, and never below the default."""
        requested = message.attributes.get("LIFETIME")
        if requested is None:
            return ALLOCATION_LIFETIME_S
        return max(ALLOCATION_LIFETIME_S, min(requested, MAX_ALLOCATION_LIFETIME_S))

    def _nonce(self, now: float) -> bytes:
        stamp = f"{int(now):x}"
        return (stamp + hmac.new(self.secret, stamp.encode(), hashlib.sha256).hexdigest()[:16]).encode()

    def _nonce_valid(self, nonce: bytes, now: float) -> bool:
        stamp = nonce[:-16].decode(errors="replace")
        try:
            issued = int(stamp, 16)
        except ValueError:
            return False
        return hmac.compare_digest(nonce, self._nonce(issued)) and now - issued < NONCE_LIFETIME_S

    @staticmethod
    def _answer(message: stun.Message, key: bytes | None, attributes: dict) -> bytes:
        response = stun.Message(message_method=message.message_method, message_class=stun.Class.RESPONSE,
                                transaction_id=message.transaction_id, attributes=attributes)
        if key is None:
            response.add_fingerprint()
        else:
            response.add_message_integrity(key)  # with FINGERPRINT
        return bytes(response)

    @staticmethod
    def _error(message: stun.Message, key: bytes | None, code: int, reason: str, extra: dict | None = None) -> bytes:
        response = stun.Message(message_method=message.message_method, message_class=stun.Class.ERROR,
                                transaction_id=message.transaction_id,
                                attributes={"ERROR-CODE": (code, reason), **(extra or {})})
        if key is None:
            response.add_fingerprint()
        else:
            response.add_message_integrity(key)
        return bytes(response)


def _client_key(client: tuple) -> object:
    """An allocation per 5-tuple: (host, port) on the TURN socket, the connection on a stream."""
    return client[2] if len(client) > 2 else client[:2]


def _host(host: str) -> str:
    """A peer host in the form `media` uses (IPv4-mapped IPv6 as plain IPv4)."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)
