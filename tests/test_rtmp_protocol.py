"""The RTMP parser, sans I/O: messages survive any chunking and any split of the byte stream into reads; arbitrary
bytes give RtmpError or nothing, never another exception, and the reader's buffer stays bounded; AMF0 round-trips."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.ingress import rtmp_protocol as proto

CHUNK_HEADER_MAX = 3 + 11 + 4  # basic header, fmt-0 message header, extended timestamp


def _chunks(messages: list[proto.Message], chunk_size: int) -> bytes:
    """The messages as a client chunks them: a Set Chunk Size first, then each as fmt 0 + fmt 3 continuations,
    csid 4 (or 70 for messages on stream 2: a two-byte basic header)."""
    out = bytearray(proto.message(proto.SET_CHUNK_SIZE, chunk_size.to_bytes(4, "big"), csid=2))
    for item in messages:
        csid = 70 if item.stream_id == 2 else 4
        basic = bytes([0, csid - 64]) if csid >= 64 else bytes([csid])
        extended = item.timestamp >= 0xFFFFFF
        stamp = (0xFFFFFF if extended else item.timestamp).to_bytes(3, "big")
        out += bytes([basic[0]]) + basic[1:] + stamp + len(item.payload).to_bytes(3, "big") + bytes([item.type])
        out += item.stream_id.to_bytes(4, "little")
        if extended:
            out += item.timestamp.to_bytes(4, "big")
        for start in range(0, max(len(item.payload), 1), chunk_size):
            if start:
                out += bytes([0xC0 | basic[0]]) + basic[1:]
                if extended:
                    out += item.timestamp.to_bytes(4, "big")
            out += item.payload[start:start + chunk_size]
    return bytes(out)


_messages = st.lists(st.builds(
    proto.Message, type=st.sampled_from([proto.AUDIO, proto.VIDEO, proto.DATA_AMF0, proto.COMMAND_AMF0]),
    stream_id=st.integers(0, 2), timestamp=st.integers(0, 0xFFFFFFFF), payload=st.binary(max_size=700)),
    max_size=8)


@settings(max_examples=200, deadline=None)
@given(_messages, st.integers(1, 512), st.lists(st.integers(1, 300), max_size=30))
def test_messages_survive_any_chunking_and_reads(messages, chunk_size, cuts) -> None:
    data = _chunks(messages, chunk_size)
    reader, received, position = proto.ChunkReader(), [], 0
    for cut in cuts + [len(data)]:
        received += reader.feed(data[position:position + cut])
        position += cut
    received += reader.feed(data[position:])
    assert received == messages


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=2000), max_size=20))
def test_garbage_raises_rtmp_error_only_and_stays_bounded(reads) -> None:
    reader = proto.ChunkReader()
    try:
        for data in reads:
            reader.feed(data)
            assert len(reader._buffer) <= CHUNK_HEADER_MAX + reader.chunk_size
            assert reader._pending <= proto.MAX_PENDING
    except proto.RtmpError:
        pass


def test_limits_are_enforced() -> None:
    too_big = bytes([4]) + bytes(3) + (proto.MAX_MESSAGE_SIZE + 1).to_bytes(3, "big") + bytes([proto.VIDEO, 0, 0, 0, 0])
    with pytest.raises(proto.RtmpError) as error:
        proto.ChunkReader().feed(too_big)
    assert error.value.counter == "rtmp_limit"
    with pytest.raises(proto.RtmpError):
        proto.ChunkReader().feed(proto.message(proto.SET_CHUNK_SIZE, (proto.MAX_CHUNK_SIZE + 1).to_bytes(4, "big")))
    with pytest.raises(proto.RtmpError):
        proto.ChunkReader().feed(bytes([0xC5]))  # a continuation on a chunk stream never started
    with pytest.raises(proto.RtmpError) as error:
        proto.handshake_reply(b"GET / HTTP/1.1\r\n" + bytes(1521))
    assert error.value.counter == "rtmp_bad_handshake"


_amf = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4), max_leaves=20)


@given(st.lists(_amf, max_size=5))
def test_amf0_round_trips(values) -> None:
    assert proto.amf_decode(proto.amf_encode(*values)) == values


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_amf0_garbage_raises_rtmp_error_only(data) -> None:
    try:
        proto.amf_decode(data)
    except proto.RtmpError:
        pass


def test_amf0_nesting_is_bounded() -> None:
    nested = b"\x0a\x00\x00\x00\x01" * 100 + b"\x05"  # strict arrays 100 deep
    with pytest.raises(proto.RtmpError):
        proto.amf_decode(nested)
