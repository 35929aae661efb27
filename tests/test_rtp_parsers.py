"""engine.rtp and engine.codecs: RTP header / header-extension parsing, extension rewriting, codec keyframe detection.

Hand-built packets pin the edge cases; aiortc's pure-Python RTP and VP8 code serves as an independent oracle;
hypothesis feeds garbage and truncations to every parser."""
import struct

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, pack_header_extensions, unpack_header_extensions
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import rtp
from engine.codecs import describe, vp8

ONE_BYTE = 0xBEDE
TWO_BYTE = 0x1000


def rtp_packet(*, marker: int = 0, payload_type: int = 96, sequence: int = 0, timestamp: int = 0, ssrc: int = 0,
               csrcs: tuple[int, ...] = (), profile: int | None = None, ext: bytes = b"", payload: bytes = b"",
               padding: int = 0, ext_words: int | None = None) -> bytes:
    """An RTP packet; `ext_words` overrides the extension block's length field (to lie about it)."""
    first = 0x80 | (0x20 if padding else 0) | (0x10 if profile is not None else 0) | len(csrcs)
    data = struct.pack("!BBHII", first, (marker << 7) | payload_type, sequence, timestamp, ssrc)
    data += b"".join(struct.pack("!I", c) for c in csrcs)
    if profile is not None:
        data += struct.pack("!HH", profile, len(ext) // 4 if ext_words is None else ext_words) + ext
    data += payload
    if padding:
        data += bytes(padding - 1) + bytes([padding])
    return data


def check_consistent(data: bytes) -> dict | None:
    """Parses `data` and checks the invariants every accepted packet must satisfy."""
    h = rtp.parse_rtp_header(data)
    if h is not None:
        assert data[0] >> 6 == 2
        assert 12 + 4 * h["csrc_count"] <= h["header_length"]
        assert h["header_length"] + h["payload_length"] <= len(data)
        assert h["ext_offset"] + h["ext_length"] <= h["header_length"]
        if not data[0] & 0x20:
            assert h["header_length"] + h["payload_length"] == len(data)
    return h


# ---- header ----

def test_minimal_header():
    data = rtp_packet(marker=1, payload_type=111, sequence=0xABCD, timestamp=0xDEADBEEF, ssrc=0x01020304,
                      payload=b"opus")
    assert rtp.parse_rtp_header(data) == {
        "marker": 1, "payload_type": 111, "csrc_count": 0, "sequence": 0xABCD, "timestamp": 0xDEADBEEF,
        "ssrc": 0x01020304, "header_length": 12, "payload_length": 4, "ext_profile": 0, "ext_offset": 0,
        "ext_length": 0,
    }


def test_csrcs_extension_and_padding():
    data = rtp_packet(csrcs=(1, 2), profile=ONE_BYTE, ext=b"\x10\xaa\x00\x00", payload=b"xyz", padding=5)
    h = rtp.parse_rtp_header(data)
    assert h["csrc_count"] == 2
    assert (h["ext_profile"], h["ext_offset"], h["ext_length"]) == (ONE_BYTE, 24, 4)
    assert h["header_length"] == 28
    assert h["payload_length"] == 3
    assert data[h["header_length"]:h["header_length"] + h["payload_length"]] == b"xyz"


def test_padding_may_fill_the_whole_payload():
    h = rtp.parse_rtp_header(rtp_packet(padding=4))
    assert h["payload_length"] == 0


@pytest.mark.parametrize("data", [
    b"",
    rtp_packet()[:11],
    bytes([0x40]) + rtp_packet()[1:],                                  # version 1
    bytes([0x00]) + rtp_packet()[1:],                                  # version 0
    rtp_packet(csrcs=(1, 2))[:19],                                     # CSRC count beyond the buffer
    bytes([0x8F]) + rtp_packet(payload=b"x" * 20)[1:],                 # 15 CSRCs claimed, 21 bytes present
    rtp_packet(profile=ONE_BYTE)[:14],                                 # X set, block header truncated
    rtp_packet(profile=ONE_BYTE, ext=b"\x10\xaa\x00\x00", ext_words=2),  # block length beyond the buffer
    rtp_packet(profile=ONE_BYTE, ext=b"", ext_words=0xFFFF),
    bytes([0xA0]) + rtp_packet(payload=b"ab\x00")[1:],                 # P set, padding count 0
    rtp_packet(payload=b"ab", padding=4)[:-1] + b"\x07",               # padding count beyond the payload
    rtp_packet(payload=b"ab", padding=4)[:-1] + b"\xff",
])
def test_rejects_malformed(data):
    assert rtp.parse_rtp_header(data) is None


def test_rejects_padding_overlapping_extension_block():
    data = rtp_packet(profile=ONE_BYTE, ext=b"\x10\xaa\x00\x00")
    data = bytes([data[0] | 0x20]) + data[1:-1] + b"\x02"              # 2 bytes of "padding" inside the block
    assert rtp.parse_rtp_header(data) is None


def test_rejects_datagram_longer_than_udp_allows():
    assert rtp.parse_rtp_header(rtp_packet(payload=bytes(0x10000))) is None


# ---- header extensions ----

def test_one_byte_form_elements_padding_and_stop():
    # id 1 (1 byte), padding zeros, id 2 (3 bytes), id 15 stops the walk, so id 3 after it is not seen.
    ext = b"\x10\xaa" + b"\x00\x00" + b"\x22abc" + b"\xf0" + b"\x30\x11" + b"\x00\x00\x00"
    data = rtp_packet(profile=ONE_BYTE, ext=ext, payload=b"p")
    assert rtp.extension(data, 1) == b"\xaa"
    assert rtp.extension(data, 2) == b"abc"
    assert rtp.extension(data, 3) is None
    assert rtp.extension(data, 15) is None
    assert rtp.extension(data, 0) is None


def test_one_byte_element_overrunning_the_block_is_not_returned():
    data = rtp_packet(profile=ONE_BYTE, ext=b"\x10\xaa\x0f\x00" + b"\x2f" + b"abc", payload=b"p")  # id 2 wants 16
    assert rtp.extension(data, 1) == b"\xaa"
    assert rtp.extension(data, 2) is None


def test_two_byte_form_with_appbits_and_empty_element():
    ext = b"\x01\x00" + b"\x00" + b"\xc8\x03xyz" + b"\x05\x01q"          # id 1 empty, padding, id 200, id 5
    ext += bytes(-len(ext) % 4)
    for profile in (0x1000, 0x1003, 0x100F):
        data = rtp_packet(profile=profile, ext=ext, payload=b"p")
        assert rtp.extension(data, 1) == b""
        assert rtp.extension(data, 200) == b"xyz"
        assert rtp.extension(data, 5) == b"q"
        assert rtp.extension(data, 6) is None


def test_two_byte_truncated_length_byte():
    data = rtp_packet(profile=TWO_BYTE, ext=b"\x05\x01q\x07", payload=b"p")  # id 7 without its length byte
    assert rtp.extension(data, 5) == b"q"
    assert rtp.extension(data, 7) is None


def test_unknown_profile_has_no_elements():
    data = rtp_packet(profile=0x1234, ext=b"\x10\xaa\x00\x00", payload=b"p")
    assert rtp.parse_rtp_header(data)["ext_profile"] == 0x1234
    assert rtp.extension(data, 1) is None
    assert rtp.rewrite(data, {1: 1}) == rtp_packet(payload=b"p")


# ---- rewrite ----

def test_rewrite_renumbers_and_drops():
    ext = b"\x10\xaa" + b"\x21bb" + b"\x32ccc" + b"\x00\x00\x00"
    data = rtp_packet(marker=1, sequence=7, csrcs=(9,), profile=ONE_BYTE, ext=ext, payload=b"media")
    out = rtp.rewrite(data, {1: 4, 3: 14})                             # 2 unmapped: dropped
    assert out == rtp_packet(marker=1, sequence=7, csrcs=(9,), profile=ONE_BYTE, ext=b"\x40\xaa\xe2ccc\x00\x00",
                             payload=b"media")


def test_rewrite_two_byte_to_one_byte_drops_what_does_not_fit():
    ext = b"\x01\x02hi" + b"\x02\x00" + b"\x03\x11" + bytes(17) + b"\x04\x10" + bytes(range(16)) + b"\x05\x01z"
    ext += bytes(-len(ext) % 4)
    data = rtp_packet(profile=TWO_BYTE, ext=ext, payload=b"media")
    # 2: empty (needs >= 1 byte); 3: 17 bytes (> 16); 5 -> 15 (> 14); 1 and 4 survive.
    out = rtp.rewrite(data, {1: 1, 2: 2, 3: 3, 4: 9, 5: 15})
    expected = b"\x11hi" + b"\x9f" + bytes(range(16))
    assert out == rtp_packet(profile=ONE_BYTE, ext=expected + bytes(-len(expected) % 4), payload=b"media")


def test_rewrite_with_nothing_left_clears_x_and_padding():
    data = rtp_packet(csrcs=(1, 2, 3), profile=ONE_BYTE, ext=b"\x10\xaa\x00\x00", payload=b"media", padding=3)
    out = rtp.rewrite(data, {})
    assert out == rtp_packet(csrcs=(1, 2, 3), payload=b"media")
    assert rtp.parse_rtp_header(out)["ext_profile"] == 0


def test_rewrite_rejects_invalid():
    with pytest.raises(ValueError):
        rtp.rewrite(b"\x80", {})
    with pytest.raises(ValueError):
        rtp.rewrite(rtp_packet(), {1: 256})


# ---- aiortc as oracle ----

ids_and_values = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=20)), max_size=6)


