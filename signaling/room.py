"""Rooms, participants, track publications and subscriptions: control-plane state with LiveKit's meanings."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import string
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from .auth import Claims, VideoGrant
from .sdp import Codec, OutgoingMedia
from .speakers import SpeakerObserver

if TYPE_CHECKING:
    from .session import SignalSession

log = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_letters + string.digits
_SOURCE_NAMES = {
    models.TrackSource.CAMERA: "camera",
    models.TrackSource.MICROPHONE: "microphone",
    models.TrackSource.SCREEN_SHARE: "screen_share",
    models.TrackSource.SCREEN_SHARE_AUDIO: "screen_share_audio",
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


TOP_LAYER = 3  # above any simulcast layer: the Forwarder takes the best one available


def new_id(prefix: str) -> str:
    """LiveKit-style ids: clients check the RM_/PA_/TR_ prefixes."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def now_ms() -> int:
    return int(time.time() * 1000)


class TrackPublication:
    """A track a participant publishes; `receiver_id` is its engine Receiver once media is negotiated."""

    def __init__(self, participant: Participant, request: rtc.AddTrackRequest) -> None:
        self.participant = participant
        self.cid = request.cid
        kind_letter = "A" if request.type == models.TrackType.AUDIO else "V"
        self.info = models.TrackInfo(
            sid=new_id(f"TR_{kind_letter}"),
            type=request.type,
            name=request.name,
            muted=request.muted,
            width=request.width,
            height=request.height,
            source=request.source,
            layers=request.layers,
            disable_dtx=request.disable_dtx,
            stereo=request.stereo,
            disable_red=request.disable_red,
            encryption=request.encryption,
            stream=request.stream,
            audio_features=request.audio_features,
            simulcast=len(request.layers) > 1
            or any(len(c.layers) > 1 for c in request.simulcast_codecs),
        )
        for codec in request.simulcast_codecs:
            # Clients send a bare codec name ("vp8"); TrackInfo carries MIME types, which JS splits on "/".
            mime_type = codec.codec if "/" in codec.codec else f"{self.kind}/{codec.codec}"
            self.info.codecs.add(mime_type=mime_type, cid=codec.cid or request.cid, layers=codec.layers)
        self.receiver_id: int | None = None
        self.codec: Codec | None = None
        self.extmap: dict[str, int] = {}
        self.published = False
        self.subscriptions: dict[str, Subscription] = {}

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def kind(self) -> str:
        return "audio" if self.info.type == models.TrackType.AUDIO else "video"

    def layer_for(self, settings: rtc.UpdateTrackSettings | None) -> int:
        """The simulcast layer (0 = lowest) a subscriber's settings ask for: the smallest layer covering the
        requested dimensions, else the requested quality; no settings = the best there is."""
        if settings is None:
            return TOP_LAYER
        if settings.width or settings.height:
            layers = sorted(self.info.layers, key=lambda layer: layer.quality)
            for index, layer in enumerate(layers):
                if layer.width >= settings.width and layer.height >= settings.height:
                    return index
            return TOP_LAYER
        return min(settings.quality, models.VideoQuality.HIGH)


class Subscription:
    """One subscriber's copy of a publication: an m-line on its subscriber PC and an engine DownTrack."""

    def __init__(self, publication: TrackPublication, subscriber: Participant, media: OutgoingMedia) -> None:
        self.publication = publication
        self.subscriber = subscriber
        self.media = media
        self.downtrack_id: int | None = None


class Participant:
    def __init__(self, room: Room, claims: Claims, session: SignalSession, client_protocol: int) -> None:
        self.room = room
        self.sid = new_id("PA_")
        self.identity = claims.identity
        self.name = claims.name
        self.metadata = claims.metadata
        self.attributes = dict(claims.attributes)
        self.kind = _KINDS.get(claims.kind, models.ParticipantInfo.Kind.STANDARD)
        self.grant = claims.video
        self.session = session
        self.client_protocol = client_protocol
        self.joined_at_ms = now_ms()
        self.state = models.ParticipantInfo.State.JOINING
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON
        self.version = 0
        self.publications: dict[str, TrackPublication] = {}  # by track sid
        self.subscriptions: dict[str, Subscription] = {}  # by track sid
        # As a subscriber, by track sid: explicit (un)subscriptions (else auto_subscribe decides), the last
        # UpdateTrackSettings, and whether the publisher's permission was last reported as denying it.
        self.subscription_wishes: dict[str, bool] = {}
        self.track_settings: dict[str, rtc.UpdateTrackSettings] = {}
        self.permission_denied: dict[str, bool] = {}
        # As a publisher: who may subscribe to its tracks (None = everyone).
        self.subscription_permission: rtc.SubscriptionPermission | None = None

    @property
    def hidden(self) -> bool:
        return self.grant.hidden

    def can_publish_source(self, source: int) -> bool:
        allowed = self.grant.can_publish_sources
        return self.grant.can_publish and (not allowed or _SOURCE_NAMES.get(source) in allowed)

    def allows_subscriber(self, subscriber: Participant, track_sid: str) -> bool:
        permission = self.subscription_permission
        if permission is None or permission.all_participants:
            return True
        for entry in permission.track_permissions:
            if entry.participant_identity == subscriber.identity or (entry.participant_sid and entry.participant_sid == subscriber.sid):
                return entry.all_tracks or track_sid in entry.track_sids
        return False

    def grant_with(self, permission: models.ParticipantPermission) -> VideoGrant:
        """This participant's grant with what a ParticipantPermission sets replaced."""
        return dataclasses.replace(
            self.grant,
            can_subscribe=permission.can_subscribe,
            can_publish=permission.can_publish,
            can_publish_data=permission.can_publish_data,
            can_publish_sources=tuple(_SOURCE_NAMES[s] for s in permission.can_publish_sources if s in _SOURCE_NAMES),
            hidden=permission.hidden,
            recorder=permission.recorder,
            can_update_own_metadata=permission.can_update_metadata,
            can_subscribe_metrics=permission.can_subscribe_metrics,
        )

    def touch(self) -> None:
        """Every change bumps the version so clients never apply an older ParticipantInfo over a newer one."""
        self.version += 1

    def permission(self) -> models.ParticipantPermission:
        grant = self.grant
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

    def info(self) -> models.ParticipantInfo:
        return models.ParticipantInfo(
            sid=self.sid,
            identity=self.identity,
            name=self.name,
            state=self.state,
            tracks=[p.info for p in self.publications.values() if p.published],
            metadata=self.metadata,
            attributes=self.attributes,
            joined_at=self.joined_at_ms // 1000,
            joined_at_ms=self.joined_at_ms,
            version=self.version,
            permission=self.permission(),
            is_publisher=any(p.published for p in self.publications.values()),
            kind=self.kind,
            disconnect_reason=self.disconnect_reason,
            client_protocol=self.client_protocol,
        )


