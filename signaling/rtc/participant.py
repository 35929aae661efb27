"""Participant: one member of a room from join to leave: its grant, peer connections, publications and
subscriptions, and everything it can do. What it says to its client goes to a replaceable signal sink, so a
participant can outlive one signal connection (resume) and be driven by any protocol version or by the API."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from livekit.protocol import models, rtc

from ..auth import Claims, video_claim
from ..peer import sdp
from ..peer.dcep import DataChannel
from ..peer.negotiation import PublisherPC, SinglePC, StaleAnswer, SubscriberPC
from . import backup, grants, limits, media_caps
from .allocator import StreamAllocator
from .connection_stats import ConnectionStats
from .data import LOSSY_LABEL, RELIABLE_LABEL, SERVER_CHANNELS, DataPublisher
from .dynacast import Dynacast
from .ids import new_id, now_ms
from .publication import Subscription, TrackPublication
from .subscriptions import SubscriptionPermissions

if TYPE_CHECKING:
    from ..auth import TokenVerifier
    from ..config import Config
    from ..peer.transport import TransportManager
    from .room import Room

log = logging.getLogger(__name__)

REFRESHED_TOKEN_TTL = 10 * 60
# SDPs refused (malformed or over sdp.MAX_*) before the participant is closed, as LiveKit closes one whose
# negotiation failed (STATE_MISMATCH); the first ones get a RequestResponse naming the problem.
MAX_SDP_REFUSALS = 3
# Clients of signal protocol 10 and older know no ConnectionQuality.LOST: they are told POOR (LiveKit's rule).
LAST_PROTOCOL_WITHOUT_LOST = 10
# How long a participant whose signal connection dropped (after its media connected) waits for its client to resume
# before it leaves the room. LiveKit removes a client that vanished about 20 s after its last packet (ICE fails after
# 10 + 5 s, then 5 s are left for a resume); SDKs resume within a second of noticing. Tests shorten it with
# TERN_SIGNAL_DEPARTURE_TIMEOUT (seconds).
SIGNAL_DEPARTURE_TIMEOUT = float(os.environ.get("TERN_SIGNAL_DEPARTURE_TIMEOUT", "20"))
# Participants who left while the client was away, told to it as DISCONNECTED when it resumes (LiveKit's update
# cache); beyond this many it learns of the rest from the roster that follows (SDKs that reconcile with it).
MAX_DEPARTED_WHILE_AWAY = 256


class SignalSink(Protocol):
    """Where a participant's signal messages go: a v0 or v1 signal connection."""

    def send(self, response: rtc.SignalResponse) -> None: ...

    def close(self) -> None:
        """Ends the connection once what was sent has been written."""


class Services(Protocol):
    """What a participant needs from its node (signaling/node.py provides it)."""

    config: Config
    engine: Any
    transports: TransportManager
    counters: Counter[str]
    verifier: TokenVerifier
    receivers: dict[int, TrackPublication]  # engine receiver id -> publication
    version: str

    def server_info(self) -> models.ServerInfo: ...

    def ice_servers(self, participant_sid: str) -> list[rtc.ICEServer]: ...

    def notify(self, event: str, *, room: models.Room | None = None,
               participant: models.ParticipantInfo | None = None, track: models.TrackInfo | None = None) -> None: ...