def with_extensions(extensions: list[tuple[int, bytes]], **fields) -> bytes:
    profile, value = pack_header_extensions(extensions)
    return rtp_packet(profile=profile if value else None, ext=value, **fields)


@settings(max_examples=300)
@given(extensions=ids_and_values, marker=st.integers(0, 1), payload_type=st.integers(0, 127),
       sequence=st.integers(0, 0xFFFF), timestamp=st.integers(0, 2**32 - 1), ssrc=st.integers(0, 2**32 - 1),
       csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15), payload=st.binary(max_size=64),
       padding=st.integers(0, 255))
def test_parse_agrees_with_aiortc(extensions, marker, payload_type, sequence, timestamp, ssrc, csrcs, payload,
                                  padding):
    data = with_extensions(extensions, marker=marker, payload_type=payload_type, sequence=sequence,
                           timestamp=timestamp, ssrc=ssrc, csrcs=tuple(csrcs), payload=payload, padding=padding)
    theirs = RtpPacket.parse(data)
    ours = check_consistent(data)
    assert (ours["marker"], ours["payload_type"], ours["sequence"], ours["timestamp"], ours["ssrc"]) == (
        theirs.marker, theirs.payload_type, theirs.sequence_number, theirs.timestamp, theirs.ssrc)
    assert ours["csrc_count"] == len(theirs.csrc)
    assert data[ours["header_length"]:ours["header_length"] + ours["payload_length"]] == theirs.payload
    if extensions:
        block = data[ours["ext_offset"]:ours["ext_offset"] + ours["ext_length"]]
        elements = unpack_header_extensions(ours["ext_profile"], block)
        for ext_id in {ext_id for ext_id, _ in elements}:
            assert rtp.extension(data, ext_id) == next(v for i, v in elements if i == ext_id)


