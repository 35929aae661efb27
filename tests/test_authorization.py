"""What a grant allows, as users see it: transcriptions come only from agents, and a source grant is a grant for
that source's media kind (a microphone-only grant publishes audio, not video labelled microphone)."""
from __future__ import annotations

import asyncio

import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET
from media import HEIGHT, WIDTH
from signal_client import SignalClient

ROOM = "authorization-room"


def transcription(text: str) -> rtc.Transcription:
    """What "speaker" said; the Rust SDK needs a TR_ track sid in a transcription it receives (it panics on "")."""
    segment = rtc.TranscriptionSegment(id=text, text=text, start_time=0, end_time=0, final=True, language="en")
    return rtc.Transcription("speaker", "TR_AMspeaker0001", [segment])


async def test_only_an_agents_transcription_reaches_the_others(server):
    listener = await connect(server, "listener", ROOM)
    user = await connect(server, "speaker", ROOM)
    agent = rtc.Room()
    await agent.connect(server.url, api.AccessToken(API_KEY, API_SECRET).with_identity("agent").with_kind("agent")
                        .with_grants(api.VideoGrants(room_join=True, room=ROOM)).to_jwt())
    received: list[tuple[str | None, list[str]]] = []
    listener.on("transcription_received", lambda segments, participant, publication: received.append(
        (participant.identity if participant else None, [s.text for s in segments])))
    try:
        await until(lambda: remote(listener, "speaker") and remote(listener, "agent"))
        assert remote(listener, "agent").kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        before = server.counters().get("data_transcription_not_agent", 0)
        # A participant that is not an agent claims to transcribe itself; the agent transcribes it.
        await user.local_participant.publish_transcription(transcription("forged"))
        await agent.local_participant.publish_transcription(transcription("heard"))
        await until(lambda: received and server.counters().get("data_transcription_not_agent", 0) > before)
        await asyncio.sleep(0.3)
        assert received == [("speaker", ["heard"])]
    finally:
        for room in (listener, user, agent):
            await room.disconnect()


async def test_a_microphone_grant_does_not_publish_video_labelled_microphone(server):
    # The bare protocol: AddTrack is refused with NOT_ALLOWED and no track_published; audio goes.
    client, _ = await SignalClient.join(server.url, server.token("mic-raw", ROOM, can_publish_sources=["microphone"]))
    try:
        await client.send(signal.SignalRequest(add_track=signal.AddTrackRequest(
            cid="video-as-mic", name="mic", type=models.TrackType.VIDEO, source=models.TrackSource.MICROPHONE)))
        refusal = (await client.receive_until("request_response")).request_response
        assert (refusal.reason, refusal.add_track.cid) == (signal.RequestResponse.Reason.NOT_ALLOWED, "video-as-mic")
        await client.send(signal.SignalRequest(add_track=signal.AddTrackRequest(
            cid="mic", name="mic", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
        assert (await client.receive_until("track_published")).track_published.cid == "mic"
    finally:
        await client.connection.close()

    # An SDK user: publishing fails (the SDK gives up waiting for track_published) and nobody sees a track.
    watcher = await connect(server, "watcher", ROOM)
    publisher = await connect(server, "mic-sdk", ROOM, can_publish_sources=["microphone"])
    try:
        video = rtc.LocalVideoTrack.create_video_track("mic", rtc.VideoSource(WIDTH, HEIGHT))
        with pytest.raises(rtc.participant.PublishTrackError):
            await publisher.local_participant.publish_track(
                video, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        await until(lambda: remote(watcher, "mic-sdk") is not None)
        assert remote(watcher, "mic-sdk").track_publications == {}
    finally:
        await publisher.disconnect()
        await watcher.disconnect()
