"""Built-in egress with real peers: LiveKit SDK publishers (VP8 simulcast + Opus tone, and H.264) are recorded through
livekit-api's EgressService (track egress of each track, a participant egress of both); the files are opened with
PyAV: durations, the first video frame (a keyframe showing the test card), the tone's frequency. Egress webhooks are
verified with livekit-api's WebhookReceiver. Requests for missing tracks or compositor work are refused."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from livekit import api, rtc
from livekit.protocol import egress as proto

from clients import connect, until
from conftest import API_KEY, API_SECRET, Server, start_server, stop_server
from media import CARD_COLOURS, TONE_HZ, Publisher, dominant_frequency, pixel_quadrant_colours
from test_webhook import Receiver

ROOM = "egress-room"
RECORD_SECONDS = 4.0
STATUS = proto.EgressStatus


async def _published_tracks(lkapi: api.LiveKitAPI, identity: str, count: int) -> dict[str, str]:
    """Kind ("audio"/"video") -> track sid of a participant's published tracks, once `count` are published."""
    tracks: dict[str, str] = {}

    async def poll() -> None:
        while len(tracks) < count:
            participants = (await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))).participants
            for participant in participants:
                if participant.identity == identity:
                    tracks.update({("audio" if t.type == 0 else "video"): t.sid for t in participant.tracks})
            await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), 20)
    return tracks


async def _statuses(lkapi: api.LiveKitAPI) -> dict[str, int]:
    items = (await lkapi.egress.list_egress(api.ListEgressRequest(room_name=ROOM))).items
    return {info.egress_id: info.status for info in items}


def _video_checks(path: Path) -> tuple[float, np.ndarray]:
    """The file's duration and the colours of its first decoded frame, which must be a keyframe's."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = next(packet for packet in container.demux(stream) if packet.size)
        assert first.is_keyframe, f"{path.name} starts with a keyframe"
        frames = stream.codec_context.decode(first)
        assert frames, f"the first frame of {path.name} decodes on its own"
        return float(container.duration) / 1e6, pixel_quadrant_colours(frames[0].to_ndarray(format="rgb24"))


def _audio_checks(path: Path) -> tuple[float, float]:
    """The file's duration and the dominant frequency of its first audible second."""
    with av.open(str(path)) as container:
        chunks = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
        duration = float(container.duration) / 1e6
    samples = np.concatenate(chunks).astype(np.float64)
    audible = np.flatnonzero(np.abs(samples) > 0.05 * np.abs(samples).max())
    start = int(audible[0]) if len(audible) else 0
    return duration, dominant_frequency(samples[start:start + 48000])


async def egress_server(tmp_path: Path) -> tuple[Server, api.LiveKitAPI, Receiver]:
    """A tern recording into tmp_path/recordings, sending webhooks to a Receiver; a livekit-api client for it."""
    receiver = Receiver(API_KEY, API_SECRET)
    await receiver.start()
    config = (f"webhook:\n  api_key: {API_KEY}\n  urls: [{receiver.url}]\n"
              f"egress:\n  output_dir: {tmp_path / 'recordings'}\n")
    server = await asyncio.to_thread(start_server, tmp_path, config=config)
    return server, api.LiveKitAPI(server.http, API_KEY, API_SECRET), receiver


async def stop_egress_server(server: Server, lkapi: api.LiveKitAPI, receiver: Receiver) -> None:
    await lkapi.aclose()
    await asyncio.to_thread(stop_server, server)
    await receiver.stop()


