"""What one client may make the server hold: per-participant and per-room limits, LiveKit's values where it has
them. Past a limit a request is refused (RequestResponse LIMIT_EXCEEDED where the protocol has one, else dropped
and counted); a join token past one is refused before the upgrade."""
from __future__ import annotations

from collections.abc import Mapping

from ..auth import Claims

# LiveKit's `limit` defaults (config.go); sizes in UTF-8 bytes, as LiveKit measures Go strings.
MAX_METADATA_SIZE = 512 * 1024  # limit.max_metadata_size: a participant's (and a room's) metadata
MAX_ATTRIBUTES_SIZE = 64 * 1024  # limit.max_attributes_size: all keys and values of a participant's attributes
MAX_NAME_LENGTH = 256  # limit.max_participant_name_length
MAX_IDENTITY_LENGTH = 256  # limit.max_participant_identity_length
MAX_ROOM_NAME_LENGTH = 256  # limit.max_room_name_length

# Publishing. A track's TrackInfo is copied into every ParticipantInfo the room is sent, so each costs all.
MAX_PENDING_TRACKS = 20  # LiveKit's cMaxPendingTracks: AddTrackRequests still waiting for their media
MAX_PARTICIPANT_TRACKS = 32  # tern's: tracks a participant holds (pending + published); each takes a Receiver
MAX_ROOM_TRACKS = 1024  # tern's: tracks a room holds, an eighth of the engine's Receivers (MAX_RECEIVERS 8192)
MAX_ADD_TRACK_SIZE = 4096  # tern's: bytes of one AddTrackRequest; a real one (name, 3 layers x 2 codecs) is < 1 KiB

# Subscribing: a publisher's SubscriptionPermission (its allow list) is kept indexed, so its length is memory.
MAX_SUBSCRIPTION_PERMISSIONS = 1024  # tern's: entries (one per allowed participant) in one SubscriptionPermission


class LimitExceeded(Exception):
    """A request past a limit; the message is safe to show to the client."""


def utf8_size(text: str) -> int:
    return len(text.encode())


def attributes_size(attributes: Mapping[str, str]) -> int:
    return sum(utf8_size(key) + utf8_size(value) for key, value in attributes.items())


def identity_fields_error(name: str, metadata: str, attributes: Mapping[str, str]) -> str | None:
    """Why a participant's name, metadata or attributes exceed the limits, or None."""
    if utf8_size(name) > MAX_NAME_LENGTH:
        return f"name longer than {MAX_NAME_LENGTH} bytes"
    if utf8_size(metadata) > MAX_METADATA_SIZE:
        return f"metadata larger than {MAX_METADATA_SIZE} bytes"
    if attributes_size(attributes) > MAX_ATTRIBUTES_SIZE:
        return f"attributes larger than {MAX_ATTRIBUTES_SIZE} bytes"
    return None


def check_join(claims: Claims, room_name: str) -> None:
    """Raises LimitExceeded if a join token's identity, room name, name, metadata or attributes exceed the limits."""
    if utf8_size(claims.identity) > MAX_IDENTITY_LENGTH:
        raise LimitExceeded(f"identity longer than {MAX_IDENTITY_LENGTH} bytes")
    if utf8_size(room_name) > MAX_ROOM_NAME_LENGTH:
        raise LimitExceeded(f"room name longer than {MAX_ROOM_NAME_LENGTH} bytes")
    error = identity_fields_error(claims.name, claims.metadata, claims.attributes)
    if error is not None:
        raise LimitExceeded(error)
