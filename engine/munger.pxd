# Munger: rewrites a DownTrack's SSRC-independent numbering (sequence numbers, timestamps, VP8 picture id and
# TL0PICIDX) so layer switches and dropped packets leave no trace; absorbs padding-only packets; keeps the seq map.
# Dropped packets (temporal layers above the DownTrack's, padding) raise the offsets for what follows them; the
# offsets' recent history (DownTrack.runs) lets a late packet take the number its position left free for it.
from libc.stdint cimport int64_t, uint16_t, uint32_t

from engine.downtrack cimport SEQMAP_SIZE, DownTrack, SeqMapEntry
from engine.packet cimport ExtPacket
from engine.receiver cimport Layer

# At a switch to `p`'s layer: offsets so `p` follows right after the last packet sent, its timestamp advanced by the
# wall time since then (at least one tick), and its Dependency Descriptor frame number after the last one sent when it
# comes from another publisher stream. Before the first packet, the publisher's numbering is kept (offsets 0).
cdef void munger_anchor(DownTrack *d, const ExtPacket *p, uint32_t clock_rate, int64_t now) noexcept nogil
# The accepted packet's output numbering, remembered for NACKs. NULL when it is dropped instead: padding-only packets
# newer than any before (absorbed, as munger_drop), and late input older than the offset history kept.
cdef const SeqMapEntry *munger_map(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil
cdef enum:  # munger_drop results
    DROP_CLOSED               # later packets (and, for a VP8 picture not dropped before, later picture ids) close up
    DROP_PADDING              # late (later packets were sent): `slot` holds the number and timestamp its position
                              # kept, for a padding packet in its place
    DROP_LOST                 # late and older than the offset history: its number stays unused

# `p`, of the current layer, is not forwarded (above the temporal layer, or padding): a DROP_* result.
cdef int munger_drop(DownTrack *d, const ExtPacket *p, SeqMapEntry *slot) noexcept nogil
# What was sent as `out_seq`, or NULL when that is no longer known.
cdef SeqMapEntry *munger_sent(const DownTrack *d, uint16_t out_seq) noexcept nogil
# Whether input `seq` was already sent, as far as the seq map still knows (a RED block recovered before its own
# packet arrived late).
cdef bint munger_forwarded(const DownTrack *d, uint16_t seq) noexcept nogil
# The output RTP time of `now`, for SR: from the publisher's SR on the current layer when known, else extrapolated
# from the last packet sent.
cdef uint32_t munger_rtp_time(const DownTrack *d, const Layer *current, uint32_t clock_rate, int64_t now) noexcept nogil
