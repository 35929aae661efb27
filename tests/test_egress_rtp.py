"""The egress's sans-I/O parts: RTP parsing, the jitter buffer (reorder, loss, wrap), the depacketizers (VP8, VP9,
H.264 single/STAP-A/FU-A, Opus; a lost packet drops frames until a keyframe), and the muxer's Opus-in-Ogg header."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from signaling.egress.depacketize import (START_CODE, Frame, H264Depacketizer, OpusDepacketizer, Vp8Depacketizer,
                                          Vp9Depacketizer)
from signaling.egress.jitter import JitterBuffer, RtpError, RtpPacket, is_rtcp, parse_rtp
from signaling.egress.muxer import OGG, Muxer, container_for


def rtp(seq: int, ts: int = 0, payload: bytes = b"x", marker: bool = False) -> RtpPacket:
    return RtpPacket(96, marker, seq & 0xFFFF, ts, 1, payload)


def test_parse_rtp_skips_csrcs_extension_and_padding() -> None:
    header = bytes([0xB1, 0xE0, 0, 7]) + (1234).to_bytes(4, "big") + (42).to_bytes(4, "big") + b"CSRC"
    extension = b"\xbe\xde\x00\x01" + b"\x10\xff\x00\x00"
    packet = parse_rtp(header + extension + b"media" + b"\x00\x00\x03")
    assert (packet.marker, packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc, packet.payload) == \
        (True, 96, 7, 1234, 42, b"media")
    for bad in (b"", b"\x80" * 11, bytes([0x40]) + b"\x00" * 11, bytes([0x90]) + b"\x00" * 11,
                bytes([0xA0]) + b"\x00" * 10 + b"\xff"):
        with pytest.raises(RtpError):
            parse_rtp(bad)
    assert is_rtcp(b"\x80\xc8") and not is_rtcp(b"\x80\x60")


def test_jitter_buffer_reorders_waits_and_gives_up() -> None:
    jitter = JitterBuffer(delay=0.3, capacity=8)
    for seq in (65534, 0, 65535):  # across the wrap, out of order
        jitter.push(rtp(seq), 0.0)
    assert [(p.sequence, lost) for p, lost in jitter.pop(0.0)] == [(65534, False), (65535, False), (0, False)]
    jitter.push(rtp(2), 0.1)  # 1 missing: held
    assert list(jitter.pop(0.2)) == []
    jitter.push(rtp(1), 0.25)  # arrives in time
    assert [p.sequence for p, _ in jitter.pop(0.25)] == [1, 2]
    jitter.push(rtp(5), 1.0)  # 3 and 4 missing: given up after the delay
    assert list(jitter.pop(1.2)) == []
    assert [(p.sequence, lost) for p, lost in jitter.pop(1.3)] == [(5, True)]
    jitter.push(rtp(4), 1.4)  # too late now
    jitter.push(rtp(6), 1.4)
    jitter.push(rtp(6), 1.4)
    assert [p.sequence for p, _ in jitter.pop(1.4)] == [6]
    assert (jitter.lost, jitter.late, jitter.duplicates) == (2, 1, 1)
    for seq in range(8, 16):  # 7 missing, capacity reached: no waiting
        jitter.push(rtp(seq), 2.0)
    assert [(p.sequence, lost) for p, lost in jitter.pop(2.0)][0] == (8, True)


def vp8(start: bool, keyframe: bool, data: bytes) -> bytes:
    # X=1, S, PID 0; extension I with a 15-bit picture id
    descriptor = bytes([0x90 if start else 0x80, 0x80, 0x80, 0x01])
    return descriptor + (bytes([0x00 if keyframe else 0x01]) + data if start else data)


def test_vp8_frames_start_at_a_keyframe_and_a_loss_drops_until_the_next() -> None:
    d = Vp8Depacketizer()
    assert d.push(rtp(1, 100, vp8(True, False, b"delta"), True), False) is None  # no keyframe yet
    assert d.want_keyframe
    assert d.push(rtp(2, 200, vp8(True, True, b"key-"), False), False) is None
    frame = d.push(rtp(3, 200, vp8(False, True, b"end"), True), False)
    assert frame is not None and frame.keyframe and frame.data == b"\x00key-end" and frame.timestamp == 200
    assert not d.want_keyframe
    assert d.push(rtp(5, 300, vp8(False, False, b"tail"), True), True) is None  # its first packet was lost
    assert d.want_keyframe
    assert d.push(rtp(6, 400, vp8(True, False, b"d"), True), False) is None  # refers to the lost frame
    assert d.push(rtp(7, 500, vp8(True, True, b"k"), True), False).keyframe
    assert d.dropped_frames == 3


def test_vp9_spatial_layers_become_a_superframe() -> None:
    d = Vp9Depacketizer()
    # I=0 P=0 L=1 F=0 B E: layer 0 keyframe, then layer 1 (inter-layer) in two packets
    layer0 = bytes([0x2C, 0x00, 0x00]) + b"AAAA"
    layer1a = bytes([0x28, 0x02, 0x00]) + b"BB"
    layer1b = bytes([0x24, 0x02, 0x00]) + b"CC"
    assert d.push(rtp(1, 10, layer0), False) is None
    assert d.push(rtp(2, 10, layer1a), False) is None
    frame = d.push(rtp(3, 10, layer1b, True), False)
    assert frame is not None and frame.keyframe
    marker = 0xC0 | 1  # one size byte, two frames
    assert frame.data == b"AAAA" + b"BBCC" + bytes([marker, 4, 4, marker])


def test_h264_single_stap_a_and_fu_a_into_annex_b() -> None:
    d = H264Depacketizer()
    sps, pps, idr = b"\x67\x42\x00\x1f", b"\x68\xce\x38\x80", b"\x65" + b"\x11" * 10
    stap = b"\x78" + len(sps).to_bytes(2, "big") + sps + len(pps).to_bytes(2, "big") + pps
    fu_start = bytes([0x7C, 0x80 | 5]) + idr[1:6]
    fu_end = bytes([0x7C, 0x40 | 5]) + idr[6:]
    assert d.push(rtp(1, 90, stap), False) is None
    assert d.push(rtp(2, 90, fu_start), False) is None
    frame = d.push(rtp(3, 90, fu_end, True), False)
    assert frame is not None and frame.keyframe
    assert frame.data == START_CODE + sps + START_CODE + pps + START_CODE + idr
    delta = b"\x41\x9a\x00"
    assert d.push(rtp(4, 180, delta, True), False).data == START_CODE + delta
    # A later IDR without parameter sets gets the last ones seen.
    assert d.push(rtp(5, 270, idr, True), False).data == START_CODE + sps + START_CODE + pps + START_CODE + idr
    # A fragment without its start is broken; so is what follows until a keyframe.
    assert d.push(rtp(7, 360, fu_end, True), True) is None
    assert d.push(rtp(8, 450, delta, True), False) is None
    assert d.push(rtp(9, 540, b"\x1f", True), False) is None  # NAL type 31: not a packetization we take
    assert d.malformed == 2 and d.want_keyframe


def test_opus_packets_are_frames_and_losses_only_gaps() -> None:
    d = OpusDepacketizer()
    assert d.push(rtp(1, 960, b"\x78\x01"), False).data == b"\x78\x01"
    assert d.push(rtp(3, 2880, b"\x78\x02"), True).timestamp == 2880
    assert d.push(rtp(4, 3840, b""), False) is None and d.malformed == 1


def test_containers_follow_codecs() -> None:
    assert container_for(["opus"]).extension == ".ogg"
    assert container_for(["vp8", "opus"]).extension == ".webm"
    assert container_for(["opus", "h264"]).extension == ".mp4"
    with pytest.raises(ValueError):
        container_for(["vp8", "h264"])


def test_opus_passthrough_to_ogg_decodes(tmp_path) -> None:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    tone = (np.sin(2 * np.pi * 440 * np.arange(48000) / 48000) * 12000).astype(np.int16)
    packets = []
    for i in range(50):
        frame = av.AudioFrame.from_ndarray(tone[None, i * 960:(i + 1) * 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        packets += [bytes(p) for p in encoder.encode(frame)]
    path = str(tmp_path / "tone.ogg")
    muxer = Muxer(path, OGG)
    muxer.add_track("opus", 48000)
    for i, data in enumerate(packets):
        muxer.write(0, Frame(data, (0xFFFFFFFF - 2000 + i * 960) & 0xFFFFFFFF, True), i * 0.02)  # across the wrap
    muxer.close()
    assert muxer.started and abs(muxer.duration() - len(packets) * 0.02) < 0.001
    with av.open(path) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    spectrum = np.abs(np.fft.rfft(samples[4800:]))
    assert abs(np.fft.rfftfreq(len(samples) - 4800, 1 / 48000)[np.argmax(spectrum)] - 440) < 5
