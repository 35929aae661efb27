"""RTP packets of one stream as the recorder receives them: the fixed header parsed (RFC 3550), and a jitter buffer
that puts them back in sequence order and says where packets were lost. Sans-I/O: the caller passes the time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

# A missing packet is given up for lost once a later one has waited this long (s): the SFU forwards a packet the
# publisher resent after a NACK (one round trip upstream, typically < 100 ms) out of order, and a recording can wait.
REORDER_DELAY = 0.3
# Packets held at most; past it the oldest gap is given up at once (bounded memory: ~600 KB of video).
MAX_BUFFERED = 512


class RtpError(ValueError):
    """Not a well-formed RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def is_rtcp(data: bytes) -> bool:
    """RFC 5761: packet types 192-223 (SR, RR, SDES, BYE, feedback) where RTP would have its payload type."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    if len(data) < 12 or data[0] >> 6 != 2:
        raise RtpError("not RTP version 2")
    offset = 12 + 4 * (data[0] & 0x0F)  # CSRCs
    if data[0] & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if len(data) < offset + 4:
            raise RtpError("truncated header extension")
        offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
    end = len(data)
    if data[0] & 0x20:  # padding: its last byte counts it
        end -= data[-1]
    if offset > end:
        raise RtpError("header or padding longer than the packet")
    return RtpPacket(data[1] & 0x7F, bool(data[1] & 0x80), int.from_bytes(data[2:4], "big"),
                     int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big"), data[offset:end])


class JitterBuffer:
    """Reorders one stream by sequence number (16-bit, unwrapped). `pop` yields packets in order with `lost_before`
    set when packets before it were given up; late and duplicate packets are dropped and counted."""

    def __init__(self, delay: float = REORDER_DELAY, capacity: int = MAX_BUFFERED) -> None:
        self._delay = delay
        self._capacity = capacity
        self._packets: dict[int, tuple[float, RtpPacket]] = {}  # extended sequence number -> (arrival, packet)
        self._highest: int | None = None
        self._next: int | None = None  # the next extended number to hand out
        self.late = 0
        self.duplicates = 0
        self.lost = 0

    def push(self, packet: RtpPacket, now: float) -> None:
        if self._highest is None:
            extended = packet.sequence
            self._next = extended
        else:
            delta = (packet.sequence - self._highest) & 0xFFFF
            extended = self._highest + (delta - 0x10000 if delta >= 0x8000 else delta)
        assert self._next is not None
        if extended < self._next:
            self.late += 1
            return
        if extended in self._packets:
            self.duplicates += 1
            return
        if extended - self._next >= 0x8000:  # a jump no reordering explains (the stream restarted): start over there
            self.lost += len(self._packets)
            self._packets.clear()
            self._next = extended
        self._packets[extended] = (now, packet)
        self._highest = extended if self._highest is None else max(self._highest, extended)

    def pop(self, now: float, flush: bool = False) -> Iterator[tuple[RtpPacket, bool]]:
        """The packets that are due: in order, waiting at a gap until REORDER_DELAY (or the capacity, or `flush`)
        gives the missing ones up."""
        lost_before = False
        while self._packets:
            assert self._next is not None
            entry = self._packets.pop(self._next, None)
            if entry is None:
                oldest = min(self._packets)
                if not (flush or len(self._packets) >= self._capacity or now - self._packets[oldest][0] >= self._delay):
                    return
                self.lost += oldest - self._next
                self._next = oldest
                lost_before = True
                continue
            self._next += 1
            yield entry[1], lost_before
            lost_before = False
