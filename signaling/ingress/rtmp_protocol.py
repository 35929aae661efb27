"""RTMP's wire format, sans I/O, as far as a publish-only server needs it: the simple handshake, the chunk stream
(messages reassembled from interleaved chunks, Set Chunk Size and Abort applied), AMF0 values for commands, our few
replies, and FLV tags built from the audio/video/data messages. Every limit is enforced as bytes arrive, so a
connection's state stays bounded and parsing is linear in its input; a violation raises RtmpError."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any

VERSION = 3
HANDSHAKE_SIZE = 1536
DEFAULT_CHUNK_SIZE = 128  # the protocol's, until a Set Chunk Size
# The largest Set Chunk Size we accept (clients use 128-4096; OBS 4096): an incomplete chunk waits whole in memory.
MAX_CHUNK_SIZE = 65536
# The largest message (a keyframe): nginx-rtmp's max_message is 1 MiB; 4K keyframes from OBS exceed that.
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
# Bytes of messages being reassembled at once, over all chunk streams (interleaving keeps one or two in flight).
MAX_PENDING = 2 * MAX_MESSAGE_SIZE
# Distinct chunk stream ids a connection may use (encoders use 2-8).
MAX_CHUNK_STREAMS = 32
MAX_AMF_DEPTH = 8  # nesting of AMF0 objects/arrays in a command
OUR_CHUNK_SIZE = 4096  # what we announce and send with: every reply fits in one chunk
WINDOW_ACK_SIZE = 2_500_000  # announced as FFmpeg's and nginx-rtmp's servers do

# Message types (RTMP 1.0 §5.4, §7.1)
SET_CHUNK_SIZE, ABORT, ACKNOWLEDGEMENT, USER_CONTROL, WINDOW_ACK, PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0 = 8, 9, 15, 17, 18, 20
MEDIA_TYPES = (AUDIO, VIDEO, DATA_AMF0)

_EXTENDED = 0xFFFFFF


class RtmpError(Exception):
    """The peer broke the protocol or a limit; `counter` names what the node counts."""

    def __init__(self, reason: str, counter: str = "rtmp_malformed") -> None:
        super().__init__(reason)
        self.counter = counter


@dataclass
class Message:
    type: int
    stream_id: int
    timestamp: int  # ms, 32-bit wrapping
    payload: bytes


@dataclass
class _ChunkStream:
    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type: int = 0
    stream_id: int = 0
    extended: bool = False
    started: bool = False  # a header was seen: fmt 1-3 may follow
    partial: bytearray = field(default_factory=bytearray)


def handshake_reply(c0c1: bytes) -> bytes:
    """S0 S1 S2 for a client's C0 C1 (the simple handshake: S2 echoes C1). FFmpeg and librtmp publishers accept it."""
    if len(c0c1) != 1 + HANDSHAKE_SIZE or c0c1[0] != VERSION:
        raise RtmpError("not an RTMP handshake", "rtmp_bad_handshake")
    s1 = bytes(8) + os.urandom(HANDSHAKE_SIZE - 8)
    return bytes([VERSION]) + s1 + c0c1[1:]


