# DownTrack: one subscriber's copy of a Receiver's track. The Forwarder decides which layer's packets pass (switching
# only at a keyframe of the target layer); the Munger rewrites SSRC, sequence numbers, timestamps, payload type and
# VP8 picture id / TL0PICIDX so the subscriber sees one seamless stream; the seq map answers NACKs. C-level, nogil.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine.receiver cimport Layer
from engine.rtp cimport RtpHeader, Vp8Descriptor

cdef enum:
    SEQMAP_SIZE = 1024        # output packets remembered for NACK (a power of two)
    WRITE_GROWTH = 6          # downtrack_write may add this much to the input: extension header + RTX OSN

cdef enum:  # forwarder_accept results
    FORWARD_DROP
    FORWARD_PASS
    FORWARD_SWITCHED          # passes, and the current layer just changed to another one

cdef struct SeqMapEntry:
    bint valid
    uint16_t out_seq
    uint16_t in_seq
    uint8_t layer
    uint32_t out_ts
    int32_t out_pid           # -1 = no picture id
    int32_t out_tl0           # -1 = no TL0PICIDX
    int64_t last_rtx_us       # when it was last retransmitted, 0 = never

cdef struct DownTrack:
    int64_t id
    int receiver              # Engine slots
    int transport
    uint32_t ssrc
    uint32_t rtx_ssrc         # 0 = no RTX: NACKed packets are resent as they were
    uint8_t payload_type
    uint8_t rtx_payload_type
    uint8_t ext_map[256]      # publisher extension id -> subscriber id, 0 = strip
    # Forwarder
    int current_layer         # -1 = waiting for a first keyframe
    int max_layer             # cap on the target (the StreamAllocator's hook)
    bint paused               # forwards nothing (unsubscribed view, server mute); resumes at a keyframe
    # Munger
    bint started
    uint16_t switch_seq       # first input seq of the current layer (trailing the newest): older ones never pass
    uint16_t seq_offset
    uint32_t ts_offset
    int32_t pid_offset
    int32_t tl0_offset
    uint16_t last_out_seq
    uint32_t last_out_ts
    int32_t last_out_pid
    int32_t last_out_tl0
    int64_t last_forward_us
    uint16_t rtx_seq
    int64_t rtx_window_us     # start of the current retransmission budget window
    int rtx_window_count      # retransmissions in that window
    SeqMapEntry *seqmap
    # stats
    uint64_t packets
    uint64_t octets           # payload bytes, for SR
    uint64_t layer_switches
    uint64_t nacks_received
    uint64_t retransmissions
    uint64_t plis_received
    uint64_t keyframe_requests
    uint64_t dropped

# A DownTrack waiting for its first keyframe; NULL when out of memory.
cdef DownTrack *downtrack_new() noexcept nogil
cdef void downtrack_free(DownTrack *d) noexcept nogil
# The current layer's stream was replaced (new publisher SSRC): wait for a new start point (a keyframe for video)
# and re-anchor there, so the output numbering continues from the last packet sent.
cdef void downtrack_lose_layer(DownTrack *d) noexcept nogil
# Forwarder: FORWARD_* for a packet of layer `l`. Video (`gated`) switches only to `target` and only at a keyframe;
# audio passes everything. A switch sets the Munger's offsets so the output continues from the last packet sent.
cdef int forwarder_accept(DownTrack *d, int l, int target, bint gated, bint keyframe, const RtpHeader *h,
                          const Vp8Descriptor *vp8, bint has_vp8, uint32_t clock_rate, int64_t now) noexcept nogil
# Munger: the accepted packet's output numbering, remembered for NACKs. NULL when it is dropped instead (in-order
# padding-only packets: the offset absorbs them so the output has no gap, and older input is no longer accepted).
cdef const SeqMapEntry *munger_map(DownTrack *d, int l, const RtpHeader *h, const Vp8Descriptor *vp8,
                                   bint has_vp8, int64_t now) noexcept nogil
# What was sent as `out_seq`, or NULL when that is no longer known.
cdef SeqMapEntry *downtrack_sent(const DownTrack *d, uint16_t out_seq) noexcept nogil
# Writes the packet `buf` as mapped by `e` (or, with as_rtx, its RFC 4588 retransmission) into `out`, which has room
# for h.header_length + h.payload_length + WRITE_GROWTH bytes; returns the length.
cdef int downtrack_write(DownTrack *d, const uint8_t *buf, const RtpHeader *h, const SeqMapEntry *e,
                         const Vp8Descriptor *vp8, bint has_vp8, bint as_rtx, uint8_t *out) noexcept nogil
# The output RTP time of `now`, for SR: from the publisher's SR on the current layer when known, else extrapolated
# from the last packet sent.
cdef uint32_t downtrack_rtp_time(const DownTrack *d, const Layer *current, uint32_t clock_rate, int64_t now) noexcept nogil
