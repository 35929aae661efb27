"""Limits on what one participant may make the server hold, and refusals when the engine is full, in-process with
the fake engine of test_rtc (the same hostile inputs against a real server are in test_limits.py)."""
from __future__ import annotations

import asyncio
import secrets

import pytest
from livekit.protocol import models, rtc

from signaling.auth import Claims, VideoGrant
from signaling.peer import sdp
from signaling.protocol import v0
from signaling.rtc import limits
from signaling.rtc.participant import Participant
from test_rtc import VP8, FakeNode, join, node, publish, sink  # noqa: F401  (node is a fixture)

Reason = rtc.RequestResponse.Reason


def refusals(participant: Participant) -> list[int]:
    return [r.reason for r in sink(participant).of("request_response") if r.WhichOneof("request") == "add_track"]


def add_track(participant: Participant, cid: str, track_type: int = models.TrackType.VIDEO,
              source: int = models.TrackSource.CAMERA, name: str = "cam") -> None:
    participant.add_track(rtc.AddTrackRequest(cid=cid, name=name, type=track_type, source=source))


# ---------------------------------------------------------------- publishing

async def test_pending_tracks_stop_at_livekits_limit(node: FakeNode) -> None:
    alice = join(node, "alice")
    for index in range(limits.MAX_PENDING_TRACKS + 5):
        add_track(alice, f"c{index}")
    assert len(sink(alice).of("track_published")) == limits.MAX_PENDING_TRACKS
    assert refusals(alice) == [Reason.LIMIT_EXCEEDED] * 5
    assert len(node.store.get("room").tracks) == limits.MAX_PENDING_TRACKS
    assert node.counters["add_track_limit_exceeded"] == 5


async def test_published_tracks_count_against_the_participant_and_the_room(node: FakeNode,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    alice = join(node, "alice")
    for index in range(limits.MAX_PARTICIPANT_TRACKS):
        publish(alice, name=f"cam{index}")
    add_track(alice, "one-more")
    assert refusals(alice) == [Reason.LIMIT_EXCEEDED]
    alice.unpublish(next(iter(alice.publications.values())))
    add_track(alice, "room-for-one")
    assert refusals(alice) == [Reason.LIMIT_EXCEEDED]  # nothing new refused

    monkeypatch.setattr(limits, "MAX_ROOM_TRACKS", limits.MAX_PARTICIPANT_TRACKS + 1)
    bob = join(node, "bob")
    add_track(bob, "b1")
    add_track(bob, "b2")
    assert refusals(bob) == [Reason.LIMIT_EXCEEDED]
    assert "more than" in sink(bob).of("request_response")[-1].message


async def test_an_oversized_track_request_is_refused_and_not_echoed_in_full(node: FakeNode) -> None:
    alice = join(node, "alice")
    add_track(alice, "big", name="n" * 100_000)
    refusal = sink(alice).of("request_response")[-1]
    assert refusal.reason == Reason.LIMIT_EXCEEDED and refusal.add_track.cid == "big"
    assert refusal.add_track.name == "" and node.store.get("room").tracks == {}


async def test_a_source_grant_fixes_the_media_kind(node: FakeNode) -> None:
    mic_only = join(node, "mic", can_publish_sources=("microphone",))
    add_track(mic_only, "video-as-mic", models.TrackType.VIDEO, models.TrackSource.MICROPHONE)
    add_track(mic_only, "mic", models.TrackType.AUDIO, models.TrackSource.MICROPHONE)
    assert refusals(mic_only) == [Reason.NOT_ALLOWED]
    assert [p.cid for p in sink(mic_only).of("track_published")] == ["mic"]
    # Without a source list every label goes, as in LiveKit.
    anything = join(node, "anything")
    add_track(anything, "video-as-mic", models.TrackType.VIDEO, models.TrackSource.MICROPHONE)
    assert refusals(anything) == []
    # Restricting the grant later unpublishes the mislabelled track.
    anything.attach_media(sdp.AcceptedMedia("1", "video", "video-as-mic", VP8, {}, [], [1], []))
    permission = anything.permission()
    del permission.can_publish_sources[:]
    permission.can_publish_sources.append(models.TrackSource.MICROPHONE)
    anything.update_permission(permission)
    assert anything.publications == {} and len(sink(anything).of("track_unpublished")) == 1


async def test_data_tracks_are_not_published_as_media(node: FakeNode) -> None:
    alice = join(node, "alice")
    add_track(alice, "data", models.TrackType.DATA, models.TrackSource.UNKNOWN)
    assert refusals(alice) == [Reason.UNSUPPORTED_TYPE]


# ---------------------------------------------------------------- subscribing with sids

async def test_sids_of_no_track_keep_nothing(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    random_sids = [f"TR_{secrets.token_hex(6)}" for _ in range(100_000)]
    bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=random_sids + [video.sid], disabled=True))
    bob.update_subscriptions(set(random_sids), False)
    assert list(bob.allocator.settings) == [video.sid]
    assert list(bob.allocator.settings[video.sid].track_sids) == []  # not the whole list per sid
    assert bob.subscription_wishes == {}
    assert node.counters["unknown_track_sids"] == 200_000


