"""Munger: output numbering of a DownTrack and its seq map (see munger.pxd)."""
from libc.stdint cimport int16_t, int32_t, uint8_t, uint16_t

from engine.downtrack cimport SEQ_RUNS, SWITCH_HORIZON, SeqRun
from engine.packet cimport DESC_VP8, DESC_VP9
from engine.codecs.vp8 cimport Vp8Descriptor


cdef inline void runs_reset(DownTrack *d, uint16_t start) noexcept nogil:
    """One run from `start` on, at the current offsets: older input is the Forwarder's to refuse."""
    d.run_newest = 0
    d.run_count = 1
    d.runs[0].start = start
    d.runs[0].seq_offset = d.seq_offset
    d.runs[0].pid_offset = d.pid_offset


cdef inline const SeqRun *runs_find(const DownTrack *d, uint16_t seq) noexcept nogil:
    """The run a late input `seq` belongs to, or NULL when it is older than every run kept."""
    cdef int i
    cdef const SeqRun *run
    for i in range(d.run_count):
        run = &d.runs[(d.run_newest - i) & (SEQ_RUNS - 1)]
        if <int16_t>(seq - run.start) >= 0:
            return run
    return NULL


cdef inline void number(const DownTrack *d, const ExtPacket *p, uint16_t seq_offset, int32_t pid_offset,
                        SeqMapEntry *e) noexcept nogil:
    """`p`'s output numbering under the given offsets (the timestamp and TL0PICIDX offsets change only at switches)."""
    e.out_seq = <uint16_t>(p.h.sequence - seq_offset)
    e.in_seq = p.h.sequence
    e.layer = p.layer
    e.spatial = <uint8_t>p.spatial
    e.out_ts = <uint32_t>(p.h.timestamp - d.ts_offset)
    e.out_pid = -1
    e.out_tl0 = -1
    e.last_rtx_us = 0
    e.marker = False
    if p.descriptor == DESC_VP8:
        if p.desc.vp8.picture_id >= 0:
            e.out_pid = (p.desc.vp8.picture_id - pid_offset) & 0x7FFF
        if p.desc.vp8.tl0picidx >= 0:
            e.out_tl0 = (p.desc.vp8.tl0picidx - d.tl0_offset) & 0xFF
    elif p.has_dd:
        # As for VP9 below: the temporal unit ends with the highest spatial layer forwarded (AV1's marker).
        e.marker = p.dd.end_of_frame and p.dd.spatial_id == d.current_spatial
    elif p.descriptor == DESC_VP9:
        # The publisher marks the end of the whole picture; with its upper spatial layers dropped, the picture ends
        # with the last packet of the highest one forwarded (libwebrtc assembles a picture's layers up to the marker).
        e.marker = p.desc.vp9.end_of_frame and p.spatial == d.current_spatial


cdef void munger_anchor(DownTrack *d, const ExtPacket *p, uint32_t clock_rate, int64_t now) noexcept nogil:
    cdef int64_t ticks
    cdef const Vp8Descriptor *vp8 = &p.desc.vp8
    if d.started:
        ticks = (now - d.last_forward_us) * clock_rate // 1000000
        if ticks < 1:
            ticks = 1
        d.seq_offset = <uint16_t>(p.h.sequence - <uint16_t>(d.last_out_seq + 1))
        d.ts_offset = <uint32_t>(p.h.timestamp - <uint32_t>(d.last_out_ts + ticks))
        if p.descriptor == DESC_VP8:
            if vp8.picture_id >= 0 and d.last_out_pid >= 0:
                d.pid_offset = (vp8.picture_id - (d.last_out_pid + 1)) & 0x7FFF
            if vp8.tl0picidx >= 0 and d.last_out_tl0 >= 0:
                d.tl0_offset = (vp8.tl0picidx - (d.last_out_tl0 + 1)) & 0xFF
        if p.has_dd and p.h.ssrc != d.dd_ssrc:
            # Another stream numbers its frames on its own: continue from the last frame sent. Within a stream the
            # publisher's numbers stay (references are differences of them; gaps are legal).
            d.dd_frame_offset = <uint16_t>(p.dd.frame_number - <uint16_t>(d.dd_last_frame + 1))
    runs_reset(d, p.h.sequence)
    d.highest_in = <uint16_t>(p.h.sequence - 1)
    d.last_dropped_pid = -1


