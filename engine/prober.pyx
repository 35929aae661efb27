"""Prober: probe clusters of padding toward subscriber transports (see prober.pxd)."""
from libc.stdint cimport int16_t, uint8_t, uint16_t

from engine cimport srtp
from engine.bwe cimport bwe_probe_overused, bwe_probe_start
from engine.downtrack cimport DownTrack, downtrack_write_padding
from engine.state cimport S_DROP_PROTECT, S_PROBE_CLUSTERS, S_PROBE_PACKETS, Transport, transport_ready
from engine.table cimport list_add, list_discard
from engine.twcc cimport TWCC_MAX_PROBE_CLUSTER, twcc_history_add
from engine.udpmux cimport send_commit, send_slot_buffer, send_take_slot


cdef int find_carrier(EngineState *s, int t) noexcept nogil:
    """A video DownTrack of transport slot `t` that can carry padding: RTX negotiated, transport-cc stamped, and
    started (its RTX stream is announced and its timestamps mean something). -1 when there is none. A scan of the
    DownTracks, at a cluster's start only (at most every few seconds per subscriber)."""
    cdef int i
    cdef DownTrack *d
    for i in range(s.downtrack_end):
        d = s.downtracks[i]
        if (d != NULL and d.transport == t and d.rtx_ssrc != 0 and d.ext_transport_cc != 0 and d.started
                and s.receivers[d.receiver].is_video):
            return i
    return -1


cdef int32_t prober_start(EngineState *s, int t, int64_t target_bps, int64_t duration_us, int64_t now) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef int carrier
    if tr.twcc_tx.sent == NULL or tr.bwe == NULL or target_bps <= 0 or not transport_ready(tr):
        return -1
    carrier = find_carrier(s, t)
    if carrier < 0:
        return -1
    if not tr.probing:
        if list_add(&s.probing, t) < 0:
            return -1
        tr.probing = True
    tr.probe_cluster = s.next_probe_cluster
    s.next_probe_cluster = (s.next_probe_cluster + 1) % (TWCC_MAX_PROBE_CLUSTER + 1)
    tr.probe_target_bps = target_bps
    tr.probe_start_us = now
    tr.probe_end_us = now + min(max(duration_us, PROBE_MIN_DURATION_US), PROBE_MAX_DURATION_US)
    tr.probe_tail_us = now + (tr.probe_end_us - now) // 2   # as bwe_probe_start places it
    tr.probe_sent_bytes = 0
    tr.probe_downtrack = s.downtracks[carrier].id
    tr.probe_downtrack_slot = carrier
    tr.twcc_tx.probe_cluster = <int16_t>tr.probe_cluster
    bwe_probe_start(tr.bwe, tr.probe_cluster, target_bps, tr.probe_end_us - now, now)
    s.counters[<int>S_PROBE_CLUSTERS] += 1
    return tr.probe_cluster


cdef void prober_forget(EngineState *s, int t) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    if tr.probing:
        list_discard(&s.probing, t)
        tr.probing = False
        tr.twcc_tx.probe_cluster = -1


cdef void prober_pump(EngineState *s, int64_t now) noexcept nogil:
    cdef int i = 0
    cdef int t
    while i < s.probing.count:
        t = s.probing.items[i]
        if pump(s, s.transports[t], now):
            i += 1
        else:
            prober_forget(s, t)  # takes it out of the list: the next one moved to index i


cdef bint pump(EngineState *s, Transport *t, int64_t now) noexcept nogil:
    """Tops the cluster up to its target rate so far; False once it is over, its carrier is gone, or the feedback
    already shows it built a queue (the link does not carry it: more padding would only cost the media losses)."""
    cdef DownTrack *d = s.downtracks[t.probe_downtrack_slot]
    cdef int64_t due
    cdef int packets = 0, slot, length, rtp_length
    cdef uint8_t *out
    if (now >= t.probe_end_us or d == NULL or d.id != t.probe_downtrack or not transport_ready(t)
            or bwe_probe_overused(t.bwe, t.probe_cluster)):
        return False
    if t.probe_tail_us and now >= t.probe_tail_us:
        # The second half is judged on its own (bwe.pyx): paced from its own start, so media the first half carried
        # above the target (a keyframe) does not leave it short of padding and make the link look narrower.
        t.probe_start_us = t.probe_tail_us
        t.probe_tail_us = 0
        t.probe_sent_bytes = 0
    # The bytes due by now, one packet ahead: a cluster's first pump sends at once, and the pacing stays even.
    due = t.probe_target_bps * (now - t.probe_start_us) // 8000000 + PROBE_PADDING_BYTES - t.probe_sent_bytes
    while due > 0 and packets < PROBE_MAX_PACKETS_PER_PUMP:
        packets += 1
        slot = send_take_slot(&s.send)
        out = send_slot_buffer(&s.send, slot)
        length = downtrack_write_padding(d, <uint16_t>t.twcc_tx.next_seq, PROBE_PADDING_BYTES, out)
        rtp_length = length
        if not t.plain and srtp.protect(t.tx, out, &length) != 0:
            s.counters[<int>S_DROP_PROTECT] += 1
            continue
        twcc_history_add(&t.twcc_tx, rtp_length, now)
        t.probe_sent_bytes += rtp_length
        due -= rtp_length
        send_commit(s, &s.send, slot, length, &t.path)
        s.counters[<int>S_PROBE_PACKETS] += 1
    return True
