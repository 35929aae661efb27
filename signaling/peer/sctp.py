"""SCTP over DTLS for WebRTC data channels, sans-I/O: the association (handshake, timers, queues).

The subset of RFC 9260 that WebRTC uses (RFC 8841, 8831): one association per
DTLS connection, no multi-homing; with partial reliability (FORWARD-TSN, RFC
3758) and stream reset (RE-CONFIG, RFC 6525). Each SCTP packet is one DTLS
application-data record. The packet and chunk codecs live in sctp_chunks.py;
data channels and DCEP in dcep.py.

Every method takes bytes (and the current time) and returns the SCTP packets to
send; nothing here owns a socket or a clock.

The peer is untrusted: what it makes us hold is bounded in bytes (RECEIVE_BUFFER for its data,
MAX_BUFFERED_AMOUNT for ours it has not acknowledged) and in TSNs (RECEIVE_TSN_WINDOW), and a
packet costs work in proportion to what it changes (sctp_tsn.py keeps the gaps as intervals).
"""
from __future__ import annotations

import bisect
import hashlib
import hmac
import os
import struct
from collections import deque
from dataclasses import dataclass, field

from .sctp_tsn import M32, ReceivedTsns
from .dcep import (AssociationClosed, ChannelTable, DataChannel, DataChannelEvent,
                   DcepError, Outgoing)
from .sctp_chunks import (ABORT, CHUNK_HEADER_SIZE, COOKIE_ACK, COOKIE_ECHO, DATA, DATA_HEADER_SIZE, ERROR,
                          F_BEGIN, F_END, F_UNORDERED, FORWARD_TSN, HEARTBEAT, HEARTBEAT_ACK, INIT, INIT_ACK,
                          P_ADD_INCOMING_STREAMS, P_ADD_OUTGOING_STREAMS, P_FORWARD_TSN_SUPPORTED,
                          P_INCOMING_RESET, P_OUTGOING_RESET, P_RECONFIG_RESPONSE, P_STATE_COOKIE,
                          P_SUPPORTED_EXTENSIONS, PACKET_HEADER_SIZE, R_BAD_SEQ, R_DENIED, R_IN_PROGRESS,
                          R_NOTHING_TO_DO, R_PERFORMED, RECONFIG, SACK, SHUTDOWN, SHUTDOWN_ACK,
                          SHUTDOWN_COMPLETE, Chunk, DataChunk, ForwardTsnChunk, InitChunk, ResetRequest,
                          SackChunk, SctpError, encode_chunk, encode_data_chunk, encode_packet,
                          encode_reconfig_response, parse_packet, parse_params, parse_reconfig_response,
                          reconfig_request_seq)

MTU = 1188  # SCTP packet budget inside a ~1200-byte DTLS datagram path
MAX_FRAGMENT = MTU - PACKET_HEADER_SIZE - CHUNK_HEADER_SIZE - DATA_HEADER_SIZE

RTO_INITIAL, RTO_MIN, RTO_MAX = 1.0, 0.4, 10.0
MAX_INIT_RETRANSMITS = 8
MAX_RETRANSMITS = 10  # consecutive T3 expiries before the association is declared dead
DELAYED_SACK = 0.2
COOKIE_LIFETIME = 60.0
CWND = 256 * 1024
RECEIVE_BUFFER = 1024 * 1024  # our a_rwnd
MAX_STREAMS = 65535
# Streams the peer may send on (our INIT's MIS), so per-stream state stays small: LiveKit clients use a handful
# of data channels (ids from 0); dcep.MAX_CHANNELS of them use ids below 2 * 64.
MAX_INBOUND_STREAMS = 1024
# Memory every held or queued chunk costs beyond its payload bytes (its Python objects, dict and queue entries,
# the payload's bytes header), so the byte limits below also bound how many chunks are held. Measured with
# tracemalloc.get_traced_memory() around holding 20,000 one-byte chunks (CPython 3.11): a received fragment in
# _fragments ~180 B; an outgoing lossy chunk in _outstanding, _unsent and _unsent_lossy ~262 B plus its 33-byte
# bytes header. The TSNs accepted above the cumulative TSN follow from it: 3,542.
CHUNK_COST = 296
RECEIVE_TSN_WINDOW = RECEIVE_BUFFER // CHUNK_COST
# Data queued for the peer and not yet acknowledged (sent or not), in bytes with CHUNK_COST each: past it send()
# first drops the oldest unsent messages of partially reliable channels, then raises SctpBufferFull. LiveKit's
# data_channel_max_buffered_amount is off by default; browsers refuse to queue more than 16 MiB per channel. A peer
# that acknowledges nothing (a_rwnd=1) holds at most this much of ours: 3,542 chunks at the most.
MAX_BUFFERED_AMOUNT = 1024 * 1024
MAX_GAP_BLOCKS = 64  # per SACK; the first ones matter for the peer's fast retransmit
# Missing TSNs a SACK gives a miss indication, from the lowest: fast retransmit resends the earliest ones (RFC 9260
# section 7.2.4 fits one packet of them); later holes get theirs once those are filled, or T3 covers them.
MAX_MISS_INDICATIONS = 128


class SctpBufferFull(SctpError):
    """send() refused: the peer has not acknowledged MAX_BUFFERED_AMOUNT bytes of ours."""


def _held(message: DataChunk | None) -> int:
    """What a held chunk or message (None: a placeholder for one to skip) costs of the receive buffer."""
    return CHUNK_COST + (len(message.payload) if message is not None else 0)


def tsn_gt(a: int, b: int) -> bool:
    """Serial-number comparison (RFC 1982) over 32 bits."""
    return a != b and ((a - b) & M32) < 0x80000000


def ssn_gt(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFF) < 0x8000


