"""FFmpeg's WHIP muxer (through PyAV) publishing the test card (libx264, baseline, no B-frames) and a stereo tone
(libopus) in real time until its stdin closes; closing the muxer sends the WHIP DELETE. A process of its own: PyAV
holds the GIL through the muxer's HTTP, ICE and DTLS handshake. Usage: whip_publisher.py URL TOKEN"""
from __future__ import annotations

import fractions
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import numpy as np
from media import HEIGHT, SAMPLE_RATE, TONE_HZ, WIDTH, test_card

from signaling.ingress.rtmp_worker import dtls_certificate

FPS = 30
AUDIO_SAMPLES = 960  # 20 ms of Opus at 48 kHz


def publish(url: str, token: str, stop: threading.Event) -> None:
    certificate = dtls_certificate(Path(tempfile.mkdtemp(prefix="whip-")))
    container = av.open(url, "w", format="whip", options={"authorization": token, **certificate})
    video = container.add_stream("libx264", rate=FPS, options={
        "profile": "baseline", "preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": str(FPS)})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    audio = container.add_stream("libopus", rate=SAMPLE_RATE, layout="stereo")
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
            while audio_samples <= elapsed * SAMPLE_RATE:
                t = np.arange(audio_samples, audio_samples + AUDIO_SAMPLES) / SAMPLE_RATE
                tone = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
                frame.sample_rate, frame.pts = SAMPLE_RATE, audio_samples
                frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
                container.mux(audio.encode(frame))
                audio_samples += AUDIO_SAMPLES
            time.sleep(0.005)
    finally:
        container.close()


if __name__ == "__main__":
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    publish(sys.argv[1], sys.argv[2], stop)
