"""The room domain in-process, with a fake engine: the subscription manager (wishes x grants x publisher permissions
x hidden), the allocator (pauses and layers), and rooms in the store. No sockets, no clients."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
from livekit.protocol import models, rtc

import engine

from signaling.config import Config
from signaling.auth import Claims, TokenVerifier, VideoGrant, create_token
from signaling.cluster.memory import MemoryRoomStore
from signaling.peer import sdp
from signaling.peer.negotiation import MAX_SUBSCRIBER_MEDIA
from signaling.peer.transport import TransportManager
from signaling.rtc import limits
from signaling.rtc.allocator import PAUSE_AFTER_S, TOP_LAYER, StreamAllocator, allocate
from signaling.rtc.participant import Participant
from signaling.rtc.publication import Subscription, TrackPublication
from signaling.rtc.subscriptions import decide

VP8 = sdp.Codec(96, "VP8", 90000, rtx_payload_type=97)
OPUS = sdp.Codec(111, "opus", 48000, channels=2)


class FakeEngine:
    """Records what the control plane asks of the data plane."""

    port = 7882
    tcp_port = 0  # no ICE-TCP

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.receivers: set[int] = set()
        self.downtracks: dict[int, int] = {}  # downtrack -> receiver
        self.paused: dict[int, bool] = {}
        self.layers: dict[int, int] = {}
        self.temporal: dict[int, int | None] = {}  # the temporal cap pushed with the layer
        self.cuts: dict[int, bool] = {}  # whether that layer cut the current one at once (a bandwidth step-down)

    def add_transport(self, ice_ufrag: str | None = None) -> int:
        return next(self._ids)

    def set_transport_ufrag(self, transport_id: int, ice_ufrag: str) -> None:
        pass

    def remove_transport(self, transport_id: int) -> None:
        pass

    def add_receiver(self, *args: object, **kwargs: object) -> int:
        receiver_id = next(self._ids)
        self.receivers.add(receiver_id)
        return receiver_id

    def remove_receiver(self, receiver_id: int) -> None:
        self.receivers.discard(receiver_id)

    def add_downtrack(self, receiver_id: int, *args: object, **kwargs: object) -> int:
        downtrack_id = next(self._ids)
        self.downtracks[downtrack_id] = receiver_id
        return downtrack_id

    def remove_downtrack(self, downtrack_id: int) -> None:
        del self.downtracks[downtrack_id]

    def set_paused(self, downtrack_id: int, paused: bool) -> None:
        self.paused[downtrack_id] = paused

    def set_target_layer(self, downtrack_id: int, layer: int, temporal: int | None = None,
                         cut: bool = False) -> None:
        self.layers[downtrack_id] = layer
        self.cuts[downtrack_id] = cut
        self.temporal[downtrack_id] = temporal

    def downtrack_stats(self, downtrack_id: int) -> dict:
        return {"current_layer": -1}  # nothing forwarded: fakes carry no media

    def receiver_stats(self, receiver_id: int) -> dict:
        return {"layers": []}  # nothing measured: layers are priced at their defaults


class FakeNode:
    """rtc.participant.Services over a FakeEngine; webhook events are recorded."""

    version = "1.9.0"

    def __init__(self) -> None:
        self.config = Config()
        self.engine = FakeEngine()
        self.transports = TransportManager(self.engine, ["127.0.0.1"])
        self.counters: Counter[str] = Counter()
        self.verifier = TokenVerifier({"devkey": "secret"})
        self.receivers: dict[int, TrackPublication] = {}
        self.events: list[str] = []
        self.store = MemoryRoomStore(300, 20, 0, self.notify)

    def server_info(self) -> models.ServerInfo:
        return models.ServerInfo(version=self.version)

    def ice_servers(self, participant_sid: str) -> list:
        return []

    def notify(self, event: str, **kwargs: object) -> None:
        self.events.append(event)


class Sink:
    """A participant's signal sink that keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[rtc.SignalResponse] = []
        self.closed = False

    def send(self, response: rtc.SignalResponse) -> None:
        self.sent.append(response)

    def close(self) -> None:
        self.closed = True

    def of(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.sent if r.WhichOneof("message") == kind]


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


