"""SCTP packet and chunk codecs (RFC 9260, 3758, 6525): bytes ⇄ dataclasses, no state.

The association that drives them (timers, queues, retransmission) lives in sctp.py.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

try:
    from google_crc32c import value as _crc32c
except ImportError:  # pragma: no cover - the wheel ships with aiortc
    def _crc32c_table() -> list[int]:
        table = []
        for n in range(256):
            c = n
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        return table

    _TABLE = _crc32c_table()

    def _crc32c(data: bytes) -> int:
        crc = 0xFFFFFFFF
        for b in data:
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


class SctpError(ValueError):
    """A malformed SCTP packet, chunk or parameter, or a request the association cannot honour."""


# Chunk types (RFC 9260 section 3.2, RFC 6525, RFC 3758).
DATA, INIT, INIT_ACK, SACK, HEARTBEAT, HEARTBEAT_ACK, ABORT, SHUTDOWN = range(8)
SHUTDOWN_ACK, ERROR, COOKIE_ECHO, COOKIE_ACK = 8, 9, 10, 11
SHUTDOWN_COMPLETE = 14
RECONFIG = 130
FORWARD_TSN = 192

# Parameter types.
P_STATE_COOKIE = 7
P_OUTGOING_RESET = 13
P_INCOMING_RESET = 14
P_RECONFIG_RESPONSE = 16
P_ADD_OUTGOING_STREAMS = 17
P_ADD_INCOMING_STREAMS = 18
P_SUPPORTED_EXTENSIONS = 0x8008
P_FORWARD_TSN_SUPPORTED = 0xC000

# RE-CONFIG results (RFC 6525 section 4.4).
R_NOTHING_TO_DO, R_PERFORMED, R_DENIED, R_WRONG_SSN, R_IN_PROGRESS_ERR, R_BAD_SEQ, R_IN_PROGRESS = range(7)

# DATA chunk flags.
F_END, F_BEGIN, F_UNORDERED = 0x01, 0x02, 0x04

_HEADER = struct.Struct("!HHL")
_DATA_HEADER = struct.Struct("!LHHL")
_INIT = struct.Struct("!LLHHL")
_SACK = struct.Struct("!LLHH")

# What a packet spends before user data: the association sizes its fragments with these.
PACKET_HEADER_SIZE = _HEADER.size + 4  # ports, verification tag, CRC32c
CHUNK_HEADER_SIZE = 4
DATA_HEADER_SIZE = _DATA_HEADER.size


@dataclass
class Chunk:
    type: int
    flags: int
    body: bytes


def checksum(packet: bytes) -> int:
    return _crc32c(packet[:8] + b"\x00\x00\x00\x00" + packet[12:])


def parse_packet(data: bytes) -> tuple[int, int, int, list[Chunk]]:
    """Returns (source port, destination port, verification tag, chunks)."""
    if len(data) < 16:
        raise SctpError("SCTP packet too short")
    if struct.unpack_from("<L", data, 8)[0] != checksum(data):
        raise SctpError("bad CRC32c")
    src, dst, vtag = _HEADER.unpack_from(data)
    chunks = []
    pos = 12
    while pos < len(data):
        if len(data) - pos < 4:
            raise SctpError("truncated chunk header")
        ctype, flags, length = struct.unpack_from("!BBH", data, pos)
        if length < 4 or pos + length > len(data):
            raise SctpError("bad chunk length")
        chunks.append(Chunk(ctype, flags, data[pos + 4:pos + length]))
        pos += (length + 3) & ~3
    if not chunks:
        raise SctpError("packet without chunks")
    return src, dst, vtag, chunks


def encode_chunk(ctype: int, flags: int, body: bytes) -> bytes:
    return struct.pack("!BBH", ctype, flags, 4 + len(body)) + body + b"\x00" * (-len(body) % 4)


def encode_packet(src: int, dst: int, vtag: int, chunks: bytes) -> bytes:
    header = _HEADER.pack(src, dst, vtag)
    crc = _crc32c(header + b"\x00\x00\x00\x00" + chunks)
    return header + struct.pack("<L", crc) + chunks


def parse_params(body: bytes) -> list[tuple[int, bytes]]:
    params = []
    pos = 0
    while pos < len(body):
        if len(body) - pos < 4:
            raise SctpError("truncated parameter")
        ptype, length = struct.unpack_from("!HH", body, pos)
        if length < 4 or pos + length > len(body):
            raise SctpError("bad parameter length")
        params.append((ptype, body[pos + 4:pos + length]))
        pos += (length + 3) & ~3
    return params


def encode_param(ptype: int, value: bytes) -> bytes:
    return struct.pack("!HH", ptype, 4 + len(value)) + value + b"\x00" * (-len(value) % 4)


@dataclass
class InitChunk:
    initiate_tag: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    initial_tsn: int
    params: list[tuple[int, bytes]]

    @classmethod
    def parse(cls, body: bytes) -> InitChunk:
        if len(body) < _INIT.size:
            raise SctpError("truncated INIT")
        tag, rwnd, ostreams, istreams, tsn = _INIT.unpack_from(body)
        if tag == 0 or ostreams == 0 or istreams == 0:
            raise SctpError("invalid INIT parameters")
        return cls(tag, rwnd, ostreams, istreams, tsn, parse_params(body[_INIT.size:]))

    def encode(self) -> bytes:
        return _INIT.pack(self.initiate_tag, self.a_rwnd, self.outbound_streams,
                          self.inbound_streams, self.initial_tsn) + b"".join(
            encode_param(t, v) for t, v in self.params)


@dataclass(slots=True)
class DataChunk:
    tsn: int
    stream: int
    ssn: int
    ppid: int
    flags: int
    payload: bytes

    @classmethod
    def parse(cls, flags: int, body: bytes) -> DataChunk:
        if len(body) <= _DATA_HEADER.size:
            raise SctpError("DATA chunk without user data")
        tsn, stream, ssn, ppid = _DATA_HEADER.unpack_from(body)
        return cls(tsn, stream, ssn, ppid, flags, body[_DATA_HEADER.size:])

    def encode(self) -> bytes:
        return encode_data_chunk(self.tsn, self.stream, self.ssn, self.ppid, self.flags, self.payload)


def encode_data_chunk(tsn: int, stream: int, ssn: int, ppid: int, flags: int, payload: bytes) -> bytes:
    """A whole DATA chunk, header included (the send queue keeps fields, not DataChunk objects)."""
    return encode_chunk(DATA, flags, _DATA_HEADER.pack(tsn, stream, ssn, ppid) + payload)


@dataclass
class SackChunk:
    cumulative_tsn: int
    a_rwnd: int
    gaps: list[tuple[int, int]]  # offsets from cumulative_tsn, inclusive
    duplicates: list[int]

    @classmethod
    def parse(cls, body: bytes) -> SackChunk:
        if len(body) < _SACK.size:
            raise SctpError("truncated SACK")
        cum, rwnd, ngaps, ndups = _SACK.unpack_from(body)
        if len(body) < _SACK.size + 4 * (ngaps + ndups):
            raise SctpError("SACK blocks beyond the chunk")
        gaps = [struct.unpack_from("!HH", body, _SACK.size + 4 * i) for i in range(ngaps)]
        dups = list(struct.unpack_from(f"!{ndups}L", body, _SACK.size + 4 * ngaps))
        return cls(cum, rwnd, gaps, dups)

    def encode(self) -> bytes:
        return (_SACK.pack(self.cumulative_tsn, self.a_rwnd, len(self.gaps), len(self.duplicates))
                + b"".join(struct.pack("!HH", s, e) for s, e in self.gaps)
                + b"".join(struct.pack("!L", d) for d in self.duplicates))


@dataclass
class ForwardTsnChunk:
    new_cumulative_tsn: int
    streams: list[tuple[int, int]]  # (stream, ssn) of skipped ordered messages

    @classmethod
    def parse(cls, body: bytes) -> ForwardTsnChunk:
        if len(body) < 4 or len(body) % 4:
            raise SctpError("bad FORWARD-TSN length")
        return cls(struct.unpack_from("!L", body)[0],
                   [struct.unpack_from("!HH", body, i) for i in range(4, len(body), 4)])

    def encode(self) -> bytes:
        return struct.pack("!L", self.new_cumulative_tsn) + b"".join(
            struct.pack("!HH", s, n) for s, n in self.streams)


@dataclass
class ResetRequest:
    """Outgoing SSN Reset Request parameter (RFC 6525 section 4.1)."""
    request_seq: int
    response_seq: int
    last_tsn: int
    streams: list[int]

    @classmethod
    def parse(cls, value: bytes) -> ResetRequest:
        if len(value) < 12 or len(value) % 2:
            raise SctpError("bad outgoing reset request")
        req, resp, last = struct.unpack_from("!LLL", value)
        return cls(req, resp, last, [struct.unpack_from("!H", value, i)[0] for i in range(12, len(value), 2)])

    def encode(self) -> bytes:
        return encode_param(P_OUTGOING_RESET, struct.pack("!LLL", self.request_seq, self.response_seq, self.last_tsn)
                            + b"".join(struct.pack("!H", s) for s in self.streams))


def encode_reconfig_response(seq: int, result: int) -> bytes:
    return encode_param(P_RECONFIG_RESPONSE, struct.pack("!LL", seq, result))


def parse_reconfig_response(value: bytes) -> tuple[int, int]:
    """Re-configuration Response parameter (RFC 6525 section 4.4): (response sequence number, result)."""
    if len(value) < 8:
        raise SctpError("truncated RE-CONFIG response")
    return struct.unpack_from("!LL", value)


def reconfig_request_seq(value: bytes) -> int:
    """The request sequence number every RE-CONFIG request parameter opens with (caller checks 4 bytes)."""
    return struct.unpack_from("!L", value)[0]