@settings(max_examples=300)
@given(extensions=ids_and_values, id_map=st.dictionaries(st.integers(0, 255), st.integers(0, 255)),
       payload=st.binary(max_size=32), padding=st.integers(0, 20))
def test_rewrite_output_parses_with_aiortc(extensions, id_map, payload, padding):
    data = with_extensions(extensions, sequence=1234, csrcs=(5,), payload=payload, padding=padding)
    out = rtp.rewrite(data, id_map)
    theirs = RtpPacket.parse(out)
    assert theirs.payload == payload
    assert theirs.sequence_number == 1234 and theirs.csrc == [5]
    h = check_consistent(out)
    kept = [(id_map[i], v) for i, v in extensions if id_map.get(i, 0) and id_map[i] <= 14 and 1 <= len(v) <= 16]
    if kept:
        assert h["ext_profile"] == ONE_BYTE and h["ext_length"] % 4 == 0
        block = out[h["ext_offset"]:h["ext_offset"] + h["ext_length"]]
        assert unpack_header_extensions(ONE_BYTE, block) == kept
    else:
        assert not out[0] & 0x10 and h["ext_length"] == 0
    assert not out[0] & 0x20


def test_header_extensions_map_round_trip():
    ids = {"urn:ietf:params:rtp-hdrext:sdes:mid": 1, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id": 2,
           "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 3,
           "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 4,
           "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 5}
    extensions_map = HeaderExtensionsMap()
    extensions_map.configure(RTCRtpParameters(
        headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    packet = RtpPacket(payload_type=96, sequence_number=42, timestamp=9000, ssrc=777, payload=b"frame")
    packet.extensions.mid = "0"
    packet.extensions.rtp_stream_id = "hi"
    packet.extensions.abs_send_time = 0x123456
    packet.extensions.audio_level = (True, 30)
    packet.extensions.transport_sequence_number = 0xBEEF
    data = packet.serialize(extensions_map)
    assert rtp.extension(data, 1) == b"0"
    assert rtp.extension(data, 2) == b"hi"
    assert rtp.extension(data, 3) == b"\x12\x34\x56"
    assert rtp.extension(data, 4) == bytes([0x80 | 30])
    assert rtp.extension(data, 5) == b"\xbe\xef"
    # A subscriber that negotiated mid=9 and transport-cc=2 and nothing else.
    subscriber_map = HeaderExtensionsMap()
    subscriber_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=9, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=2, uri="http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01")]))
    parsed = RtpPacket.parse(rtp.rewrite(data, {1: 9, 5: 2}), subscriber_map)
    assert parsed.extensions.mid == "0"
    assert parsed.extensions.transport_sequence_number == 0xBEEF
    assert parsed.extensions.rtp_stream_id is None and parsed.extensions.audio_level is None
    assert parsed.payload == b"frame"


