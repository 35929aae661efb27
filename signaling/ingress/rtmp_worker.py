"""The RTMP ingest worker, a process of its own (PyAV holds the GIL through FFmpeg's work): reads the publisher's FLV
from stdin and publishes it with FFmpeg's WHIP muxer to tern's `/w/{stream_key}` on loopback, authorised by
TERN_RELAY_SECRET. H.264 without B-frames passes through (WebRTC has no B-frames); other video is re-encoded with
libx264 (constrained baseline, no B-frames); audio is always AAC → Opus. Ends (closing the muxer: its WHIP DELETE)
when stdin does. Input it cannot publish (a codec outside VIDEO_CODECS / AUDIO_CODECS, no media) or a PyAV error
makes it print `error: <reason>` as its last line on stderr and exit with status 1: the listener puts that reason in
the ingress's ENDPOINT_ERROR state. Usage: python -m signaling.ingress.rtmp_worker WHIP_URL"""
from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

import av
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

OPUS_RATE = 48000
# The re-encode's keyframe interval in frames (2 s at 30 fps) and its frame rate when the stream declares none.
KEYFRAME_INTERVAL = 60
DEFAULT_FPS = 30
# Seconds of input FFmpeg may read to find the streams: short, as an encoder sends its headers first.
PROBE_SECONDS = 1
# What modern encoders send over (enhanced) RTMP. Legacy Flash codecs (Sorenson Spark, VP6, Screen Video, Nellymoser,
# Speex) decode, but nobody sends them any more and each would cost a re-encode: they are refused by name.
VIDEO_CODECS = ("h264", "hevc", "av1", "vp9")
AUDIO_CODECS = ("aac", "mp3", "opus")
SUPPORTED = "RTMP ingest takes H.264, HEVC, AV1 or VP9 video and AAC, MP3 or Opus audio"
ERROR_PREFIX = "error: "


class Unpublishable(Exception):
    """The publisher's stream has nothing this worker can publish."""


def dtls_certificate(directory: Path) -> dict[str, str]:
    """A P-256 DTLS certificate for FFmpeg's WHIP muxer: of its own, a GnuTLS build (as PyAV's) makes a P-224 one,
    a curve OpenSSL 3+ refuses in a DTLS handshake."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return {"cert_file": str(directory / "cert.pem"), "key_file": str(directory / "key.pem")}


def relay(url: str, secret: str) -> None:
    source = av.open(sys.stdin.buffer, "r", format="flv",
                     options={"analyzeduration": str(PROBE_SECONDS * 1_000_000)})
    video_in = source.streams.video[0] if source.streams.video else None
    audio_in = source.streams.audio[0] if source.streams.audio else None
    if video_in is None and audio_in is None:
        raise Unpublishable(f"the RTMP stream has no audio or video; {SUPPORTED}")
    for stream, supported in ((video_in, VIDEO_CODECS), (audio_in, AUDIO_CODECS)):
        if stream is not None and stream.codec_context.name not in supported:
            described = stream.codec_context.codec.long_name or stream.codec_context.name
            raise Unpublishable(f"unsupported {stream.type} codec {stream.codec_context.name} ({described}); "
                                f"{SUPPORTED}")
    with tempfile.TemporaryDirectory(prefix="tern-rtmp-") as directory:
        sink = av.open(url, "w", format="whip", options={"authorization": secret, **dtls_certificate(Path(directory))})
        try:
            _remux(source, sink, video_in, audio_in)
        finally:
            sink.close()
            source.close()


def _remux(source: av.container.InputContainer, sink: av.container.OutputContainer,
           video_in: av.VideoStream | None, audio_in: av.AudioStream | None) -> None:
    video_out = audio_out = None
    passthrough = False
    if video_in is not None:
        passthrough = video_in.codec_context.name == "h264" and not video_in.codec_context.has_b_frames
        if passthrough:
            video_out = sink.add_stream_from_template(video_in)
        else:
            rate = video_in.average_rate or DEFAULT_FPS
            video_out = sink.add_stream("libx264", rate=rate, options={
                "profile": "baseline", "preset": "veryfast", "tune": "zerolatency", "bf": "0",
                "g": str(KEYFRAME_INTERVAL)})
            video_out.width, video_out.height, video_out.pix_fmt = video_in.width, video_in.height, "yuv420p"
            video_out.codec_context.time_base = video_in.time_base
        print(f"rtmp worker: video {video_in.codec_context.name} "
              f"{'passed through' if passthrough else 're-encoded'}", file=sys.stderr, flush=True)
    if audio_in is not None:
        audio_out = sink.add_stream("libopus", rate=OPUS_RATE, layout="stereo")
    streams = [stream for stream in (video_in, audio_in) if stream is not None]
    for packet in source.demux(streams):
        if packet.dts is None:  # the demuxer's flush packet
            continue
        if packet.stream is video_in:
            if passthrough:
                packet.stream = video_out
                sink.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pict_type = av.video.frame.PictureType.NONE  # the encoder chooses keyframes
                    sink.mux(video_out.encode(frame))
        else:
            for frame in packet.decode():  # the encoder resamples to 48 kHz stereo and cuts 20 ms frames
                sink.mux(audio_out.encode(frame))


def main() -> int:
    try:
        relay(sys.argv[1], os.environ["TERN_RELAY_SECRET"])
    except Unpublishable as error:
        reason = str(error)
    except av.FFmpegError as error:  # what FFmpeg refused: the input, an encoder, or the WHIP session
        reason = f"the RTMP stream could not be published: {error}"
    except (BrokenPipeError, KeyboardInterrupt):  # the listener went away: nobody to tell
        return 1
    else:
        return 0
    print(ERROR_PREFIX + reason, file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