class Room:
    def __init__(self, manager: RoomManager, name: str, empty_timeout: float, departure_timeout: float,
                 max_participants: int, metadata: str) -> None:
        self.manager = manager
        self.name = name
        self.sid = new_id("RM_")
        self.created_at_ms = now_ms()
        self.participants: dict[str, Participant] = {}  # by identity
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.metadata = metadata
        self.speakers = SpeakerObserver()
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = False

    def info(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=int(self.empty_timeout),
            departure_timeout=int(self.departure_timeout),
            max_participants=self.max_participants,
            creation_time=self.created_at_ms // 1000,
            creation_time_ms=self.created_at_ms,
            metadata=self.metadata,
            num_participants=sum(1 for p in self.participants.values() if not p.hidden),
            num_publishers=sum(1 for p in self.participants.values() if any(t.published for t in p.publications.values())),
        )

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    def add(self, participant: Participant) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.participants[participant.identity] = participant

    def remove(self, participant: Participant) -> None:
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
        if not self.participants:
            self._schedule_close(self.departure_timeout)

    def is_full(self, identity: str) -> bool:
        """Whether one more participant (not one replacing `identity`) exceeds max_participants."""
        return bool(self.max_participants) and identity not in self.participants \
            and len(self.participants) >= self.max_participants

    def broadcast(self, response: rtc.SignalResponse) -> None:
        for participant in self.participants.values():
            participant.session.send(response)

    def set_metadata(self, metadata: str) -> None:
        if metadata != self.metadata:
            self.metadata = metadata
            self.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.info())))

    def broadcast_participant(self, participant: Participant) -> None:
        """Sends a participant's full, current info to everyone who may see it (and to itself)."""
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[participant.info()]))
        for other in self.participants.values():
            if other is participant or not participant.hidden:
                other.session.send(update)

    def _schedule_close(self, delay: float) -> None:
        if self._close_timer is None and not self.closed:
            self._close_timer = asyncio.get_running_loop().call_later(delay, self.close_if_empty)

    def close_if_empty(self) -> None:
        self._close_timer = None
        if not self.participants:
            self.close()

    def close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self.closed:
            return
        self.closed = True
        if self.manager.rooms.get(self.name) is self:
            del self.manager.rooms[self.name]
        log.info("room %s (%s) closed", self.name, self.sid)
        self.manager.notify("room_finished", room=self.info())


class RoomManager:
    """Creates rooms on first join (or by the API) and closes them when they stay empty.
    `notify(event, room=, participant=, track=)` receives LiveKit's webhook events."""

    def __init__(self, empty_timeout: float, departure_timeout: float, max_participants: int,
                 notify: Callable[..., None]) -> None:
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.notify = notify
        self.rooms: dict[str, Room] = {}

    def get_or_create(self, name: str) -> Room:
        return self.rooms.get(name) or self.create(name)

    def create(self, name: str, empty_timeout: float = 0, departure_timeout: float = 0, max_participants: int = 0,
               metadata: str = "") -> Room:
        """The room `name`, created with these settings (0 = the configured default) if it does not exist."""
        room = self.rooms.get(name)
        if room is not None:
            return room
        room = Room(self, name, empty_timeout or self.empty_timeout, departure_timeout or self.departure_timeout,
                    max_participants or self.max_participants, metadata)
        self.rooms[name] = room
        room._schedule_close(room.empty_timeout)
        log.info("room %s (%s) created", name, room.sid)
        self.notify("room_started", room=room.info())
        return room