cdef int munger_drop(DownTrack *d, const ExtPacket *p, SeqMapEntry *slot) noexcept nogil:
    cdef SeqRun *run = &d.runs[d.run_newest]
    cdef const SeqRun *late
    cdef int32_t pid = p.desc.vp8.picture_id if p.descriptor == DESC_VP8 else -1
    if <int16_t>(p.h.sequence - d.highest_in) <= 0:
        late = runs_find(d, p.h.sequence)
        if late == NULL:
            d.dropped += 1
            return DROP_LOST
        number(d, p, late.seq_offset, late.pid_offset, slot)
        return DROP_PADDING
    d.highest_in = p.h.sequence
    d.seq_offset += 1
    if pid >= 0 and pid != d.last_dropped_pid:
        d.pid_offset = (d.pid_offset + 1) & 0x7FFF
        d.last_dropped_pid = pid
    if run.start != p.h.sequence:
        # A new run; when p directly follows the previous drop, no input can use that run's offsets: it is reused.
        d.run_newest = (d.run_newest + 1) & (SEQ_RUNS - 1)
        d.run_count = min(d.run_count + 1, <int>SEQ_RUNS)
        run = &d.runs[d.run_newest]
    run.start = <uint16_t>(p.h.sequence + 1)
    run.seq_offset = d.seq_offset
    run.pid_offset = d.pid_offset
    return DROP_CLOSED


cdef const SeqMapEntry *munger_map(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil:
    cdef uint16_t seq_offset = d.seq_offset
    cdef int32_t pid_offset = d.pid_offset
    cdef uint16_t out_seq
    cdef SeqMapEntry *e
    cdef SeqRun *run
    cdef const SeqRun *late
    if <int16_t>(p.h.sequence - d.highest_in) > 0:
        if p.h.payload_length == 0 and d.started:
            munger_drop(d, p, NULL)  # the publisher's probe padding: the subscriber's estimate probes are ours to send
            d.dropped += 1
            return NULL
        d.highest_in = p.h.sequence
        run = &d.runs[d.run_newest]
        if <int16_t>(p.h.sequence - run.start) > SWITCH_HORIZON:
            # Input further back than this is refused by the Forwarder: the older runs are no longer needed, and
            # the newest one's start is dragged along so comparisons stay meaningful across wraps.
            runs_reset(d, <uint16_t>(p.h.sequence - SWITCH_HORIZON))
    else:
        late = runs_find(d, p.h.sequence)
        if late == NULL:
            d.dropped += 1
            return NULL
        seq_offset = late.seq_offset
        pid_offset = late.pid_offset
    out_seq = <uint16_t>(p.h.sequence - seq_offset)
    e = &d.seqmap[out_seq & (SEQMAP_SIZE - 1)]
    number(d, p, seq_offset, pid_offset, e)
    e.valid = True
    if not d.started or <int16_t>(out_seq - d.last_out_seq) > 0:
        d.started = True
        d.last_out_seq = out_seq
        d.last_out_ts = e.out_ts
        d.last_forward_us = now
        if e.out_pid >= 0:
            d.last_out_pid = e.out_pid
        if e.out_tl0 >= 0:
            d.last_out_tl0 = e.out_tl0
    return e


cdef SeqMapEntry *munger_sent(const DownTrack *d, uint16_t out_seq) noexcept nogil:
    cdef SeqMapEntry *e = &d.seqmap[out_seq & (SEQMAP_SIZE - 1)]
    if e.valid and e.out_seq == out_seq:
        return e
    return NULL


cdef bint munger_forwarded(const DownTrack *d, uint16_t seq) noexcept nogil:
    cdef const SeqRun *run = runs_find(d, seq)
    cdef const SeqMapEntry *e
    if not d.started or run == NULL:
        return False
    e = munger_sent(d, <uint16_t>(seq - run.seq_offset))
    return e != NULL and e.in_seq == seq


cdef uint32_t munger_rtp_time(const DownTrack *d, const Layer *current, uint32_t clock_rate, int64_t now) noexcept nogil:
    if current != NULL and current.sr_arrival_us:
        # The publisher's own RTP/NTP relation (through our offset) keeps its audio and video in sync downstream.
        return <uint32_t>(current.sr_rtp - d.ts_offset + (now - current.sr_arrival_us) * clock_rate // 1000000)
    return <uint32_t>(d.last_out_ts + (now - d.last_forward_us) * clock_rate // 1000000)
