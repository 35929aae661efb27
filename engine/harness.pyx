"""Harness: drives a DownTrack's Forwarder and Munger and a transport's BWE from Python, for tests (no sockets,
no SRTP, no event loop; a stream's framer has its own class, engine/framer.pyx).

A DownTrackHarness is one Receiver with one DownTrack (and, with `dd_id`, the Receiver's Dependency Descriptor). `push` hands it a packet as demux.pyx would (parsed into an
ExtPacket by the same codec code) and runs it through the same calls as fanout.pyx: forwarder_accept, munger_map,
downtrack_write. What comes out is exactly the RTP packet the subscriber would get, before SRTP."""
from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc

from engine.bwe cimport (Bwe, BwePacketResult, bwe_congested, bwe_estimate_bps, bwe_init, bwe_loss_fraction,
                         bwe_on_feedback, bwe_on_remb, bwe_on_sent, bwe_probe_result_bps, bwe_probe_start,
                         bwe_probe_status, bwe_state, bwe_take_change)
from engine.codecs.describe cimport codec_id, describe_dd, describe_packet
from engine.downtrack cimport (MAX_TEMPORAL, WRITE_GROWTH, WRITE_MEDIA, WRITE_PADDING, WRITE_RTX, DownTrack,
                               SeqMapEntry, downtrack_free, downtrack_lose_layer, downtrack_map_extension,
                               downtrack_new, downtrack_write)
from engine.forwarder cimport (FORWARD_DROP_TEMPORAL, FORWARD_PASS, FORWARD_SWITCHED, forwarder_accept,
                               forwarder_set_cap, forwarder_set_paused, forwarder_target)
from engine.munger cimport DROP_PADDING, munger_drop, munger_map, munger_sent
from engine.packet cimport ExtPacket, packet_set
from engine.receiver cimport MAX_LAYERS, Receiver, receiver_free, receiver_new
from engine.rtp cimport parse_rtp
from engine.state cimport Transport


cdef class DownTrackHarness:
    """One subscriber's DownTrack on a `layers`-layer Receiver of `codec`. Times are seconds (any origin). `extmap`
    and `extmap_allow_mixed` renumber header extensions as Engine.add_downtrack's do (none: all stripped). `dd_id`:
    the publisher's Dependency Descriptor extension id (0 = none), which the Forwarder then selects by."""

    cdef Receiver *r
    cdef DownTrack *d

    def __cinit__(self, str codec="vp8", bint video=True, int layers=1, int clock_rate=90000, int ssrc=0xD0D0,
                  int payload_type=100, int rtx_ssrc=0, int rtx_payload_type=0, int transport_cc_id=0,
                  int abs_send_time_id=0, dict extmap=None, bint extmap_allow_mixed=False, int dd_id=0):
        if not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"1 to {MAX_LAYERS} layers")
        if not 0 <= dd_id < 256:
            raise ValueError("dd_id is an extension id, 1..255, or 0")
        self.r = receiver_new(video, layers, dd_id != 0)
        self.d = downtrack_new()
        if self.r == NULL or self.d == NULL:
            raise MemoryError()
        self.r.ext_dd = dd_id
        self.r.codec = codec_id(codec)
        self.r.clock_rate = clock_rate
        self.d.ssrc = ssrc
        self.d.payload_type = payload_type & 0x7F
        self.d.rtx_ssrc = rtx_ssrc
        self.d.rtx_payload_type = rtx_payload_type & 0x7F
        if not (0 <= transport_cc_id < 15 and 0 <= abs_send_time_id < 15):
            raise ValueError("extension ids are 1..14 or 0")
        self.d.ext_transport_cc = transport_cc_id  # written as 0: the harness keeps no send history
        self.d.ext_abs_send_time = 0 if transport_cc_id else abs_send_time_id  # as Engine.add_downtrack
        self.d.ext_mixed = extmap_allow_mixed
        for source, target in (extmap or {}).items():
            if 0 <= source < 256 and 0 <= target < 256:
                downtrack_map_extension(self.d, source, target)
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

    def set_max_layer(self, int layer, bint cut=False) -> None:
        """The cap on the target layer (Engine.set_target_layer, `cut` as there)."""
        forwarder_set_cap(self.d, layer, -1, cut)

    def set_max_temporal(self, int temporal) -> None:
        """The cap on the temporal layer (Engine.set_target_layer's `temporal`)."""
        forwarder_set_cap(self.d, self.d.max_layer, max(0, temporal), False)

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

    @property
    def current_temporal(self) -> int:
        return self.d.current_temporal

    @property
    def current_spatial(self) -> int:
        return self.d.current_spatial

    @property
    def dd_target(self) -> int:
        """The decode target forwarded (Dependency Descriptor streams), -1 = none."""
        return self.d.dd_target

    @property
    def spatial_switches(self) -> int:
        return self.d.spatial_switches

    @property
    def temporal_dropped(self) -> int:
        return self.d.temporal_dropped

    @property
    def temporal_padding(self) -> int:
        return self.d.temporal_padding

    @property
    def temporal_switches(self) -> int:
        return self.d.temporal_switches

    def push(self, bytes packet, int layer, double now) -> bytes | None:
        """The packet the subscriber gets for `packet` (unprotected RTP) arriving on `layer` at `now` (and sent at
        once: its abs-send-time), or None when the Forwarder or the Munger drops it; for a late packet of a dropped
        temporal layer, the padding-only packet sent in its place. ValueError for a packet that demux would drop as
        malformed."""
        cdef ExtPacket p
        cdef const SeqMapEntry *e
        cdef SeqMapEntry slot
        cdef int verdict, length, kind = WRITE_MEDIA
        if not 0 <= layer < self.r.num_layers:
            raise ValueError(f"no layer {layer}")
        if parse_rtp(packet, len(packet), &p.h) < 0:
            raise ValueError("not a valid RTP packet")
        packet_set(&p, packet, len(packet), self.r, layer, <int64_t>(now * 1000000))
        describe_packet(&p, self.r.codec, self.r.is_video)
        describe_dd(&p)
        verdict = forwarder_accept(self.d, &p, p.arrival_us)
        if verdict == FORWARD_DROP_TEMPORAL:
            if munger_drop(self.d, &p, &slot) != DROP_PADDING:
                return None
            e, kind = &slot, WRITE_PADDING
            self.d.temporal_padding += 1
        elif verdict != FORWARD_PASS and verdict != FORWARD_SWITCHED:
            return None
        else:
            e = munger_map(self.d, &p, p.arrival_us)
            if e == NULL:
                return None
            self.d.packets += 1
        out = bytearray(p.h.header_length + p.h.payload_length + WRITE_GROWTH)
        length = downtrack_write(self.d, &p, e, kind, 0, p.arrival_us, out)
        return bytes(out[:length])


    def resend(self, bytes packet, int out_seq, double now) -> bytes | None:
        """The retransmission of `packet` (as the publisher sent it) that a NACK of `out_seq` gets, as feedback.pyx
        writes it (its descriptor not parsed again); None when the seq map no longer knows `out_seq`."""
        cdef ExtPacket p
        cdef const SeqMapEntry *e = munger_sent(self.d, <uint16_t>out_seq)
        cdef int length
        if e == NULL or parse_rtp(packet, len(packet), &p.h) < 0:
            return None
        packet_set(&p, packet, len(packet), self.r, e.layer, <int64_t>(now * 1000000))
        describe_packet(&p, self.r.codec, self.r.is_video)
        out = bytearray(p.h.header_length + p.h.payload_length + WRITE_GROWTH)
        length = downtrack_write(self.d, &p, e, WRITE_RTX if self.d.rtx_ssrc else WRITE_MEDIA, 0, p.arrival_us, out)
        return bytes(out[:length])


