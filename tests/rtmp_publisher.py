"""An RTMP encoder: PyAV's FLV muxer over FFmpeg's RTMP client publishing the test card (libx264) and a mono tone
(AAC) in real time until its stdin closes. With `bframes`, the H.264 is High profile with B-frames (what an encoder
left at its defaults sends), else baseline. Usage: rtmp_publisher.py URL [bframes]"""
from __future__ import annotations

import sys
import threading

import av

from media import HEIGHT, WIDTH, stream_card_and_tone

FPS = 30
AAC_RATE = 44100  # what encoders usually send over RTMP
AAC_SAMPLES = 1024


def publish(url: str, bframes: bool, stop: threading.Event) -> None:
    container = av.open(url, "w", format="flv")
    profile = {"profile": "high", "bf": "2"} if bframes else {"profile": "baseline", "bf": "0"}
    video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(FPS), **profile})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    audio = container.add_stream("aac", rate=AAC_RATE, layout="mono")
    stream_card_and_tone(container, video, audio, AAC_SAMPLES, stop)


if __name__ == "__main__":
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    publish(sys.argv[1], sys.argv[2:] == ["bframes"], stop)