async def test_what_a_subscriber_kept_for_a_track_goes_with_it(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    bob.update_track_settings(rtc.UpdateTrackSettings(track_sids=[video.sid], quality=models.VideoQuality.LOW))
    bob.update_subscriptions({video.sid}, True)
    alice.set_subscription_permission(rtc.SubscriptionPermission(all_participants=False))
    assert bob.permission_denied == {video.sid: True}
    alice.unpublish(video)
    assert bob.allocator.settings == {} and bob.subscription_wishes == {} and bob.permission_denied == {}
    assert node.store.get("room").tracks == {}


async def test_subscription_permission_entries_are_capped(node: FakeNode) -> None:
    alice, bob, carol = join(node, "alice"), join(node, "bob"), join(node, "carol")
    video = publish(alice)

    def entries(count: int) -> list[rtc.TrackPermission]:
        return [rtc.TrackPermission(participant_identity=f"user{i}", all_tracks=True) for i in range(count)]

    bob_entry = rtc.TrackPermission(participant_identity="bob", track_sids=[video.sid])
    alice.set_subscription_permission(rtc.SubscriptionPermission(
        track_permissions=entries(limits.MAX_SUBSCRIPTION_PERMISSIONS - 1) + [bob_entry]))
    assert video.sid in bob.subscriptions and video.sid not in carol.subscriptions
    alice.set_subscription_permission(rtc.SubscriptionPermission(track_permissions=entries(100_000)))
    assert node.counters["subscription_permission_limit_exceeded"] == 1
    assert video.sid in bob.subscriptions  # the previous permission stands
    too_many_sids = [rtc.TrackPermission(participant_identity="carol", track_sids=[f"TR_{i}" for i in range(1000)])]
    alice.set_subscription_permission(rtc.SubscriptionPermission(track_permissions=too_many_sids))
    assert node.counters["subscription_permission_limit_exceeded"] == 2


async def test_the_first_entry_naming_a_subscriber_decides(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)
    alice.set_subscription_permission(rtc.SubscriptionPermission(track_permissions=[
        rtc.TrackPermission(participant_sid=bob.sid, track_sids=["TR_other"]),
        rtc.TrackPermission(participant_identity="bob", all_tracks=True)]))
    assert bob.subscriptions == {}
    alice.set_subscription_permission(rtc.SubscriptionPermission(track_permissions=[
        rtc.TrackPermission(participant_identity="bob", track_sids=[video.sid]),
        rtc.TrackPermission(participant_sid=bob.sid, track_sids=[])]))
    assert set(bob.subscriptions) == {video.sid}


# ---------------------------------------------------------------- names, metadata, attributes

async def test_oversized_identity_fields_are_refused_by_the_participant_and_at_join(node: FakeNode) -> None:
    alice = join(node, "alice", can_update_own_metadata=True)
    alice.protocol = 16
    huge = "x" * (5 * 1024 * 1024)
    for request in (rtc.UpdateParticipantMetadata(name=huge, request_id=1),
                    rtc.UpdateParticipantMetadata(metadata="m" * (limits.MAX_METADATA_SIZE + 1), request_id=2),
                    rtc.UpdateParticipantMetadata(attributes={"k": "v" * limits.MAX_ATTRIBUTES_SIZE}, request_id=3),
                    rtc.UpdateParticipantMetadata(name="é" * 200, request_id=4)):  # 400 bytes
        alice.update_own_metadata(request)
    answers = sink(alice).of("request_response")
    assert [(a.request_id, a.reason) for a in answers] == [(i, Reason.LIMIT_EXCEEDED) for i in (1, 2, 3, 4)]
    assert all(a.update_metadata.ByteSize() < 16 for a in answers)  # not echoed back
    assert alice.name == "alice" and alice.metadata == "" and alice.attributes == {}

    def claims(identity: str = "id", name: str = "", metadata: str = "", attributes: dict | None = None) -> Claims:
        return Claims("devkey", identity, name, metadata, attributes or {}, "standard", VideoGrant(), "", 0)

    limits.check_join(claims(name="n" * limits.MAX_NAME_LENGTH), "r" * limits.MAX_ROOM_NAME_LENGTH)
    for bad, room in [(claims(name=huge), "room"), (claims(identity="i" * 257), "room"), (claims(), "r" * 257),
                      (claims(metadata=huge), "room"), (claims(attributes={"a": huge}), "room")]:
        with pytest.raises(limits.LimitExceeded):
            limits.check_join(bad, room)


# ---------------------------------------------------------------- the engine is full

async def test_no_receiver_left_unpublishes_the_track_for_its_client(node: FakeNode) -> None:
    alice = join(node, "alice")

    def full(*args: object, **kwargs: object) -> int:
        raise RuntimeError("too many receivers")

    node.engine.add_receiver = full  # type: ignore[method-assign]
    add_track(alice, "cam")
    sid = sink(alice).of("track_published")[0].track.sid
    alice.attach_media(sdp.AcceptedMedia("1", "video", "cam", VP8, {}, [], [1], []))
    assert [u.track_sid for u in sink(alice).of("track_unpublished")] == [sid]
    assert alice.publications == {} and alice.find_publication(sid) is None
    assert node.store.get("room").tracks == {} and node.counters["engine_receivers_full"] == 1


async def test_no_downtrack_left_fails_the_subscription_and_takes_its_m_line_back(node: FakeNode) -> None:
    alice, bob = join(node, "alice"), join(node, "bob")
    video = publish(alice)

    def answer_last_offer() -> None:  # the server's own offer as the answer: every m-line accepted
        offer = sink(bob).of("offer")[-1]
        bob.handle_answer(rtc.SessionDescription(type="answer", sdp=offer.sdp, id=offer.id))

    answer_last_offer()  # the join offer; the video m-line follows
    assert "m=video" in sink(bob).of("offer")[-1].sdp

    def full(*args: object, **kwargs: object) -> int:
        raise RuntimeError("too many downtracks")

    node.engine.add_downtrack = full  # type: ignore[method-assign]
    answer_last_offer()
    assert [(r.track_sid, r.err) for r in sink(bob).of("subscription_response")] == [
        (video.sid, models.SubscriptionError.SE_UNKNOWN)]
    assert bob.subscriptions == {} and video.subscriptions == {}
    assert "a=inactive" in sink(bob).of("offer")[-1].sdp  # the m-line is taken back
    assert node.counters["engine_downtracks_full"] == 1


# ---------------------------------------------------------------- the signal outbox

class _Quiet:
    """A participant stand-in for a SignalSession: records closing."""

    def __init__(self) -> None:
        self.closed_with: list[int] = []

    def attach(self, sink: object) -> None:
        pass

    def close_soon(self, reason: int) -> None:
        self.closed_with.append(reason)


async def test_the_outbox_is_bounded_in_bytes_and_drops_a_client_that_does_not_read() -> None:
    from collections import Counter

    participant, counters = _Quiet(), Counter()
    session = v0.SignalSession(participant, counters)  # type: ignore[arg-type]
    big = rtc.SignalResponse(room_update=rtc.RoomUpdate(room=models.Room(metadata="m" * (1024 * 1024))))
    session.send(big)
    session.send(big)
    assert session.outbox_bytes > 2 * 1024 * 1024 and not session.closed
    for _ in range(v0.MAX_OUTBOX_BYTES // (1024 * 1024)):
        session.send(big)
    assert session.closed and counters["signal_outbox_overflow"] == 1
    assert session.outbox.empty() and session.outbox_bytes == 0
    assert participant.closed_with == [models.DisconnectReason.SIGNAL_CLOSE]

    # One message larger than the cap still goes when nothing else waits.
    alone = v0.SignalSession(_Quiet(), counters)  # type: ignore[arg-type]
    alone.send(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=models.Room(metadata="m" * v0.MAX_OUTBOX_BYTES))))
    assert not alone.closed and alone.outbox.qsize() == 1
    await asyncio.sleep(0)
