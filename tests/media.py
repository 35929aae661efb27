"""Test media for real SDK peers: a four-colour test card and a sine tone, and checks on what was decoded."""
from __future__ import annotations

import asyncio
import contextlib
import fractions
import threading
import time
from collections.abc import Callable

import av
import numpy as np
from livekit import rtc

WIDTH, HEIGHT = 640, 360
# Quadrants: top-left, top-right, bottom-left, bottom-right (RGB).
CARD_COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220], [230, 230, 230]], dtype=np.int16)
SAMPLE_RATE = 48000
TONE_HZ = 440.0


def card_quadrants(width: int = WIDTH, height: int = HEIGHT) -> list[tuple[slice, slice]]:
    """The rows and columns of each of the test card's quadrants, in CARD_COLOURS' order."""
    h2, w2 = height // 2, width // 2
    return [(slice(0, h2), slice(0, w2)), (slice(0, h2), slice(w2, None)),
            (slice(h2, None), slice(0, w2)), (slice(h2, None), slice(w2, None))]


def test_card(width: int = WIDTH, height: int = HEIGHT) -> bytes:
    frame = np.zeros((height, width, 4), dtype=np.uint8)
    frame[..., 3] = 255
    for colour, (rows, cols) in zip(CARD_COLOURS, card_quadrants(width, height)):
        frame[rows, cols, :3] = colour
    return frame.tobytes()


def quadrant_colours(frame: rtc.VideoFrame) -> np.ndarray:
    """Mean RGB of the middle of each quadrant of a decoded frame (edges blur after scaling and coding)."""
    rgba = frame.convert(rtc.VideoBufferType.RGBA)
    return pixel_quadrant_colours(np.frombuffer(bytes(rgba.data), dtype=np.uint8).reshape(rgba.height, rgba.width, 4))


def pixel_quadrant_colours(pixels: np.ndarray) -> np.ndarray:
    """quadrant_colours of an RGB(A) array (height x width x 3 or 4)."""
    pixels = pixels[..., :3]
    h, w = pixels.shape[:2]
    means = []
    for top, left in [(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]:
        block = pixels[top + h // 8: top + 3 * h // 8, left + w // 8: left + 3 * w // 8]
        means.append(block.reshape(-1, 3).mean(axis=0))
    return np.array(means)


def matches_card(frame: rtc.VideoFrame | np.ndarray, tolerance: float = 40) -> bool:
    colours = pixel_quadrant_colours(frame) if isinstance(frame, np.ndarray) else quadrant_colours(frame)
    return bool(np.abs(colours - CARD_COLOURS).max() < tolerance)


def dominant_frequency(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[int(np.argmax(spectrum))])


class Publisher:
    """Publishes a camera track (simulcast, the SDK's default) showing the test card and a microphone tone
    (or silence, with `tone=False`; no camera with `video=False`) at `frequency`; `red` turns the SDK's RED (Opus
    with redundancy) on or off where set."""

    def __init__(self, room: rtc.Room, tone: bool = True, video: bool = True,
                 video_codec: rtc.VideoCodec.ValueType = rtc.VideoCodec.VP8, frequency: float = TONE_HZ,
                 red: bool | None = None) -> None:
        self.room = room
        self.red = red
        self.frequency = frequency
        self.video_codec = video_codec
        self.amplitude = 12000 if tone else 0
        self.video = video
        self.video_source = rtc.VideoSource(WIDTH, HEIGHT)
        self.audio_source = rtc.AudioSource(SAMPLE_RATE, 1)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        if self.video:
            video = rtc.LocalVideoTrack.create_video_track("camera", self.video_source)
            await self.room.local_participant.publish_track(
                video, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True,
                                               video_codec=self.video_codec))
            self._tasks.append(asyncio.create_task(self._video()))
        audio = rtc.LocalAudioTrack.create_audio_track("microphone", self.audio_source)
        await self.room.local_participant.publish_track(
            audio, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE,
                                           **({} if self.red is None else {"red": self.red})))
        self._tasks.append(asyncio.create_task(self._audio()))

    async def _video(self) -> None:
        card = test_card()
        while True:
            self.video_source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, card))
            await asyncio.sleep(1 / 30)

    async def _audio(self) -> None:
        samples_per_frame = SAMPLE_RATE // 100
        t = 0
        while True:
            frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples_per_frame)
            phase = (np.arange(t, t + samples_per_frame) / SAMPLE_RATE) * 2 * np.pi * self.frequency
            np.frombuffer(frame.data, dtype=np.int16)[:] = (np.sin(phase) * self.amplitude).astype(np.int16)
            t += samples_per_frame
            await self.audio_source.capture_frame(frame)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_for_tracks(room: rtc.Room, count: int, timeout: float = 20) -> dict[str, rtc.RemoteTrack]:
    """Waits until `count` remote tracks are subscribed; returns them by kind name ("audio"/"video")."""
    tracks: dict[str, rtc.RemoteTrack] = {}
    done = asyncio.Event()

    def collect() -> None:
        for participant in room.remote_participants.values():
            for publication in participant.track_publications.values():
                if publication.track is not None:
                    kind = "audio" if publication.kind == rtc.TrackKind.KIND_AUDIO else "video"
                    tracks[kind] = publication.track
        if len(tracks) >= count:
            done.set()

    room.on("track_subscribed", lambda *args: collect())
    collect()
    await asyncio.wait_for(done.wait(), timeout)
    return tracks