def join(node: FakeNode, identity: str, room: str = "room", auto_subscribe: bool = True, **grant: object) -> Participant:
    claims = Claims("devkey", identity, identity, "", {}, "standard", VideoGrant(room_join=True, room=room, **grant),
                    "", 0)
    participant = Participant(node, node.store.get_or_create(room), claims, auto_subscribe=auto_subscribe,
                              token=create_token("devkey", "secret", identity, room))
    participant.attach(Sink())
    participant.join(5, 15)
    return participant


def publish(publisher: Participant, kind: str = "video", name: str = "cam") -> TrackPublication:
    """AddTrack, the offer's m-line accepted, then the first packet: the track is published to the room."""
    cid = f"{publisher.identity}-{name}"
    track_type = models.TrackType.VIDEO if kind == "video" else models.TrackType.AUDIO
    layers = [models.VideoLayer(quality=q, width=320 << q, height=180 << q) for q in range(3)] if kind == "video" else []
    source = models.TrackSource.CAMERA if kind == "video" else models.TrackSource.MICROPHONE
    publisher.add_track(rtc.AddTrackRequest(cid=cid, name=name, type=track_type, source=source, layers=layers))
    mid = str(len(publisher.publications))
    publisher.attach_media(sdp.AcceptedMedia(mid, kind, cid, VP8 if kind == "video" else OPUS, {}, [], [1000 + len(mid)], []))
    publication = next(p for p in publisher.publications.values() if p.cid == cid)
    publisher.on_track_started(publication)
    return publication


def sink(participant: Participant) -> Sink:
    assert isinstance(participant.sink, Sink)
    return participant.sink


def changed_permission(participant: Participant, **fields: object) -> models.ParticipantPermission:
    """The participant's current permission with `fields` replaced, as RoomService's UpdateParticipant sends it."""
    permission = participant.permission()
    for name, value in fields.items():
        if isinstance(value, list):
            del getattr(permission, name)[:]
            getattr(permission, name).extend(value)
        else:
            setattr(permission, name, value)
    return permission


def permission_updates(participant: Participant) -> list[tuple[str, bool]]:
    return [(u.track_sid, u.allowed) for u in sink(participant).of("subscription_permission_update")]


# ---------------------------------------------------------------- who gets which track

async def test_join_and_reconnect_responses_carry_the_nodes_ice_servers_and_force_relay(node: FakeNode) -> None:
    node.ice_servers = lambda sid: [rtc.ICEServer(urls=["turn:10.0.0.1:3478?transport=udp"], username=f"1:{sid}",
                                                  credential="c")]
    node.config.rtc.force_relay = True
    alice = join(node, "alice")
    response = sink(alice).sent[0].join
    assert list(response.ice_servers[0].urls) == ["turn:10.0.0.1:3478?transport=udp"]
    assert response.ice_servers[0].username == f"1:{alice.sid}"
    assert response.client_configuration.force_relay == models.ClientConfigSetting.ENABLED
    resumed = Sink()
    alice.resume(resumed)  # fresh credentials in the ReconnectResponse too, the first message
    reconnect = resumed.sent[0].reconnect
    assert reconnect.ice_servers[0].username == f"1:{alice.sid}"
    assert reconnect.client_configuration.force_relay == models.ClientConfigSetting.ENABLED
    node.config.rtc.force_relay = False
    assert join(node, "bob").client_configuration().force_relay == models.ClientConfigSetting.UNSET


