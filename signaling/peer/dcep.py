"""Data channels over SCTP: DCEP (RFC 8832) and the channel table (RFC 8831).

Sans-I/O. The SCTP association (signaling/sctp.py) hands user messages of a
stream here and asks here what to put on the wire; this module never sees
packets, TSNs or timers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Payload protocol identifiers (RFC 8831 section 8).
PPID_DCEP = 50
PPID_STRING = 51
PPID_BINARY = 53
PPID_STRING_EMPTY = 56
PPID_BINARY_EMPTY = 57

MSG_OPEN = 0x03
MSG_ACK = 0x02

# Channel types: the high bit means unordered, the low bits the reliability kind.
_UNORDERED = 0x80
_RELIABLE = 0x00
_PARTIAL_REXMIT = 0x01
_PARTIAL_TIMED = 0x02

MAX_STREAM_ID = 65534  # 65535 is reserved (RFC 8832 section 6)
# Channels a peer may open on one association, and the characters of label + protocol it may give one: LiveKit
# clients open 2 or 3 (_reliable, _lossy, _data_track). Past either, the OPEN is dropped (counted), not acknowledged.
MAX_CHANNELS = 64
MAX_LABEL_LENGTH = 1024

_OPEN_HEADER = struct.Struct("!BBHLHH")


class DcepError(ValueError):
    """A malformed DCEP message or an invalid data-channel request."""


@dataclass(eq=False)
class DataChannel:
    stream_id: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None  # milliseconds
    open: bool = False
    # Until the peer acknowledges our OPEN, messages go ordered so none overtakes it.
    acked: bool = field(default=True, repr=False)
    closing: bool = field(default=False, repr=False)


class DataChannelEvent:
    """Base of what the association reports to its user."""


@dataclass
class ChannelOpened(DataChannelEvent):
    channel: DataChannel


@dataclass
class MessageReceived(DataChannelEvent):
    channel: DataChannel
    data: bytes
    binary: bool


@dataclass
class ChannelClosed(DataChannelEvent):
    channel: DataChannel


@dataclass
class AssociationClosed(DataChannelEvent):
    """The peer aborted or shut down the association (`by_peer`), or it failed or was aborted here."""
    reason: str
    by_peer: bool = False


@dataclass
class DcepOpen:
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None
    priority: int = 0

    def encode(self) -> bytes:
        if self.max_retransmits is not None:
            kind, param = _PARTIAL_REXMIT, self.max_retransmits
        elif self.max_packet_lifetime is not None:
            kind, param = _PARTIAL_TIMED, self.max_packet_lifetime
        else:
            kind, param = _RELIABLE, 0
        if not self.ordered:
            kind |= _UNORDERED
        label = self.label.encode()
        protocol = self.protocol.encode()
        if len(label) > 0xFFFF or len(protocol) > 0xFFFF or not 0 <= param <= 0xFFFFFFFF:
            raise DcepError("label, protocol or reliability parameter out of range")
        return _OPEN_HEADER.pack(MSG_OPEN, kind, self.priority, param, len(label), len(protocol)) + label + protocol


class DcepAck:
    def encode(self) -> bytes:
        return bytes([MSG_ACK])


def parse_dcep(data: bytes) -> DcepOpen | DcepAck:
    if not data:
        raise DcepError("empty DCEP message")
    if data[0] == MSG_ACK:
        return DcepAck()  # RFC 8832: trailing bytes of an ACK are ignored
    if data[0] != MSG_OPEN:
        raise DcepError(f"unknown DCEP message type {data[0]}")
    if len(data) < _OPEN_HEADER.size:
        raise DcepError("truncated DATA_CHANNEL_OPEN")
    _, kind, priority, param, label_len, protocol_len = _OPEN_HEADER.unpack_from(data)
    end = _OPEN_HEADER.size + label_len + protocol_len
    if len(data) < end:
        raise DcepError("DATA_CHANNEL_OPEN label/protocol beyond the message")
    reliability = kind & 0x7F
    if reliability not in (_RELIABLE, _PARTIAL_REXMIT, _PARTIAL_TIMED):
        raise DcepError(f"unknown channel type {kind:#x}")
    try:
        label = data[_OPEN_HEADER.size:_OPEN_HEADER.size + label_len].decode()
        protocol = data[_OPEN_HEADER.size + label_len:end].decode()
    except UnicodeDecodeError as exc:
        raise DcepError("label or protocol is not UTF-8") from exc
    return DcepOpen(
        label=label,
        protocol=protocol,
        ordered=not kind & _UNORDERED,
        max_retransmits=param if reliability == _PARTIAL_REXMIT else None,
        max_packet_lifetime=param if reliability == _PARTIAL_TIMED else None,
        priority=priority,
    )


@dataclass
class Outgoing:
    """One user message for SCTP to send on a stream."""
    stream_id: int
    ppid: int
    payload: bytes
    ordered: bool
    max_retransmits: int | None
    max_packet_lifetime: int | None


class ChannelTable:
    """Data channels by stream id; turns DCEP and user messages into events and replies."""

    def __init__(self, is_dtls_server: bool) -> None:
        # RFC 8832 section 6: the DTLS client picks even stream ids, the server odd ones.
        self._next_id = 1 if is_dtls_server else 0
        self.channels: dict[int, DataChannel] = {}
        self.events: list[DataChannelEvent] = []
        self.dropped = 0  # DCEP messages or user data we could not attribute

    def open(self, label: str, ordered: bool, max_retransmits: int | None,
             max_packet_lifetime: int | None, protocol: str) -> tuple[DataChannel, Outgoing]:
        if max_retransmits is not None and max_packet_lifetime is not None:
            raise DcepError("max_retransmits and max_packet_lifetime are exclusive")
        stream_id = self._next_id
        while stream_id in self.channels:
            stream_id += 2
        if stream_id > MAX_STREAM_ID:
            raise DcepError("no stream id left")
        self._next_id = stream_id + 2
        channel = DataChannel(stream_id, label, protocol, ordered, max_retransmits,
                              max_packet_lifetime, open=False, acked=False)
        message = DcepOpen(label, protocol, ordered, max_retransmits, max_packet_lifetime).encode()
        self.channels[stream_id] = channel
        return channel, Outgoing(stream_id, PPID_DCEP, message, True, None, None)

    def message(self, channel: DataChannel, data: bytes, binary: bool) -> Outgoing:
        if channel.closing or self.channels.get(channel.stream_id) is not channel:
            raise DcepError("data channel is closed")
        if data:
            ppid = PPID_BINARY if binary else PPID_STRING
            payload = data
        else:
            # SCTP cannot carry an empty DATA chunk: one zero byte under an "empty" PPID.
            ppid = PPID_BINARY_EMPTY if binary else PPID_STRING_EMPTY
            payload = b"\x00"
        return Outgoing(channel.stream_id, ppid, payload, channel.ordered or not channel.acked,
                        channel.max_retransmits, channel.max_packet_lifetime)

    def receive(self, stream_id: int, ppid: int, payload: bytes) -> list[Outgoing]:
        """A whole user message arrived; returns what to send in reply (DCEP ACK)."""
        channel = self.channels.get(stream_id)
        if ppid == PPID_DCEP:
            try:
                message = parse_dcep(payload)
            except DcepError:
                self.dropped += 1
                return []
            if isinstance(message, DcepAck):
                if channel is not None and not channel.acked:
                    self._acknowledged(channel)
                return []
            if (channel is not None or stream_id > MAX_STREAM_ID or len(self.channels) >= MAX_CHANNELS
                    or len(message.label) + len(message.protocol) > MAX_LABEL_LENGTH):
                self.dropped += 1
                return []
            channel = DataChannel(stream_id, message.label, message.protocol, message.ordered,
                                  message.max_retransmits, message.max_packet_lifetime, open=True)
            self.channels[stream_id] = channel
            self.events.append(ChannelOpened(channel))
            return [Outgoing(stream_id, PPID_DCEP, DcepAck().encode(), True, None, None)]
        if channel is None or ppid not in (PPID_STRING, PPID_BINARY, PPID_STRING_EMPTY, PPID_BINARY_EMPTY):
            self.dropped += 1
            return []
        if not channel.acked:
            self._acknowledged(channel)  # data from the peer implies its ACK (RFC 8832 section 6)
        empty = ppid in (PPID_STRING_EMPTY, PPID_BINARY_EMPTY)
        self.events.append(MessageReceived(channel, b"" if empty else payload,
                                           ppid in (PPID_BINARY, PPID_BINARY_EMPTY)))
        return []

    def _acknowledged(self, channel: DataChannel) -> None:
        channel.acked = True
        channel.open = True
        self.events.append(ChannelOpened(channel))

    def closed(self, stream_id: int) -> None:
        """Both directions of the stream were reset: the channel is gone."""
        channel = self.channels.pop(stream_id, None)
        if channel is not None:
            channel.open = False
            channel.closing = True
            self.events.append(ChannelClosed(channel))

    def close_all(self) -> None:
        for stream_id in list(self.channels):
            self.closed(stream_id)
