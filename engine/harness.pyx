"""Harness: drives a DownTrack's Forwarder and Munger from Python, for tests (no sockets, no SRTP, no event loop).

A DownTrackHarness is one Receiver with one DownTrack. `push` hands it a packet as demux.pyx would (parsed into an
ExtPacket by the same codec code) and runs it through the same calls as fanout.pyx: forwarder_accept, munger_map,
downtrack_write. What comes out is exactly the RTP packet the subscriber would get, before SRTP."""
from libc.stdint cimport int64_t, uint8_t

from engine.codecs.describe cimport codec_id, describe_packet
from engine.downtrack cimport WRITE_GROWTH, DownTrack, SeqMapEntry, downtrack_free, downtrack_lose_layer, downtrack_new, downtrack_write
from engine.forwarder cimport FORWARD_DROP, FORWARD_PAUSED, forwarder_accept, forwarder_set_paused, forwarder_target
from engine.munger cimport munger_map
from engine.packet cimport ExtPacket, packet_set
from engine.receiver cimport MAX_LAYERS, Receiver, receiver_free, receiver_new
from engine.rtp cimport parse_rtp


cdef class DownTrackHarness:
    """One subscriber's DownTrack on a `layers`-layer Receiver of `codec`. Times are seconds (any origin)."""

    cdef Receiver *r
    cdef DownTrack *d

    def __cinit__(self, str codec="vp8", bint video=True, int layers=1, int clock_rate=90000, int ssrc=0xD0D0,
                  int payload_type=100, int rtx_ssrc=0, int rtx_payload_type=0):
        if not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"1 to {MAX_LAYERS} layers")
        self.r = receiver_new(video, layers)
        self.d = downtrack_new()
        if self.r == NULL or self.d == NULL:
            raise MemoryError()
        self.r.codec = codec_id(codec)
        self.r.clock_rate = clock_rate
        self.d.ssrc = ssrc
        self.d.payload_type = payload_type & 0x7F
        self.d.rtx_ssrc = rtx_ssrc
        self.d.rtx_payload_type = rtx_payload_type & 0x7F
        self.d.max_layer = MAX_LAYERS - 1
        self.live_layers = 1  # layer 0 only, until told otherwise

    def __dealloc__(self):
        if self.r != NULL:
            receiver_free(self.r)
        if self.d != NULL:
            downtrack_free(self.d)

    @property
    def live_layers(self) -> int:
        """Bit l set = layer l is live (has recent packets): the Forwarder aims at the best live layer under the cap."""
        return self.r.live_layers

    @live_layers.setter
    def live_layers(self, int mask):
        cdef int l
        self.r.live_layers = mask & ((1 << self.r.num_layers) - 1)
        self.r.top_layer = -1
        for l in range(self.r.num_layers):
            if self.r.live_layers & (1 << l):
                self.r.top_layer = l

    def set_max_layer(self, int layer) -> None:
        """The cap on the target layer (Engine.set_target_layer)."""
        self.d.max_layer = max(0, min(layer, MAX_LAYERS - 1))

    def set_paused(self, bint paused) -> bool:
        """As Engine.set_paused; True when forwarding resumes (the engine then requests a keyframe)."""
        return forwarder_set_paused(self.d, paused)

    def lose_layer(self) -> None:
        """The publisher replaced the current layer's stream (a new SSRC): wait for a new start point."""
        downtrack_lose_layer(self.d)

    @property
    def target_layer(self) -> int:
        return forwarder_target(self.d, self.r)

    @property
    def current_layer(self) -> int:
        return self.d.current_layer

    @property
    def dropped(self) -> int:
        return self.d.dropped

    @property
    def layer_switches(self) -> int:
        return self.d.layer_switches

    def push(self, bytes packet, int layer, double now) -> bytes | None:
        """The packet the subscriber gets for `packet` (unprotected RTP) arriving on `layer` at `now`, or None when
        the Forwarder or the Munger drops it. ValueError for a packet that demux would drop as malformed."""
        cdef ExtPacket p
        cdef const SeqMapEntry *e
        cdef int verdict, length
        if not 0 <= layer < self.r.num_layers:
            raise ValueError(f"no layer {layer}")
        if parse_rtp(packet, len(packet), &p.h) < 0:
            raise ValueError("not a valid RTP packet")
        packet_set(&p, packet, len(packet), self.r, layer, <int64_t>(now * 1000000))
        describe_packet(&p, self.r.codec, self.r.is_video)
        verdict = forwarder_accept(self.d, &p, p.arrival_us)
        if verdict == FORWARD_DROP or verdict == FORWARD_PAUSED:
            return None
        e = munger_map(self.d, &p, p.arrival_us)
        if e == NULL:
            return None
        out = bytearray(p.h.header_length + p.h.payload_length + WRITE_GROWTH)
        length = downtrack_write(self.d, &p, e, False, out)
        self.d.packets += 1
        return bytes(out[:length])
