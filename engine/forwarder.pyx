"""Forwarder: per-DownTrack layer selection and pausing (see forwarder.pxd)."""
from libc.stdint cimport int16_t, uint16_t

from engine.downtrack cimport downtrack_lose_layer
from engine.munger cimport munger_anchor

cdef enum:
    SWITCH_HORIZON = 8192     # packets this far behind the newest one are too late to forward anyway


cdef int forwarder_accept(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil:
    cdef const Receiver *r = p.r
    cdef int previous = d.current_layer
    cdef int16_t delta
    if d.paused:
        return FORWARD_PAUSED
    if p.layer != previous:
        if r.is_video and (p.layer != forwarder_target(d, r) or not p.keyframe):
            d.dropped += 1
            return FORWARD_DROP
        d.current_layer = p.layer
        d.switch_seq = p.h.sequence
        munger_anchor(d, p, r.clock_rate, now)
        if previous >= 0:
            d.layer_switches += 1
            return FORWARD_SWITCHED
        return FORWARD_PASS
    delta = <int16_t>(p.h.sequence - d.switch_seq)
    if delta < 0:
        d.dropped += 1  # from before the switch point: its frame was never started
        return FORWARD_DROP
    if delta > SWITCH_HORIZON:
        # Drag the switch point along so the comparison stays meaningful across sequence number wraps.
        d.switch_seq = <uint16_t>(p.h.sequence - SWITCH_HORIZON)
    return FORWARD_PASS


cdef bint forwarder_set_paused(DownTrack *d, bint paused) noexcept nogil:
    if paused == d.paused:
        return False
    d.paused = paused
    if paused:
        return False
    downtrack_lose_layer(d)
    return True
