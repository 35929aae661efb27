"""A LiveKit Python SDK subscriber for the network lab (tests/netlab.py runs it inside a namespace): joins, decodes
the first remote video (and audio) for a while and prints one JSON line with what a user would have seen. With
--publish it publishes the test card and a tone (tests/media.py) for that while instead.

Output fields: connected, frames (decoded), fps (decoded frames per second once the first arrived), resolution (of
the last frame), resolutions ({"WxH": frames}), timeline (per second: frames decoded, width, height, gap: the
longest wait, in s, for a frame decoded in that second: a freeze ends in the second with its gap, and card: whether
its first frame shows the test card's colours (media.py matches_card), null without frames), inbound
(libwebrtc's inbound-rtp video stats at the end: frames_decoded, freeze_count, total_freeze_duration,
packets_received, packets_lost, frame_width, frame_height), audio_hz (the dominant frequency of the last second of
audio, with --audio), stream_states (null: the Python SDK does not surface StreamStateUpdate), pairs (with --pairs:
the selected ICE candidate pair of each connected peer connection at the end: {"publisher"|"subscriber": {"local":
protocol, "remote": protocol, "remote_port": port}}, plus "relay": "udp"|"tcp"|"tls" when the local candidate is a TURN
relay: how it reaches the TURN server)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Awaitable

import numpy as np
from livekit import rtc
from livekit.rtc._proto import stats_pb2

from media import SAMPLE_RATE, Publisher, dominant_frequency, matches_card

JOIN_TIMEOUT_S = 20  # joining and the first subscribed video through a narrow link


async def read_for(stream, reading: Awaitable[None], seconds: float) -> None:
    """Runs `reading` (a loop over `stream`) for `seconds`, then closes the stream."""
    try:
        await asyncio.wait_for(reading, seconds)
    except asyncio.TimeoutError:
        pass
    finally:
        await stream.aclose()


async def first_track(room: rtc.Room, kind: int) -> rtc.RemoteTrack:
    while True:
        for participant in room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.kind == kind and publication.track is not None:
                    return publication.track
        await asyncio.sleep(0.05)


async def watch(track: rtc.RemoteTrack, seconds: float, result: dict) -> None:
    stream = rtc.VideoStream(track)
    start = time.monotonic()
    first: float | None = None
    timeline = [{"frames": 0, "width": 0, "height": 0, "gap": 0.0, "card": None} for _ in range(int(seconds) + 1)]
    resolutions: dict[str, int] = {}

    async def read() -> None:
        nonlocal first
        last = None
        async for event in stream:
            now = time.monotonic()
            first = first or now
            second = timeline[min(int(now - start), len(timeline) - 1)]
            frame = event.frame
            gap = round(now - last, 3) if last is not None else 0.0
            last = now
            if not second["frames"]:  # one frame a second: converting each would cost the client's decoding time
                second["card"] = matches_card(frame)
            second.update(frames=second["frames"] + 1, width=frame.width, height=frame.height,
                          gap=max(second["gap"], gap))
            key = f"{frame.width}x{frame.height}"
            resolutions[key] = resolutions.get(key, 0) + 1
            result["resolution"] = [frame.width, frame.height]

    await read_for(stream, read(), seconds)
    frames = sum(second["frames"] for second in timeline)
    elapsed = time.monotonic() - first if first is not None else 0
    result.update(frames=frames, fps=round(frames / elapsed, 1) if elapsed > 0 else 0.0,
                  resolutions=resolutions, timeline=timeline)


async def listen(track: rtc.RemoteTrack, seconds: float, result: dict) -> None:
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    tail: list[np.ndarray] = []

    async def read() -> None:
        async for event in stream:
            tail.append(np.frombuffer(bytes(event.frame.data), dtype=np.int16).astype(np.float64))
            while sum(len(chunk) for chunk in tail) > SAMPLE_RATE:
                tail.pop(0)

    await read_for(stream, read(), seconds)
    samples = np.concatenate(tail) if tail else np.zeros(1)
    result["audio_hz"] = dominant_frequency(samples) if np.abs(samples).max() > 500 else None


async def inbound(track: rtc.RemoteTrack) -> dict:
    for stats in await track.get_stats():
        if stats.HasField("inbound_rtp"):
            stream, received = stats.inbound_rtp.inbound, stats.inbound_rtp.received
            return {"frames_decoded": stream.frames_decoded, "freeze_count": stream.freeze_count,
                    "total_freeze_duration": stream.total_freeze_duration,
                    "packets_received": received.packets_received, "packets_lost": received.packets_lost,
                    "frame_width": stream.frame_width, "frame_height": stream.frame_height}
    return {}


async def selected_pairs(room: rtc.Room) -> dict:
    stats = await room.get_rtc_stats()
    pairs = {}
    for name, entries in (("publisher", stats.publisher_stats), ("subscriber", stats.subscriber_stats)):
        by_id = {getattr(entry, kind).rtc.id: entry for entry in entries if (kind := entry.WhichOneof("stats"))}
        for entry in entries:
            if entry.WhichOneof("stats") != "transport":
                continue
            pair = by_id.get(entry.transport.transport.selected_candidate_pair_id)
            if pair is None:
                continue
            local = by_id[pair.candidate_pair.candidate_pair.local_candidate_id].local_candidate.candidate
            remote = by_id[pair.candidate_pair.candidate_pair.remote_candidate_id].remote_candidate.candidate
            pairs[name] = {"local": local.protocol, "remote": remote.protocol, "remote_port": remote.port}
            if local.candidate_type == stats_pb2.IceCandidateType.RELAY:  # how it reaches the TURN server
                pairs[name]["relay"] = stats_pb2.IceServerTransportProtocol.Name(local.relay_protocol)[10:].lower()
    return pairs


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--audio", action="store_true", help="also decode the first remote audio track")
    parser.add_argument("--publish", action="store_true", help="publish the test card and a tone instead")
    parser.add_argument("--pairs", action="store_true", help="report the selected ICE candidate pairs")
    args = parser.parse_args()
    result: dict = {"connected": False, "frames": 0, "fps": 0.0, "resolution": None, "stream_states": None}
    room = rtc.Room()
    try:
        await asyncio.wait_for(room.connect(args.url, args.token), JOIN_TIMEOUT_S)
        result["connected"] = True
        if args.publish:
            publisher = Publisher(room)
            await publisher.start()
            await asyncio.sleep(args.seconds)
            if args.pairs:
                result["pairs"] = await selected_pairs(room)
            await publisher.stop()
            return
        video = await asyncio.wait_for(first_track(room, rtc.TrackKind.KIND_VIDEO), JOIN_TIMEOUT_S)
        tasks = [watch(video, args.seconds, result)]
        if args.audio:
            audio = await asyncio.wait_for(first_track(room, rtc.TrackKind.KIND_AUDIO), JOIN_TIMEOUT_S)
            tasks.append(listen(audio, args.seconds, result))
        await asyncio.gather(*tasks)
        result["inbound"] = await inbound(video)
        if args.pairs:
            result["pairs"] = await selected_pairs(room)
    except asyncio.TimeoutError:
        result["error"] = "timed out joining or waiting for a track"
    finally:
        await room.disconnect()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    # The result is printed: leave without finalizing the interpreter, where the SDK's threads have aborted the
    # process (a Rust panic "in a function that cannot unwind", exit -6) after a clean disconnect.
    os._exit(0)
