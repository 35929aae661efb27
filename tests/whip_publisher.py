"""FFmpeg's WHIP muxer (through PyAV) publishing the test card (libx264, baseline, no B-frames) and a stereo tone
(libopus) in real time until its stdin closes; closing the muxer sends the WHIP DELETE. A process of its own: PyAV
holds the GIL through the muxer's HTTP, ICE and DTLS handshake. Usage: whip_publisher.py URL TOKEN"""
from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path

import av
from media import HEIGHT, SAMPLE_RATE, WIDTH, stream_card_and_tone

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
    stream_card_and_tone(container, video, audio, AUDIO_SAMPLES, stop)


if __name__ == "__main__":
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    publish(sys.argv[1], sys.argv[2], stop)
