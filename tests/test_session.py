"""LiveKit session behaviour seen through the Python SDK: metadata, mute, unpublish, speakers, identity, timeouts."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal

from clients import connect, remote, until
from media import Publisher, wait_for_tracks
from signal_client import SignalClient


async def test_metadata_name_and_attributes_updates_are_seen_by_others(server):
    alice = await connect(server, "alice", "meta-room", can_update_own_metadata=True)
    bob = await connect(server, "bob", "meta-room")
    try:
        await until(lambda: remote(bob, "alice") is not None)
        await alice.local_participant.set_metadata('{"mood": "happy"}')
        await alice.local_participant.set_name("Alice A.")
        await alice.local_participant.set_attributes({"role": "host", "lang": "en"})
        await until(lambda: remote(bob, "alice").metadata == '{"mood": "happy"}'
                    and remote(bob, "alice").name == "Alice A."
                    and remote(bob, "alice").attributes == {"role": "host", "lang": "en"})
        await alice.local_participant.set_attributes({"lang": ""})  # an empty value deletes the key
        await until(lambda: remote(bob, "alice").attributes == {"role": "host"})

        # Without canUpdateOwnMetadata the request is refused and nothing changes for others.
        await bob.local_participant.set_metadata("not allowed")
        raw, _ = await SignalClient.join(server.url, server.token("carol", "meta-room"))
        await raw.send(signal.SignalRequest(update_metadata=signal.UpdateParticipantMetadata(metadata="x", request_id=7)))
        refusal = (await raw.receive_until("request_response")).request_response
        assert (refusal.request_id, refusal.reason) == (7, signal.RequestResponse.Reason.NOT_ALLOWED)
        await raw.connection.close()
        assert remote(alice, "bob").metadata == "" and bob.local_participant.metadata == ""
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_mute_unpublish_and_active_speakers(server):
    room = "speaker-room"
    loud_room = await connect(server, "loud", room)
    quiet_room = await connect(server, "quiet", room)
    listener = await connect(server, "listener", room)
    loud, quiet = Publisher(loud_room, video=False), Publisher(quiet_room, tone=False, video=False)
    speakers: list[list[str]] = []
    listener.on("active_speakers_changed", lambda people: speakers.append([p.identity for p in people]))
    try:
        await loud.start()
        await quiet.start()
        await until(lambda: len([t for p in listener.remote_participants.values() for t in p.track_publications.values()
                                 if t.track is not None]) == 2)
        await until(lambda: speakers and speakers[-1] == ["loud"], timeout=10)

        # Mute is seen by others, and a muted speaker stops being one.
        publication = next(iter(loud_room.local_participant.track_publications.values()))
        publication.track.mute()
        await until(lambda: next(iter(remote(listener, "loud").track_publications.values())).muted)
        await until(lambda: speakers[-1] == [], timeout=10)
        publication.track.unmute()
        await until(lambda: not next(iter(remote(listener, "loud").track_publications.values())).muted)

        # Unpublishing (a renegotiation, no signal message) removes the track for everyone.
        await loud_room.local_participant.unpublish_track(publication.sid)
        await until(lambda: not remote(listener, "loud").track_publications)
        assert remote(quiet_room, "loud").track_publications == {}

        # Publishing again works, on the subscriber m-line the unpublished track left free.
        subscribed = asyncio.Event()
        listener.on("track_subscribed", lambda track, pub, participant: participant.identity == "loud" and subscribed.set())
        await loud_room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("microphone", loud.audio_source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        await asyncio.wait_for(subscribed.wait(), 10)
        await until(lambda: speakers[-1] == ["loud"], timeout=10)
    finally:
        await loud.stop()
        await quiet.stop()
        for client in (loud_room, quiet_room, listener):
            await client.disconnect()


async def test_second_join_with_the_same_identity_evicts_the_first(server):
    first = await connect(server, "twin", "twin-room")
    reasons: list[int] = []
    first.on("disconnected", reasons.append)
    observer = await connect(server, "observer", "twin-room")
    second = await connect(server, "twin", "twin-room")
    try:
        await until(lambda: reasons == [rtc.DisconnectReason.DUPLICATE_IDENTITY])
        await until(lambda: [p.identity for p in observer.remote_participants.values()] == ["twin"]
                    and remote(observer, "twin").sid == second.local_participant.sid)
    finally:
        await second.disconnect()
        await observer.disconnect()


async def test_a_killed_client_disappears_for_the_others(tmp_path, monkeypatch):
    """Its dropped signal connection could be a network blip: it leaves once the wait for a resume is over (20 s by
    default; shortened here so the test does not wait it out)."""
    from conftest import start_server, stop_server

    monkeypatch.setenv("TERN_SIGNAL_DEPARTURE_TIMEOUT", "3")
    server = start_server(tmp_path)
    watcher = await connect(server, "watcher", "kill-room")
    script = textwrap.dedent(f"""
        import asyncio
        from livekit import rtc
        async def main():
            room = rtc.Room()
            await room.connect({server.url!r}, {server.token("doomed", "kill-room")!r})
            print("joined", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "joined"
        await until(lambda: remote(watcher, "doomed") is not None)
        child.kill()
        await asyncio.sleep(1)
        assert remote(watcher, "doomed") is not None  # not gone at once: it may still resume
        await until(lambda: remote(watcher, "doomed") is None, timeout=3 + 10)
    finally:
        child.kill()
        await watcher.disconnect()
        stop_server(server)


async def test_room_limits_refresh_token_and_refused_resume(server, tmp_path):
    from conftest import start_server, stop_server

    limited = start_server(tmp_path, config="room: {max_participants: 1}")
    try:
        first = await connect(limited, "one", "full-room")
        with pytest.raises(Exception):
            await connect(limited, "two", "full-room")
        await first.disconnect()
    finally:
        stop_server(limited)

    # A short-lived token is refreshed before it expires; the refresh verifies and keeps the grants.
    token = api.AccessToken("devkey", "secret").with_identity("fresh").with_ttl(__import__("datetime").timedelta(seconds=8)) \
        .with_grants(api.VideoGrants(room_join=True, room="fresh-room")).to_jwt()
    client, join = await SignalClient.join(server.url, token)
    refreshed = (await client.receive_until("refresh_token", timeout=10)).refresh_token
    claims = api.TokenVerifier("devkey", "secret").verify(refreshed)
    assert claims.identity == "fresh" and claims.video.room == "fresh-room" and claims.video.room_join
    await client.connection.close()

    # Its media never connected, so it leaves with its signal connection (once the server has read the close: a
    # resume racing it would still find the participant)...
    async with api.LiveKitAPI(server.http, "devkey", "secret") as lk:
        async def gone() -> bool:
            listed = await lk.room.list_participants(api.ListParticipantsRequest(room="fresh-room"))
            return all(p.identity != "fresh" for p in listed.participants)

        for _ in range(50):
            if await gone():
                break
            await asyncio.sleep(0.1)
    # ...and a resume is told to rejoin from scratch.
    from websockets.asyncio.client import connect as ws_connect

    async with ws_connect(f"{server.url}/rtc?reconnect=1&sid={join.participant.sid}",
                          additional_headers={"Authorization": f"Bearer {server.token('fresh', 'fresh-room')}"}) as ws:
        leave = signal.SignalResponse.FromString(await ws.recv()).leave
    assert leave.action == signal.LeaveRequest.Action.RECONNECT
    assert leave.reason == models.DisconnectReason.STATE_MISMATCH


async def test_a_client_that_stops_pinging_is_removed_after_ping_timeout(server):
    from signaling.protocol.v0 import PING_TIMEOUT

    watcher = await connect(server, "pinger-watch", "ping-room")
    silent, join = await SignalClient.join(server.url, server.token("silent", "ping-room"))
    assert join.ping_timeout == PING_TIMEOUT
    try:
        await until(lambda: remote(watcher, "silent") is not None)
        started = asyncio.get_running_loop().time()
        await until(lambda: remote(watcher, "silent") is None, timeout=PING_TIMEOUT + 5)
        assert asyncio.get_running_loop().time() - started >= PING_TIMEOUT - 1
        leave = (await silent.receive_until("leave")).leave
        assert leave.reason == models.DisconnectReason.CONNECTION_TIMEOUT
    finally:
        await silent.connection.close()
        await watcher.disconnect()
