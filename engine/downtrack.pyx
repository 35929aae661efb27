# cython: language_level=3
"""Forwarder and Munger of a DownTrack (see downtrack.pxd)."""
from libc.stdint cimport int16_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

from engine.rtp cimport rewrite_header
from engine.wire cimport store16, store32

cdef enum:
    SWITCH_HORIZON = 8192     # packets this far behind the newest one are too late to forward anyway


cdef DownTrack *downtrack_new() noexcept nogil:
    cdef DownTrack *d = <DownTrack *>calloc(1, sizeof(DownTrack))
    if d == NULL:
        return NULL
    d.seqmap = <SeqMapEntry *>calloc(SEQMAP_SIZE, sizeof(SeqMapEntry))
    if d.seqmap == NULL:
        free(d)
        return NULL
    d.current_layer = -1
    d.last_out_pid = -1
    d.last_out_tl0 = -1
    return d


cdef void downtrack_free(DownTrack *d) noexcept nogil:
    free(d.seqmap)
    free(d)


cdef void downtrack_lose_layer(DownTrack *d) noexcept nogil:
    d.current_layer = -1
    memset(d.seqmap, 0, SEQMAP_SIZE * sizeof(SeqMapEntry))  # entries name the old stream's packets


cdef void switch_layer(DownTrack *d, int l, const RtpHeader *h, const Vp8Descriptor *vp8, bint has_vp8,
                       uint32_t clock_rate, int64_t now) noexcept nogil:
    cdef int64_t ticks
    d.current_layer = l
    d.switch_seq = h.sequence
    if not d.started:
        return  # the first packet keeps the publisher's numbering (offsets 0)
    # Continue right after the last packet sent; the timestamp advances by the wall time since then (at least 1).
    ticks = (now - d.last_forward_us) * clock_rate // 1000000
    if ticks < 1:
        ticks = 1
    d.seq_offset = <uint16_t>(h.sequence - <uint16_t>(d.last_out_seq + 1))
    d.ts_offset = <uint32_t>(h.timestamp - <uint32_t>(d.last_out_ts + ticks))
    if has_vp8 and vp8.picture_id >= 0 and d.last_out_pid >= 0:
        d.pid_offset = (vp8.picture_id - (d.last_out_pid + 1)) & 0x7FFF
    if has_vp8 and vp8.tl0picidx >= 0 and d.last_out_tl0 >= 0:
        d.tl0_offset = (vp8.tl0picidx - (d.last_out_tl0 + 1)) & 0xFF


cdef int forwarder_accept(DownTrack *d, int l, int target, bint gated, bint keyframe, const RtpHeader *h,
                          const Vp8Descriptor *vp8, bint has_vp8, uint32_t clock_rate, int64_t now) noexcept nogil:
    cdef int previous = d.current_layer
    cdef int16_t delta
    if l != previous:
        if gated and (l != target or not keyframe):
            d.dropped += 1
            return FORWARD_DROP
        switch_layer(d, l, h, vp8, has_vp8, clock_rate, now)
        if previous >= 0:
            d.layer_switches += 1
            return FORWARD_SWITCHED
        return FORWARD_PASS
    delta = <int16_t>(h.sequence - d.switch_seq)
    if delta < 0:
        d.dropped += 1  # from before the switch point: its frame was never started
        return FORWARD_DROP
    if delta > SWITCH_HORIZON:
        # Drag the switch point along so the comparison stays meaningful across sequence number wraps.
        d.switch_seq = <uint16_t>(h.sequence - SWITCH_HORIZON)
    return FORWARD_PASS


cdef const SeqMapEntry *munger_map(DownTrack *d, int l, const RtpHeader *h, const Vp8Descriptor *vp8,
                                   bint has_vp8, int64_t now) noexcept nogil:
    cdef uint16_t out_seq = <uint16_t>(h.sequence - d.seq_offset)
    cdef SeqMapEntry *e
    if h.payload_length == 0 and d.started and out_seq == <uint16_t>(d.last_out_seq + 1):
        d.seq_offset += 1
        # Input older than this padding would now map onto output already sent: the forwarder drops it instead.
        d.switch_seq = <uint16_t>(h.sequence + 1)
        d.dropped += 1
        return NULL
    e = &d.seqmap[out_seq & (SEQMAP_SIZE - 1)]
    e.valid = True
    e.out_seq = out_seq
    e.in_seq = h.sequence
    e.layer = l
    e.out_ts = <uint32_t>(h.timestamp - d.ts_offset)
    e.out_pid = -1
    e.out_tl0 = -1
    e.last_rtx_us = 0
    if has_vp8:
        if vp8.picture_id >= 0:
            e.out_pid = (vp8.picture_id - d.pid_offset) & 0x7FFF
        if vp8.tl0picidx >= 0:
            e.out_tl0 = (vp8.tl0picidx - d.tl0_offset) & 0xFF
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


cdef SeqMapEntry *downtrack_sent(const DownTrack *d, uint16_t out_seq) noexcept nogil:
    cdef SeqMapEntry *e = &d.seqmap[out_seq & (SEQMAP_SIZE - 1)]
    if e.valid and e.out_seq == out_seq:
        return e
    return NULL


cdef int downtrack_write(DownTrack *d, const uint8_t *buf, const RtpHeader *h, const SeqMapEntry *e,
                         const Vp8Descriptor *vp8, bint has_vp8, bint as_rtx, uint8_t *out) noexcept nogil:
    cdef int header = rewrite_header(buf, h, d.ext_map, out)
    cdef uint8_t *payload
    store32(out + 4, e.out_ts)
    if as_rtx:
        out[1] = (out[1] & 0x80) | d.rtx_payload_type
        store16(out + 2, d.rtx_seq)
        d.rtx_seq += 1
        store32(out + 8, d.rtx_ssrc)
        store16(out + header, e.out_seq)  # RFC 4588: the original sequence number leads the payload
        payload = out + header + 2
    else:
        out[1] = (out[1] & 0x80) | d.payload_type
        store16(out + 2, e.out_seq)
        store32(out + 8, d.ssrc)
        payload = out + header
    memcpy(payload, buf + h.header_length, h.payload_length)
    if has_vp8:
        if e.out_pid >= 0:
            if vp8.picture_id_16bit:
                payload[vp8.picture_id_offset] = 0x80 | ((e.out_pid >> 8) & 0x7F)
                payload[vp8.picture_id_offset + 1] = e.out_pid & 0xFF
            else:
                payload[vp8.picture_id_offset] = e.out_pid & 0x7F
        if e.out_tl0 >= 0:
            payload[vp8.tl0picidx_offset] = e.out_tl0
    return <int>(payload - out) + h.payload_length


cdef uint32_t downtrack_rtp_time(const DownTrack *d, const Layer *current, uint32_t clock_rate, int64_t now) noexcept nogil:
    if current != NULL and current.sr_arrival_us:
        # The publisher's own RTP/NTP relation (through our offset) keeps its audio and video in sync downstream.
        return <uint32_t>(current.sr_rtp - d.ts_offset + (now - current.sr_arrival_us) * clock_rate // 1000000)
    return <uint32_t>(d.last_out_ts + (now - d.last_forward_us) * clock_rate // 1000000)
