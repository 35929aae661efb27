"""Backup codecs in-process (test_rtc's fakes): which codec each subscriber is forwarded, the backup asked of the
publisher and attached as a Receiver of the same track, and the subscriber that decodes neither codec told the
track is unavailable. tests/test_backup_codec_browser.py runs the same with LiveKit's JS SDK, aiortc and the Python
SDK."""
from __future__ import annotations

from livekit.protocol import models
from livekit.protocol import rtc as signal

from signaling.peer import sdp
from signaling.rtc.participant import Participant
from signaling.rtc.publication import TrackPublication
from test_rtc import FakeNode, answer_to, join, node, sink  # noqa: F401
from test_rtc_v1 import client_offer, join_single_pc

VP9 = sdp.Codec(98, "VP9", 90000, fmtp="profile-id=0", rtx_payload_type=99)
VP8 = sdp.Codec(96, "VP8", 90000, rtx_payload_type=97)
LAYERS = [models.VideoLayer(quality=q, width=320 << q, height=180 << q) for q in range(3)]


def publish_vp9_with_backup(alice: Participant) -> TrackPublication:
    """As the JS SDK publishes VP9: one m-line, a VP8 backup named in simulcast_codecs (no cid until it is sent)."""
    alice.add_track(signal.AddTrackRequest(
        cid="cam", name="cam", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA, layers=LAYERS,
        simulcast_codecs=[signal.SimulcastCodec(codec="vp9", cid="cam"), signal.SimulcastCodec(codec="vp8")]))
    alice.attach_media(sdp.AcceptedMedia("0", "video", "cam", VP9, {}, [], [1000], []))
    publication = next(iter(alice.publications.values()))
    alice.on_track_started(publication)
    return publication


def answer_taking(offer: signal.SessionDescription, codec_name: str | None) -> signal.SessionDescription:
    """A client's answer that receives only `codec_name` on every video m-line (None: it rejects them)."""
    answer = answer_to(offer)
    parsed = sdp.parse(offer.sdp)
    for section in parsed.sections:
        if section.kind != "video":
            continue
        first = section.codecs[0]
        taken = next((c for c in section.codecs if c.name == codec_name), None)
        port = 9 if taken is not None else 0
        taken = taken or first
        answer.sdp = answer.sdp.replace(
            f"m=video 9 UDP/TLS/RTP/SAVPF {first.payload_type}\r\na=mid:{section.mid}\r\n"
            f"a=rtpmap:{first.payload_type} {first.name}/{first.clock_rate}",
            f"m=video {port} UDP/TLS/RTP/SAVPF {taken.payload_type}\r\na=mid:{section.mid}\r\n"
            f"a=rtpmap:{taken.payload_type} {taken.name}/{taken.clock_rate}")
    return answer


def asked_codecs(publisher: Participant) -> list[list[str]]:
    """Per SubscribedQualityUpdate, the codecs the publisher is asked to send any quality of."""
    return [[c.codec for c in update.subscribed_codecs if any(q.enabled for q in c.qualities)]
            for update in sink(publisher).of("subscribed_quality_update")]


async def test_a_vp8_only_subscriber_waits_for_the_backup_and_others_get_the_primary(node: FakeNode) -> None:
    alice = join(node, "alice")
    publication = publish_vp9_with_backup(alice)
    assert publication.info.backup_codec_policy == models.BackupCodecPolicy.SIMULCAST
    bob, carol = join(node, "bob"), join(node, "carol")
    offer = sink(bob).of("offer")[-1]
    assert "VP9/90000" in offer.sdp and "VP8/90000" in offer.sdp  # both, the primary first

    carol.handle_answer(answer_to(sink(carol).of("offer")[-1]))  # takes VP9, the first offered
    assert node.engine.downtracks[carol.subscriptions[publication.sid].downtrack_id] == publication.receiver_id
    bob.handle_answer(answer_taking(offer, "VP8"))
    waiting = bob.subscriptions[publication.sid]
    assert waiting.downtrack_id is None and waiting.source is publication.backup
    assert asked_codecs(alice)[-1] == ["vp9", "vp8"]  # the JS SDK starts a codec asked for that it does not send

    # The SDK asks to add the codec to the track (its sid) and sends it on an m-line of its own.
    alice.add_track(signal.AddTrackRequest(cid="cam-vp8", sid=publication.sid, type=models.TrackType.VIDEO,
                                           simulcast_codecs=[signal.SimulcastCodec(codec="vp8", cid="cam-vp8",
                                                                                   layers=LAYERS[:2])]))
    published = sink(alice).of("track_published")[-1]
    assert published.cid == "cam-vp8" and published.track.sid == publication.sid
    assert [(c.mime_type, c.cid) for c in published.track.codecs] == [("video/vp9", "cam"), ("video/vp8", "cam-vp8")]
    alice.attach_media(sdp.AcceptedMedia("1", "video", "cam-vp8", VP8, {}, ["q", "h"], [], []))
    backup = publication.backup
    assert backup is not None and backup.receiver_id is not None and backup.mid == "1"
    assert node.receivers[backup.receiver_id] is publication and len(alice.publications) == 1
    assert node.engine.downtracks[waiting.downtrack_id] == backup.receiver_id
    assert node.counters["subscriptions_backup_codec"] == 1

    alice.unpublish(publication)
    assert node.engine.receivers == set() and node.engine.downtracks == {}


async def test_a_subscriber_that_decodes_neither_codec_is_told_the_track_is_unavailable(node: FakeNode) -> None:
    alice = join(node, "alice")
    publication = publish_vp9_with_backup(alice)
    bob = join(node, "bob")
    bob.handle_answer(answer_taking(sink(bob).of("offer")[-1], None))  # the m-line rejected
    [refusal] = sink(bob).of("subscription_response")
    assert (refusal.track_sid, refusal.err) == (publication.sid, models.SubscriptionError.SE_CODEC_UNSUPPORTED)
    assert bob.subscriptions == {} and node.counters["subscription_codec_unsupported"] == 1


async def test_a_single_pc_client_receiving_only_vp8_gets_the_backup(node: FakeNode) -> None:
    alice = join(node, "alice")
    publication = publish_vp9_with_backup(alice)
    bob = join_single_pc(node, "bob")
    bob.handle_offer(client_offer(["video"]))  # VP8 only
    answer = sink(bob).of("answer")[-1]
    assert dict(answer.mid_to_track_id) == {"0": publication.sid} and "a=rtpmap:98 VP8/90000" in answer.sdp
    assert "VP9" not in answer.sdp and bob.subscriptions[publication.sid].source is publication.backup
    assert asked_codecs(alice)[-1] == ["vp9", "vp8"]


async def test_a_backup_for_no_track_is_refused(node: FakeNode) -> None:
    alice = join(node, "alice")
    alice.add_track(signal.AddTrackRequest(cid="x", sid="TR_none", type=models.TrackType.VIDEO,
                                           simulcast_codecs=[signal.SimulcastCodec(codec="vp8", cid="x")]))
    [refusal] = sink(alice).of("request_response")
    assert refusal.reason == signal.RequestResponse.Reason.NOT_FOUND and refusal.add_track.cid == "x"
