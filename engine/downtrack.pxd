# DownTrack: one subscriber's copy of a Receiver's track: its state (the Forwarder's, forwarder.pxd, and the Munger's,
# munger.pxd), its lifecycle, and writing its packets (media or RFC 4588 RTX) into a send buffer. C-level, nogil.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine.packet cimport ExtPacket

cdef enum:
    SEQMAP_SIZE = 1024        # output packets remembered for NACK (a power of two)
    WRITE_GROWTH = 20         # downtrack_write may add this much to the input: rewrite_header's REWRITE_GROWTH (16,
                              # rtp.pxd) + RTX OSN (2), rounded up
    MAX_TEMPORAL = 4          # temporal layer ids 0..3 (VP8's TID is two bits); a cap of MAX_TEMPORAL - 1 = all
    SEQ_RUNS = 32             # Munger offset changes remembered, so late packets map as their neighbours did (a
                              # power of two; a 30 fps L1T3 camera capped to T0 or T1 drops 7.5 or 15 runs of
                              # pictures a second: 2-4 s of reordering)
    SWITCH_HORIZON = 8192     # packets this far behind the newest one are too late to forward anyway
    DD_HISTORY = 256          # Dependency Descriptor frames whose verdict a DownTrack remembers (a power of two; at
                              # 30 fps L3T3, 2.8 s: a frame's late packets and its references are decided within it)

cdef enum:  # DdVerdict.state
    DD_UNKNOWN
    DD_FORWARDED
    DD_DROPPED

cdef struct DdVerdict:
    uint16_t frame            # the frame number it is about (entries are indexed by its low bits)
    uint8_t state

cdef enum:  # what downtrack_write makes of a packet
    WRITE_MEDIA
    WRITE_RTX                 # its RFC 4588 retransmission
    WRITE_PADDING             # a padding-only packet in its place (its number, nothing of its payload)

cdef struct SeqRun:
    # From input sequence number `start` on (until the next run), output numbers are the input's minus these.
    uint16_t start
    uint16_t seq_offset
    int32_t pid_offset

cdef struct SeqMapEntry:
    # One packet as the Munger numbered it for the subscriber, so its NACK can be answered from the Receiver's cache.
    # 24 bytes: every forwarded packet writes one, to a line of its DownTrack's map that is cold by then.
    int64_t last_rtx_us       # when it was last retransmitted, 0 = never
    uint32_t out_ts
    uint16_t out_seq
    uint16_t in_seq
    int16_t out_pid           # VP8's 15-bit picture id, -1 = none
    int16_t out_tl0           # VP8's 8-bit TL0PICIDX, -1 = none
    uint8_t layer
    uint8_t valid
    uint8_t marker            # set the RTP marker: the end of the highest spatial layer forwarded of a picture (SVC)
    uint8_t spatial           # its spatial id (an SVC stream's; a simulcast layer's own index otherwise)