# ---- garbage and truncations ----

@settings(max_examples=500)
@given(st.binary(max_size=80), st.integers(0, 255))
def test_garbage_never_breaks_parsers(data, ext_id):
    check_consistent(data)
    rtp.extension(data, ext_id)
    if rtp.parse_rtp_header(data) is not None:
        rtp.rewrite(data, {i: (i * 7) % 16 for i in range(256)})
    vp8.vp8_descriptor(data)
    for codec in ("vp8", "vp9", "h264", "av1"):
        describe.is_keyframe(codec, data)


@settings(max_examples=300)
@given(st.binary(max_size=48), st.sampled_from([ONE_BYTE, TWO_BYTE, 0x1005]), st.integers(0, 255),
       st.binary(max_size=8))
def test_garbage_extension_blocks(block, profile, ext_id, payload):
    block += bytes(-len(block) % 4)
    data = rtp_packet(profile=profile, ext=block, payload=payload)
    h = check_consistent(data)
    value = rtp.extension(data, ext_id)
    if value is not None:
        assert data.find(value, h["ext_offset"]) >= 0 and len(value) <= h["ext_length"]
    out = rtp.rewrite(data, {i: i % 15 for i in range(256)})
    assert check_consistent(out)["header_length"] <= h["header_length"]
    assert RtpPacket.parse(out).payload == payload


@settings(max_examples=200)
@given(extensions=ids_and_values, payload=st.binary(max_size=16), padding=st.integers(0, 10),
       csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=3))
def test_truncations_of_valid_packets(extensions, payload, padding, csrcs):
    data = with_extensions(extensions, csrcs=tuple(csrcs), payload=payload, padding=padding)
    for cut in range(len(data)):
        h = check_consistent(data[:cut])
        for ext_id, _ in extensions:
            rtp.extension(data[:cut], ext_id)
        if h is not None:
            rtp.rewrite(data[:cut], {1: 1})