class Participant:
    def __init__(self, services: Services, room: Room, claims: Claims, *, auto_subscribe: bool = True,
                 client_protocol: int = 0, protocol: int = 0, token: str = "", single_pc: bool = False) -> None:
        self.services = services
        self.room = room
        self.sid = new_id("PA_")
        self.identity = claims.identity
        self.name = claims.name
        self.metadata = claims.metadata
        self.attributes = dict(claims.attributes)
        self.kind = grants.participant_kind(claims.kind)
        self.grant = claims.video
        self.client_protocol = client_protocol
        self.protocol = protocol
        self.token = token
        self.joined_at_ms = now_ms()
        self.state = models.ParticipantInfo.State.JOINING
        self.disconnect_reason = models.DisconnectReason.UNKNOWN_REASON
        self.version = 0
        self.closed = False
        self.sink: SignalSink | None = None
        # While the client is away (its signal connection dropped): the timer that ends its wait, and DISCONNECTED
        # stubs (by sid) of who left meanwhile.
        self._departure: asyncio.TimerHandle | None = None
        self._departed: dict[str, models.ParticipantInfo] = {}
        # The client closed a peer connection of its own (SCTP or DTLS): a signal connection lost without a leave then
        # is a departure (the Rust SDK resets its WebSocket on disconnect, losing the leave), not a blip.
        self._peer_closed = False
        self.publications: dict[str, TrackPublication] = {}  # by track sid, media negotiated
        self._sdp_refusals = 0
        self._pending: dict[str, TrackPublication] = {}  # by AddTrackRequest cid, until media is negotiated
        self.subscriptions: dict[str, Subscription] = {}  # by track sid
        # As a subscriber, by track sid: explicit (un)subscriptions (else auto_subscribe decides) and whether
        # the publisher's permission was last reported as denying it; the StreamAllocator keeps track settings.
        self.auto_subscribe = auto_subscribe
        self.subscription_wishes: dict[str, bool] = {}
        self.permission_denied: dict[str, bool] = {}
        self.allocator = StreamAllocator(services.engine, self.subscriptions.values, self.send, _demand_changed,
                                         services.counters)
        # As a publisher: who may subscribe to its tracks (None = everyone).
        self.subscription_permission: SubscriptionPermissions | None = None
        self.backup_codecs = backup.BackupCodecs(self)
        self.connection_stats = ConnectionStats(self)

        # LiveKit v1 (single_pc): one peer connection, the client's, both publishes and subscribes.
        self.publisher: PublisherPC
        self.subscriber: SubscriberPC | SinglePC
        if single_pc:
            self.publisher = self.subscriber = SinglePC(services.transports.create("single"))
        else:
            self.publisher = PublisherPC(services.transports.create("publisher"))
            try:
                self.subscriber = SubscriberPC(services.transports.create("subscriber"))
            except (RuntimeError, MemoryError):  # the engine is full: give back the first transport
                self.publisher.transport.close()
                raise
        self.single_pc = single_pc
        self.subscriber_primary = claims.video.can_subscribe and not single_pc
        primary = self.subscriber if self.subscriber_primary else self.publisher
        primary.transport.on_connected = self._on_primary_connected
        # Clients open their channels on the publisher PC; the server opens the same labels on the subscriber PC. A
        # single PC has the client's only: the server writes on them too, once they are open.
        if self.subscriber_primary:
            self.subscriber.transport.local_channels = list(SERVER_CHANNELS)
        if single_pc:
            self.publisher.transport.awaited_channels = frozenset({RELIABLE_LABEL})
        self.data = DataPublisher(self, services.counters)
        self.publisher.transport.on_message = self._on_data_message
        self.subscriber.transport.on_message = self._on_data_message
        # A media path whose ICE consent expired (peer/ice.py, CONSENT_TIMEOUT) is dead: LiveKit likewise removes a
        # participant once ICE has failed. The client is told (leave), so it can rejoin.
        self.publisher.transport.on_consent_lost = self._on_media_path_lost
        self.subscriber.transport.on_consent_lost = self._on_media_path_lost
        # A reliable data message with no room in the client's backlog (peer/transport.py): it does not drain.
        self.publisher.transport.on_backlog_full = self._on_media_path_lost
        self.subscriber.transport.on_backlog_full = self._on_media_path_lost
        self.publisher.transport.on_peer_closed = self._on_peer_closed
        self.subscriber.transport.on_peer_closed = self._on_peer_closed
        # The subscriber transport's downlink estimate drives this participant's StreamAllocator.
        self.subscriber.transport.on_bandwidth = self.allocator.on_estimate
        self.allocator.prober = self.subscriber.transport

    # -- identity and grants
    @property
    def hidden(self) -> bool:
        return self.grant.hidden

    @property
    def is_agent(self) -> bool:
        """As LiveKit: the agent kind, or the grant's agent flag."""
        return self.kind == models.ParticipantInfo.Kind.AGENT or self.grant.agent

    @property
    def dependent(self) -> bool:
        return grants.is_dependent(self.kind, self.grant.agent, self.grant.recorder)

    def can_publish_track(self, source: int, track_type: int) -> bool:
        return grants.may_publish(self.grant, source, track_type)

    def allows_subscriber(self, subscriber: Participant, track_sid: str) -> bool:
        permission = self.subscription_permission
        return permission is None or permission.allows(subscriber.identity, subscriber.sid, track_sid)

    def touch(self) -> None:
        """Every change bumps the version so clients never apply an older ParticipantInfo over a newer one."""
        self.version += 1

    def permission(self) -> models.ParticipantPermission:
        return grants.permission_of(self.grant)

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

    # -- output
    def attach(self, sink: SignalSink) -> None:
        self.sink = sink

    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        if self.sink is not None:
            self.sink.send(response)
        elif response.WhichOneof("message") == "update":
            self._note_departures(response.update)

    def _note_departures(self, update: rtc.ParticipantUpdate) -> None:
        """While the client is away, who left is kept for its resume; the rest it learns from the roster then."""
        for info in update.participants:
            if info.state == models.ParticipantInfo.State.DISCONNECTED and info.sid != self.sid \
                    and len(self._departed) < MAX_DEPARTED_WHILE_AWAY:
                self._departed[info.sid] = models.ParticipantInfo(
                    sid=info.sid, identity=info.identity, state=info.state, version=info.version)

    @property
    def knows_lost_quality(self) -> bool:
        """Whether the client knows ConnectionQuality.LOST; older ones are told POOR instead (LiveKit's rule)."""
        return self.protocol > LAST_PROTOCOL_WITHOUT_LOST

    def _negotiate(self, request: rtc.SessionDescription | rtc.MediaSectionsRequirement | None) -> None:
        """Sends what the subscriber side needs of the client: an offer to answer (a subscriber PC; its candidates
        follow) or a MediaSectionsRequirement (a single PC: the client offers, with the recvonly m-lines named)."""
        if isinstance(request, rtc.SessionDescription):
            self.send(rtc.SignalResponse(offer=request))
            self._trickle(self.subscriber.trickle_once(SubscriberPC.data_mid))
        elif request is not None:
            self.services.counters["media_sections_requested"] += 1
            self.send(rtc.SignalResponse(media_sections_requirement=request))

    def _trickle(self, candidates: list[rtc.TrickleRequest]) -> None:
        for candidate in candidates:
            self.send(rtc.SignalResponse(trickle=candidate))

    def _notify(self, event: str, track: models.TrackInfo | None = None) -> None:
        self.services.notify(event, room=self.room.info(), participant=self.info(), track=track)

    # -- join
    def join(self, ping_interval: int, ping_timeout: int) -> None:
        """Enters the room: the client gets its JoinResponse (with the signal protocol's ping timing), the others
        learn of it, subscriptions start."""
        self.state = models.ParticipantInfo.State.JOINED
        self.touch()
        self.room.add(self)
        others = [p for p in self.room.others(self) if not p.hidden]
        self.send(rtc.SignalResponse(join=rtc.JoinResponse(
            room=self.room.info(),
            participant=self.info(),
            other_participants=[p.info() for p in others],
            server_version=self.services.version,
            server_info=self.services.server_info(),
            subscriber_primary=self.subscriber_primary,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            client_configuration=self.client_configuration(),
            ice_servers=self.services.ice_servers(self.sid),
            sif_trailer=self.room.sif_trailer,
        )))
        self.room.broadcast_participant(self)
        self.room.subscriptions.sync_subscriber(self, renegotiate=False)
        if self.subscriber_primary:
            self._negotiate(self.subscriber.changed())

    def client_configuration(self) -> models.ClientConfiguration:
        """What the client is told to configure, in its JoinResponse and each ReconnectResponse alike: relay
        candidates only when rtc.force_relay says so."""
        if self.services.config.rtc.force_relay:
            return models.ClientConfiguration(force_relay=models.ClientConfigSetting.ENABLED)
        return models.ClientConfiguration()

    # -- losing and resuming the signal connection
    @property
    def resumable(self) -> bool:
        """Whether its media connected: only then has a client something to resume."""
        return self.state == models.ParticipantInfo.State.ACTIVE and not self.closed

    def signal_lost(self, sink: SignalSink) -> None:
        """The signal connection `sink` ended without a leave. A participant whose media connected waits
        SIGNAL_DEPARTURE_TIMEOUT for its client to resume, unseen by the others; one whose media never connected has
        nothing to resume and leaves now (as in LiveKit), and so does one whose client closed its peer connection."""
        if self.closed or self.sink is not sink:  # gone already, or replaced by a resumed connection
            return
        self.sink = None
        sink.close()  # what it still holds is written if it can be
        if not self.resumable:
            self.close(models.DisconnectReason.SIGNAL_CLOSE, notify=False)
            return
        self.services.counters["signal_lost"] += 1
        if self._peer_closed:
            self._left_without_leave()
            return
        log.info("participant %s: signal connection lost, waiting %.0f s for a resume", self.identity,
                 SIGNAL_DEPARTURE_TIMEOUT)
        self._departure = asyncio.get_running_loop().call_later(SIGNAL_DEPARTURE_TIMEOUT, self._depart)

    def _depart(self) -> None:
        self._departure = None
        self.services.counters["signal_departure_timeouts"] += 1
        self.close(models.DisconnectReason.SIGNAL_CLOSE, notify=False)

    def _on_peer_closed(self) -> None:
        """The client closed a peer connection: if its signal connection is already lost, it has left. Not so an
        agent: its job is relaunched if its connection was lost, and an agent whose worker's node died (relaying its
        signal) closes its peer connection as that signal ends, as one leaving would. The resume wait lets the node
        learn which it was (agent dispatch marks the job orphaned when the worker's node is found gone)."""
        if self.is_agent:
            return
        self._peer_closed = True
        if self._departure is not None:
            self._departure.cancel()
            self._departure = None
            self._left_without_leave()

    def _left_without_leave(self) -> None:
        self.services.counters["signal_lost_peer_closed"] += 1
        log.info("participant %s: signal connection lost and a peer connection closed by its client: it left",
                 self.identity)
        self.close_soon(models.DisconnectReason.CLIENT_INITIATED)  # from a transport's packet handling

    def resume(self, sink: SignalSink) -> None:
        """The client came back on a new signal connection (reconnect=1 with this sid), keeping its sid, tracks and
        subscriptions: the old connection ends; the client gets ReconnectResponse first, then what it missed (who left,
        the roster, the room, what its publications should send) and an ICE restart of the subscriber PC. Its own ICE
        restart of the publisher PC comes with its next offer (handle_offer)."""
        if self._departure is not None:
            self._departure.cancel()
            self._departure = None
        previous, self.sink = self.sink, sink
        if previous is not None and previous is not sink:
            previous.close()
        self.services.counters["signal_resumed"] += 1
        self.send(rtc.SignalResponse(reconnect=rtc.ReconnectResponse(
            ice_servers=self.services.ice_servers(self.sid),  # fresh credentials
            client_configuration=self.client_configuration(),
            server_info=self.services.server_info(),
            last_message_seq=self.data.last_sequence,
        )))
        if self._departed:
            self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=list(self._departed.values()))))
            self._departed.clear()
        roster = [p.info() for p in self.room.others(self) if not p.hidden] + [self.info()]
        self.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=roster)))
        self.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.room.info())))
        for publication in self.publications.values():
            if publication.dynacast is not None:
                publication.dynacast.announce()
        if self.subscriber.negotiated:
            self._negotiate(self.subscriber.restart())
        log.info("participant %s resumed in room %s", self.identity, self.room.name)

    def sync_state(self, state: rtc.SyncState) -> bool:
        """What a resumed client believes it has (LiveKit's onSyncState). Every track it says it publishes must be one
        of ours, else the sessions disagree: it is told to rejoin (False). Tracks it disabled are disabled before the
        caller applies its subscriptions."""
        for published in state.publish_tracks:
            if self.find_publication(published.track.sid) is None:
                self.services.counters["sync_state_unknown_track"] += 1
                self.close(models.DisconnectReason.STATE_MISMATCH, action=rtc.LeaveRequest.Action.RECONNECT)
                return False
        if state.track_sids_disabled:
            self.update_track_settings(rtc.UpdateTrackSettings(track_sids=state.track_sids_disabled, disabled=True))
        return True

    def _on_primary_connected(self) -> None:
        if self.state != models.ParticipantInfo.State.ACTIVE and not self.closed:
            self.state = models.ParticipantInfo.State.ACTIVE
            self.touch()
            self.room.broadcast_participant(self)
            self._notify("participant_joined")

    # -- publishing
    def add_track(self, request: rtc.AddTrackRequest) -> None:
        """A track the client means to publish: answered with track_published (it waits for its media), or a
        RequestResponse saying why not."""
        Reason = rtc.RequestResponse.Reason
        oversized = request.ByteSize() > limits.MAX_ADD_TRACK_SIZE
        if not self.can_publish_track(request.source, request.type):
            reason, message = Reason.NOT_ALLOWED, "participant is not allowed to publish this source"
        elif request.type not in (models.TrackType.AUDIO, models.TrackType.VIDEO):
            reason, message = Reason.UNSUPPORTED_TYPE, "only audio and video tracks are published this way"
        elif oversized:
            reason, message = Reason.LIMIT_EXCEEDED, f"track request larger than {limits.MAX_ADD_TRACK_SIZE} bytes"
        elif request.sid:  # the backup codec of a published track, which its subscribers asked for
            publication = self.backup_codecs.add(request)
            if publication is not None:
                self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(
                    cid=request.cid, track=publication.info)))
                return
            reason, message = Reason.NOT_FOUND, "no track with this sid awaits this backup codec"
        elif request.cid in self._pending:
            reason, message = Reason.QUEUED, "track with this cid is pending"
        elif len(self._pending) >= limits.MAX_PENDING_TRACKS:
            reason, message = Reason.LIMIT_EXCEEDED, f"more than {limits.MAX_PENDING_TRACKS} tracks pending"
        elif len(self._pending) + len(self.publications) >= limits.MAX_PARTICIPANT_TRACKS:
            reason, message = Reason.LIMIT_EXCEEDED, f"more than {limits.MAX_PARTICIPANT_TRACKS} tracks"
        elif len(self.room.tracks) >= limits.MAX_ROOM_TRACKS:
            reason, message = Reason.LIMIT_EXCEEDED, f"more than {limits.MAX_ROOM_TRACKS} tracks in the room"
        else:
            publication = TrackPublication(self, request)
            self._pending[request.cid] = publication
            self.room.tracks[publication.sid] = publication
            self.send(rtc.SignalResponse(track_published=rtc.TrackPublishedResponse(
                cid=request.cid, track=publication.info)))
            return
        self.services.counters[f"add_track_{Reason.Name(reason).lower()}"] += 1
        # The request comes back so the client can match it (by cid); an oversized one only by its cid.
        echo = rtc.AddTrackRequest(cid=request.cid) if oversized else request
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
            reason=reason, message=message, add_track=echo)))

    def handle_offer(self, offer: rtc.SessionDescription) -> None:
        """The client's publisher offer: answer it, receive what it sends, unpublish what it stopped."""
        policy = media_caps.SINGLE_PC if self.single_pc else media_caps.PUBLISHER
        tracks = [*self._pending.values(), *self.publications.values()]
        policy = dataclasses.replace(policy, track_codecs=media_caps.track_codecs(tracks),
                                     track_fmtp=media_caps.track_fmtp(tracks))
        try:
            answer, accepted, stopped, candidates = self.publisher.answer(offer, policy)
        except sdp.SdpError as error:
            self._refuse_sdp(offer, error)
            return
        self.send(rtc.SignalResponse(answer=answer))
        self._trickle(candidates)
        for media in accepted:
            self.attach_media(media)
        for mid in stopped:
            for publication in list(self.publications.values()):
                if publication.info.mid == mid:
                    self.unpublish(publication)
                else:
                    self.backup_codecs.stopped(publication, mid)
        if isinstance(self.subscriber, SinglePC):  # the answer sent subscriptions too: they start now
            refused = self._start_downtracks({m.mid: (m.extmap, m.extmap_allow_mixed)
                                              for m in self.subscriber.media if m.mid})
            self._end_unplaceable(self.subscriber.unplaceable)
            self._negotiate(self.subscriber.follow_up())
            if refused:
                self.renegotiate()

    def _end_unplaceable(self, unplaceable: list[sdp.OutgoingMedia]) -> None:
        """Ends the subscriptions whose m-lines the client receives none of the track's codecs in (tern does not
        transcode): it is told the track is unavailable to it, rather than get a video it cannot show."""
        for subscription in [s for s in self.subscriptions.values() if any(s.media is m for m in unplaceable)]:
            self.services.counters["subscription_codec_unsupported"] += 1
            self.unsubscribe(subscription, renegotiate=False)
            self.send(rtc.SignalResponse(subscription_response=rtc.SubscriptionResponse(
                track_sid=subscription.publication.sid, err=models.SubscriptionError.SE_CODEC_UNSUPPORTED)))

    def _refuse_sdp(self, description: rtc.SessionDescription, error: sdp.SdpError) -> None:
        over_limit = isinstance(error, sdp.SdpLimitError)
        self.services.counters["sdp_over_limit" if over_limit else "sdp_malformed"] += 1
        self._sdp_refusals += 1
        log.info("participant %s: refused %s %s: %s", self.identity, description.type, description.id, error)
        if self._sdp_refusals >= MAX_SDP_REFUSALS:
            self.services.counters["sdp_refusals_closed"] += 1
            self.close(models.DisconnectReason.STATE_MISMATCH)
            return
        reason = rtc.RequestResponse.Reason.LIMIT_EXCEEDED if over_limit else rtc.RequestResponse.Reason.INVALID_REQUEST
        self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
            request_id=description.id, reason=reason, message=f"{description.type} refused: {error}"[:256])))

    def attach_media(self, media: sdp.AcceptedMedia) -> None:
        """Ties an m-line the client sends on to its AddTrackRequest (msid track id == cid, else a codec's cid,
        else the first pending track of the kind) and starts a Receiver."""
        if any(p.info.mid == media.mid for p in self.publications.values()) or self.backup_codecs.receive(media):
            return  # already receiving on this m-line (renegotiation), or a backup codec's
        candidates = [p for p in self._pending.values() if p.kind == media.kind]
        publication = next((p for p in candidates if p.cid == media.track_id), None) \
            or next((p for p in candidates if any(c.cid == media.track_id for c in p.info.codecs)), None) \
            or next(iter(candidates), None)
        if publication is None:
            self.services.counters["media_without_track"] += 1
            return
        codec = media.codec
        try:
            receiver_id = self.add_receiver(media)
        except ValueError as error:  # beyond the engine's limits (layers, mid/rid length): the track stays pending
            self.services.counters["media_rejected"] += 1
            log.info("participant %s: cannot receive m-line %s: %s", self.identity, media.mid, error)
            return
        except (RuntimeError, MemoryError) as error:  # every Receiver of the node is taken: refuse the track
            self.services.counters["engine_receivers_full"] += 1
            log.warning("participant %s: cannot receive track %s: %s", self.identity, publication.sid, error)
            self.unpublish(publication)
            self.send(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=publication.sid)))
            return
        del self._pending[publication.cid]
        publication.receiver_id = receiver_id
        publication.codec = codec
        publication.red_payload_type = media.red_payload_type
        publication.extmap = dict(media.extmap)
        publication.info.mid = media.mid
        publication.info.mime_type = f"{media.kind}/{codec.name}"
        for info in publication.info.codecs:
            info.mid = media.mid
        self.services.receivers[receiver_id] = publication
        self.publications[publication.sid] = publication
        if media.kind == "video":
            publication.dynacast = Dynacast(publication, self.services.engine)

    def add_receiver(self, media: sdp.AcceptedMedia) -> int:
        """The engine Receiver of an m-line the client sends on. Raises as Engine.add_receiver."""
        codec = media.codec
        return self.services.engine.add_receiver(
            self.publisher.transport.id, media.mid, media.kind, codec.name.lower(), codec.payload_type,
            codec.rtx_payload_type or 0, codec.clock_rate, media_caps.ordered_rids(media.rids), media.ssrcs,
            media.rtx_ssrcs, media.extmap,
            red_payload_type=media.red_payload_type if media.red_payload_type is not None else -1,
        )

    def on_track_started(self, publication: TrackPublication) -> None:
        """The first packets arrived: the track is published to the room."""
        if publication.published or self.closed:
            return
        publication.published = True
        self.touch()
        self.room.broadcast_participant(self)
        self._notify("track_published", publication.info)
        self.room.subscriptions.sync_publications(self, [publication])

    def unpublish(self, publication: TrackPublication) -> None:
        self._pending.pop(publication.cid, None)
        self.publications.pop(publication.sid, None)
        self.room.tracks.pop(publication.sid, None)
        self.room.subscriptions.drop(publication)
        if publication.dynacast is not None:
            publication.dynacast.close()
        self.backup_codecs.release(publication)
        if publication.receiver_id is not None:
            self.services.receivers.pop(publication.receiver_id, None)
            self.services.engine.remove_receiver(publication.receiver_id)
            publication.receiver_id = None
        if publication.published:
            publication.published = False
            self.touch()
            self.room.broadcast_participant(self)
            self._notify("track_unpublished", publication.info)

    def drop_pending(self) -> None:
        """Unpublishes the tracks still waiting for media (a client with no signal connection to publish them later)."""
        for publication in list(self._pending.values()):
            self.unpublish(publication)

    def find_publication(self, sid: str) -> TrackPublication | None:
        """A track of this participant by sid, published or still waiting for its media."""
        return self.publications.get(sid) or next((p for p in self._pending.values() if p.sid == sid), None)

    def set_muted(self, publication: TrackPublication, muted: bool, by_server: bool = False) -> None:
        """Mutes or unmutes a track: forwarding pauses while it is muted. A server-side mute also tells the
        publisher's SDK, which then shows the track muted."""
        if by_server:
            self.send(rtc.SignalResponse(mute=rtc.MuteTrackRequest(sid=publication.sid, muted=muted)))
        if publication.info.muted == muted:
            return
        publication.info.muted = muted
        for subscription in publication.subscriptions.values():
            subscription.subscriber.allocator.update(subscription)
        self.touch()
        self.room.broadcast_participant(self)

    def set_subscription_permission(self, permission: rtc.SubscriptionPermission) -> None:
        """The publisher allows only some participants (or all) to subscribe to its tracks. A list longer than
        the limit is ignored (the protocol has no refusal for it) and counted."""
        if len(permission.track_permissions) > limits.MAX_SUBSCRIPTION_PERMISSIONS or any(
                len(entry.track_sids) > limits.MAX_PARTICIPANT_TRACKS for entry in permission.track_permissions):
            self.services.counters["subscription_permission_limit_exceeded"] += 1
            return
        self.subscription_permission = SubscriptionPermissions(permission)
        self.room.subscriptions.sync_publications(self, self.publications.values())

    # -- identity, metadata and grants
    def update_own_metadata(self, request: rtc.UpdateParticipantMetadata) -> None:
        """Name, metadata and attributes set by the client itself (LiveKit's canUpdateOwnMetadata)."""
        attributes = self.attributes_with(request.attributes)
        error = limits.identity_fields_error(request.name, request.metadata, attributes)
        if not self.grant.can_update_own_metadata:
            reason, message = rtc.RequestResponse.Reason.NOT_ALLOWED, "does not have permission to update own metadata"
        elif error is not None:
            self.services.counters["update_metadata_limit_exceeded"] += 1
            reason, message = rtc.RequestResponse.Reason.LIMIT_EXCEEDED, error
        else:
            reason, message = rtc.RequestResponse.Reason.OK, ""
            self.update_identity_fields(request.name, request.metadata, attributes)
        if reason != rtc.RequestResponse.Reason.OK or self.protocol > 14:
            # A refused request comes back by its id only: echoing it would return what may be its oversized fields.
            self.send(rtc.SignalResponse(request_response=rtc.RequestResponse(
                request_id=request.request_id, reason=reason, message=message,
                update_metadata=request if reason == rtc.RequestResponse.Reason.OK
                else rtc.UpdateParticipantMetadata(request_id=request.request_id))))

    def attributes_with(self, changes: Mapping[str, str]) -> dict[str, str]:
        """The attributes after `changes` (LiveKit's rule: an empty value deletes the key)."""
        return {key: value for key, value in {**self.attributes, **changes}.items() if value}

    def update_identity_fields(self, name: str, metadata: str, attributes: dict[str, str]) -> bool:
        """Sets name, metadata (empty = unchanged, as LiveKit) and the full attribute map; tells the room."""
        changed = False
        if name and name != self.name:
            self.name, changed = name, True
        if metadata and metadata != self.metadata:
            self.metadata, changed = metadata, True
        if attributes != self.attributes:
            self.attributes, changed = attributes, True
        if changed:
            self.touch()
            self.room.broadcast_participant(self)
        return changed

    def refresh_token(self) -> None:
        """Each refresh is signed from the previous one with the participant's current name, metadata, attributes
        and grant, so it stays valid however long the session lasts and a reconnect keeps what moderation set."""
        self.token = self.services.verifier.refresh(self.token, REFRESHED_TOKEN_TTL, {
            "name": self.name, "metadata": self.metadata, "attributes": self.attributes,
            "video": video_claim(self.grant),
        })
        self.send(rtc.SignalResponse(refresh_token=self.token))

    def update_permission(self, permission: models.ParticipantPermission) -> None:
        """A new grant set by the server: tracks it no longer allows are unpublished, subscriptions follow
        canSubscribe, hiding and unhiding change what others see; the client gets the update and a fresh token."""
        was_hidden = self.hidden
        self.grant = grants.with_permission(self.grant, permission)
        for publication in [*self.publications.values(), *self._pending.values()]:
            if not self.can_publish_track(publication.info.source, publication.info.type):
                self.unpublish(publication)
                self.send(rtc.SignalResponse(track_unpublished=rtc.TrackUnpublishedResponse(track_sid=publication.sid)))
        self.room.subscriptions.sync_subscriber(self)
        self.touch()
        if self.hidden and not was_hidden:  # to the others it has left
            gone = self.info()
            gone.state = models.ParticipantInfo.State.DISCONNECTED
            for other in self.room.others(self):
                other.send(rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[gone])))
        self.room.broadcast_participant(self)
        if self.hidden != was_hidden:
            self.room.subscriptions.sync_publications(self, self.publications.values())
        self.refresh_token()

    # -- subscribing (this participant is the subscriber)
    def update_subscriptions(self, sids: set[str], subscribe: bool) -> None:
        """Explicit (un)subscription to tracks in the room (pending ones take it when published), by track sid;
        sids of no track are ignored, so nothing is kept for them."""
        publications = self._tracks_named(sids)
        for publication in publications:
            self.subscription_wishes[publication.sid] = subscribe
        self.room.subscriptions.sync(self, publications)

    def update_track_settings(self, settings: rtc.UpdateTrackSettings) -> None:
        """A subscriber's settings (pause, quality, dimensions) for tracks in the room; other sids are ignored."""
        stored = rtc.UpdateTrackSettings()
        stored.CopyFrom(settings)
        stored.ClearField("track_sids")  # one copy per sid would otherwise keep the whole list alive
        for publication in self._tracks_named(settings.track_sids):
            self.allocator.settings[publication.sid] = stored
            subscription = self.subscriptions.get(publication.sid)
            if subscription is not None:
                self.allocator.update(subscription)

    def _tracks_named(self, sids: Iterable[str]) -> list[TrackPublication]:
        """The room's tracks among `sids`; the rest are counted."""
        tracks = self.room.tracks
        named, unknown = [], 0
        for sid in sids:
            publication = tracks.get(sid)
            if publication is None:
                unknown += 1
            else:
                named.append(publication)
        if unknown:
            self.services.counters["unknown_track_sids"] += unknown
        return named

    def forget_track(self, sid: str) -> None:
        """A track left the room: its wish, permission state and settings go too."""
        self.subscription_wishes.pop(sid, None)
        self.permission_denied.pop(sid, None)
        self.allocator.settings.pop(sid, None)

    def subscribe(self, publication: TrackPublication) -> bool:
        """Adds an m-line for the publication to the subscriber PC (the caller renegotiates); False if it has one
        already or the publication has no media yet. Whether it may is the SubscriptionManager's decision."""
        if publication.sid in self.subscriptions or publication.codec is None:
            return False
        kind = publication.kind
        red = publication.red_payload_type
        codec = media_caps.subscriber_codec(kind, publication.codec, red=red is not None)
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
            extmap=media_caps.subscriber_extensions(kind),
            active=True,
            red_payload_type=red,
            alternatives=backup.offered(publication, codec),
        )
        if not self.subscriber.add(media):  # negotiation.MAX_SUBSCRIBER_MEDIA subscribed
            self.services.counters["subscription_limit"] += 1
            return False
        subscription = Subscription(publication, self, media)
        self.subscriptions[publication.sid] = subscription
        publication.subscriptions[self.sid] = subscription
        return True

    def unsubscribe(self, subscription: Subscription, renegotiate: bool = True) -> None:
        publication = subscription.publication
        self.subscriptions.pop(publication.sid, None)
        publication.subscriptions.pop(self.sid, None)
        if subscription.downtrack_id is not None:
            self.allocator.forget(subscription.downtrack_id)
            self.services.engine.remove_downtrack(subscription.downtrack_id)
            subscription.downtrack_id = None
        subscription.media.active = False
        _demand_changed(publication)
        if renegotiate and not self.closed:
            self.renegotiate()

    def renegotiate(self) -> None:
        """Offers the subscriber PC's current m-lines (now, or after the outstanding answer); on a single PC, asks the
        client to offer."""
        self._negotiate(self.subscriber.changed())

    def handle_answer(self, answer: rtc.SessionDescription) -> None:
        """The client's answer on the subscriber PC: DownTracks start for the m-lines it accepted."""
        if not isinstance(self.subscriber, SubscriberPC):  # a single PC's client never answers
            self.services.counters["sdp_stale_answer"] += 1
            return
        try:
            description, follow_up = self.subscriber.answered(answer)
        except StaleAnswer:  # late or unsolicited: not a refusal
            self.services.counters["sdp_stale_answer"] += 1
            return
        except sdp.SdpError as error:
            self._refuse_sdp(answer, error)
            self.renegotiate()  # the refused answer ended the offer: offer again (until MAX_SDP_REFUSALS)
            return
        self._end_unplaceable(self.subscriber.unplaceable)
        refused = self._start_downtracks({s.mid: (s.extmap, s.extmap_allow_mixed)
                                          for s in description.sections if s.port != 0})
        self._negotiate(follow_up)
        if refused:
            self.renegotiate()

    def _start_downtracks(self, accepted: Mapping[str, tuple[dict[str, int], bool]]) -> bool:
        """Starts the DownTracks of subscriptions whose m-lines the client now has, `accepted` by mid with their
        header extensions (URI -> the client's id) and whether those may take the two-byte form; True if the node
        refused one."""
        refused = False
        for subscription in list(self.subscriptions.values()):
            negotiated = accepted.get(subscription.media.mid)
            if subscription.downtrack_id is None and negotiated is not None:
                subscription.extmap, subscription.extmap_allow_mixed = negotiated
                backup.choose_source(subscription, self.services.counters)
                refused |= not self.start_downtrack(subscription)
        return refused

    def start_downtrack(self, subscription: Subscription) -> bool:
        """Starts the DownTrack of a subscription whose m-line the client has, once what it is forwarded from is
        received; False if the node has none left (then the subscription ends, the client is told)."""
        publication, source = subscription.publication, subscription.source
        media = subscription.media
        negotiated = subscription.extmap
        if source.receiver_id is None or negotiated is None or subscription.downtrack_id is not None:
            return True
        # Publisher extension id -> the id this subscriber negotiated for the same URI. transport-cc and
        # abs-send-time are not forwarded: the engine writes its own under the ids the answer accepted. Nor is the
        # Dependency Descriptor to a client without the two-byte form: keyframes' would not fit, and libwebrtc
        # drops the packets of a stream whose descriptors it cannot resolve without their structure.
        mixed = subscription.extmap_allow_mixed
        extmap = {pub_id: negotiated[uri] for uri, pub_id in source.extmap.items()
                  if uri in negotiated and uri not in media_caps.SUBSCRIBER_OWN_EXTENSIONS
                  and (mixed or uri != sdp.EXT_DEPENDENCY_DESCRIPTOR)}
        transport_cc_id = negotiated.get(sdp.EXT_TRANSPORT_CC, 0)
        abs_send_time_id = negotiated.get(sdp.EXT_ABS_SEND_TIME, 0)
        try:
            subscription.downtrack_id = self.services.engine.add_downtrack(
                source.receiver_id, self.subscriber.transport.id, media.ssrc, media.rtx_ssrc or 0,
                media.codec.payload_type, media.codec.rtx_payload_type or 0, extmap,
                transport_cc_id if 0 < transport_cc_id < 15 else 0,
                abs_send_time_id if 0 < abs_send_time_id < 15 else 0,
                red_payload_type=media.red_payload_type if media.red_payload_type is not None else -1,
                extmap_allow_mixed=mixed,
            )
        except (RuntimeError, MemoryError) as error:
            self.services.counters["engine_downtracks_full"] += 1
            log.warning("participant %s: cannot subscribe to %s: %s", self.identity, publication.sid, error)
            self.unsubscribe(subscription, renegotiate=False)
            self.send(rtc.SignalResponse(subscription_response=rtc.SubscriptionResponse(
                track_sid=publication.sid, err=models.SubscriptionError.SE_UNKNOWN)))
            return False
        if publication.red_payload_type is not None:  # RED forwarded as it is, or its Opus stripped out of it
            self.services.counters["subscriptions_red" if media.red_payload_type is not None
                                   else "subscriptions_red_stripped"] += 1
        self.allocator.update(subscription)
        return True

    # -- data
    def _on_data_message(self, channel: DataChannel, data: bytes) -> None:
        self.data.receive(channel.label, data)

    def send_data(self, data: bytes, reliable: bool) -> bool:
        """Delivers a DataPacket to this client: on the primary PC's server channel, else on its own channel (a single
        PC has only the client's)."""
        label = RELIABLE_LABEL if reliable else LOSSY_LABEL
        primary, other = (self.subscriber, self.publisher) if self.subscriber_primary else (self.publisher, self.subscriber)
        return not self.closed and (primary.transport.send_message(label, data)
                                    or (other is not primary and other.transport.send_message(label, data)))

    # -- teardown
    def _on_media_path_lost(self) -> None:
        self.close(models.DisconnectReason.MEDIA_FAILURE)

    def close(self, reason: int, notify: bool = True, action: int = rtc.LeaveRequest.Action.DISCONNECT) -> None:
        """Removes the participant everywhere; with notify, tells the client first (leave)."""
        if self.closed:
            return
        if notify:  # can_reconnect: what clients older than signal protocol 13 understand of RECONNECT
            self.send(rtc.SignalResponse(leave=rtc.LeaveRequest(
                reason=reason, action=action, can_reconnect=action == rtc.LeaveRequest.Action.RECONNECT)))
        if self._departure is not None:
            self._departure.cancel()
            self._departure = None
        for subscription in list(self.subscriptions.values()):
            self.unsubscribe(subscription, renegotiate=False)
        for publication in [*self.publications.values(), *self._pending.values()]:
            self.unpublish(publication)
        was_active = self.state == models.ParticipantInfo.State.ACTIVE
        self.closed = True
        if self.sink is not None:
            self.sink.close()  # ends the connection after what is queued
        self.publisher.transport.close()
        self.subscriber.transport.close()
        self.room.remove(self)
        self.state = models.ParticipantInfo.State.DISCONNECTED
        self.disconnect_reason = reason
        self.touch()
        self.room.broadcast_participant(self)  # it has left the room: only the others hear
        # LiveKit reports a participant whose media never connected as aborted rather than left.
        self._notify("participant_left" if was_active else "participant_connection_aborted")
        log.info("participant %s left room %s (%s)", self.identity, self.room.name,
                 models.DisconnectReason.Name(reason))

    def close_soon(self, reason: int) -> None:
        """Closes from the event loop's next turn (for callers in the middle of other work)."""
        asyncio.get_running_loop().call_soon(self.close, reason, False)


def _demand_changed(publication: TrackPublication) -> None:
    """What a subscriber needs of the publication may have changed: dynacast decides what the publisher sends."""
    if publication.dynacast is not None:
        publication.dynacast.update()