cdef struct DownTrack:
    # Fields every forwarded packet reads or writes come first (the struct is cache-line aligned), ext_map's low ids
    # next to them: at hundreds of subscribers a DownTrack is cold at each frame's first packet, so this keeps that
    # packet's misses to a few lines.
    int64_t id
    int receiver              # EngineState slots
    int transport
    uint32_t ssrc
    uint32_t rtx_ssrc         # 0 = no RTX: NACKed packets are resent as they were
    uint8_t payload_type
    uint8_t rtx_payload_type
    uint8_t red_payload_type  # the subscriber's RED payload type, when the Receiver's RED is forwarded as it is
    bint red_strip            # the Receiver's RED is sent as its primary Opus block (the subscriber has no RED),
                              # with lost packets recovered from the redundant blocks (fanout.pyx)
    bint ext_mixed            # the subscriber negotiated a=extmap-allow-mixed: a packet whose elements do not all
                              # fit the one-byte form gets the two-byte form (rtp.pxd rewrite_header)
    uint8_t ext_transport_cc  # the subscriber's transport-cc id: we write the transport's next number, 0 = none
    uint8_t ext_abs_send_time # without transport-cc, the subscriber's abs-send-time id: we write the send time (its
                              # receive-side estimator answers with REMB), 0 = none
    # Forwarder (forwarder.pyx)
    int current_layer         # -1 = waiting for a first keyframe
    int max_layer             # cap on the target (the StreamAllocator's hook)
    bint cut                  # the current layer, above the cap, is dropped until the switch (a bandwidth
                              # step-down: its packets would only fill the queue the lower layer's keyframe must pass)
    bint paused               # forwards nothing (unsubscribed view, server mute); resumes at a keyframe
    uint16_t switch_seq       # first input seq of the current layer (trailing the newest): older ones never pass
    int max_temporal          # cap on the temporal layer (the StreamAllocator's hook); MAX_TEMPORAL - 1 = all
    int current_temporal      # highest temporal id passing now; -1 = chosen at the next keyframe
    int current_spatial       # SVC: highest spatial id passing now (max_layer is its cap), or, while a cut waits for
                              # the keyframe (current_layer -1), the one passing before; -1 = chosen at a keyframe
    # Munger (munger.pyx)
    bint started
    uint16_t seq_offset
    uint32_t ts_offset
    int32_t pid_offset
    int32_t tl0_offset
    uint16_t last_out_seq
    uint32_t last_out_ts
    int32_t last_out_pid
    int32_t last_out_tl0
    int64_t last_forward_us
    uint16_t highest_in       # newest input seq of the current layer, forwarded or dropped
    int32_t last_dropped_pid  # picture id of the last picture dropped (its further packets take no new id), -1 none
    int run_newest
    int run_count
    SeqMapEntry *seqmap
    uint64_t packets
    uint64_t octets           # payload bytes, for SR
    uint64_t dropped          # (every packet of a simulcast layer not forwarded counts)
    uint8_t ext_map[256]      # publisher extension id -> subscriber id, 0 = strip (the publisher's transport-cc
                              # always: its numbers are not ours); ids over 14 only with ext_mixed
    SeqRun runs[32]           # SEQ_RUNS, a ring: runs[run_newest] applies to new input
    # RTX (feedback.pyx answers NACKs; downtrack_write numbers the RTX stream)
    uint16_t rtx_seq
    int64_t rtx_window_us     # start of the current retransmission budget window
    int rtx_window_count      # retransmissions in that window
    # Dependency Descriptor selection (forwarder.pyx dd_accept), per frame
    int dd_target             # the decode target forwarded, -1 = none (waiting for a structure)
    uint32_t dd_broken        # bit c: chain c lost a frame for this subscriber; its targets wait for a frame that
                              # restarts it (chain diff 0: a keyframe)
    uint32_t dd_last_ts       # RTP timestamp of the newest frame decided: the target changes at a new temporal unit
    uint16_t dd_newest        # the newest frame number decided
    bint dd_overshoot         # the target is above the caps: none within them is decodable before a keyframe
    # Dependency Descriptor rewriting (downtrack.pyx rewrite_dd)
    bint dd_mask_narrowed     # the subscriber's decoder was told a mask narrower than the publisher's: the mask is
                              # written on every packet until a structure passes with the publisher's own
    uint16_t dd_frame_offset  # output frame number = input - this: 0 but after a switch to another source stream
                              # (munger_anchor), so the numbers continue from the last frame sent
    uint16_t dd_last_frame    # the newest output frame number sent
    uint32_t dd_ssrc          # the publisher stream whose frame numbers are sent (a new one is a new numbering)
    DdVerdict dd_frames[256]  # DD_HISTORY, by frame number
    # stats
    uint64_t layer_switches
    uint64_t nacks_received
    uint64_t retransmissions
    uint64_t plis_received
    uint64_t keyframe_requests
    uint64_t temporal_dropped # packets above the temporal layer, dropped without leaving a gap
    uint64_t temporal_padding # such packets that arrived after later ones were sent: padding took their number
    uint64_t temporal_switches
    uint64_t red_recovered    # red_strip: packets rebuilt from redundant blocks (their own was lost upstream)
    uint64_t spatial_switches # SVC spatial layer changes
    # the subscriber's last RTCP report block about this stream (reports.pyx), for connection quality
    uint64_t rr_blocks        # report blocks received
    uint32_t rr_highest       # extended highest sequence number it received
    int32_t rr_lost           # cumulative packets it lost
    uint32_t rr_jitter        # interarrival jitter, RTP timestamp units
    bint rr_has_rtt
    int64_t rr_rtt_us         # round trip from the block's LSR/DLSR (RFC 3550 6.4.1)

# A DownTrack waiting for its first keyframe; NULL when out of memory.
cdef DownTrack *downtrack_new() noexcept nogil
cdef void downtrack_free(DownTrack *d) noexcept nogil
# The current layer's stream was replaced (new publisher SSRC) or forwarding resumes after a pause: wait for a new
# start point (a keyframe for video) and re-anchor there, so the output numbering continues from the last packet sent.
cdef void downtrack_lose_layer(DownTrack *d) noexcept nogil
# Forwards the publisher's extension id `source` as the subscriber's `target` (0 = strip). Out-of-range ids are
# ignored, and so are targets over 14 unless d.ext_mixed is set (the one-byte form cannot carry them).
cdef void downtrack_map_extension(DownTrack *d, int source, int target) noexcept nogil
# The subscriber's value of `p`'s Dependency Descriptor, written into `value` (room for its length + DD_GROWTH):
# its frame number offset by d.dd_frame_offset and, while the decode target forwarded does not take every target the
# publisher has active, the active decode targets mask of those it does take. Its length, or -1 when the
# publisher's value goes out unchanged (every subscriber of the whole stream, at no cost).
cdef int rewrite_dd(DownTrack *d, const ExtPacket *p, uint8_t *value) noexcept nogil
# Writes the packet `p` as mapped by `e` (WRITE_MEDIA; or its RFC 4588 retransmission, WRITE_RTX; or a padding-only
# packet with its number and timestamp, WRITE_PADDING) into `out`, which has room for p.h.header_length +
# p.h.payload_length + WRITE_GROWTH bytes, with `transport_seq` in the transport-cc element when d.ext_transport_cc
# is set, else `now` in the abs-send-time element when d.ext_abs_send_time is; returns the length.
cdef int downtrack_write(DownTrack *d, const ExtPacket *p, const SeqMapEntry *e, int kind, uint16_t transport_seq,
                         int64_t now, uint8_t *out) noexcept nogil
# Writes a padding-only packet of `padding` bytes (1-255) on `d`'s RTX stream into `out` (room for 12 + 8 + padding bytes),
# with `transport_seq` in the transport-cc element when d.ext_transport_cc is set; returns the length. The receiver
# discards it (RTX without an original sequence number); it only carries bytes and a transport-wide number.
cdef int downtrack_write_padding(DownTrack *d, uint16_t transport_seq, uint8_t padding, uint8_t *out) noexcept nogil