async def decoded_video(track: rtc.RemoteTrack, frames: int = 10, timeout: float = 20) -> list[rtc.VideoFrame]:
    stream = rtc.VideoStream(track)
    received: list[rtc.VideoFrame] = []

    async def read() -> None:
        async for event in stream:
            received.append(event.frame)
            if len(received) >= frames:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()
    return received


async def each_frame_for(track: rtc.RemoteTrack, seconds: float, handle: Callable[[rtc.VideoFrame], None]) -> None:
    """Hands `handle` every frame the track decodes over `seconds` (none at all is an answer too)."""
    stream = rtc.VideoStream(track)

    async def read() -> None:
        async for event in stream:
            handle(event.frame)

    try:
        await asyncio.wait_for(read(), seconds)
    except asyncio.TimeoutError:
        pass
    finally:
        await stream.aclose()


async def decoded_audio(track: rtc.RemoteTrack, seconds: float = 1.0, timeout: float = 20) -> np.ndarray:
    """Decoded samples after the first audible frame (the jitter buffer starts with silence)."""
    stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
    chunks: list[np.ndarray] = []
    wanted = int(seconds * SAMPLE_RATE)

    async def read() -> None:
        collected = 0
        async for event in stream:
            samples = np.frombuffer(bytes(event.frame.data), dtype=np.int16).astype(np.float64)
            if not chunks and np.abs(samples).max() < 500:
                continue
            chunks.append(samples)
            collected += len(samples)
            if collected >= wanted:
                return

    try:
        await asyncio.wait_for(read(), timeout)
    finally:
        await stream.aclose()
    return np.concatenate(chunks)


def stream_card_and_tone(container: av.container.OutputContainer, video: av.VideoStream, audio: av.AudioStream,
                         audio_frame_samples: int, stop: threading.Event) -> None:
    """Encodes the test card and the tone into `container` in real time, in the streams' own rates and sample
    format, until `stop` is set, then closes it: what the encoder subprocesses (whip_publisher.py,
    rtmp_publisher.py) send."""
    fps, rate = int(video.codec_context.framerate), audio.rate
    card = np.frombuffer(test_card(), dtype=np.uint8).reshape(HEIGHT, WIDTH, 4)
    resampler = av.AudioResampler(format=audio.format.name, layout=audio.layout.name, rate=rate)
    started, video_frames, audio_samples = time.monotonic(), 0, 0
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            while video_frames <= elapsed * fps:
                frame = av.VideoFrame.from_ndarray(card, format="rgba").reformat(format="yuv420p")
                frame.pts, frame.time_base = video_frames, fractions.Fraction(1, fps)
                container.mux(video.encode(frame))
                video_frames += 1
            while audio_samples <= elapsed * rate:
                t = np.arange(audio_samples, audio_samples + audio_frame_samples) / rate
                tone = (np.sin(2 * np.pi * TONE_HZ * t) * 0.4).astype(np.float32).reshape(1, -1)
                mono = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                mono.sample_rate = rate
                for frame in resampler.resample(mono):
                    frame.pts, frame.time_base = audio_samples, fractions.Fraction(1, rate)
                    container.mux(audio.encode(frame))
                audio_samples += audio_frame_samples
            time.sleep(0.005)
    finally:
        container.close()