async def test_auto_subscribe_gets_published_tracks_of_others(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    assert set(bob.subscriptions) == {video.sid}
    assert video.subscriptions[bob.sid] is bob.subscriptions[video.sid]
    assert alice.subscriptions == {}  # never to one's own track
    # The m-line waits for the answer to bob's first offer: one offer in flight at a time.
    assert [(m.track_id, m.active) for m in bob.subscriber.media] == [(video.sid, True)]
    assert len(sink(bob).of("offer")) == 1
    late = join(node, "carol")  # joining later: subscribed at join, in its first offer
    assert set(late.subscriptions) == {video.sid}


async def test_a_track_is_not_subscribed_before_its_media_arrives(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    alice.add_track(rtc.AddTrackRequest(cid="c1", name="cam", type=models.TrackType.VIDEO))
    alice.attach_media(sdp.AcceptedMedia("1", "video", "c1", VP8, {}, [], [1], []))
    assert bob.subscriptions == {}
    publication = alice.find_publication(next(iter(alice.publications)))
    alice.on_track_started(publication)
    assert set(bob.subscriptions) == {publication.sid}


async def test_explicit_wishes_override_auto_subscribe_both_ways(node: FakeNode) -> None:
    alice = join(node, "alice")
    manual = join(node, "manual", auto_subscribe=False)
    video, audio = publish(alice), publish(alice, "audio", "mic")
    assert manual.subscriptions == {}
    manual.update_subscriptions({video.sid}, True)
    assert set(manual.subscriptions) == {video.sid}
    auto = join(node, "auto")
    auto.update_subscriptions({audio.sid}, False)
    assert set(auto.subscriptions) == {video.sid}
    # A wish for a track still waiting for its media takes effect when it is published; a sid of no track is
    # ignored and nothing is kept for it.
    alice.add_track(rtc.AddTrackRequest(cid="later", name="screen", type=models.TrackType.VIDEO))
    pending = alice.find_publication(sink(alice).of("track_published")[-1].track.sid)
    manual.update_subscriptions({pending.sid, "TR_nothing"}, True)
    assert manual.subscription_wishes == {video.sid: True, pending.sid: True}
    alice.attach_media(sdp.AcceptedMedia("3", "video", "later", VP8, {}, [], [3000], []))
    alice.on_track_started(pending)
    assert set(manual.subscriptions) == {video.sid, pending.sid}
    assert node.counters["unknown_track_sids"] == 1


async def test_unsubscribing_removes_the_downtrack(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    subscription = bob.subscriptions[video.sid]
    subscription.downtrack_id = node.engine.add_downtrack(video.receiver_id)  # as the subscriber's answer starts it
    bob.update_subscriptions({video.sid}, False)
    assert bob.subscriptions == {} and video.subscriptions == {}
    assert node.engine.downtracks == {}
    assert subscription.media.active is False  # its m-line goes inactive in the next offer


async def test_without_can_subscribe_nothing_until_the_grant_changes(node: FakeNode) -> None:
    alice = join(node, "alice")
    viewer = join(node, "viewer", can_subscribe=False)
    video = publish(alice)
    assert viewer.subscriptions == {}
    assert permission_updates(viewer) == []  # not a publisher permission matter: nothing to report
    viewer.update_permission(changed_permission(viewer, can_subscribe=True))
    assert set(viewer.subscriptions) == {video.sid}
    viewer.update_permission(changed_permission(viewer, can_subscribe=False))
    assert viewer.subscriptions == {}


async def test_a_hidden_publisher_is_invisible_until_unhidden(node: FakeNode) -> None:
    ghost = join(node, "ghost", hidden=True)
    bob = join(node, "bob")
    video = publish(ghost)
    assert bob.subscriptions == {}
    assert all(ghost.sid not in [p.sid for p in u.participants] for u in sink(bob).of("update"))
    ghost.update_permission(changed_permission(ghost, hidden=False))
    assert set(bob.subscriptions) == {video.sid}
    ghost.update_permission(changed_permission(ghost, hidden=True))
    assert bob.subscriptions == {}
    gone = [p for u in sink(bob).of("update") for p in u.participants if p.sid == ghost.sid]
    assert gone[-1].state == models.ParticipantInfo.State.DISCONNECTED  # to bob it has left


async def test_publisher_permissions_admit_some_and_tell_the_others(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    video = publish(alice)
    alice.set_subscription_permission(rtc.SubscriptionPermission(all_participants=False, track_permissions=[
        rtc.TrackPermission(participant_identity="bob", track_sids=[video.sid])]))
    assert set(bob.subscriptions) == {video.sid}
    assert carol.subscriptions == {}
    assert permission_updates(carol) == [(video.sid, False)]
    assert permission_updates(bob) == []
    # Repeating the same permission reports nothing new.
    alice.set_subscription_permission(rtc.SubscriptionPermission(all_participants=False, track_permissions=[
        rtc.TrackPermission(participant_identity="bob", all_tracks=True)]))
    assert permission_updates(carol) == [(video.sid, False)]
    alice.set_subscription_permission(rtc.SubscriptionPermission(all_participants=True))
    assert set(carol.subscriptions) == {video.sid}
    assert permission_updates(carol) == [(video.sid, False), (video.sid, True)]


async def test_a_denied_track_is_not_reported_to_who_does_not_want_it(node: FakeNode) -> None:
    alice = join(node, "alice")
    manual = join(node, "manual", auto_subscribe=False)
    publish(alice)
    alice.set_subscription_permission(rtc.SubscriptionPermission(all_participants=False))
    assert permission_updates(manual) == []


@pytest.mark.parametrize("wish", [None, True, False])
@pytest.mark.parametrize("auto_subscribe", [True, False])
@pytest.mark.parametrize("can_subscribe", [True, False])
@pytest.mark.parametrize("hidden", [True, False])
@pytest.mark.parametrize("allowed", [True, False])
async def test_decision_matrix(node: FakeNode, wish: bool | None, auto_subscribe: bool, can_subscribe: bool,
                               hidden: bool, allowed: bool) -> None:
    publisher = join(node, "pub", hidden=hidden)
    subscriber = join(node, "sub", auto_subscribe=auto_subscribe, can_subscribe=can_subscribe)
    video = publish(publisher)
    if not allowed:
        publisher.set_subscription_permission(rtc.SubscriptionPermission(all_participants=False))
    if wish is not None:
        subscriber.update_subscriptions({video.sid}, wish)
    wanted = auto_subscribe if wish is None else wish
    expected = wanted and can_subscribe and not hidden and allowed
    assert decide(subscriber, video).subscribe is expected
    assert (video.sid in subscriber.subscriptions) is expected


# ---------------------------------------------------------------- publications going away

async def test_unpublishing_or_leaving_drops_every_subscription(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    video, audio = publish(alice), publish(alice, "audio", "mic")
    assert len(node.engine.receivers) == 2
    alice.unpublish(video)
    assert set(bob.subscriptions) == set(carol.subscriptions) == {audio.sid}
    assert "track_unpublished" in node.events
    alice.close(models.DisconnectReason.CLIENT_INITIATED, notify=False)
    assert bob.subscriptions == carol.subscriptions == {}
    assert node.engine.receivers == set()
    assert sink(alice).closed
    assert "alice" not in node.store.get("room").participants


async def test_revoking_a_source_unpublishes_it(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    alice.update_permission(changed_permission(alice, can_publish_sources=[models.TrackSource.MICROPHONE]))
    assert bob.subscriptions == {}
    assert [u.track_sid for u in sink(alice).of("track_unpublished")] == [video.sid]


# ---------------------------------------------------------------- allocation

def _subscription(node: FakeNode, kind: str = "video") -> tuple[Participant, Subscription]:
    alice, bob = join(node, "alice"), join(node, "bob")
    publication = publish(alice, kind)
    subscription = bob.subscriptions[publication.sid]
    subscription.downtrack_id = node.engine.add_downtrack(publication.receiver_id)
    return alice, subscription


async def test_allocation_follows_mute_and_track_settings(node: FakeNode) -> None:
    alice, subscription = _subscription(node)
    bob, publication, downtrack = subscription.subscriber, subscription.publication, subscription.downtrack_id
    bob.allocator.update(subscription)
    assert node.engine.paused[downtrack] is False and node.engine.layers[downtrack] == TOP_LAYER

    def settings(**fields: object) -> None:
        bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[publication.sid], **fields))

    settings(quality=models.VideoQuality.LOW)
    assert node.engine.layers[downtrack] == 0
    settings(width=600, height=340)  # the smallest layer covering 600x340: 640x360
    assert node.engine.layers[downtrack] == 1
    settings(width=4000, height=3000)  # more than any layer: the best there is
    assert node.engine.layers[downtrack] == TOP_LAYER
    settings(disabled=True)
    assert node.engine.paused[downtrack] is True
    settings(quality=models.VideoQuality.OFF)
    assert node.engine.paused[downtrack] is True
    settings(quality=models.VideoQuality.HIGH)
    assert node.engine.paused[downtrack] is False and node.engine.layers[downtrack] == 2
    alice.set_muted(publication, True)
    assert node.engine.paused[downtrack] is True
    alice.set_muted(publication, False)
    assert node.engine.paused[downtrack] is False


async def test_audio_is_paused_by_mute_and_never_layered(node: FakeNode) -> None:
    alice, subscription = _subscription(node, "audio")
    alice.set_muted(subscription.publication, True, by_server=True)
    assert node.engine.paused[subscription.downtrack_id] is True
    assert subscription.downtrack_id not in node.engine.layers
    assert [m.muted for m in sink(alice).of("mute")] == [True]  # the publisher's SDK is told


async def test_the_subscriber_transports_estimate_drives_layers_and_pauses(node: FakeNode) -> None:
    """Engine bandwidth events for bob's subscriber transport reach bob's StreamAllocator: layers follow the
    estimate (priced at publication.DEFAULT_LAYER_BPS, audio reserved first), below the lowest layer the video is
    paused for bandwidth (StreamStateUpdate PAUSED, counted) while audio flows, and it comes back up."""
    alice, video = _subscription(node)
    bob = video.subscriber
    bob.allocator.prober = None  # no probing here: the estimate alone decides upgrades (probes: test_allocator.py)
    audio = bob.subscriptions[publish(alice, "audio", "mic").sid]
    audio.downtrack_id = node.engine.add_downtrack(audio.publication.receiver_id)
    now = [0.0]
    bob.allocator.clock = lambda: now[0]

    def estimate(bps: int, congested: bool = False) -> None:
        node.transports.on_event((engine.EV_BANDWIDTH, bob.subscriber.transport.id, bps, congested))

    def states() -> list[int]:
        return [s.state for u in sink(bob).of("stream_state_update") for s in u.stream_states]

    estimate(5_000_000)
    assert node.engine.layers[video.downtrack_id] == 2
    estimate(700_000)  # 64k audio + 160k + 450k fit, 1.7M does not
    assert node.engine.layers[video.downtrack_id] == 1
    estimate(100_000)
    assert node.engine.paused[video.downtrack_id] is False  # the lowest layer while a dip may pass
    now[0] += PAUSE_AFTER_S
    estimate(100_000)
    assert node.engine.paused[video.downtrack_id] is True and node.engine.paused[audio.downtrack_id] is False
    assert states() == [rtc.StreamState.PAUSED] and node.counters["stream_paused_bandwidth"] == 1
    now[0] += 10
    estimate(5_000_000, congested=True)  # never up while congested
    assert node.engine.paused[video.downtrack_id] is True
    estimate(5_000_000)
    assert node.engine.paused[video.downtrack_id] is False and node.engine.layers[video.downtrack_id] == 2
    assert states() == [rtc.StreamState.PAUSED, rtc.StreamState.ACTIVE]
    other = join(node, "carol")  # another subscriber's transport: bob's allocation is untouched
    node.transports.on_event((engine.EV_BANDWIDTH, other.subscriber.transport.id, 100_000, False))
    assert node.engine.layers[video.downtrack_id] == 2


def test_allocate_without_a_downtrack_touches_nothing() -> None:
    engine = FakeEngine()
    allocator = StreamAllocator(engine)
    publication = TrackPublication.__new__(TrackPublication)
    publication.info = models.TrackInfo(sid="TR_x", type=models.TrackType.VIDEO)
    allocator.update(Subscription(publication, None, None))  # type: ignore[arg-type]
    assert engine.paused == {} and engine.layers == {}
    assert allocate(publication, None).layer == TOP_LAYER


# ---------------------------------------------------------------- rooms in the store

async def test_closing_a_room_tells_everyone_and_the_store_forgets_it(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    join(node, "other", room="elsewhere")
    assert [r.name for r in node.store.rooms(["room"])] == ["room"]
    assert {p.identity for p in node.store.participants()} == {"alice", "bob", "other"}
    node.store.get("room").close(models.DisconnectReason.ROOM_DELETED)
    for participant in (alice, bob):
        assert [leave.reason for leave in sink(participant).of("leave")] == [models.DisconnectReason.ROOM_DELETED]
        assert participant.closed
    assert node.store.get("room") is None
    assert [r.name for r in node.store.rooms()] == ["elsewhere"]
    assert node.events.count("room_finished") == 1


# ---------------------------------------------------------------- subscriber negotiation bounds

def answer_to(offer: rtc.SessionDescription, answer_id: int | None = None) -> rtc.SessionDescription:
    """A client's answer accepting every m-line of `offer` as offered (recvonly, or inactive)."""
    parsed = sdp.parse(offer.sdp)
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE " + " ".join(parsed.bundle)]
    for section in parsed.sections:
        if section.kind == "application":
            lines += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", f"a=mid:{section.mid}"]
        else:
            codec = section.codecs[0]
            lines += [f"m={section.kind} 9 UDP/TLS/RTP/SAVPF {codec.payload_type}", f"a=mid:{section.mid}",
                      f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}",
                      "a=inactive" if section.direction == "inactive" else "a=recvonly"]
    text = "\r\n".join(lines) + "\r\n"
    return rtc.SessionDescription(type="answer", sdp=text, id=offer.id if answer_id is None else answer_id)


def settle(subscriber: Participant) -> None:
    """Answers the subscriber's offers until none is outstanding, checking each parses within the limits."""
    answered = -1
    while (offer := sink(subscriber).of("offer")[-1]).id != answered:
        assert len(sdp.parse(offer.sdp).sections) <= sdp.MAX_MEDIA_SECTIONS
        subscriber.handle_answer(answer_to(offer))
        answered = offer.id


async def test_a_refused_answer_does_not_stop_later_subscriptions(node: FakeNode) -> None:
    """The subscriber's answer is refused: the server offers again at once, and a later subscription is still
    offered and started; a stale answer is ignored and counts as no refusal."""
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    first = sink(bob).of("offer")[-1]
    bob.handle_answer(rtc.SessionDescription(type="answer", sdp="v=0\r\nm=video x\r\n", id=first.id))
    assert node.counters["sdp_malformed"] == 1 and len(sink(bob).of("request_response")) == 1
    again = sink(bob).of("offer")[-1]
    assert again.id > first.id and video.sid in again.sdp
    bob.handle_answer(answer_to(first))  # stale: answers the offer the refusal ended
    assert node.counters["sdp_stale_answer"] == 1 and bob._sdp_refusals == 1
    bob.handle_answer(answer_to(again))
    assert bob.subscriptions[video.sid].downtrack_id is not None
    audio = publish(alice, "audio", "mic")
    bob.handle_answer(answer_to(sink(bob).of("offer")[-1]))
    assert bob.subscriptions[audio.sid].downtrack_id is not None and not bob.closed


async def test_subscriber_offers_stay_within_what_its_answer_may_hold(node: FakeNode) -> None:
    """More tracks than MAX_SUBSCRIBER_MEDIA: the subscriber gets that many (the rest counted), its answer to the
    offer parses, and after unsubscribing and resubscribing 10 times over the m-lines are recycled, not added."""
    per_publisher = limits.MAX_PARTICIPANT_TRACKS
    publishers = [join(node, f"p{i}") for i in range(MAX_SUBSCRIBER_MEDIA // per_publisher + 1)]
    bob = join(node, "bob")
    publications = [publish(p, name=f"cam{k}") for p in publishers for k in range(per_publisher)]
    assert len(bob.subscriptions) == MAX_SUBSCRIBER_MEDIA
    assert node.counters["subscription_limit"] == len(publications) - MAX_SUBSCRIBER_MEDIA
    for _ in range(10):
        settle(bob)
        subscribed = list(bob.subscriptions)
        bob.update_subscriptions(set(subscribed[:20]), False)
        settle(bob)
        bob.update_subscriptions(set(subscribed[:20]), True)
    assert len(bob.subscriber.media) == len(bob.subscriptions) == MAX_SUBSCRIBER_MEDIA and not bob.closed
    assert bob._sdp_refusals == 0


async def test_a_client_that_does_not_drain_reliable_data_leaves(node: FakeNode) -> None:
    """Its transport finds no room for a reliable message (peer/transport.py): the participant is closed and
    told why, and nothing more is sent to it on either peer connection."""
    alice, bob = join(node, "alice"), join(node, "bob")
    bob.subscriber.transport.on_backlog_full()
    assert bob.closed and sink(bob).of("leave")[-1].reason == models.DisconnectReason.MEDIA_FAILURE
    assert bob.subscriber.transport.closed and bob.publisher.transport.closed
    assert not bob.send_data(b"late", reliable=True)
    assert bob not in alice.room.others(alice)
