"""LiveKit's signal protocol v1 (`/rtc/v1`, one peer connection): the join_request parameter (bare, with hypothesis),
and the Python SDK, which tries v1 first, joining, publishing, subscribing and exchanging data over it against a real
server. The JS SDK over v1 is in test_browser.py, a resume over v1 in test_resume.py."""
from __future__ import annotations

import asyncio
import base64
import gzip
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from clients import connect, remote, until
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from signaling.auth import Claims, VideoGrant
from signaling.peer import sdp
from signaling.protocol.v1 import (MAX_JOIN_REQUEST_PARAM, MAX_JOIN_REQUEST_SIZE, JoinRequestError,
                                   decode_join_request)
from signaling.rtc.participant import Participant
from test_rtc import FakeNode, Sink, join, node, publish, sink  # noqa: F401 (node: a fixture)


def join_request_param(join: signal.JoinRequest, gzipped: bool = True, padded: bool = True) -> str:
    """The join_request parameter as the SDKs build it (URL-safe base64 of a WrappedJoinRequest)."""
    data = join.SerializeToString()
    wrapped = signal.WrappedJoinRequest(
        compression=signal.WrappedJoinRequest.Compression.GZIP if gzipped else signal.WrappedJoinRequest.Compression.NONE,
        join_request=gzip.compress(data) if gzipped else data)
    text = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()
    return text if padded else text.rstrip("=")


# ---------------------------------------------------------------- join_request parsing (no server)

JOIN = signal.JoinRequest(client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.PYTHON, protocol=16),
                          connection_settings=signal.ConnectionSettings(auto_subscribe=True),
                          reconnect=True, participant_sid="PA_x")


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_join_request_decodes_as_the_sdks_encode_it(gzipped: bool, padded: bool) -> None:
    assert decode_join_request(join_request_param(JOIN, gzipped, padded)) == JOIN


def test_a_gzip_bomb_is_refused_after_inflating_the_limit() -> None:
    bomb = signal.WrappedJoinRequest(compression=signal.WrappedJoinRequest.Compression.GZIP,
                                     join_request=gzip.compress(b"\0" * (8 * MAX_JOIN_REQUEST_SIZE)))
    param = base64.urlsafe_b64encode(bomb.SerializeToString()).decode()
    assert len(param) < MAX_JOIN_REQUEST_PARAM
    with pytest.raises(JoinRequestError, match="inflated"):
        decode_join_request(param)
    with pytest.raises(JoinRequestError, match="longer"):
        decode_join_request("A" * (MAX_JOIN_REQUEST_PARAM + 1))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.tuples(st.sampled_from([0, 1, 2, 7]), st.binary(max_size=200)).map(
        lambda c: base64.urlsafe_b64encode(signal.WrappedJoinRequest(compression=c[0], join_request=(
            gzip.compress(c[1]) if c[0] == 1 and c[1][:1] == b"\x01" else c[1])).SerializeToString()).decode()),
))
def test_garbage_is_a_join_request_error_or_a_join_request(param: str) -> None:
    try:
        assert isinstance(decode_join_request(param), signal.JoinRequest)
    except JoinRequestError:
        pass


# ---------------------------------------------------------------- against a real server

def _status(server, path: str, query: dict[str, str]) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.http}{path}?{urllib.parse.urlencode(query)}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_a_malformed_join_request_is_a_400_before_the_upgrade(server) -> None:
    token = server.token("garbage", "v1-garbage")
    before = server.counters().get("join_request_malformed", 0)
    for param in ["%%%", "AAAA", base64.urlsafe_b64encode(b"\xff" * 40).decode()]:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(f"{server.url}/rtc/v1?join_request={urllib.parse.quote(param)}",
                             additional_headers={"Authorization": f"Bearer {token}"})
        assert refused.value.response.status_code == 400
        assert b"join_request" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(f"{server.url}/rtc/v1", additional_headers={"Authorization": f"Bearer {token}"})
    assert refused.value.response.status_code == 400
    assert server.counters()["join_request_malformed"] == before + 4
    # /rtc/v1/validate answers as the upgrade would.
    assert _status(server, "/rtc/v1/validate", {"access_token": token, "join_request": "AAAA"})[0] == 400
    assert _status(server, "/rtc/v1/validate", {"access_token": token,
                                                 "join_request": join_request_param(JOIN)}) == (200, "success")