BWE_STATE_BYTES = sizeof(Bwe)   # what a Transport embedding the estimator grows by

cdef Transport _transport       # read for its layout only
# Where what fanout_send reads or writes per packet ends in a Transport (`path` is the last of it; the send history's
# header is among it): state.pxd keeps it within the struct's first two cache lines.
TRANSPORT_PER_PACKET_BYTES = <size_t>(<char *>&_transport.path - <char *>&_transport) + sizeof(_transport.path)


cdef class BweHarness:
    """One transport's bandwidth estimator (engine/bwe.pyx), fed with synthetic feedback. Times are microseconds."""

    cdef Bwe b

    def __cinit__(self, long long start_bps=300000, long long now=0):
        bwe_init(&self.b, start_bps, now)

    def feedback(self, list results, long long now) -> None:
        """One TWCC report: (seq, send_us, size, arrival_us or None when lost, probe cluster or -1) tuples."""
        cdef BwePacketResult *batch = <BwePacketResult *>malloc(max(len(results), 1) * sizeof(BwePacketResult))
        cdef int i
        if batch == NULL:
            raise MemoryError()
        try:
            for i, (seq, send_us, size, arrival_us, cluster) in enumerate(results):
                batch[i].seq = seq
                batch[i].send_us = send_us
                batch[i].size = size
                batch[i].received = arrival_us is not None
                batch[i].arrival_us = arrival_us if arrival_us is not None else 0
                batch[i].probe_cluster = cluster
            bwe_on_feedback(&self.b, batch, len(results), now)
        finally:
            free(batch)

    def remb(self, long long bps, long long now) -> None:
        bwe_on_remb(&self.b, bps, now)

    def sent(self, int payload_bytes, long long now) -> None:
        """A packet sent with abs-send-time (the REMB path's sent bitrate)."""
        bwe_on_sent(&self.b, payload_bytes, now)

    def probe_start(self, int cluster_id, long long target_bps, long long now, long long duration_us=0) -> None:
        """`duration_us` 0: the cluster has no second half of its own to judge."""
        bwe_probe_start(&self.b, cluster_id, target_bps, duration_us, now)

    def probe_status(self, int cluster_id, long long now) -> str:
        return ("unknown", "pending", "succeeded", "failed")[bwe_probe_status(&self.b, cluster_id, now)]

    def probe_result_bps(self, int cluster_id) -> int:
        return bwe_probe_result_bps(&self.b, cluster_id)

    def congested(self, long long now) -> bool:
        return bwe_congested(&self.b, now)

    def take_change(self) -> bool:
        return bwe_take_change(&self.b)

    @property
    def estimate_bps(self) -> int:
        return bwe_estimate_bps(&self.b)

    @property
    def state(self) -> str:
        return ("normal", "overusing", "underusing")[bwe_state(&self.b)]

    @property
    def loss_fraction(self) -> float:
        return bwe_loss_fraction(&self.b)

    @property
    def stats(self) -> dict:
        """Counters and internals, for assertions on bounds and cost."""
        return {"reports": self.b.reports, "packets": self.b.packets, "lost": self.b.lost,
                "duplicates": self.b.duplicates, "stale": self.b.stale, "invalid": self.b.invalid,
                "overuses": self.b.overuses, "decreases": self.b.decreases, "rembs": self.b.rembs,
                "remb_ignored": self.b.remb_ignored,
                "probes_succeeded": self.b.probes_succeeded, "probes_failed": self.b.probes_failed,
                "ops": self.b.ops, "threshold_ms": self.b.threshold_ms, "delay_rate_bps": self.b.delay_rate_bps,
                "loss_rate_bps": self.b.loss_rate_bps, "rtt_ms": self.b.rtt_ms, "slope": self.b.slope}


