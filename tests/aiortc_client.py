"""aiortc as a LiveKit subscriber: a real peer without transport-cc (it answers goog-remb + abs-send-time and sends
REMB from its receive-side estimator).

Not for lossy links: aiortc's jitter buffer waits for a lost packet until 512 newer ones have arrived, so behind a
narrow link (tests/netlab.py) it decodes next to nothing for tens of seconds, whatever the server sends."""
from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from livekit.protocol import rtc as signal

from signal_client import SignalClient

PING_INTERVAL_S = 5  # well inside the server's ping timeout (15 s)


class AiortcSubscriber:
    """Answers the server's offers on the subscriber PC; keeps the decoded video frames' sizes and audio samples."""

    def __init__(self, client: SignalClient, configuration: RTCConfiguration | None = None) -> None:
        self.client = client
        self.pc = RTCPeerConnection(configuration)
        self.offers: list[str] = []
        self.answers: list[str] = []
        self.frames: list[tuple[int, int]] = []  # (width, height) of each decoded video frame
        self.last_frame = None  # the latest decoded video frame (av.VideoFrame)
        self.audio: list[np.ndarray] = []  # each decoded audio frame's samples, the first channel (48 kHz)
        self.audio_pts: list[int] = []  # and its RTP timestamp, from the first packet's (a lost frame leaves a gap)
        self._tasks: list[asyncio.Task] = [asyncio.create_task(self._signal()), asyncio.create_task(self._ping())]
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._decode(track))))

    @classmethod
    async def join(cls, url: str, token: str, turn: str = "") -> tuple[AiortcSubscriber, signal.JoinResponse]:
        """With `turn` (a URL prefix: "turns:" for TURN/TLS), the peer connection uses the JoinResponse's first TURN
        URL that starts so, with its credentials (aiortc takes one TURN server)."""
        client, join = await SignalClient.join(url, token)
        configuration = None
        if turn:
            server = join.ice_servers[0]
            urls = [url for url in server.urls if url.startswith(turn)][:1]
            configuration = RTCConfiguration([RTCIceServer(urls, server.username, server.credential)])
        return cls(client, configuration), join

    async def _signal(self) -> None:
        while True:
            response = await self.client.receive(timeout=60)
            if response.WhichOneof("message") != "offer":
                continue
            offer = response.offer
            self.offers.append(offer.sdp)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            self.answers.append(self.pc.localDescription.sdp)
            await self.client.send(signal.SignalRequest(answer=signal.SessionDescription(
                type="answer", sdp=self.pc.localDescription.sdp, id=offer.id)))

    async def _ping(self) -> None:
        while True:
            await self.client.send(signal.SignalRequest(ping_req=signal.Ping(timestamp=int(time.time() * 1000))))
            await asyncio.sleep(PING_INTERVAL_S)

    async def _decode(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append((frame.width, frame.height))
                    self.last_frame = frame
                else:
                    samples = frame.to_ndarray()[0]  # planar: the first channel; packed: interleaved
                    step = 1 if frame.format.is_planar else len(frame.layout.channels)
                    self.audio.append(samples[::step].astype(np.float64))
                    self.audio_pts.append(frame.pts)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        await self.client.connection.close()