async def test_python_sdk_publishes_subscribes_and_exchanges_data_over_one_peer_connection(server) -> None:
    room = "v1-room"
    counters = server.counters()
    v0_before, v1_before = counters.get("signal_connections_v0", 0), counters.get("signal_connections_v1", 0)
    transports_before = counters.get("transports_created", 0)
    alice = await connect(server, "alice", room)
    bob = await connect(server, "bob", room)
    publisher = Publisher(alice)
    try:
        counters = server.counters()
        # Both joined over /rtc/v1 at the first try, one transport (peer connection) each.
        assert counters["signal_connections_v1"] == v1_before + 2
        assert counters.get("signal_connections_v0", 0) == v0_before
        assert counters["transports_created"] == transports_before + 2

        await publisher.start()
        tracks = await wait_for_tracks(bob, 2)
        frames = await decoded_video(tracks["video"], frames=10)
        assert any(matches_card(frame) for frame in frames)
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 20

        # And the other way: bob publishes into the same peer connection he receives on.
        back = Publisher(bob, tone=False)
        await back.start()
        try:
            tracks = await wait_for_tracks(alice, 2)
            assert any(matches_card(frame) for frame in await decoded_video(tracks["video"], frames=5))
        finally:
            await back.stop()
        assert server.counters()["transports_created"] == transports_before + 2

        # Data both ways, reliable and lossy, on the channels the clients opened.
        to_bob: list[tuple[bytes, int]] = []
        to_alice: list[tuple[bytes, int]] = []
        bob.on("data_received", lambda p: to_bob.append((p.data, p.kind)))
        alice.on("data_received", lambda p: to_alice.append((p.data, p.kind)))
        await alice.local_participant.publish_data(b"reliable a", reliable=True)
        await alice.local_participant.publish_data(b"lossy a", reliable=False)
        await bob.local_participant.publish_data(b"reliable b", reliable=True)
        await bob.local_participant.publish_data(b"lossy b", reliable=False)
        await until(lambda: len(to_bob) == 2 and len(to_alice) == 2)
        assert to_bob == [(b"reliable a", rtc.DataPacketKind.KIND_RELIABLE), (b"lossy a", rtc.DataPacketKind.KIND_LOSSY)]
        assert to_alice == [(b"reliable b", rtc.DataPacketKind.KIND_RELIABLE), (b"lossy b", rtc.DataPacketKind.KIND_LOSSY)]

        @bob.local_participant.register_rpc_method("add")
        async def add(data: rtc.RpcInvocationData) -> str:
            return str(sum(int(x) for x in data.payload.split()))

        @alice.local_participant.register_rpc_method("shout")
        async def shout(data: rtc.RpcInvocationData) -> str:
            return data.payload.upper()

        assert await alice.local_participant.perform_rpc(destination_identity="bob", method="add", payload="2 3") == "5"
        assert await bob.local_participant.perform_rpc(destination_identity="alice", method="shout", payload="hi") == "HI"
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()
    log = server.log()
    assert '" 404' not in log and " ERROR " not in log and "WARNING" not in log, log[-3000:]
    assert "/rtc/v1?join_request=[redacted]" in log  # the client's SDP (ICE password) stays out of the log


async def test_unsubscribing_and_resubscribing_reuses_the_clients_m_lines(server) -> None:
    """A subscription ends (the m-line goes inactive in the next answer) and comes back (placed again, in a free
    recvonly m-line): the subscriber sees the track go and return, and decodes it again."""
    room = "v1-resubscribe"
    alice = await connect(server, "alice", room)
    bob = await connect(server, "bob", room)
    publisher = Publisher(alice, tone=False)
    try:
        await publisher.start()
        tracks = await wait_for_tracks(bob, 2)
        video = next(p for p in remote(bob, "alice").track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        for _ in range(2):
            video.set_subscribed(False)
            await until(lambda: video.track is None)
            video.set_subscribed(True)
            await until(lambda: video.track is not None)
            assert any(matches_card(frame) for frame in await decoded_video(video.track, frames=5))
        assert tracks["audio"] is not None
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


# ---------------------------------------------------------------- one peer connection in-process (test_rtc's fakes)

def client_offer(kinds: list[str], ufrag: str = "client1", offer_id: int = 1) -> signal.SessionDescription:
    """A v1 client's offer: recvonly m-lines of `kinds` (the SDKs pre-create 3 + 3) and its data channels' m-line."""
    mids = [str(i) for i in range(len(kinds) + 1)]
    lines = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE " + " ".join(mids),
             f"a=ice-ufrag:{ufrag}", "a=ice-pwd:" + "p" * 24, "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
             "a=setup:actpass"]
    for mid, kind in zip(mids, kinds):
        if kind == "audio":
            lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=mid:{mid}", "a=recvonly", "a=rtpmap:111 opus/48000/2",
                      "a=rtcp-fb:111 transport-cc", "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"]
        else:
            lines += ["m=video 9 UDP/TLS/RTP/SAVPF 98 99", f"a=mid:{mid}", "a=recvonly", "a=rtpmap:98 VP8/90000",
                      "a=rtcp-fb:98 nack pli", "a=rtcp-fb:98 goog-lntf", "a=rtpmap:99 rtx/90000", "a=fmtp:99 apt=98",
                      "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
                      "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"]
        lines += ["a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
                  "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid"]
    lines += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", f"a=mid:{mids[-1]}", "a=sctp-port:5000"]
    return signal.SessionDescription(type="offer", sdp="\r\n".join(lines) + "\r\n", id=offer_id)


