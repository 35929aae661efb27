"""Munger: output numbering of a DownTrack and its seq map (see munger.pxd)."""
from libc.stdint cimport int16_t, uint16_t

from engine.packet cimport DESC_VP8
from engine.codecs.vp8 cimport Vp8Descriptor


cdef void munger_anchor(DownTrack *d, const ExtPacket *p, uint32_t clock_rate, int64_t now) noexcept nogil:
    cdef int64_t ticks
    cdef const Vp8Descriptor *vp8 = &p.desc.vp8
    if not d.started:
        return
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


cdef const SeqMapEntry *munger_map(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil:
    cdef uint16_t out_seq = <uint16_t>(p.h.sequence - d.seq_offset)
    cdef SeqMapEntry *e
    if p.h.payload_length == 0 and d.started and out_seq == <uint16_t>(d.last_out_seq + 1):
        d.seq_offset += 1
        # Input older than this padding would now map onto output already sent: the forwarder drops it instead.
        d.switch_seq = <uint16_t>(p.h.sequence + 1)
        d.dropped += 1
        return NULL
    e = &d.seqmap[out_seq & (SEQMAP_SIZE - 1)]
    e.valid = True
    e.out_seq = out_seq
    e.in_seq = p.h.sequence
    e.layer = p.layer
    e.out_ts = <uint32_t>(p.h.timestamp - d.ts_offset)
    e.out_pid = -1
    e.out_tl0 = -1
    e.last_rtx_us = 0
    if p.descriptor == DESC_VP8:
        if p.desc.vp8.picture_id >= 0:
            e.out_pid = (p.desc.vp8.picture_id - d.pid_offset) & 0x7FFF
        if p.desc.vp8.tl0picidx >= 0:
            e.out_tl0 = (p.desc.vp8.tl0picidx - d.tl0_offset) & 0xFF
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


cdef uint32_t munger_rtp_time(const DownTrack *d, const Layer *current, uint32_t clock_rate, int64_t now) noexcept nogil:
    if current != NULL and current.sr_arrival_us:
        # The publisher's own RTP/NTP relation (through our offset) keeps its audio and video in sync downstream.
        return <uint32_t>(current.sr_rtp - d.ts_offset + (now - current.sr_arrival_us) * clock_rate // 1000000)
    return <uint32_t>(d.last_out_ts + (now - d.last_forward_us) * clock_rate // 1000000)
