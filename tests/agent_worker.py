"""A plugin-free LiveKit Agents worker for tests (run by tests/test_agents.py in the livekit-agents virtual
environment, tests/agents_env.py): each job's agent plays back the audio it hears as its own microphone track and
answers every data message on topic "ping" with "pong:<payload>" on topic "pong". No cloud services, no models.

    python agent_worker.py --tag A [--agent-name NAME] [--load 0.0]   (LIVEKIT_URL, LIVEKIT_API_KEY/SECRET set)
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from livekit import rtc
from livekit.agents import AgentServer, AutoSubscribe, JobContext, JobExecutorType, JobRequest

SAMPLE_RATE = 48000
WORKER_TAG_ATTRIBUTE = "test.worker"  # which worker runs the agent, for the tests to see


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tag", required=True)
    parser.add_argument("--agent-name", default="")
    parser.add_argument("--load", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[worker {args.tag}] %(levelname)s %(name)s: %(message)s")

    # Threads, not processes: a job starts at once on a 2-core machine; the fixed load keeps CPU use out of dispatch.
    server = AgentServer(job_executor_type=JobExecutorType.THREAD, num_idle_processes=0, port=0,
                         load_fnc=lambda: args.load)

    async def on_request(request: JobRequest) -> None:
        await request.accept(attributes={WORKER_TAG_ATTRIBUTE: args.tag})

    @server.rtc_session(agent_name=args.agent_name, on_request=on_request)
    async def echo(ctx: JobContext) -> None:
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        source = rtc.AudioSource(SAMPLE_RATE, 1)
        await ctx.room.local_participant.publish_track(
            rtc.LocalAudioTrack.create_audio_track("echo", source),
            rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        tasks: set[asyncio.Task] = set()

        def spawn(coroutine) -> None:
            task = asyncio.create_task(coroutine)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        async def play_back(track: rtc.RemoteTrack) -> None:
            async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
                await source.capture_frame(event.frame)

        def on_track(track: rtc.RemoteTrack, *_: object) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                spawn(play_back(track))

        def on_data(packet: rtc.DataPacket) -> None:
            if packet.topic == "ping" and packet.participant is not None:
                spawn(ctx.room.local_participant.publish_data(
                    b"pong:" + packet.data, reliable=True, topic="pong",
                    destination_identities=[packet.participant.identity]))

        ctx.room.on("track_subscribed", on_track)
        ctx.room.on("data_received", on_data)
        for participant in ctx.room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.track is not None:
                    on_track(publication.track)

    asyncio.run(server.run(devmode=True))


if __name__ == "__main__":
    main()