def _merge_forward_tsns(forwards: list[ForwardTsnChunk]) -> ForwardTsnChunk:
    """One FORWARD-TSN doing what `forwards` do: the highest new cumulative TSN, the highest SSN skipped per stream."""
    new = forwards[0].new_cumulative_tsn
    ssns: dict[int, int] = {}
    for forward in forwards:
        if tsn_gt(forward.new_cumulative_tsn, new):
            new = forward.new_cumulative_tsn
        for stream, ssn in forward.streams:
            if stream not in ssns or ssn_gt(ssn, ssns[stream]):
                ssns[stream] = ssn
    return ForwardTsnChunk(new, list(ssns.items()))


# --- association -----------------------------------------------------------

@dataclass(eq=False, slots=True)
class _OutChunk:
    tsn: int
    stream: int
    ssn: int
    ppid: int
    flags: int
    payload: bytes
    max_retransmits: int | None
    expires: float | None
    message: list[_OutChunk] | None = field(default=None, repr=False)  # all fragments, when more than one
    sent_at: float | None = None  # first transmission; None once retransmitted (Karn)
    transmissions: int = 0
    acked: bool = False  # acknowledged, cumulatively or in a gap block
    abandoned: bool = False  # given up (partial reliability): a FORWARD-TSN skips it
    retransmit: bool = False  # queued for retransmission
    misses: int = 0

    @property
    def lossy(self) -> bool:
        """Of a partially reliable channel (RFC 3758): may be abandoned."""
        return self.max_retransmits is not None or self.expires is not None

    def encode(self) -> bytes:
        return encode_data_chunk(self.tsn, self.stream, self.ssn, self.ppid, self.flags, self.payload)


@dataclass
class _Peer:
    """What the peer told us in its INIT or INIT-ACK (and what our cookie carries)."""
    tag: int
    initial_tsn: int
    a_rwnd: int
    outbound_streams: int
    inbound_streams: int
    forward_tsn: bool
    reconfig: bool

    _COOKIE = struct.Struct("!dLLLHHBB")

    def pack(self, now: float) -> bytes:
        return self._COOKIE.pack(now, self.tag, self.initial_tsn, self.a_rwnd, self.outbound_streams,
                                 self.inbound_streams, self.forward_tsn, self.reconfig)

    @classmethod
    def unpack(cls, data: bytes) -> tuple[float, _Peer]:
        stamp, *fields = cls._COOKIE.unpack(data)
        return stamp, cls(*fields[:5], bool(fields[5]), bool(fields[6]))

    @classmethod
    def from_init(cls, init: InitChunk) -> _Peer:
        extensions = b""
        forward_tsn = False
        for ptype, value in init.params:
            if ptype == P_SUPPORTED_EXTENSIONS:
                extensions = value
            elif ptype == P_FORWARD_TSN_SUPPORTED:
                forward_tsn = True
        return cls(init.initiate_tag, init.initial_tsn, init.a_rwnd, init.outbound_streams,
                   init.inbound_streams, forward_tsn or FORWARD_TSN in extensions, RECONFIG in extensions)