async def test_track_and_participant_egress_to_files(tmp_path) -> None:
    server, lkapi, receiver = await egress_server(tmp_path)
    output = tmp_path / "recordings"
    rooms: list[rtc.Room] = []
    publishers: list[Publisher] = []
    try:
        for identity, codec in (("cam", rtc.VideoCodec.VP8), ("h264cam", rtc.VideoCodec.H264)):
            rooms.append(await connect(server, identity, ROOM))
            publishers.append(Publisher(rooms[-1], video_codec=codec))
            await publishers[-1].start()
        vp8 = await _published_tracks(lkapi, "cam", 2)
        h264 = await _published_tracks(lkapi, "h264cam", 2)

        egress = lkapi.egress
        started = {
            "audio": await egress.start_track_egress(api.TrackEgressRequest(
                room_name=ROOM, track_id=vp8["audio"], file=proto.DirectFileOutput(filepath="tracks/{track_id}"))),
            "vp8": await egress.start_track_egress(api.TrackEgressRequest(
                room_name=ROOM, track_id=vp8["video"], file=proto.DirectFileOutput(filepath="tracks/"))),
            "h264": await egress.start_track_egress(api.TrackEgressRequest(
                room_name=ROOM, track_id=h264["video"], file=proto.DirectFileOutput(filepath="h264.mp4"))),
            "participant": await egress.start_participant_egress(api.ParticipantEgressRequest(
                room_name=ROOM, identity="cam",
                file_outputs=[proto.EncodedFileOutput(filepath="{publisher_identity}")])),
            "composite": await egress.start_track_composite_egress(api.TrackCompositeEgressRequest(
                room_name=ROOM, audio_track_id=h264["audio"], video_track_id=h264["video"],
                file_outputs=[proto.EncodedFileOutput(filepath="composite")])),
        }
        assert all(info.status == STATUS.EGRESS_STARTING and info.egress_id.startswith("EG_")
                   for info in started.values())
        ids = {name: info.egress_id for name, info in started.items()}

        active_at: dict[str, float] = {}

        async def all_active() -> None:
            while len(active_at) < len(ids):
                statuses = await _statuses(lkapi)
                for name, egress_id in ids.items():
                    if statuses.get(egress_id) == STATUS.EGRESS_ACTIVE:
                        active_at.setdefault(name, time.monotonic())
                await asyncio.sleep(0.05)
        await asyncio.wait_for(all_active(), 15)
        await until(lambda: rooms[0].is_recording)  # the room's recording indicator
        await asyncio.sleep(RECORD_SECONDS)
        stopped_at = time.monotonic()
        for egress_id in ids.values():
            info = await egress.stop_egress(api.StopEgressRequest(egress_id=egress_id))
            assert info.status == STATUS.EGRESS_ENDING

        async def all_complete() -> None:
            while any(s != STATUS.EGRESS_COMPLETE for s in (await _statuses(lkapi)).values()):
                await asyncio.sleep(0.1)
        await asyncio.wait_for(all_complete(), 10)
        await until(lambda: not rooms[0].is_recording)
        counters = server.counters()
        assert counters["egress_completed"] == len(ids) and counters["egress_frames_written"] > 0
        print({name: value for name, value in counters.items() if name.startswith("egress_")})
        infos = {name: (await egress.list_egress(api.ListEgressRequest(egress_id=egress_id))).items[0]
                 for name, egress_id in ids.items()}

        for name, info in infos.items():
            expected = stopped_at - active_at[name]
            result = info.file_results[0]
            path = Path(result.location)
            assert path.exists() and path.stat().st_size == result.size > 0, name
            assert path.parent.is_relative_to(output)
            assert abs(result.duration / 1e9 - expected) < 0.1 * expected, (name, result.duration, expected)
            assert info.started_at <= result.started_at < result.ended_at == info.ended_at
            if name == "audio":
                assert path.suffix == ".ogg" and path.parent.name == "tracks"
                duration, frequency = _audio_checks(path)
                assert abs(frequency - TONE_HZ) < 10, "the recording holds the publisher's tone"
            else:
                assert path.suffix == {"vp8": ".webm", "h264": ".mp4", "participant": ".webm",
                                       "composite": ".mp4"}[name]
                duration, colours = _video_checks(path)
                assert np.abs(colours - CARD_COLOURS).max() < 40, f"{name}: the first frame shows the test card"
                if name in ("participant", "composite"):
                    assert abs(_audio_checks(path)[1] - TONE_HZ) < 10, f"{name}: the recording holds the tone"
            assert abs(duration - expected) < 0.1 * expected, (name, duration, expected)
            print(f"{name}: recorded {expected:.2f} s, file {duration:.2f} s, EgressInfo {result.duration / 1e9:.2f} s,"
                  f" {result.size} bytes")
        with av.open(infos["participant"].file_results[0].location) as container:
            assert sorted(s.codec_context.name for s in container.streams) == ["opus", "vp8"]
        with av.open(infos["h264"].file_results[0].location) as container:
            assert container.streams.video[0].codec_context.name == "h264"
        with av.open(infos["composite"].file_results[0].location) as container:
            assert sorted(s.codec_context.name for s in container.streams) == ["h264", "opus"]

        await until(lambda: sum(e.event == "egress_ended" for e in receiver.events) >= len(ids))
        assert not receiver.errors, receiver.errors
        for egress_id in ids.values():
            events = [e for e in receiver.events if e.egress_info.egress_id == egress_id]
            names = [e.event for e in events]
            assert names[0] == "egress_started" and names[-1] == "egress_ended", names
            assert [e.egress_info.status for e in events if e.event == "egress_updated"] == \
                [STATUS.EGRESS_ACTIVE, STATUS.EGRESS_ENDING]
            assert events[-1].egress_info.status == STATUS.EGRESS_COMPLETE
            assert events[-1].egress_info.file_results[0].size > 0 and events[-1].room.name == ROOM

        # Refusals.
        async def refused(call, request) -> str:
            with pytest.raises(api.TwirpError) as error:
                await call(request)
            return error.value.code
        assert await refused(egress.start_track_egress, api.TrackEgressRequest(
            room_name=ROOM, track_id="TR_nope", file=proto.DirectFileOutput(filepath="x"))) == "not_found"
        assert await refused(egress.start_track_egress, api.TrackEgressRequest(
            room_name="no-room", track_id=vp8["audio"], file=proto.DirectFileOutput(filepath="x"))) == "not_found"
        assert await refused(egress.start_track_egress, api.TrackEgressRequest(
            room_name=ROOM, track_id=vp8["audio"], websocket_url="ws://127.0.0.1:1/")) == "unimplemented"
        assert await refused(egress.start_room_composite_egress, api.RoomCompositeEgressRequest(
            room_name=ROOM, file_outputs=[proto.EncodedFileOutput(filepath="x")])) == "unimplemented"
        assert await refused(egress.start_participant_egress, api.ParticipantEgressRequest(
            room_name=ROOM, identity="cam", stream_outputs=[proto.StreamOutput(urls=["rtmp://x/y"])])) \
            == "unimplemented"
        assert await refused(egress.start_track_egress, api.TrackEgressRequest(
            room_name=ROOM, track_id=vp8["audio"], file=proto.DirectFileOutput(filepath="../outside"))) \
            == "invalid_argument"
        assert await refused(egress.stop_egress, api.StopEgressRequest(egress_id="EG_nope")) == "not_found"
        assert await refused(egress.stop_egress, api.StopEgressRequest(egress_id=ids["audio"])) \
            == "failed_precondition"
        async with aiohttp.ClientSession() as session:  # a join token has no roomRecord grant
            async with session.post(server.http + "/twirp/livekit.Egress/ListEgress", json={},
                                    headers={"Authorization": f"Bearer {server.token('cam', ROOM)}"}) as response:
                assert response.status == 403 and (await response.json())["code"] == "permission_denied"

        # The recorded track's publisher leaves: the egress ends on its own, its file complete.
        info = await egress.start_track_egress(api.TrackEgressRequest(
            room_name=ROOM, track_id=h264["audio"], file=proto.DirectFileOutput(filepath="leaving")))
        await until(lambda: any(e.event == "egress_updated" and e.egress_info.egress_id == info.egress_id
                                for e in receiver.events))
        await rooms.pop().disconnect()
        await until(lambda: any(e.event == "egress_ended" and e.egress_info.egress_id == info.egress_id
                                for e in receiver.events))
        ended = (await egress.list_egress(api.ListEgressRequest(egress_id=info.egress_id))).items[0]
        assert ended.status == STATUS.EGRESS_COMPLETE and "Source closed" in ended.details
        assert ended.file_results[0].size > 0
    finally:
        for publisher in publishers:
            await publisher.stop()
        for room in rooms:
            await room.disconnect()
        await stop_egress_server(server, lkapi, receiver)
    assert "Traceback" not in server.log(), server.log()