def join_single_pc(node: FakeNode, identity: str) -> Participant:
    """test_rtc's join, over one peer connection."""
    claims = Claims("devkey", identity, identity, "", {}, "standard", VideoGrant(room_join=True, room="room"), "", 0)
    participant = Participant(node, node.store.get_or_create("room"), claims, single_pc=True)
    participant.attach(Sink())
    participant.join(5, 15)
    return participant


def answered_media(answer: signal.SessionDescription) -> dict[str, str]:
    """mid -> direction of each audio/video m-line of an answer."""
    return {s.mid: s.direction for s in sdp.parse(answer.sdp).sections if s.kind != "application"}


async def test_subscriptions_go_into_the_clients_recvonly_m_lines_and_more_are_asked_for(node: FakeNode) -> None:
    alice = join(node, "alice")
    video, audio = publish(alice), publish(alice, "audio", "mic")
    bob = join_single_pc(node, "bob")
    join_response = sink(bob).of("join")[0]
    assert not join_response.subscriber_primary and not sink(bob).of("offer")
    assert node.transports.counters["transports_created"] == 3  # alice's two, bob's one
    assert set(bob.subscriptions) == {video.sid, audio.sid}
    assert not sink(bob).of("media_sections_requirement")  # its first offer is on its way: it has m-lines for them

    bob.handle_offer(client_offer(["audio", "video", "video"]))
    answer = sink(bob).of("answer")[-1]
    assert answer.id == 1 and dict(answer.mid_to_track_id) == {"0": audio.sid, "1": video.sid}
    assert answered_media(answer) == {"0": "sendonly", "1": "sendonly", "2": "inactive"}
    assert f"a=msid:{alice.sid}|{video.sid} {video.sid}" in answer.sdp
    assert "a=rtpmap:98 VP8/90000" in answer.sdp and "a=rtpmap:99 rtx/90000" in answer.sdp  # the client's types
    assert all(s.downtrack_id is not None for s in bob.subscriptions.values())
    assert bob.subscriptions[video.sid].media.extmap == {  # what the engine writes: the client's ids
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
        "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3}

    # Two more videos: the first fits the free m-line (the client is asked for an offer, 0/0), the second waits for
    # that offer, as does an unsubscription (one request outstanding at a time).
    second, third = publish(alice, "video", "screen"), publish(alice, "video", "extra")
    bob.update_subscriptions({video.sid}, False)
    requirements = lambda: [(r.num_audios, r.num_videos) for r in sink(bob).of("media_sections_requirement")]  # noqa: E731
    assert requirements() == [(0, 0)]
    bob.handle_offer(client_offer(["audio", "video", "video"], offer_id=2))
    answer = sink(bob).of("answer")[-1]
    assert answered_media(answer) == {"0": "sendonly", "1": "inactive", "2": "sendonly"}
    assert dict(answer.mid_to_track_id) == {"0": audio.sid, "2": second.sid}
    # The m-line answered inactive is free: the third video goes there with the next offer.
    assert requirements() == [(0, 0), (0, 0)]
    bob.handle_offer(client_offer(["audio", "video", "video"], offer_id=3))
    assert dict(sink(bob).of("answer")[-1].mid_to_track_id) == {"0": audio.sid, "1": third.sid, "2": second.sid}
    assert len(requirements()) == 2

    # None free: the client is asked for one more video m-line.
    bob.update_subscriptions({video.sid}, True)
    assert requirements()[-1] == (0, 1)
    bob.handle_offer(client_offer(["audio", "video", "video", "video"], offer_id=4))
    answer = sink(bob).of("answer")[-1]
    assert dict(answer.mid_to_track_id) == {"0": audio.sid, "1": third.sid, "2": second.sid, "3": video.sid}
    assert len(requirements()) == 3 and all(s.downtrack_id is not None for s in bob.subscriptions.values())

    # A resume sends no offer: the client restarts ICE with its own.
    bob._on_primary_connected()  # what its transport's DTLS handshake does: only then is there a session to resume
    bob.signal_lost(sink(bob))
    resumed = Sink()
    bob.resume(resumed)
    assert [r.WhichOneof("message") for r in resumed.sent][:1] == ["reconnect"] and not resumed.of("offer")
    bob.handle_offer(client_offer(["audio", "video", "video", "video"], ufrag="client2", offer_id=5))
    assert node.transports.counters["ice_restarts"] == 1 and resumed.of("answer")[-1].id == 5


async def test_data_reaches_a_single_pc_client_on_its_own_channels(node: FakeNode) -> None:
    """The server writes on the client's channels: reliable messages wait for its _reliable channel to open (as they
    wait for the server's own on a subscriber PC); lossy ones before it are undeliverable."""
    bob = join_single_pc(node, "bob")
    transport = bob.publisher.transport
    assert bob.publisher is bob.subscriber and transport.local_channels == []
    assert bob.send_data(b"x", reliable=True) and not bob.send_data(b"y", reliable=False)
    assert transport._held == [("_reliable", b"x")]


async def test_a_codec_the_client_cannot_receive_ends_the_subscription_instead_of_asking_for_m_lines(
        node: FakeNode) -> None:
    alice = join(node, "alice")
    alice.add_track(signal.AddTrackRequest(cid="h264", name="cam", type=models.TrackType.VIDEO))
    h264 = sdp.Codec(102, "H264", 90000, fmtp="profile-level-id=42e01f;packetization-mode=1", rtx_payload_type=103)
    alice.attach_media(sdp.AcceptedMedia("0", "video", "h264", h264, {}, [], [1], []))
    publication = next(iter(alice.publications.values()))
    alice.on_track_started(publication)
    bob = join_single_pc(node, "bob")
    bob.handle_offer(client_offer(["audio", "video"]))  # VP8 only
    assert not sink(bob).of("answer")[-1].mid_to_track_id and bob.subscriptions == {}
    [refusal] = sink(bob).of("subscription_response")
    assert (refusal.track_sid, refusal.err) == (publication.sid, models.SubscriptionError.SE_CODEC_UNSUPPORTED)
    assert not sink(bob).of("media_sections_requirement") and node.counters["subscription_codec_unsupported"] == 1


async def test_more_tracks_than_the_clients_prepared_m_lines_are_asked_for_and_all_play(server) -> None:
    """The SDK prepares 3 audio + 3 video recvonly m-lines; a fourth video makes the server ask for one more
    (MediaSectionsRequirement), and every video decodes."""
    room = "v1-many"
    alice = await connect(server, "alice", room)
    bob = await connect(server, "bob", room)
    sources = [rtc.VideoSource(160, 90) for _ in range(4)]
    frame = rtc.VideoFrame(160, 90, rtc.VideoBufferType.RGBA, bytes(160 * 90 * 4))

    async def feed() -> None:
        while True:
            for source in sources:
                source.capture_frame(frame)
            await asyncio.sleep(0.1)

    feeder = asyncio.create_task(feed())
    requested = server.counters().get("media_sections_requested", 0)
    try:
        for index, source in enumerate(sources):
            track = rtc.LocalVideoTrack.create_video_track(f"cam{index}", source)
            await alice.local_participant.publish_track(track, rtc.TrackPublishOptions(
                source=rtc.TrackSource.SOURCE_CAMERA, simulcast=False))

        def videos() -> list[rtc.RemoteTrack]:
            participant = remote(bob, "alice")
            return [p.track for p in participant.track_publications.values() if p.track is not None] if participant else []

        await until(lambda: len(videos()) == 4, timeout=20)
        for track in videos():
            assert len(await decoded_video(track, frames=3)) == 3
        assert server.counters()["media_sections_requested"] > requested
    finally:
        feeder.cancel()
        await alice.disconnect()
        await bob.disconnect()
