"""An RTMP encoder: PyAV's FLV muxer over FFmpeg's RTMP client publishing the test card (libx264) and a mono tone
(AAC) in real time until its stdin closes. With `bframes`, the H.264 is High profile with B-frames (what an encoder
left at its defaults sends), else baseline; with `flv1`, the video is Sorenson Spark (what Flash-era encoders send,
which tern refuses); with `text`, no audio or video at all, only timed text (data messages).
Usage: rtmp_publisher.py URL [bframes|flv1|text]"""
from __future__ import annotations

import fractions
import itertools
import sys
import threading

import av

from media import HEIGHT, WIDTH, stream_card_and_tone

FPS = 30
AAC_RATE = 44100  # what encoders usually send over RTMP
AAC_SAMPLES = 1024


def publish(url: str, mode: str, stop: threading.Event) -> None:
    container = av.open(url, "w", format="flv")
    if mode == "text":
        send_text(container, stop)
        return
    if mode == "flv1":
        video = container.add_stream("flv", rate=FPS)
    else:
        profile = {"profile": "high", "bf": "2"} if mode == "bframes" else {"profile": "baseline", "bf": "0"}
        video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(FPS), **profile})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    audio = container.add_stream("aac", rate=AAC_RATE, layout="mono")
    stream_card_and_tone(container, video, audio, AAC_SAMPLES, stop)


def send_text(container: av.container.OutputContainer, stop: threading.Event) -> None:
    stream = container.add_data_stream()
    try:
        for index in itertools.count():
            if stop.wait(0.1):
                return
            packet = av.Packet(f"caption {index}".encode())
            packet.stream, packet.time_base, packet.pts = stream, fractions.Fraction(1, 1000), index * 100
            packet.dts = packet.pts
            container.mux(packet)
    finally:
        container.close()


if __name__ == "__main__":
    av.logging.set_level(av.logging.ERROR)  # FFmpeg's own log on stderr: what the server said when it refused
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    publish(sys.argv[1], "".join(sys.argv[2:3]), stop)
