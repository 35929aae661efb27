"""RoomService through livekit-api's LiveKitAPI against a running server, effects checked from SDK clients."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from livekit import api, rtc
from livekit.protocol import models

from clients import connect, packets_received, remote, until
from conftest import API_KEY, API_SECRET
from media import Publisher, decoded_video, wait_for_tracks
from signal_client import SignalClient


@pytest.fixture
async def lkapi(server):
    client = api.LiveKitAPI(server.http, API_KEY, API_SECRET)
    yield client
    await client.aclose()


def twirp(server, method: str, body: bytes, content_type: str = "application/json", token: str | None = None,
          http_method: str = "POST") -> tuple[int, str, bytes]:
    """A raw Twirp call: (status, content type, body)."""
    if token is None:
        token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True)).to_jwt()
    request = urllib.request.Request(f"{server.http}/twirp/livekit.RoomService/{method}", data=body,
                                     method=http_method,
                                     headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


async def test_rooms_are_created_listed_updated_and_deleted(server, lkapi):
    room = await lkapi.room.create_room(api.CreateRoomRequest(
        name="api-room", empty_timeout=30, departure_timeout=5, max_participants=2, metadata="hello"))
    assert (room.name, room.empty_timeout, room.departure_timeout, room.max_participants, room.metadata) == \
        ("api-room", 30, 5, 2, "hello")
    assert room.sid.startswith("RM_")
    assert room == await lkapi.room.create_room(api.CreateRoomRequest(name="api-room"))  # exists: returned as is
    with pytest.raises(api.TwirpError) as refused:  # longer than joins allow (rtc/limits.py): no room nobody can join
        await lkapi.room.create_room(api.CreateRoomRequest(name="r" * 257))
    assert refused.value.code == "invalid_argument"

    alice = await connect(server, "alice", "api-room")
    bob = await connect(server, "bob", "api-room")
    changed = asyncio.Event()
    alice.on("room_metadata_changed", lambda old, new: changed.set())
    try:
        assert alice.metadata == "hello"
        with pytest.raises(Exception):  # max_participants=2
            await connect(server, "carol", "api-room")
        listed = await lkapi.room.list_rooms(api.ListRoomsRequest(names=["api-room"]))
        assert [(r.name, r.num_participants) for r in listed.rooms] == [("api-room", 2)]
        assert not (await lkapi.room.list_rooms(api.ListRoomsRequest(names=["elsewhere"]))).rooms

        updated = await lkapi.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="api-room", metadata="v2"))
        assert updated.metadata == "v2"
        await asyncio.wait_for(changed.wait(), 10)
        assert alice.metadata == "v2"

        reasons: list[int] = []
        bob.on("disconnected", reasons.append)
        await lkapi.room.delete_room(api.DeleteRoomRequest(room="api-room"))
        await until(lambda: reasons)
        assert reasons == [models.DisconnectReason.ROOM_DELETED]
        assert "api-room" not in [r.name for r in (await lkapi.room.list_rooms(api.ListRoomsRequest())).rooms]
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_participants_are_listed_updated_and_removed(server, lkapi):
    alice = await connect(server, "alice", "people")
    bob = await connect(server, "bob", "people")
    try:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="people"))
        assert sorted(p.identity for p in listed.participants) == ["alice", "bob"]
        info = await lkapi.room.get_participant(api.RoomParticipantIdentity(room="people", identity="alice"))
        assert info.sid == alice.local_participant.sid

        info = await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="people", identity="alice", name="Alice", metadata="m1", attributes={"role": "host"}))
        assert (info.name, info.metadata, dict(info.attributes)) == ("Alice", "m1", {"role": "host"})
        await until(lambda: (remote(bob, "alice").name, remote(bob, "alice").metadata,
                             remote(bob, "alice").attributes) == ("Alice", "m1", {"role": "host"}))
        await until(lambda: alice.local_participant.metadata == "m1")

        reasons: list[int] = []
        alice.on("disconnected", reasons.append)
        await lkapi.room.remove_participant(api.RoomParticipantIdentity(room="people", identity="alice"))
        await until(lambda: reasons and remote(bob, "alice") is None)
        assert reasons == [models.DisconnectReason.PARTICIPANT_REMOVED]
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room="people"))
        assert [p.identity for p in listed.participants] == ["bob"]
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_server_mute_stops_forwarding_and_the_publisher_sees_it(server, lkapi):
    alice = await connect(server, "alice", "mute-room")
    publisher = Publisher(alice, video=False)
    bob = await connect(server, "bob", "mute-room")
    try:
        await publisher.start()
        await wait_for_tracks(bob, 1)
        local = next(iter(alice.local_participant.track_publications.values()))
        response = await lkapi.room.mute_published_track(api.MuteRoomTrackRequest(
            room="mute-room", identity="alice", track_sid=local.sid, muted=True))
        assert response.track.muted
        await until(lambda: local.muted)  # the publisher's SDK muted its track
        seen = next(iter(remote(bob, "alice").track_publications.values()))
        await until(lambda: seen.muted)
        await asyncio.sleep(0.5)
        forwarded = server.counters()["forwarded"]  # whatever the publisher still sends is not forwarded
        await asyncio.sleep(0.5)
        assert server.counters()["forwarded"] == forwarded

        with pytest.raises(api.TwirpError) as refused:  # only the publisher may unmute
            await lkapi.room.mute_published_track(api.MuteRoomTrackRequest(
                room="mute-room", identity="alice", track_sid=local.sid, muted=False))
        assert refused.value.code == "failed_precondition"
        with pytest.raises(api.TwirpError) as missing:
            await lkapi.room.mute_published_track(api.MuteRoomTrackRequest(
                room="mute-room", identity="alice", track_sid="TR_nothing", muted=True))
        assert missing.value.code == "not_found"
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


async def test_permission_changes_unpublish_and_unsubscribe(server, lkapi):
    alice = await connect(server, "alice", "perm-room")
    publisher = Publisher(alice, video=False)
    bob = await connect(server, "bob", "perm-room")
    carol = await connect(server, "carol", "perm-room")
    try:
        await publisher.start()
        await wait_for_tracks(bob, 1)
        await wait_for_tracks(carol, 1)
        # canSubscribe revoked: bob's subscription ends; carol keeps hers.
        await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="perm-room", identity="bob",
            permission=models.ParticipantPermission(can_subscribe=False, can_publish=True, can_publish_data=True)))
        await until(lambda: not bob.local_participant.permissions.can_subscribe)
        # The Rust SDK keeps the track object (it ignores onRemoveTrack, as with LiveKit): its packets stop.
        bobs = next(iter(remote(bob, "alice").track_publications.values())).track
        carols = next(iter(remote(carol, "alice").track_publications.values())).track
        await asyncio.sleep(0.5)
        before = await packets_received(bobs), await packets_received(carols)
        await asyncio.sleep(1)
        after = await packets_received(bobs), await packets_received(carols)
        assert after[0] == before[0] and after[1] > before[1] + 20

        # canPublish revoked: alice's track is unpublished for everyone; her SDK learns its new permission
        # (the Rust SDK ignores the server's track_unpublished; JS unpublishes locally).
        await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="perm-room", identity="alice",
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=False, can_publish_data=True)))
        await until(lambda: not remote(carol, "alice").track_publications)
        await until(lambda: not alice.local_participant.permissions.can_publish)
        info = await lkapi.room.get_participant(api.RoomParticipantIdentity(room="perm-room", identity="alice"))
        assert not info.permission.can_publish and not info.tracks

        # Hidden: the others no longer see alice at all.
        await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="perm-room", identity="alice",
            permission=models.ParticipantPermission(can_subscribe=True, hidden=True)))
        await until(lambda: remote(carol, "alice") is None)
    finally:
        await publisher.stop()
        for client in (alice, bob, carol):
            await client.disconnect()


async def test_publish_sources_are_limited(server, lkapi):
    alice = await connect(server, "alice", "source-room")
    bob = await connect(server, "bob", "source-room")
    publisher = Publisher(alice)  # camera + microphone
    try:
        await publisher.start()
        await wait_for_tracks(bob, 2)
        await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="source-room", identity="alice",
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=True,
                                                    can_publish_sources=[models.TrackSource.MICROPHONE])))
        await until(lambda: [p.source for p in remote(bob, "alice").track_publications.values()]
                    == [rtc.TrackSource.SOURCE_MICROPHONE])
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


async def test_selective_subscription(server, lkapi):
    alice = await connect(server, "alice", "pick-room")
    publisher = Publisher(alice)
    bob = await connect(server, "bob", "pick-room", auto_subscribe=False)
    try:
        await publisher.start()
        await until(lambda: remote(bob, "alice") is not None and len(remote(bob, "alice").track_publications) == 2)
        await asyncio.sleep(1)
        assert all(p.track is None for p in remote(bob, "alice").track_publications.values())

        # The SDK subscribes to the video itself; the server API adds the audio.
        video = next(p for p in remote(bob, "alice").track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        audio = next(p for p in remote(bob, "alice").track_publications.values() if p.kind == rtc.TrackKind.KIND_AUDIO)
        video.set_subscribed(True)
        frames = await decoded_video((await wait_for_tracks(bob, 1))["video"], frames=5)
        assert frames
        await lkapi.room.update_subscriptions(api.UpdateSubscriptionsRequest(
            room="pick-room", identity="bob", track_sids=[audio.sid], subscribe=True))
        await until(lambda: audio.track is not None)

        # Low quality caps the forwarded simulcast layer, high lifts the cap: each is a switch at a keyframe
        # (the SDK's two layers of a 640x360 source are both 640x360, at different bitrates) and video goes on.
        for quality in (rtc.VideoQuality.VIDEO_QUALITY_LOW, rtc.VideoQuality.VIDEO_QUALITY_HIGH):
            switches = server.counters()["layer_switches"]
            video.set_video_quality(quality)
            await until(lambda: server.counters()["layer_switches"] > switches)
            assert await decoded_video(video.track, frames=5)

        await lkapi.room.update_subscriptions(api.UpdateSubscriptionsRequest(
            room="pick-room", identity="bob", track_sids=[audio.sid], subscribe=False))
        track = audio.track
        await asyncio.sleep(0.5)
        before = await packets_received(track)
        await asyncio.sleep(1)
        assert await packets_received(track) == before
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


async def test_publisher_subscription_permissions(server):
    alice = await connect(server, "alice", "allow-room")
    publisher = Publisher(alice, video=False)
    bob = await connect(server, "bob", "allow-room")
    carol = await connect(server, "carol", "allow-room")
    # The Rust SDK ignores subscription_permission_update; a bare signal client shows what the server says.
    dave, _ = await SignalClient.join(server.url, server.token("dave", "allow-room"))
    try:
        alice.local_participant.set_track_subscription_permissions(
            allow_all_participants=False,
            participant_permissions=[rtc.ParticipantTrackPermission(participant_identity="bob", allow_all=True)])
        await publisher.start()
        await wait_for_tracks(bob, 1)
        denied = (await dave.receive_until("subscription_permission_update")).subscription_permission_update
        assert (denied.participant_sid, denied.allowed) == (alice.local_participant.sid, False)
        assert all(p.track is None for p in remote(carol, "alice").track_publications.values())

        alice.local_participant.set_track_subscription_permissions(allow_all_participants=True)
        await wait_for_tracks(carol, 1)
        allowed = (await dave.receive_until("subscription_permission_update")).subscription_permission_update
        assert (allowed.track_sid, allowed.allowed) == (denied.track_sid, True)
    finally:
        await dave.connection.close()
        await publisher.stop()
        for client in (alice, bob, carol):
            await client.disconnect()


async def test_send_data_reaches_the_named_participants(server, lkapi):
    alice = await connect(server, "alice", "data-api")
    bob = await connect(server, "bob", "data-api")
    received: dict[str, list[rtc.DataPacket]] = {"alice": [], "bob": []}
    alice.on("data_received", received["alice"].append)
    bob.on("data_received", received["bob"].append)
    try:
        await lkapi.room.send_data(api.SendDataRequest(room="data-api", data=b"to all", topic="news",
                                                       kind=models.DataPacket.Kind.RELIABLE))
        await lkapi.room.send_data(api.SendDataRequest(room="data-api", data=b"to bob", destination_identities=["bob"],
                                                       kind=models.DataPacket.Kind.RELIABLE))
        await until(lambda: len(received["bob"]) == 2 and received["alice"])
        assert [(p.data, p.topic) for p in received["bob"]] == [(b"to all", "news"), (b"to bob", "")]
        assert [p.data for p in received["alice"]] == [b"to all"]
        assert received["bob"][0].participant is None  # from the server, not a participant
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_grants_are_checked_per_method(server):
    def token(**grants: object) -> str:
        return api.AccessToken(API_KEY, API_SECRET).with_identity("operator").with_grants(api.VideoGrants(**grants)).to_jwt()

    calls = {
        "CreateRoom": {"name": "x"}, "ListRooms": {}, "DeleteRoom": {"room": "x"},
        "ListParticipants": {"room": "x"}, "GetParticipant": {"room": "x", "identity": "a"},
        "RemoveParticipant": {"room": "x", "identity": "a"},
        "MutePublishedTrack": {"room": "x", "identity": "a", "trackSid": "TR_x", "muted": True},
        "UpdateParticipant": {"room": "x", "identity": "a"}, "UpdateSubscriptions": {"room": "x", "identity": "a"},
        "SendData": {"room": "x", "data": ""}, "UpdateRoomMetadata": {"room": "x", "metadata": "m"},
    }
    for method, body in calls.items():
        # An admin of another room has none of these rights here.
        status, content_type, answer = twirp(server, method, json.dumps(body).encode(),
                                             token=token(room_join=True, room="other", room_admin=True))
        assert (status, json.loads(answer)["code"]) == (403, "permission_denied"), method
        assert content_type.startswith("application/json")

    admin = token(room_admin=True, room="x", room_create=True)
    for method in ("DeleteRoom", "ListParticipants", "GetParticipant", "RemoveParticipant", "UpdateParticipant",
                   "UpdateSubscriptions", "SendData", "UpdateRoomMetadata"):
        status, _, answer = twirp(server, method, json.dumps(calls[method]).encode(), token=admin)
        assert (status, json.loads(answer)["code"]) == (404, "not_found"), method

    # protojson in, protojson out.
    status, content_type, answer = twirp(server, "ListRooms", b"{}")
    assert status == 200 and content_type.startswith("application/json")
    assert "rooms" in json.loads(answer) or json.loads(answer) == {}


@pytest.mark.parametrize("body, content_type", [
    (b"\xff\xff\xff", "application/protobuf"),
    (b"{not json", "application/json"),
    (b'{"names": 5}', "application/json"),
])
def test_malformed_bodies_get_twirp_errors(server, body, content_type):
    status, _, answer = twirp(server, "ListRooms", body, content_type)
    assert (status, json.loads(answer)["code"]) == (400, "malformed")


def test_bad_credentials_routes_and_content_types(server):
    status, _, answer = twirp(server, "ListRooms", b"{}", token="garbage")
    assert (status, json.loads(answer)["code"]) == (401, "unauthenticated")
    forged = api.AccessToken(API_KEY, "not-the-secret").with_grants(api.VideoGrants(room_list=True)).to_jwt()
    assert twirp(server, "ListRooms", b"{}", token=forged)[0] == 401
    status, _, answer = twirp(server, "NoSuchMethod", b"{}")
    assert (status, json.loads(answer)["code"]) == (404, "bad_route")
    status, _, answer = twirp(server, "ListRooms", b"{}", content_type="text/plain")
    assert (status, json.loads(answer)["code"]) == (404, "bad_route")
    status, _, answer = twirp(server, "ListRooms", b"", http_method="GET")
    assert (status, json.loads(answer)["code"]) == (404, "bad_route")
    assert "Traceback" not in server.log()


async def test_a_changed_participant_gets_an_update_and_a_fresh_token(server, lkapi):
    client, join = await SignalClient.join(server.url, server.token("dave", "token-room"))
    try:
        await lkapi.room.update_participant(api.UpdateParticipantRequest(
            room="token-room", identity="dave", metadata="promoted",
            permission=models.ParticipantPermission(can_subscribe=True, can_publish=False, can_publish_data=True)))
        mine = join.participant
        while mine.metadata != "promoted" or mine.permission.can_publish:
            update = (await client.receive_until("update")).update
            mine = next((p for p in update.participants if p.identity == "dave"), mine)
        token = (await client.receive_until("refresh_token")).refresh_token
        claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
        assert claims.metadata == "promoted" and not claims.video.can_publish and claims.video.room == "token-room"
    finally:
        await client.connection.close()