class SctpAssociation:
    """One SCTP association carrying WebRTC data channels."""

    def __init__(self, is_server: bool, port: int = 5000, remote_port: int = 5000,
                 max_message_size: int = 65535, remote_max_message_size: int = 65536) -> None:
        self.is_server = is_server
        self.port = port
        self.remote_port = remote_port
        self.max_message_size = max_message_size
        self.remote_max_message_size = remote_max_message_size
        self.state = "new"  # new, cookie-wait, cookie-echoed, established, shutdown-ack-sent
        self.dropped = 0  # invalid packets
        self.oversized = 0  # reassembled messages over max_message_size, discarded
        self._channels = ChannelTable(is_dtls_server=is_server)
        self._now = 0.0
        self._kick = False  # something was queued outside a call that returns packets
        self._cookie_key = os.urandom(32)
        self._tag = struct.unpack("!L", os.urandom(4))[0] or 1
        self._peer: _Peer | None = None
        self._control: list[bytes] = []  # chunks, sent before SACK and DATA
        self._data_out: list[bytes] = []
        self._packets: list[bytes] = []  # whole packets (INIT must travel alone)
        self._rto = RTO_INITIAL
        self._srtt: float | None = None
        self._rttvar = 0.0
        # T1 (INIT / COOKIE-ECHO)
        self._t1: float | None = None
        self._t1_count = 0
        self._t1_chunk = b""
        # outbound data
        self._next_tsn = struct.unpack("!L", os.urandom(4))[0]
        self._initial_tsn = self._next_tsn
        self._cum_acked = (self._next_tsn - 1) & M32
        self._advanced_ack = self._cum_acked
        # Every TSN above _cum_acked, sent or not, in TSN order; a chunk's payload is let go once it is acknowledged
        # or abandoned, and the chunk once the cumulative TSN passes it.
        self._outstanding: dict[int, _OutChunk] = {}
        self._acked = ReceivedTsns(self._cum_acked, 0xFFFF)  # what the peer acknowledged, cumulatively or in gaps
        self._highest_sent = self._cum_acked
        self._unsent: deque[_OutChunk] = deque()
        self._unsent_lossy: deque[_OutChunk] = deque()  # the lossy ones among _unsent, the first to go when full
        self._retransmits: deque[_OutChunk] = deque()
        self._ssn_out: dict[int, int] = {}
        self._flight = 0
        self.buffered_amount = 0  # CHUNK_COST per outstanding chunk, plus its payload until acknowledged or abandoned
        self.evicted = 0  # unsent lossy messages dropped to make room (send backlog full)
        self._peer_rwnd = RECEIVE_BUFFER
        self._t3: float | None = None
        self._t3_count = 0
        self._forward_tsn_due = False
        self._forward_ssns: dict[int, tuple[int, int]] = {}  # stream -> (SSN, TSN) of its last abandoned message
        # inbound data
        self._tsns = ReceivedTsns(0, RECEIVE_TSN_WINDOW)
        self.beyond_window = 0  # DATA chunks dropped for a TSN past RECEIVE_TSN_WINDOW
        self.invalid_streams = 0  # DATA chunks acknowledged and discarded: stream past what we accept
        self.receive_buffer_full = 0  # DATA chunks dropped, unacknowledged, for want of room to hold them
        self._inbound_streams = MAX_INBOUND_STREAMS
        self._duplicates: list[int] = []
        self._fragments: dict[int, DataChunk] = {}
        self._fragment_order: list[int] = []  # their TSNs unwrapped (ReceivedTsns.unwrap), sorted
        self._max_fragments = max(256, 4 * max_message_size // 1024)
        self._receive_buffer = max(RECEIVE_BUFFER, 2 * max_message_size)
        self._buffered = 0  # held payload plus CHUNK_COST per held chunk or message
        self._ordered: dict[int, dict[int, DataChunk | None]] = {}
        self._ssn_in: dict[int, int] = {}
        self._sack_now = False
        self._unsacked_packets = 0
        self._sack_due: float | None = None
        # stream reset
        self._reset_queue: list[int] = []
        self._reset_request: ResetRequest | None = None
        self._reset_due: float | None = None
        self._reset_seq = self._initial_tsn
        self._peer_reset_seq = 0
        self._peer_last_response: tuple[int, int] | None = None
        self._deferred_reset: ResetRequest | None = None
        self._out_reset: set[int] = set()
        self._in_reset: set[int] = set()

    # -- public API --

    @property
    def established(self) -> bool:
        return self.state == "established"

    @property
    def channels(self) -> dict[int, DataChannel]:
        return self._channels.channels

    @property
    def channel_drops(self) -> int:
        """DCEP messages and user data refused or not attributable to an open channel."""
        return self._channels.dropped

    def start(self, now: float) -> list[bytes]:
        self._now = now
        if not self.is_server and self.state == "new":
            self._send_init()
            self.state = "cookie-wait"
        return self._flush()

    def receive(self, packet: bytes, now: float) -> list[bytes]:
        self._now = now
        try:
            self._receive(packet)
        except SctpError:
            self.dropped += 1
        return self._finish()

    def events(self) -> list[DataChannelEvent]:
        events, self._channels.events = self._channels.events, []
        return events

    def open_channel(self, label: str, ordered: bool = True, max_retransmits: int | None = None,
                     protocol: str = "", max_packet_lifetime: int | None = None) -> DataChannel:
        if self.state not in ("new", "cookie-wait", "cookie-echoed", "established"):
            raise SctpError("association is closed")
        try:
            channel, message = self._channels.open(label, ordered, max_retransmits, max_packet_lifetime, protocol)
        except DcepError as exc:
            raise SctpError(str(exc)) from exc
        self._enqueue(message)
        self._kick = True
        return channel

    def send(self, channel: DataChannel, data: bytes, binary: bool = True, now: float | None = None) -> list[bytes]:
        if now is not None:
            self._now = now
        if len(data) > self.remote_max_message_size:
            raise SctpError(f"message of {len(data)} bytes exceeds the peer's maximum")
        if self.state not in ("new", "cookie-wait", "cookie-echoed", "established"):
            raise SctpError("association is shutting down")
        fragments = max(1, -(-len(data) // MAX_FRAGMENT))
        needed = len(data) + fragments * CHUNK_COST
        while self.buffered_amount + needed > MAX_BUFFERED_AMOUNT:
            if not self._evict_lossy():
                raise SctpBufferFull(f"{self.buffered_amount} bytes unacknowledged by the peer")
        try:
            message = self._channels.message(channel, data, binary)
        except DcepError as exc:
            raise SctpError(str(exc)) from exc
        self._enqueue(message)
        return self._finish()

    def close_channel(self, channel: DataChannel) -> list[bytes]:
        if self._channels.channels.get(channel.stream_id) is not channel or channel.closing:
            return []
        channel.closing = True
        channel.open = False
        if self._peer is not None and self._peer.reconfig and self.established:
            self._queue_reset(channel.stream_id)
        else:
            self._channels.closed(channel.stream_id)
        return self._finish()

    def flush(self, now: float) -> list[bytes]:
        """Sends whatever open_channel() queued."""
        self._now = now
        return self._finish()

    def abort(self) -> list[bytes]:
        had_peer = self._peer is not None and self.state != "closed"
        self._closed("local abort")  # drops queued DATA and SACK: nothing may follow the ABORT
        if not had_peer:
            return []
        self._control.append(encode_chunk(ABORT, 0, b""))
        return self._flush()

    def timeout(self) -> float | None:
        if self._kick:
            return self._now
        deadlines = [t for t in (self._t1, self._t3, self._sack_due, self._reset_due) if t is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> list[bytes]:
        self._now = now
        if self._t1 is not None and now >= self._t1:
            self._t1_expired()
        if self._t3 is not None and now >= self._t3:
            self._t3_expired()
        if self._sack_due is not None and now >= self._sack_due:
            self._sack_now = True
        if self._reset_due is not None and now >= self._reset_due:
            self._reset_due = None  # with no request in flight, _finish sends the queued one
            if self._reset_request is not None:
                self._send_reset_request()
        return self._finish()

    # -- output --

    def _finish(self) -> list[bytes]:
        self._kick = False
        if self.established:
            self._maybe_send_reset()
            self._transmit()
            self._send_forward_tsn_if_needed()
        return self._flush()

    def _flush(self) -> list[bytes]:
        packets, self._packets = self._packets, []
        chunks = self._control
        self._control = []
        if self._data_out and self._sack_due is not None:
            self._sack_now = True  # a delayed SACK rides along with DATA for free
        if self._sack_now and self._peer is not None and self.state != "closed":
            chunks.insert(0, self._build_sack())
        chunks.extend(self._data_out)
        self._data_out = []
        if not chunks or self._peer is None:
            return packets
        batch = b""
        for chunk in chunks:
            if batch and PACKET_HEADER_SIZE + len(batch) + len(chunk) > MTU:
                packets.append(encode_packet(self.port, self.remote_port, self._peer.tag, batch))
                batch = b""
            batch += chunk
        packets.append(encode_packet(self.port, self.remote_port, self._peer.tag, batch))
        return packets

    def _send_init(self) -> None:
        init = self._our_init()
        self._t1_chunk = encode_chunk(INIT, 0, init.encode())
        self._packets.append(encode_packet(self.port, self.remote_port, 0, self._t1_chunk))
        self._t1 = self._now + self._rto

    def _our_init(self) -> InitChunk:
        return InitChunk(self._tag, self._receive_buffer, MAX_STREAMS, MAX_INBOUND_STREAMS, self._initial_tsn, [
            (P_FORWARD_TSN_SUPPORTED, b""),
            (P_SUPPORTED_EXTENSIONS, bytes([FORWARD_TSN, RECONFIG])),
        ])

    # -- input --

    def _receive(self, packet: bytes) -> None:
        src, dst, vtag, chunks = parse_packet(packet)
        if dst != self.port or src != self.remote_port:
            raise SctpError("wrong ports")
        if any(c.type == INIT for c in chunks):
            if len(chunks) != 1 or vtag != 0:
                raise SctpError("INIT must travel alone with tag 0")
        elif vtag != self._tag:
            first = chunks[0]
            reflected = first.type in (ABORT, SHUTDOWN_COMPLETE) and first.flags & 1
            if not (reflected and self._peer is not None and vtag == self._peer.tag):
                raise SctpError("bad verification tag")
        had_data = False
        # Only a packet's last SACK is current, and its highest FORWARD-TSN subsumes the others (their skipped SSNs
        # merged into it): a packet full of either costs one.
        sacks = [i for i, c in enumerate(chunks) if c.type == SACK]
        forwards = [i for i, c in enumerate(chunks) if c.type == FORWARD_TSN]
        superseded = set(sacks[:-1] + forwards[:-1])
        if len(forwards) > 1:
            merged = _merge_forward_tsns([ForwardTsnChunk.parse(chunks[i].body) for i in forwards])
            chunks[forwards[-1]] = Chunk(FORWARD_TSN, 0, merged.encode())
        for i, chunk in enumerate(chunks):
            if i in superseded:
                continue
            if chunk.type == DATA:
                had_data = True
            if not self._handle_chunk(chunk):
                break
        if had_data:
            self._unsacked_packets += 1
            if self._unsacked_packets >= 2:
                self._sack_now = True
            elif self._sack_due is None and not self._sack_now:
                self._sack_due = self._now + DELAYED_SACK

    def _handle_chunk(self, chunk: Chunk) -> bool:
        """Returns False when the rest of the packet must be skipped."""
        t = chunk.type
        if t == INIT:
            self._on_init(InitChunk.parse(chunk.body))
        elif t == INIT_ACK:
            self._on_init_ack(InitChunk.parse(chunk.body))
        elif t == COOKIE_ECHO:
            self._on_cookie_echo(chunk.body)
        elif t == COOKIE_ACK:
            if self.state == "cookie-echoed":
                self._t1 = None
                self._established()
        elif t == ABORT:
            self._closed("aborted by peer", by_peer=True)
            return False
        elif t == HEARTBEAT:
            if self._peer is not None:
                self._control.append(encode_chunk(HEARTBEAT_ACK, 0, chunk.body))
        elif not self.established:
            if t == SHUTDOWN_COMPLETE and self.state == "shutdown-ack-sent":
                self.state = "closed"
            elif t == SHUTDOWN and self.state == "shutdown-ack-sent":
                self._control.append(encode_chunk(SHUTDOWN_ACK, 0, b""))  # ours was lost
            elif t == SHUTDOWN_ACK and self._peer is not None:
                self._control.append(encode_chunk(SHUTDOWN_COMPLETE, 0, b""))
            return True  # anything else needs an established association
        elif t == DATA:
            self._on_data(DataChunk.parse(chunk.flags, chunk.body))
        elif t == SACK:
            self._on_sack(SackChunk.parse(chunk.body))
        elif t == FORWARD_TSN:
            self._on_forward_tsn(ForwardTsnChunk.parse(chunk.body))
        elif t == RECONFIG:
            self._on_reconfig(parse_params(chunk.body))
        elif t == SHUTDOWN:
            # We have nothing to drain for the peer: acknowledge at once.
            self._control.append(encode_chunk(SHUTDOWN_ACK, 0, b""))
            self._closed("shut down by peer", by_peer=True)
            self.state = "shutdown-ack-sent"
            return False
        elif t in (HEARTBEAT_ACK, ERROR, SHUTDOWN_ACK, SHUTDOWN_COMPLETE):
            pass
        elif t & 0x80 == 0:
            return False  # unknown chunk whose high bit says: stop processing the packet
        return True

    # -- association setup (RFC 9260 section 5) --

    def _cookie(self, peer: _Peer) -> bytes:
        body = peer.pack(self._now)
        return body + hmac.new(self._cookie_key, body, hashlib.sha256).digest()

    def _on_init(self, init: InitChunk) -> None:
        # Stateless answer (5.1); in COOKIE-WAIT/ECHOED this is the collision of 5.2.1, which
        # the same answer resolves because our tag never changes before establishment.
        peer = _Peer.from_init(init)
        if self.established and self._peer is not None and peer.tag != self._peer.tag:
            return  # a restart (5.2.2) is not supported: the DTLS session would be new too
        ack = self._our_init()
        ack.params.append((P_STATE_COOKIE, self._cookie(peer)))
        self._packets.append(encode_packet(self.port, self.remote_port, init.initiate_tag,
                                           encode_chunk(INIT_ACK, 0, ack.encode())))

    def _on_init_ack(self, ack: InitChunk) -> None:
        if self.state != "cookie-wait":
            return
        cookie = next((v for t, v in ack.params if t == P_STATE_COOKIE), None)
        if cookie is None:
            raise SctpError("INIT-ACK without a state cookie")
        self._adopt(_Peer.from_init(ack))
        self._t1_chunk = encode_chunk(COOKIE_ECHO, 0, cookie)
        self._control.append(self._t1_chunk)
        self._t1 = self._now + self._rto
        self._t1_count = 0
        self.state = "cookie-echoed"

    def _on_cookie_echo(self, cookie: bytes) -> None:
        size = _Peer._COOKIE.size
        if len(cookie) != size + 32:
            raise SctpError("foreign state cookie")
        if not hmac.compare_digest(hmac.new(self._cookie_key, cookie[:size], hashlib.sha256).digest(), cookie[size:]):
            raise SctpError("state cookie MAC mismatch")
        stamp, peer = _Peer.unpack(cookie[:size])
        if not stamp - 1.0 <= self._now <= stamp + COOKIE_LIFETIME:
            raise SctpError("stale state cookie")
        if self.established:
            if self._peer is None or peer.tag != self._peer.tag:
                return  # restart: unsupported
        else:
            self._adopt(peer)
            self._t1 = None
            self._established()
        self._control.insert(0, encode_chunk(COOKIE_ACK, 0, b""))

    def _adopt(self, peer: _Peer) -> None:
        self._peer = peer
        self._tsns = ReceivedTsns(peer.initial_tsn - 1, RECEIVE_TSN_WINDOW)
        self._inbound_streams = min(MAX_INBOUND_STREAMS, peer.outbound_streams)
        self._peer_reset_seq = peer.initial_tsn
        self._peer_rwnd = peer.a_rwnd

    def _established(self) -> None:
        self.state = "established"
        self._t1_chunk = b""

    def _t1_expired(self) -> None:
        self._t1_count += 1
        if self._t1_count > MAX_INIT_RETRANSMITS:
            self._t1 = None
            self._closed("association setup timed out")
            return
        self._rto = min(self._rto * 2, RTO_MAX)
        if self.state == "cookie-wait":
            self._send_init()
        elif self.state == "cookie-echoed":
            self._control.append(self._t1_chunk)
            self._t1 = self._now + self._rto
        else:
            self._t1 = None

    def _closed(self, reason: str, by_peer: bool = False) -> None:
        was_closed = self.state == "closed"
        self.state = "closed"
        self._t1 = self._t3 = self._sack_due = self._reset_due = None
        self._sack_now = False
        self._unsent.clear()
        self._unsent_lossy.clear()
        self._retransmits.clear()
        self._outstanding.clear()
        self.buffered_amount = 0
        self._data_out = []
        if not was_closed:
            self._channels.close_all()
            self._channels.events.append(AssociationClosed(reason, by_peer))

    # -- sending data --

    def _enqueue(self, message: Outgoing) -> None:
        """Assigns TSNs to the fragments of one user message."""
        stream = message.stream_id
        ssn = 0
        flags = 0
        if message.ordered:
            ssn = self._ssn_out.get(stream, 0)
            self._ssn_out[stream] = (ssn + 1) & 0xFFFF
        else:
            flags = F_UNORDERED
        expires = None
        if message.max_packet_lifetime is not None:
            expires = self._now + message.max_packet_lifetime / 1000
        payload = message.payload
        fragments: list[_OutChunk] | None = [] if len(payload) > MAX_FRAGMENT else None
        for pos in range(0, len(payload), MAX_FRAGMENT):
            f = flags
            if pos == 0:
                f |= F_BEGIN
            if pos + MAX_FRAGMENT >= len(payload):
                f |= F_END
            chunk = _OutChunk(self._next_tsn, stream, ssn, message.ppid, f, payload[pos:pos + MAX_FRAGMENT],
                              message.max_retransmits, expires, fragments)
            if fragments is not None:
                fragments.append(chunk)
            self._outstanding[chunk.tsn] = chunk
            self.buffered_amount += len(chunk.payload) + CHUNK_COST
            self._unsent.append(chunk)
            if chunk.lossy:
                self._unsent_lossy.append(chunk)
            self._next_tsn = (self._next_tsn + 1) & M32

    def _can_retransmit(self, chunk: _OutChunk) -> bool:
        if self._peer is not None and not self._peer.forward_tsn:
            return True  # the peer could not skip a gap: everything is reliable
        if chunk.expires is not None and self._now >= chunk.expires:
            return False
        return chunk.max_retransmits is None or chunk.transmissions <= chunk.max_retransmits

    def _abandon(self, chunk: _OutChunk) -> None:
        for fragment in chunk.message or (chunk,):
            if not fragment.abandoned:
                fragment.abandoned = True
                self._release(fragment)

    def _release(self, chunk: _OutChunk) -> None:
        """Lets go of the payload of a chunk acknowledged or abandoned (a second call finds none)."""
        if chunk.transmissions:
            self._flight -= len(chunk.payload)
        self.buffered_amount -= len(chunk.payload)
        chunk.payload = b""

    def _evict_lossy(self) -> bool:
        """Abandons the oldest unsent message of a partially reliable channel, to make room; False if none."""
        if self._peer is not None and not self._peer.forward_tsn:
            return False  # the peer could not skip it
        self._trim_unsent_lossy()
        if not self._unsent_lossy:
            return False
        self._abandon(self._unsent_lossy.popleft())
        self.evicted += 1
        return True

    def _trim_unsent_lossy(self) -> None:
        """Keeps _unsent_lossy to chunks still unsent (both queues are in TSN order)."""
        lossy = self._unsent_lossy
        while lossy and (lossy[0].transmissions or lossy[0].abandoned or lossy[0].acked):
            lossy.popleft()

    def _queue_retransmit(self, chunk: _OutChunk) -> None:
        if self._can_retransmit(chunk):
            if not chunk.retransmit:
                chunk.retransmit = True
                self._retransmits.append(chunk)
        else:
            self._abandon(chunk)

    def _transmit(self) -> None:
        sent_any = False
        while self._retransmits:
            chunk = self._retransmits.popleft()
            chunk.retransmit = False
            if chunk.acked or chunk.abandoned:
                continue
            if not self._can_retransmit(chunk):
                self._abandon(chunk)
                continue
            chunk.transmissions += 1
            chunk.sent_at = None
            self._data_out.append(chunk.encode())
            sent_any = True
        while self._unsent:
            chunk = self._unsent[0]
            if chunk.abandoned or chunk.acked:
                self._unsent.popleft()
                self._trim_unsent_lossy()
                continue
            if chunk.expires is not None and not self._can_retransmit(chunk):
                self._abandon(chunk)
                continue
            size = len(chunk.payload)
            if self._flight and self._flight + size > min(CWND, self._peer_rwnd):
                break
            self._unsent.popleft()
            chunk.transmissions = 1
            self._trim_unsent_lossy()
            chunk.sent_at = self._now
            self._highest_sent = chunk.tsn
            self._flight += size
            self._data_out.append(chunk.encode())
            sent_any = True
        if sent_any and self._t3 is None:
            self._t3 = self._now + self._rto

    def _on_sack(self, sack: SackChunk) -> None:
        """Costs the TSNs it newly acknowledges, plus at most MAX_MISS_INDICATIONS and its gap blocks."""
        cum = sack.cumulative_tsn
        if tsn_gt(self._cum_acked, cum):
            return  # older than what we know
        if tsn_gt(cum, (self._next_tsn - 1) & M32):
            raise SctpError("SACK acknowledges a TSN never sent")
        advanced = cum != self._cum_acked
        rtt: float | None = None
        while self._cum_acked != cum:
            self._cum_acked = (self._cum_acked + 1) & M32
            chunk = self._outstanding.pop(self._cum_acked)
            if not chunk.acked:
                if chunk.sent_at is not None and chunk.transmissions == 1:
                    rtt = self._now - chunk.sent_at
                chunk.acked = True
                if not chunk.abandoned:
                    self._release(chunk)
            self.buffered_amount -= CHUNK_COST
        self._acked.forward(cum)
        if not tsn_gt(self._advanced_ack, self._cum_acked):
            self._advanced_ack = self._cum_acked
            self._forward_ssns.clear()
        newest: int | None = None  # the highest TSN newly acknowledged in a gap block
        sent = (self._highest_sent - cum) & M32
        if sent < 0x80000000:  # gap blocks count only for what was sent (and not acknowledged cumulatively)
            for start, end in sack.gaps:
                for first, count in self._acked.add_range((cum + start) & M32, (cum + min(end, sent)) & M32):
                    for i in range(count):
                        chunk = self._outstanding[(first + i) & M32]
                        if chunk.sent_at is not None and chunk.transmissions == 1:
                            rtt = self._now - chunk.sent_at
                        chunk.acked = True
                        if not chunk.abandoned:
                            self._release(chunk)
                    last = (first + count - 1) & M32
                    if newest is None or tsn_gt(last, newest):
                        newest = last
        if newest is not None:
            # Miss indications go to missing TSNs below the highest newly acknowledged (HTNA, RFC 9260 7.2.4).
            for tsn in self._acked.missing(newest, MAX_MISS_INDICATIONS):
                chunk = self._outstanding[tsn]
                if chunk.transmissions and not chunk.abandoned:
                    chunk.misses += 1
                    if chunk.misses == 3:  # fast retransmit
                        self._queue_retransmit(chunk)
        if rtt is not None:
            self._update_rto(rtt)
        self._peer_rwnd = sack.a_rwnd  # bounds what may be in flight
        if advanced:
            self._t3_count = 0
        if self._flight <= 0 and not tsn_gt(self._advanced_ack, self._cum_acked):
            self._t3 = None
        elif advanced:
            self._t3 = self._now + self._rto

    def _update_rto(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = max(RTO_MIN, min(self._srtt + 4 * self._rttvar, RTO_MAX))

    def _t3_expired(self) -> None:
        self._t3 = None
        self._t3_count += 1
        if self._t3_count > MAX_RETRANSMITS:
            self._control.append(encode_chunk(ABORT, 0, b""))
            self._closed("peer unreachable")
            return
        self._rto = min(self._rto * 2, RTO_MAX)
        for chunk in self._outstanding.values():  # once per RTO at most
            if chunk.transmissions and not chunk.acked and not chunk.abandoned:
                self._queue_retransmit(chunk)
        self._forward_tsn_due = True
        if self._flight > 0 or tsn_gt(self._advanced_ack, self._cum_acked):
            self._t3 = self._now + self._rto

    def _send_forward_tsn_if_needed(self) -> None:
        """Moves the advanced peer ack point over abandoned chunks (RFC 3758 section 3.5)."""
        if self._peer is None or not self._peer.forward_tsn:
            return
        point = self._advanced_ack
        moved = False
        while True:  # each chunk passed once
            chunk = self._outstanding.get((point + 1) & M32)
            if chunk is None or not chunk.abandoned:
                break
            point = chunk.tsn
            moved = True
            if not chunk.flags & F_UNORDERED:
                self._forward_ssns[chunk.stream] = (chunk.ssn, chunk.tsn)
        self._advanced_ack = point
        if not tsn_gt(point, self._cum_acked) or not (moved or self._forward_tsn_due):
            self._forward_tsn_due = False
            return
        self._forward_tsn_due = False
        # Streams whose skipped message the peer has not acknowledged yet (one entry per stream used).
        streams = sorted((stream, ssn) for stream, (ssn, tsn) in self._forward_ssns.items() if tsn_gt(tsn, self._cum_acked))
        self._control.append(encode_chunk(FORWARD_TSN, 0, ForwardTsnChunk(point, streams).encode()))
        if self._t3 is None:
            self._t3 = self._now + self._rto

    # -- receiving data --

    def _on_data(self, chunk: DataChunk) -> None:
        tsn = chunk.tsn
        if tsn in self._tsns:
            if len(self._duplicates) < 16:
                self._duplicates.append(tsn)
            self._sack_now = True
            return
        if self._tsns.offset(tsn) > self._tsns.window:
            self.beyond_window += 1
            self._sack_now = True
            return  # not acknowledged: the peer sends it again once the gap below closes
        if chunk.stream >= self._inbound_streams:
            self.invalid_streams += 1  # acknowledged and discarded (RFC 9260 section 6.5)
            self._tsns.add(tsn)
            self._cumulative_moved()
            return
        cost = _held(chunk)
        if self._buffered + cost > self._receive_buffer or len(self._fragments) >= self._max_fragments:
            self.receive_buffer_full += 1
            self._sack_now = True
            return  # no room: not acknowledged, so the peer sends it again
        self._tsns.add(tsn)
        self._fragments[tsn] = chunk
        bisect.insort(self._fragment_order, self._tsns.unwrap(tsn))  # at most _max_fragments to move
        self._buffered += cost
        self._cumulative_moved()
        if self._tsns.blocks:
            self._sack_now = True  # out of order: tell the peer at once (RFC 9260 6.7)
        self._reassemble(chunk)

    def _cumulative_moved(self) -> None:
        """Finishes a stream reset that waited for the data sent before it."""
        if self._deferred_reset is not None and not tsn_gt(self._deferred_reset.last_tsn, self._tsns.cumulative):
            request, self._deferred_reset = self._deferred_reset, None
            self._reset_incoming(request.streams)
            self._peer_last_response = (request.request_seq, R_PERFORMED)
            self._control.append(encode_chunk(RECONFIG, 0, encode_reconfig_response(request.request_seq, R_PERFORMED)))

    def _same_message(self, a: DataChunk, b: DataChunk) -> bool:
        return (a.stream == b.stream and (a.flags & F_UNORDERED) == (b.flags & F_UNORDERED)
                and (a.flags & F_UNORDERED or a.ssn == b.ssn))

    def _reassemble(self, chunk: DataChunk) -> None:
        first = chunk
        while not first.flags & F_BEGIN:
            prev = self._fragments.get((first.tsn - 1) & M32)
            if prev is None or prev.flags & F_END or not self._same_message(prev, chunk):
                return
            first = prev
        last = chunk
        while not last.flags & F_END:
            nxt = self._fragments.get((last.tsn + 1) & M32)
            if nxt is None or nxt.flags & F_BEGIN or not self._same_message(nxt, chunk):
                return
            last = nxt
        parts = []
        tsn = first.tsn
        while True:
            part = self._fragments.pop(tsn)
            self._buffered -= _held(part)
            parts.append(part.payload)
            if tsn == last.tsn:
                break
            tsn = (tsn + 1) & M32
        start = bisect.bisect_left(self._fragment_order, self._tsns.unwrap(first.tsn))  # consecutive TSNs
        del self._fragment_order[start:start + len(parts)]
        payload = b"".join(parts)
        message: DataChunk | None = DataChunk(first.tsn, first.stream, first.ssn, first.ppid, first.flags, payload)
        if len(payload) > self.max_message_size:
            self.oversized += 1
            message = None
        if chunk.flags & F_UNORDERED:
            if message is not None:
                self._deliver(message)
            return
        expected = self._ssn_in.get(chunk.stream, 0)
        if ssn_gt(expected, chunk.ssn):
            return  # behind the stream: a FORWARD-TSN already skipped it
        # Room was checked for the fragments; an oversized message stays as a placeholder to skip.
        self._ordered.setdefault(chunk.stream, {})[chunk.ssn] = message
        self._buffered += _held(message)
        self._drain_ordered(chunk.stream)

    def _drain_ordered(self, stream: int) -> None:
        pending = self._ordered.get(stream)
        if not pending:
            return
        expected = self._ssn_in.get(stream, 0)
        while expected in pending:
            message = pending.pop(expected)
            self._buffered -= _held(message)
            expected = (expected + 1) & 0xFFFF
            self._ssn_in[stream] = expected
            if message is not None:
                self._deliver(message)
        if not pending:
            del self._ordered[stream]

    def _deliver(self, message: DataChunk) -> None:
        for reply in self._channels.receive(message.stream, message.ppid, message.payload):
            self._enqueue(reply)

    def _on_forward_tsn(self, fwd: ForwardTsnChunk) -> None:
        """Costs the fragments and blocks it drops and the streams it names. One past the window is applied too:
        it only skips the peer's own data."""
        self._sack_now = True
        new = fwd.new_cumulative_tsn
        if not self._tsns.forward(new):
            return  # not ahead of what we have
        passed = bisect.bisect_right(self._fragment_order, self._tsns.unwrap(new))
        for u in self._fragment_order[:passed]:
            self._buffered -= _held(self._fragments.pop(u & M32))
        del self._fragment_order[:passed]
        for stream, ssn in fwd.streams:
            expected = self._ssn_in.get(stream, 0)
            if stream >= self._inbound_streams or ssn_gt(expected, ssn):
                continue
            self._skip_ordered(stream, expected, ssn)
            self._ssn_in[stream] = (ssn + 1) & 0xFFFF
            self._drain_ordered(stream)
        self._cumulative_moved()

    def _skip_ordered(self, stream: int, expected: int, last: int) -> None:
        """Drops the messages of `stream` from `expected` through `last`, walking whichever is shorter: the
        skipped SSNs or the held messages."""
        pending = self._ordered.get(stream)
        if not pending:
            return
        skipped = ((last - expected) & 0xFFFF) + 1
        if skipped <= len(pending):
            ssns = [(expected + i) & 0xFFFF for i in range(skipped)]
        else:
            ssns = [s for s in pending if not ssn_gt(s, last)]
        for ssn in ssns:
            if ssn in pending:
                self._buffered -= _held(pending.pop(ssn))
        if not pending:
            del self._ordered[stream]

    def _build_sack(self) -> bytes:
        self._sack_now = False
        self._sack_due = None
        self._unsacked_packets = 0
        duplicates, self._duplicates = self._duplicates, []
        sack = SackChunk(self._tsns.cumulative, max(0, self._receive_buffer - self._buffered),
                         self._tsns.gap_blocks(MAX_GAP_BLOCKS), duplicates)
        return encode_chunk(SACK, 0, sack.encode())

    # -- stream reset (RFC 6525, RFC 8831 section 6.7) --

    def _queue_reset(self, stream: int) -> None:
        pending = self._reset_request.streams if self._reset_request else []
        if stream not in self._reset_queue and stream not in pending and stream not in self._out_reset:
            self._reset_queue.append(stream)

    def _maybe_send_reset(self) -> None:
        if self._reset_request is None and self._reset_queue and self._reset_due is None:
            self._reset_request = ResetRequest(self._reset_seq, (self._peer_reset_seq - 1) & M32,
                                               (self._next_tsn - 1) & M32, self._reset_queue)
            self._reset_seq = (self._reset_seq + 1) & M32
            self._reset_queue = []
            self._send_reset_request()

    def _send_reset_request(self) -> None:
        assert self._reset_request is not None
        self._control.append(encode_chunk(RECONFIG, 0, self._reset_request.encode()))
        self._reset_due = self._now + self._rto

    def _on_reconfig(self, params: list[tuple[int, bytes]]) -> None:
        for ptype, value in params:
            if ptype == P_OUTGOING_RESET:
                self._on_reset_request(ResetRequest.parse(value))
            elif ptype == P_RECONFIG_RESPONSE:
                self._on_reset_response(*parse_reconfig_response(value))
            elif ptype in (P_INCOMING_RESET, P_ADD_OUTGOING_STREAMS, P_ADD_INCOMING_STREAMS) and len(value) >= 4:
                seq = reconfig_request_seq(value)
                self._control.append(encode_chunk(RECONFIG, 0, encode_reconfig_response(seq, R_DENIED)))

    def _on_reset_request(self, request: ResetRequest) -> None:
        seq = request.request_seq
        if seq == self._peer_reset_seq:
            self._peer_reset_seq = (seq + 1) & M32
            if tsn_gt(request.last_tsn, self._tsns.cumulative):
                # Data sent before the reset is still missing: finish once it arrives.
                self._deferred_reset = request
                result = R_IN_PROGRESS
            else:
                self._reset_incoming(request.streams)
                result = R_PERFORMED
            self._peer_last_response = (seq, result)
        elif self._peer_last_response is not None and seq == self._peer_last_response[0]:
            result = self._peer_last_response[1]  # a retransmission gets the same answer
        else:
            result = R_BAD_SEQ
        self._control.append(encode_chunk(RECONFIG, 0, encode_reconfig_response(seq, result)))

    def _reset_incoming(self, streams: list[int]) -> None:
        for stream in streams or list(self._channels.channels):
            self._ssn_in.pop(stream, None)
            for message in self._ordered.pop(stream, {}).values():
                self._buffered -= _held(message)
            channel = self._channels.channels.get(stream)
            if channel is not None:
                channel.closing = True
                channel.open = False
                self._in_reset.add(stream)
                self._queue_reset(stream)  # the peer closed: close our direction too
                self._maybe_finish_close(stream)

    def _on_reset_response(self, seq: int, result: int) -> None:
        request = self._reset_request
        if request is None or seq != request.request_seq:
            return
        if result == R_IN_PROGRESS:
            # Ask again after an RTO under a fresh sequence number, as dcsctp does.
            self._reset_request = None
            self._reset_queue = request.streams + self._reset_queue
            self._reset_due = self._now + self._rto
            return
        self._reset_request = None
        self._reset_due = None
        for stream in request.streams:
            if result in (R_PERFORMED, R_NOTHING_TO_DO):
                self._ssn_out.pop(stream, None)
                self._out_reset.add(stream)
                self._maybe_finish_close(stream)
            else:
                self._out_reset.discard(stream)
                self._in_reset.discard(stream)
                self._channels.closed(stream)

    def _maybe_finish_close(self, stream: int) -> None:
        if stream in self._out_reset and stream in self._in_reset:
            self._out_reset.discard(stream)
            self._in_reset.discard(stream)
            self._channels.closed(stream)
