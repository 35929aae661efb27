"""One client's signal connection: LiveKit's SignalRequest/SignalResponse protocol (v0, dual peer connection)."""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from . import sdp
from .auth import Claims, video_claim
from .data import LOSSY_LABEL, RELIABLE_LABEL, SERVER_CHANNELS, DataPublisher
from .dcep import DataChannel
from .negotiation import PublisherPC, SubscriberPC
from .room import Participant, Room, Subscription, TrackPublication, now_ms

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

PING_INTERVAL = 5
PING_TIMEOUT = 15
# LiveKit's limits (limit.max_metadata_size, max_attributes_size, identity/name length).
MAX_METADATA_SIZE = 512 * 1024
MAX_ATTRIBUTES_SIZE = 64 * 1024
MAX_NAME_LENGTH = 256
MAX_OUTBOX = 1000  # signal messages queued for a client before it counts as gone
# Clients keep a refreshed token for reconnecting; LiveKit refreshes well before its 10-minute validity ends.
TOKEN_REFRESH_INTERVAL = 5 * 60
REFRESHED_TOKEN_TTL = 10 * 60

# Extensions the server offers subscribers, renumbered from the publisher's ids by the engine.
_SUBSCRIBER_EXTMAP = {
    "audio": {"urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1},
    "video": {},
}
_SUBSCRIBER_FEEDBACK = {"audio": ["nack"], "video": ["nack", "nack pli", "ccm fir"]}
# Simulcast rids ordered from lowest to highest quality (LiveKit's q/h/f and the 2/1/0 alternative).
_RID_ORDER = {"q": 0, "h": 1, "f": 2, "2": 0, "1": 1, "0": 2}


def ordered_rids(rids: list[str]) -> list[str]:
    return sorted(rids, key=lambda rid: _RID_ORDER.get(rid.lstrip("~"), len(_RID_ORDER)))


class SignalSession:
    """Owns a participant from join to leave; everything it sends goes through one ordered queue."""

    def __init__(self, node: Node, claims: Claims, room: Room, auto_subscribe: bool, client_protocol: int,
                 protocol: int, token: str) -> None:
        self.node = node
        self.protocol = protocol
        self.token = token
        self.auto_subscribe = auto_subscribe
        self.room = room
        self.participant = Participant(room, claims, self, client_protocol)
        self.publisher = PublisherPC(node.transports.create("publisher"))
        try:
            self.subscriber = SubscriberPC(node.transports.create("subscriber"))
        except (RuntimeError, MemoryError):  # the engine is full: give back the first transport
            self.publisher.transport.close()
            raise
        self.subscriber_primary = claims.video.can_subscribe
        primary = self.subscriber if self.subscriber_primary else self.publisher
        primary.transport.on_connected = self._on_primary_connected
        # Clients open their channels on the publisher PC; the server opens the same labels on the subscriber PC.
        if self.subscriber_primary:
            self.subscriber.transport.local_channels = list(SERVER_CHANNELS)
        self.data = DataPublisher(self.participant, node.counters)
        self.publisher.transport.on_message = self._on_data_message
        self.subscriber.transport.on_message = self._on_data_message
        self.outbox: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue()
        self.closed = False
        self._pending: dict[str, TrackPublication] = {}  # by AddTrackRequest cid, until media arrives

    # -- output
    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:  # the client stopped reading: drop it rather than buffer forever
            self.node.counters["signal_outbox_overflow"] += 1
            # Deferred: send() is called from the middle of other work, close() among it.
            asyncio.get_running_loop().call_soon(self.close, models.DisconnectReason.SIGNAL_CLOSE, False)
            return
        self.outbox.put_nowait(response)

    def _send_offer(self, offer: rtc.SessionDescription | None) -> None:
        if offer is not None:
            self.send(rtc.SignalResponse(offer=offer))
            self._trickle(self.subscriber.trickle_once(self.subscriber.data_mid))

    def _trickle(self, candidates: list[rtc.TrickleRequest]) -> None:
        for candidate in candidates:
            self.send(rtc.SignalResponse(trickle=candidate))

    # -- join
    def join(self) -> None:
        participant = self.participant
        participant.state = models.ParticipantInfo.State.JOINED
        participant.touch()
        self.room.add(participant)
        others = [p for p in self.room.others(participant) if not p.hidden]
        self.send(rtc.SignalResponse(join=rtc.JoinResponse(
            room=self.room.info(),
            participant=participant.info(),
            other_participants=[p.info() for p in others],
            server_version=self.node.version,
            server_info=self.node.server_info(),
            subscriber_primary=self.subscriber_primary,
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
        )))
        self.room.broadcast_participant(participant)
        self._sync_subscriptions(self._room_publications(), renegotiate=False)
        if self.subscriber_primary:
            self._send_offer(self.subscriber.changed())

    def _on_primary_connected(self) -> None:
        if self.participant.state != models.ParticipantInfo.State.ACTIVE and not self.closed:
            self.participant.state = models.ParticipantInfo.State.ACTIVE
            self.participant.touch()
            self.room.broadcast_participant(self.participant)
            self._notify("participant_joined")

    def _notify(self, event: str, track: models.TrackInfo | None = None) -> None:
        self.node.notify(event, room=self.room.info(), participant=self.participant.info(), track=track)

    # -- requests
    def handle(self, request: rtc.SignalRequest) -> None:
        if self.closed:  # e.g. frames still arriving from a session evicted by a rejoin
            return
        kind = request.WhichOneof("message")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            self.node.counters[f"signal_ignored_{kind}"] += 1
            return
        handler(getattr(request, kind))

    def _on_ping(self, timestamp: int) -> None:
        self.send(rtc.SignalResponse(pong=now_ms()))

    def _on_ping_req(self, ping: rtc.Ping) -> None:
        self.send(rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=now_ms())))

    def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        # ICE-lite: the server never checks the client's candidates; its binding requests tell us its address.
        self.node.counters["trickle_received"] += 1

    def _on_leave(self, leave: rtc.LeaveRequest) -> None:
        self.close(models.DisconnectReason.CLIENT_INITIATED, notify=False)

    def _on_add_track(self, request: rtc.AddTrackRequest) -> None:
        participant = self.participant
        if not participant.can_publish_source(request.source):
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                reason=rtc.RequestResponse.Reason.NOT_ALLOWED,
                message="participant is not allowed to publish this source",
                add_track=request,
            )))
            return
        if request.cid in self._pending:
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                reason=rtc.RequestResponse.Reason.QUEUED, message="track with this cid is pending", add_track=request,
            )))
            return
        publication = TrackPublication(participant, request)
        self._pending[request.cid] = publication
        self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(cid=request.cid, track=publication.info)))

    def _on_offer(self, offer: rtc.SessionDescription) -> None:
        try:
            answer, accepted, stopped, candidates = self.publisher.answer(offer)
        except sdp.SdpError as error:
            self.node.counters["sdp_malformed"] += 1
            log.info("participant %s sent a malformed offer: %s", self.participant.identity, error)
            return
        self.send(rtc.SignalResponse(answer=answer))
        self._trickle(candidates)
        for media in accepted:
            self._attach_media(media)
        for mid in stopped:
            for publication in list(self.participant.publications.values()):
                if publication.info.mid == mid:
                    self._unpublish(publication)

    def _attach_media(self, media: sdp.AcceptedMedia) -> None:
        """Ties an m-line the client sends on to its AddTrackRequest (msid track id == cid, else a codec's cid,
        else the first pending track of the kind) and starts a Receiver."""
        if any(p.info.mid == media.mid for p in self.participant.publications.values()):
            return  # already receiving on this m-line (renegotiation)
        candidates = [p for p in self._pending.values() if p.kind == media.kind]
        publication = next((p for p in candidates if p.cid == media.track_id), None) \
            or next((p for p in candidates if any(c.cid == media.track_id for c in p.info.codecs)), None) \
            or next(iter(candidates), None)
        if publication is None:
            self.node.counters["media_without_track"] += 1
            return
        codec = media.codec
        try:
            receiver_id = self.node.engine.add_receiver(
                self.publisher.transport.id, media.mid, media.kind, codec.name.lower(), codec.payload_type,
                codec.rtx_payload_type or 0, codec.clock_rate, ordered_rids(media.rids), media.ssrcs,
                media.rtx_ssrcs, media.extmap,
            )
        except ValueError as error:  # beyond the engine's limits (layers, mid/rid length): the track stays pending
            self.node.counters["media_rejected"] += 1
            log.info("participant %s: cannot receive m-line %s: %s", self.participant.identity, media.mid, error)
            return
        del self._pending[publication.cid]
        publication.receiver_id = receiver_id
        publication.codec = codec
        publication.extmap = dict(media.extmap)
        publication.info.mid = media.mid
        publication.info.mime_type = f"{media.kind}/{codec.name}"
        for info in publication.info.codecs:
            info.mid = media.mid
        self.node.receivers[receiver_id] = publication
        self.participant.publications[publication.sid] = publication

    def on_track_started(self, publication: TrackPublication) -> None:
        """The first packets arrived: the track is published to the room."""
        if publication.published or self.closed:
            return
        publication.published = True
        self.participant.touch()
        self.room.broadcast_participant(self.participant)
        self._notify("track_published", publication.info)
        for other in self.room.others(self.participant):
            other.session._sync_subscriptions([publication])

    def _unpublish(self, publication: TrackPublication) -> None:
        self._pending.pop(publication.cid, None)
        self.participant.publications.pop(publication.sid, None)
        for subscription in list(publication.subscriptions.values()):
            subscription.subscriber.session._unsubscribe(subscription)
        if publication.receiver_id is not None:
            self.node.receivers.pop(publication.receiver_id, None)
            self.node.engine.remove_receiver(publication.receiver_id)
            publication.receiver_id = None
        if publication.published:
            publication.published = False
            self.participant.touch()
            self.room.broadcast_participant(self.participant)
            self._notify("track_unpublished", publication.info)

    # -- data
    def _on_data_message(self, channel: DataChannel, data: bytes) -> None:
        self.data.receive(channel.label, data)

    def send_data(self, data: bytes, reliable: bool) -> bool:
        """Delivers a DataPacket to this client: on the primary PC's server channel, else on its own channel."""
        label = RELIABLE_LABEL if reliable else LOSSY_LABEL
        primary, other = (self.subscriber, self.publisher) if self.subscriber_primary else (self.publisher, self.subscriber)
        return not self.closed and (primary.transport.send_message(label, data) or other.transport.send_message(label, data))

    def _on_update_metadata(self, request: rtc.UpdateParticipantMetadata) -> None:
        """Name, metadata and attributes set by the client itself (LiveKit's canUpdateOwnMetadata)."""
        participant = self.participant
        attributes = {**participant.attributes, **request.attributes}
        attributes = {key: value for key, value in attributes.items() if value}  # an empty value deletes
        if not participant.grant.can_update_own_metadata:
            reason, message = rtc.RequestResponse.Reason.NOT_ALLOWED, "does not have permission to update own metadata"
        elif (len(request.metadata.encode()) > MAX_METADATA_SIZE or len(request.name) > MAX_NAME_LENGTH
              or sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items()) > MAX_ATTRIBUTES_SIZE):
            reason, message = rtc.RequestResponse.Reason.LIMIT_EXCEEDED, "metadata, name or attributes too large"
        else:
            reason, message = rtc.RequestResponse.Reason.OK, ""
            self.update_identity_fields(request.name, request.metadata, attributes)
        if reason != rtc.RequestResponse.Reason.OK or self.protocol > 14:
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                request_id=request.request_id, reason=reason, message=message, update_metadata=request)))

    def update_identity_fields(self, name: str, metadata: str, attributes: dict[str, str]) -> bool:
        """Sets name, metadata (empty = unchanged, as LiveKit) and the full attribute map; tells the room."""
        participant = self.participant
        changed = False
        if name and name != participant.name:
            participant.name, changed = name, True
        if metadata and metadata != participant.metadata:
            participant.metadata, changed = metadata, True
        if attributes != participant.attributes:
            participant.attributes, changed = attributes, True
        if changed:
            participant.touch()
            self.room.broadcast_participant(participant)
        return changed

    def refresh_token(self) -> None:
        """Each refresh is signed from the previous one with the participant's current name, metadata, attributes
        and grant, so it stays valid however long the session lasts and a reconnect keeps what moderation set."""
        participant = self.participant
        self.token = self.node.verifier.refresh(self.token, REFRESHED_TOKEN_TTL, {
            "name": participant.name, "metadata": participant.metadata, "attributes": participant.attributes,
            "video": video_claim(participant.grant),
        })
        self.send(rtc.SignalResponse(refresh_token=self.token))

    def find_publication(self, sid: str) -> TrackPublication | None:
        """A track of this participant by sid, published or still waiting for its media."""
        return self.participant.publications.get(sid) or next((p for p in self._pending.values() if p.sid == sid), None)

    def _on_mute(self, request: rtc.MuteTrackRequest) -> None:
        publication = self.find_publication(request.sid)
        if publication is not None:
            self.set_muted(publication, request.muted)

    def set_muted(self, publication: TrackPublication, muted: bool, by_server: bool = False) -> None:
        """Mutes or unmutes a track: forwarding pauses while it is muted. A server-side mute also tells the
        publisher's SDK, which then shows the track muted."""
        if by_server:
            self.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=publication.sid, muted=muted)))
        if publication.info.muted == muted:
            return
        publication.info.muted = muted
        for subscription in publication.subscriptions.values():
            subscription.subscriber.session._apply_track_settings(subscription)
        self.participant.touch()
        self.room.broadcast_participant(self.participant)

    def update_permission(self, permission: models.ParticipantPermission) -> None:
        """A new grant set by the server: tracks it no longer allows are unpublished, subscriptions follow
        canSubscribe, hiding and unhiding change what others see; the client gets the update and a fresh token."""
        participant = self.participant
        was_hidden = participant.hidden
        participant.grant = participant.grant_with(permission)
        for publication in [*participant.publications.values(), *self._pending.values()]:
            if not participant.can_publish_source(publication.info.source):
                self._unpublish(publication)
                self.send(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=publication.sid)))
        self._sync_subscriptions(self._room_publications())
        participant.touch()
        if participant.hidden and not was_hidden:  # to the others it has left
            gone = participant.info()
            gone.state = models.ParticipantInfo.State.DISCONNECTED
            for other in self.room.others(participant):
                other.session.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone])))
        self.room.broadcast_participant(participant)
        if participant.hidden != was_hidden:
            for other in self.room.others(participant):
                other.session._sync_subscriptions(participant.publications.values())
        self.refresh_token()

    def _on_subscription(self, request: rtc.UpdateSubscription) -> None:
        sids = set(request.track_sids)
        for participant_tracks in request.participant_tracks:
            sids.update(participant_tracks.track_sids)
        self.update_subscriptions(sids, request.subscribe)

    def _on_track_setting(self, settings: rtc.UpdateTrackSettings) -> None:
        log.debug("participant %s track settings %s", self.participant.identity, settings)
        for sid in settings.track_sids:
            self.participant.track_settings[sid] = settings
            subscription = self.participant.subscriptions.get(sid)
            if subscription is not None:
                self._apply_track_settings(subscription)

    def _on_subscription_permission(self, permission: rtc.SubscriptionPermission) -> None:
        """The publisher allows only some participants (or all) to subscribe to its tracks."""
        self.participant.subscription_permission = permission
        for other in self.room.others(self.participant):
            other.session._sync_subscriptions(self.participant.publications.values())

    def _room_publications(self) -> list[TrackPublication]:
        return [p for other in self.room.others(self.participant) for p in other.publications.values()]

    # -- subscriptions (this session is the subscriber)
    def update_subscriptions(self, sids: set[str], subscribe: bool) -> None:
        """Explicit (un)subscription to tracks of others, by track sid; it outlasts a track's republication."""
        for sid in sids:
            self.participant.subscription_wishes[sid] = subscribe
        self._sync_subscriptions([p for p in self._room_publications() if p.sid in sids])

    def _sync_subscriptions(self, publications: Iterable[TrackPublication], renegotiate: bool = True) -> None:
        """Subscribes to or unsubscribes from each publication as wishes, grants and the publisher's permission
        now say; tells the client of permission changes; renegotiates once if anything changed."""
        participant = self.participant
        changed = False
        for publication in publications:
            publisher = publication.participant
            wanted = participant.subscription_wishes.get(publication.sid, self.auto_subscribe)
            visible = publication.published and not publisher.hidden and participant.grant.can_subscribe
            allowed = publisher.allows_subscriber(participant, publication.sid)
            subscription = participant.subscriptions.get(publication.sid)
            if wanted and visible and allowed:
                if subscription is None:
                    changed |= self._subscribe(publication)
            elif subscription is not None:
                self._unsubscribe(subscription, renegotiate=False)
                changed = True
            if wanted and visible and participant.permission_denied.get(publication.sid, False) == allowed:
                participant.permission_denied[publication.sid] = not allowed
                self.send(rtc.SignalResponse(subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                    participant_sid=publisher.sid, track_sid=publication.sid, allowed=allowed)))
        if changed and renegotiate:
            self._send_offer(self.subscriber.changed())

    def _subscribe(self, publication: TrackPublication) -> bool:
        """Adds an m-line for the publication to the subscriber PC (the caller renegotiates); False if it has one
        already or the publication has no media yet. Whether it may is _sync_subscriptions' decision."""
        participant = self.participant
        if publication.sid in participant.subscriptions or publication.codec is None:
            return False
        kind = publication.kind
        codec = sdp.Codec(
            payload_type=publication.codec.payload_type,
            name=publication.codec.name,
            clock_rate=publication.codec.clock_rate,
            channels=publication.codec.channels,
            fmtp=publication.codec.fmtp,
            rtcp_fb=list(_SUBSCRIBER_FEEDBACK[kind]),
            rtx_payload_type=publication.codec.rtx_payload_type if kind == "video" else None,
        )
        publisher = publication.participant
        media = sdp.OutgoingMedia(
            mid="",  # given by the subscriber PC
            kind=kind,
            codec=codec,
            ssrc=random.getrandbits(32) or 1,
            rtx_ssrc=(random.getrandbits(32) or 1) if codec.rtx_payload_type else None,
            stream_id=f"{publisher.sid}|{publication.sid}",
            track_id=publication.sid,
            cname=publisher.sid,
            extmap=dict(_SUBSCRIBER_EXTMAP[kind]),
            active=True,
        )
        self.subscriber.add(media)
        subscription = Subscription(publication, participant, media)
        participant.subscriptions[publication.sid] = subscription
        publication.subscriptions[participant.sid] = subscription
        return True

    def _unsubscribe(self, subscription: Subscription, renegotiate: bool = True) -> None:
        publication = subscription.publication
        self.participant.subscriptions.pop(publication.sid, None)
        publication.subscriptions.pop(self.participant.sid, None)
        if subscription.downtrack_id is not None:
            self.node.engine.remove_downtrack(subscription.downtrack_id)
            subscription.downtrack_id = None
        subscription.media.active = False
        if renegotiate and not self.closed:
            self._send_offer(self.subscriber.changed())

    def _on_answer(self, answer: rtc.SessionDescription) -> None:
        try:
            description, follow_up = self.subscriber.answered(answer)
        except sdp.SdpError as error:
            self.node.counters["sdp_malformed"] += 1
            log.info("participant %s sent an unusable answer: %s", self.participant.identity, error)
            return
        sections = {section.mid: section for section in description.sections}
        for subscription in self.participant.subscriptions.values():
            section = sections.get(subscription.media.mid)
            if subscription.downtrack_id is None and section is not None and section.port != 0:
                self._start_downtrack(subscription, section)
        self._send_offer(follow_up)

    def _start_downtrack(self, subscription: Subscription, section: sdp.MediaSection) -> None:
        publication = subscription.publication
        media = subscription.media
        if publication.receiver_id is None:
            return
        # Publisher extension id -> the id this subscriber negotiated for the same URI.
        extmap = {pub_id: section.extmap[uri] for uri, pub_id in publication.extmap.items() if uri in section.extmap}
        subscription.downtrack_id = self.node.engine.add_downtrack(
            publication.receiver_id, self.subscriber.transport.id, media.ssrc, media.rtx_ssrc or 0,
            media.codec.payload_type, media.codec.rtx_payload_type or 0, extmap,
        )
        self._apply_track_settings(subscription)

    def _apply_track_settings(self, subscription: Subscription) -> None:
        """Pauses the DownTrack while its track is muted or the subscriber disabled it (e.g. a hidden video
        element); otherwise caps its layer to the quality or dimensions the subscriber asked for."""
        if subscription.downtrack_id is None:
            return
        publication = subscription.publication
        settings = self.participant.track_settings.get(publication.sid)
        paused = publication.info.muted or (settings is not None and (
            settings.disabled or (settings.quality == models.VideoQuality.OFF and not settings.width)))
        self.node.engine.set_paused(subscription.downtrack_id, paused)
        if publication.kind == "video":
            self.node.engine.set_target_layer(subscription.downtrack_id, publication.layer_for(settings))

    # -- teardown
    def close(self, reason: int, notify: bool = True, action: int = rtc.LeaveRequest.Action.DISCONNECT) -> None:
        """Removes the participant everywhere; with notify, tells the client first (leave)."""
        if self.closed:
            return
        if notify:
            self.send(rtc.SignalResponse(leave=rtc.LeaveRequest(reason=reason, action=action)))
        participant = self.participant
        for subscription in list(participant.subscriptions.values()):
            self._unsubscribe(subscription, renegotiate=False)
        for publication in list(participant.publications.values()):
            self._unpublish(publication)
        was_active = participant.state == models.ParticipantInfo.State.ACTIVE
        self.closed = True
        self.outbox.put_nowait(None)  # ends the writer after what is queued
        self.publisher.transport.close()
        self.subscriber.transport.close()
        self.room.remove(participant)
        participant.state = models.ParticipantInfo.State.DISCONNECTED
        participant.disconnect_reason = reason
        participant.touch()
        self.room.broadcast_participant(participant)  # it has left the room: only the others hear
        # LiveKit reports a participant whose media never connected as aborted rather than left.
        self._notify("participant_left" if was_active else "participant_connection_aborted")
        log.info("participant %s left room %s (%s)", participant.identity, self.room.name,
                 models.DisconnectReason.Name(reason))
