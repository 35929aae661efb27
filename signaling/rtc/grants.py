"""What a participant's grant (its token's video claim) means in the room, by LiveKit's rules: the sources it may
publish, its kind and whether that makes it dependent, and the ParticipantPermission clients are told of it (and a
server sets it from)."""
from __future__ import annotations

import dataclasses

from livekit.protocol import models

from ..auth import Claims, VideoGrant

_SOURCE_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
}
# The media each source is: a grant naming sources grants that media only (a microphone grant is not for video).
_SOURCE_MEDIA = {
    models.TrackSource.CAMERA: models.TrackType.VIDEO,
    models.TrackSource.SCREEN_SHARE: models.TrackType.VIDEO,
    models.TrackSource.MICROPHONE: models.TrackType.AUDIO,
    models.TrackSource.SCREEN_SHARE_AUDIO: models.TrackType.AUDIO,
}
_KINDS = {
    "standard": models.ParticipantInfo.Kind.STANDARD,
    "ingress": models.ParticipantInfo.Kind.INGRESS,
    "egress": models.ParticipantInfo.Kind.EGRESS,
    "sip": models.ParticipantInfo.Kind.SIP,
    "agent": models.ParticipantInfo.Kind.AGENT,
    "connector": models.ParticipantInfo.Kind.CONNECTOR,
    "bridge": models.ParticipantInfo.Kind.BRIDGE,
}


# LiveKit's dependent participants: they serve a room (agents, egress, recorders) but are not what keeps it open,
# count toward max_participants or num_participants, or launch agent jobs.
_DEPENDENT_KINDS = frozenset({models.ParticipantInfo.Kind.AGENT, models.ParticipantInfo.Kind.EGRESS})


def participant_kind(name: str) -> int:
    """The ParticipantInfo.Kind of a token's kind claim (STANDARD if it names none)."""
    return _KINDS.get(name, models.ParticipantInfo.Kind.STANDARD)


def is_dependent(kind: int, agent: bool, recorder: bool) -> bool:
    """Whether a participant of this kind, with these grant flags, is dependent."""
    return kind in _DEPENDENT_KINDS or agent or recorder


def joins_dependent(claims: Claims) -> bool:
    """Whether a join token makes a dependent participant."""
    return is_dependent(participant_kind(claims.kind), claims.video.agent, claims.video.recorder)


def may_publish(grant: VideoGrant, source: int, track_type: int) -> bool:
    """canPublish and canPublishSources; a grant that names sources also fixes each one's media kind."""
    allowed = grant.can_publish_sources
    return grant.can_publish and (not allowed or (
        _SOURCE_NAMES.get(source) in allowed and _SOURCE_MEDIA.get(source) == track_type))


def with_permission(grant: VideoGrant, permission: models.ParticipantPermission) -> VideoGrant:
    """The grant with what a ParticipantPermission sets replaced."""
    return dataclasses.replace(
        grant,
        can_subscribe=permission.can_subscribe,
        can_publish=permission.can_publish,
        can_publish_data=permission.can_publish_data,
        can_publish_sources=tuple(_SOURCE_NAMES[s] for s in permission.can_publish_sources if s in _SOURCE_NAMES),
        hidden=permission.hidden,
        recorder=permission.recorder,
        can_update_own_metadata=permission.can_update_metadata,
        can_subscribe_metrics=permission.can_subscribe_metrics,
    )


def permission_of(grant: VideoGrant) -> models.ParticipantPermission:
    """The ParticipantPermission a grant is told to clients as."""
    return models.ParticipantPermission(
        can_subscribe=grant.can_subscribe,
        can_publish=grant.can_publish,
        can_publish_data=grant.can_publish_data,
        can_publish_sources=[
            source for source, name in _SOURCE_NAMES.items()
            if not grant.can_publish_sources or name in grant.can_publish_sources
        ],
        hidden=grant.hidden,
        recorder=grant.recorder,
        can_update_metadata=grant.can_update_own_metadata,
        agent=grant.agent,
        can_subscribe_metrics=grant.can_subscribe_metrics,
    )