class ChunkReader:
    """Reassembles messages from the client's chunk stream."""

    def __init__(self) -> None:
        self.chunk_size = DEFAULT_CHUNK_SIZE
        self._buffer = bytearray()
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes in the streams' partial messages

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        messages: list[Message] = []
        position = 0
        while True:
            consumed = self._chunk(position, messages)
            if consumed == 0:
                break
            position += consumed
        del self._buffer[:position]
        return messages

    def _chunk(self, position: int, messages: list[Message]) -> int:
        """Parses one chunk at `position`: its length, or 0 when it is not all there yet."""
        buffer, available = self._buffer, len(self._buffer) - position
        if available < 1:
            return 0
        first = buffer[position]
        fmt, csid, offset = first >> 6, first & 0x3F, 1
        if csid == 0:
            if available < 2:
                return 0
            csid, offset = 64 + buffer[position + 1], 2
        elif csid == 1:
            if available < 3:
                return 0
            csid, offset = 64 + buffer[position + 1] + 256 * buffer[position + 2], 3
        header_size = (11, 7, 3, 0)[fmt]
        if available < offset + header_size:
            return 0
        stream = self._streams.get(csid)
        if stream is None:
            if fmt != 0:
                raise RtmpError(f"chunk stream {csid} starts without a full header")
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpError("too many chunk streams", "rtmp_limit")
            stream = _ChunkStream()
        header = buffer[position + offset:position + offset + header_size]
        start = position + offset + header_size
        stamp = int.from_bytes(header[0:3], "big") if fmt < 3 else None
        extended = stamp == _EXTENDED if stamp is not None else stream.extended
        if extended:
            if available < start - position + 4:
                return 0
            stamp = int.from_bytes(buffer[start:start + 4], "big")
            start += 4
        length, message_type = stream.length, stream.type
        if fmt <= 1:
            length, message_type = int.from_bytes(header[3:6], "big"), header[6]
            if length > MAX_MESSAGE_SIZE:
                raise RtmpError(f"message of {length} bytes", "rtmp_limit")
        new_message = not stream.partial
        if fmt == 3 and not new_message:  # a continuation: no new timing
            size = min(self.chunk_size, stream.length - len(stream.partial))
        else:
            size = min(self.chunk_size, length)
        if len(buffer) < start + size:
            return 0
        # The whole chunk is here: commit its header.
        if csid not in self._streams:
            self._streams[csid] = stream
        if new_message:
            if fmt == 0:
                stream.timestamp, stream.delta = stamp or 0, 0
                stream.stream_id = int.from_bytes(header[7:11], "little")
            elif fmt in (1, 2):
                stream.delta = stamp or 0
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
            else:
                stream.timestamp = (stream.timestamp + stream.delta) & 0xFFFFFFFF
            stream.length, stream.type, stream.extended = length, message_type, extended
        elif fmt != 3:
            raise RtmpError("a new message header interrupts a message", "rtmp_malformed")
        if self._pending + size > MAX_PENDING:
            raise RtmpError("too much of messages pending", "rtmp_limit")
        stream.partial += buffer[start:start + size]
        self._pending += size
        if len(stream.partial) >= stream.length:
            payload = bytes(stream.partial)
            self._pending -= len(stream.partial)
            stream.partial.clear()
            self._control(Message(stream.type, stream.stream_id, stream.timestamp, payload), messages)
        return start + size - position

    def _control(self, message: Message, messages: list[Message]) -> None:
        if message.type == SET_CHUNK_SIZE:
            if len(message.payload) < 4:
                raise RtmpError("short Set Chunk Size")
            size = int.from_bytes(message.payload[:4], "big") & 0x7FFFFFFF
            if not 1 <= size <= MAX_CHUNK_SIZE:
                raise RtmpError(f"chunk size {size}", "rtmp_limit")
            self.chunk_size = size
        elif message.type == ABORT:
            if len(message.payload) >= 4:
                aborted = self._streams.get(int.from_bytes(message.payload[:4], "big"))
                if aborted is not None:
                    self._pending -= len(aborted.partial)
                    aborted.partial.clear()
        else:
            messages.append(message)


# AMF0 (Adobe AMF0 spec §2)
_NUMBER, _BOOLEAN, _STRING, _OBJECT, _NULL, _UNDEFINED = 0, 1, 2, 3, 5, 6
_ECMA_ARRAY, _OBJECT_END, _STRICT_ARRAY, _DATE, _LONG_STRING = 8, 9, 10, 11, 12


def amf_decode(data: bytes) -> list[Any]:
    """All the AMF0 values in `data` (a command: name, transaction id, command object, arguments)."""
    values, position = [], 0
    while position < len(data):
        value, position = _value(data, position, 0)
        values.append(value)
    return values


def _need(data: bytes, position: int, size: int) -> None:
    if position + size > len(data):
        raise RtmpError("truncated AMF0 value")


def _string(data: bytes, position: int, width: int) -> tuple[str, int]:
    _need(data, position, width)
    size = int.from_bytes(data[position:position + width], "big")
    position += width
    _need(data, position, size)
    return data[position:position + size].decode("utf-8", "replace"), position + size


