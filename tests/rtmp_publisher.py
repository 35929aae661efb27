"""An RTMP encoder: PyAV's FLV muxer over FFmpeg's RTMP client publishing the test card (libx264) and a mono tone
(AAC) in real time until its stdin closes. With `bframes`, the H.264 is High profile with B-frames (what an encoder
left at its defaults sends), else baseline. Usage: rtmp_publisher.py URL [bframes]"""
from __future__ import annotations

import fractions
import sys
import threading
import time

import av
import numpy as np

from media import HEIGHT, TONE_HZ, WIDTH, test_card

FPS = 30
AAC_RATE = 44100  # what encoders usually send over RTMP
AAC_SAMPLES = 1024


def publish(url: str, bframes: bool, stop: threading.Event) -> None:
    container = av.open(url, "w", format="flv")
    profile = {"profile": "high", "bf": "2"} if bframes else {"profile": "baseline", "bf": "0"}
    video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(FPS), **profile})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    audio = container.add_stream("aac", rate=AAC_RATE, layout="mono")
    card = np.frombuffer(test_card(), dtype=np.uint8).reshape(HEIGHT, WIDTH, 4)
    started, video_frames, audio_samples = time.monotonic(), 0, 0
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            while video_frames <= elapsed * FPS:
                frame = av.VideoFrame.from_ndarray(card, format="rgba").reformat(format="yuv420p")
                frame.pts, frame.time_base = video_frames, fractions.Fraction(1, FPS)
                container.mux(video.encode(frame))
                video_frames += 1
            while audio_samples <= elapsed * AAC_RATE:
                t = np.arange(audio_samples, audio_samples + AAC_SAMPLES) / AAC_RATE
                tone = (np.sin(2 * np.pi * TONE_HZ * t) * 0.4).astype(np.float32).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = AAC_RATE, audio_samples
                frame.time_base = fractions.Fraction(1, AAC_RATE)
                container.mux(audio.encode(frame))
                audio_samples += AAC_SAMPLES
            time.sleep(0.005)
    finally:
        container.close()


if __name__ == "__main__":
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    publish(sys.argv[1], sys.argv[2:] == ["bframes"], stop)