# ---- VP8 ----

def test_vp8_minimal_keyframe_and_interframe():
    assert vp8.vp8_descriptor(b"\x10\x00")["is_keyframe"] == 1          # S=1, PID=0, P=0
    assert vp8.vp8_descriptor(b"\x10\x01")["is_keyframe"] == 0          # P=1: interframe
    assert vp8.vp8_descriptor(b"\x00\x00")["is_keyframe"] == 0          # not start of partition
    assert vp8.vp8_descriptor(b"\x11\x00")["is_keyframe"] == 0          # partition 1
    assert vp8.vp8_descriptor(b"\x10")["is_keyframe"] == 0              # no payload header byte
    assert vp8.vp8_descriptor(b"") is None


def test_vp8_all_fields():
    # X, S; I L T K; 15-bit picture id 0x1234; TL0PICIDX 7; TID 2, Y, KEYIDX 3; then a key frame header byte.
    d = vp8.vp8_descriptor(bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 7, 0b10100011, 0x00]))
    assert d == {"size": 6, "start_of_partition": 1, "partition_id": 0, "picture_id": 0x1234, "picture_id_16bit": 1,
                 "picture_id_offset": 2, "tl0picidx": 7, "tl0picidx_offset": 4, "temporal_id": 2, "layer_sync": 1,
                 "is_keyframe": 1}


def test_vp8_short_picture_id_and_keyidx_only():
    d = vp8.vp8_descriptor(bytes([0x80, 0x90, 0x05, 0x1F, 0x9D]))        # I and K: 7-bit id 5, KEYIDX byte
    assert (d["picture_id"], d["picture_id_16bit"], d["temporal_id"], d["tl0picidx"], d["size"]) == (5, 0, -1, -1, 4)


@pytest.mark.parametrize("data", [b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\x80\x40", b"\x80\x20", b"\x80\x10",
                                  b"\x80\xc0\x01"])
def test_vp8_truncated(data):
    assert vp8.vp8_descriptor(data) is None


@settings(max_examples=300)
@given(partition_start=st.integers(0, 1), partition_id=st.integers(0, 7),
       picture_id=st.none() | st.integers(0, 0x7FFF), tl0picidx=st.none() | st.integers(0, 255),
       tid=st.none() | st.tuples(st.integers(0, 3), st.integers(0, 1)), keyidx=st.none() | st.integers(0, 31),
       rest=st.binary(max_size=4))
def test_vp8_agrees_with_aiortc(partition_start, partition_id, picture_id, tl0picidx, tid, keyidx, rest):
    descriptor = bytes(VpxPayloadDescriptor(partition_start, partition_id, picture_id, tl0picidx, tid, keyidx))
    data = descriptor + rest
    theirs, remainder = VpxPayloadDescriptor.parse(data)
    ours = vp8.vp8_descriptor(data)
    assert ours["size"] == len(descriptor) and remainder == rest
    assert (ours["start_of_partition"], ours["partition_id"]) == (theirs.partition_start, theirs.partition_id)
    assert ours["picture_id"] == (-1 if theirs.picture_id is None else theirs.picture_id)
    assert ours["tl0picidx"] == (-1 if theirs.tl0picidx is None else theirs.tl0picidx)
    assert (ours["temporal_id"], ours["layer_sync"]) == ((-1, 0) if theirs.tid is None else theirs.tid)
    if picture_id is not None:
        offset = ours["picture_id_offset"]
        assert struct.unpack("!H", data[offset:offset + 2])[0] & 0x7FFF == picture_id
    if tl0picidx is not None:
        assert data[ours["tl0picidx_offset"]] == tl0picidx
    expected_key = bool(partition_start and partition_id == 0 and rest and not rest[0] & 1)
    assert ours["is_keyframe"] == expected_key == describe.is_keyframe("VP8", data)
    for cut in range(len(descriptor)):
        assert vp8.vp8_descriptor(data[:cut]) is None