def _value(data: bytes, position: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_AMF_DEPTH:
        raise RtmpError("AMF0 nested too deep")
    _need(data, position, 1)
    marker, position = data[position], position + 1
    if marker == _NUMBER:
        _need(data, position, 8)
        return struct.unpack_from(">d", data, position)[0], position + 8
    if marker == _BOOLEAN:
        _need(data, position, 1)
        return bool(data[position]), position + 1
    if marker == _STRING:
        return _string(data, position, 2)
    if marker == _LONG_STRING:
        return _string(data, position, 4)
    if marker in (_NULL, _UNDEFINED):
        return None, position
    if marker == _DATE:
        _need(data, position, 10)
        return struct.unpack_from(">d", data, position)[0], position + 10
    if marker in (_OBJECT, _ECMA_ARRAY):
        if marker == _ECMA_ARRAY:
            _need(data, position, 4)
            position += 4  # the count is advisory: the end marker ends it
        result: dict[str, Any] = {}
        while True:
            key, position = _string(data, position, 2)
            _need(data, position, 1)
            if not key and data[position] == _OBJECT_END:
                return result, position + 1
            result[key], position = _value(data, position, depth + 1)
    if marker == _STRICT_ARRAY:
        _need(data, position, 4)
        count, position = int.from_bytes(data[position:position + 4], "big"), position + 4
        items = []
        for _ in range(count):  # each item takes at least a byte: bounded by the data
            item, position = _value(data, position, depth + 1)
            items.append(item)
        return items, position
    raise RtmpError(f"AMF0 marker {marker} not supported")


def amf_encode(*values: Any) -> bytes:
    out = bytearray()
    for value in values:
        if value is None:
            out.append(_NULL)
        elif isinstance(value, bool):
            out += bytes([_BOOLEAN, value])
        elif isinstance(value, (int, float)):
            out.append(_NUMBER)
            out += struct.pack(">d", value)
        elif isinstance(value, str):
            encoded = value.encode()
            out.append(_STRING)
            out += len(encoded).to_bytes(2, "big") + encoded
        elif isinstance(value, dict):
            out.append(_OBJECT)
            for key, item in value.items():
                encoded = key.encode()
                out += len(encoded).to_bytes(2, "big") + encoded + amf_encode(item)
            out += b"\x00\x00" + bytes([_OBJECT_END])
        else:
            raise TypeError(f"cannot AMF0-encode {type(value).__name__}")
    return bytes(out)


def message(message_type: int, payload: bytes, stream_id: int = 0, csid: int = 3) -> bytes:
    """One of our messages as a single fmt-0 chunk (our chunk size, announced first, exceeds every reply)."""
    assert len(payload) <= OUR_CHUNK_SIZE
    return (bytes([csid]) + bytes(3) + len(payload).to_bytes(3, "big") + bytes([message_type])
            + stream_id.to_bytes(4, "little") + payload)


def connect_replies(transaction: float) -> bytes:
    """Window size, peer bandwidth and our chunk size, then `_result` for `connect`."""
    return (message(WINDOW_ACK, WINDOW_ACK_SIZE.to_bytes(4, "big"), csid=2)
            + message(PEER_BANDWIDTH, WINDOW_ACK_SIZE.to_bytes(4, "big") + b"\x02", csid=2)
            + message(SET_CHUNK_SIZE, OUR_CHUNK_SIZE.to_bytes(4, "big"), csid=2)
            + message(COMMAND_AMF0, amf_encode(
                "_result", transaction, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                {"level": "status", "code": "NetConnection.Connect.Success", "description": "Connection succeeded.",
                 "objectEncoding": 0})))


def result(transaction: float, *values: Any) -> bytes:
    return message(COMMAND_AMF0, amf_encode("_result", transaction, None, *values))


def on_status(stream_id: int, level: str, code: str, description: str) -> bytes:
    return message(COMMAND_AMF0, amf_encode("onStatus", 0, None, {"level": level, "code": code,
                                                                 "description": description}),
                   stream_id=stream_id, csid=5)


FLV_HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + bytes(4)  # audio and video; PreviousTagSize0
_SET_DATA_FRAME = amf_encode("@setDataFrame")


def flv_tag(item: Message) -> bytes:
    """The message as an FLV tag and its PreviousTagSize (FLV tag bodies are RTMP message payloads). A publisher's
    `@setDataFrame` wrapper around onMetaData is dropped, as FLV files have it bare."""
    payload = item.payload
    if item.type == DATA_AMF0 and payload.startswith(_SET_DATA_FRAME):
        payload = payload[len(_SET_DATA_FRAME):]
    stamp = item.timestamp
    header = (bytes([item.type]) + len(payload).to_bytes(3, "big") + (stamp & 0xFFFFFF).to_bytes(3, "big")
              + bytes([(stamp >> 24) & 0xFF]) + bytes(3))
    return header + payload + (11 + len(payload)).to_bytes(4, "big")