# ---- H264, VP9, AV1 keyframes ----

SPS, PPS, IDR, SLICE = b"\x67\x42\x00\x1f", b"\x68\xce\x3c\x80", b"\x65\x88\x84", b"\x41\x9a\x02"


def stap_a(*units: bytes) -> bytes:
    return b"\x78" + b"".join(struct.pack("!H", len(unit)) + unit for unit in units)


@pytest.mark.parametrize("payload, key", [
    (SPS, True),                                             # single NAL units (packetization-mode 0): SPS first
    (PPS, False),
    (IDR, False),                                            # an IDR without its SPS: a decoder cannot start there
    (SLICE, False),
    (stap_a(SPS, PPS, IDR), True),                           # libwebrtc: a small keyframe in one STAP-A
    (stap_a(SPS, PPS), True),                                # libwebrtc: before the IDR's FU-A fragments
    (stap_a(PPS, IDR), False),                               # no SPS
    (stap_a(SPS, PPS, SLICE), False),                        # parameter sets repeated before a predicted picture
    (stap_a(PPS, SLICE), False),
    (b"\x78" + b"\x00\x09\x67\x42" + b"\x00\x02\x65\x88", False),  # first unit's size lies
    (b"\x78" + b"\x00\x00\x67", False),                      # zero-size unit
    (b"\x78" + b"\x00\x02", False),
    (b"\x7c\x87\x42", True),                                 # FU-A start of an SPS
    (b"\x7c\x85\x88", False),                                # FU-A start of an IDR
    (b"\x7c\x07\x88", False),                                # FU-A continuation
    (b"\x7c", False),
    (b"", False),
])
def test_h264_keyframes(payload, key):
    assert describe.is_keyframe("h264", payload) is key


@given(st.lists(st.tuples(st.integers(0, 31), st.binary(max_size=6)), min_size=1, max_size=6))
def test_h264_keyframe_is_an_sps_without_a_predicted_slice(units):
    """Any NAL units in a STAP-A (or the first alone): a keyframe starts where an SPS is, unless a slice of a
    predicted picture (type 1) comes with it."""
    nals = [bytes([0x60 | nal_type]) + body for nal_type, body in units]
    types = {nal_type for nal_type, _ in units}
    assert describe.is_keyframe("h264", stap_a(*nals)) is (7 in types and 1 not in types)
    if units[0][0] not in (24, 28):  # aggregates and fragments are parsed as such
        assert describe.is_keyframe("h264", nals[0]) is (units[0][0] == 7)


@pytest.mark.parametrize("payload, key", [
    (b"\x08", True),                                         # B
    (b"\x0c", True),                                         # B, E
    (b"\x48", False),                                        # P set: inter predicted
    (b"\x04", False),                                        # not the start of a frame
    (b"\x88\x80\x01", True),                                 # I with 15-bit picture id
    (b"\xa8\x05\x00\x00", True),                             # I (7-bit id), L, layer byte SID 0
    (b"\xa8\x85\x00\x02\x00", False),                        # I (15-bit id), L, SID 1: not a keyframe start
    (b"\x28\x00\x07", True),                                 # L without I, SID 0, TL0PICIDX
    (b"\x28\x02\x07", False),                                # SID 1
    (b"\x28\x00", False),                                    # TL0PICIDX (non-flexible mode) missing
    (b"\xa8\x85\x00", False),                                # layer byte missing
    (b"\x28", False),
    (b"", False),
])
def test_vp9_keyframes(payload, key):
    assert describe.is_keyframe("video/VP9", payload) is key


@pytest.mark.parametrize("payload, key", [(b"\x18\x0a", True), (b"\x10\x0a", False), (b"\x88", True), (b"", False)])
def test_av1_keyframes(payload, key):
    assert describe.is_keyframe("AV1", payload) is key


def test_unknown_codec():
    with pytest.raises(ValueError):
        describe.is_keyframe("theora", b"\x00")
