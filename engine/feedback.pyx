"""Feedback: NACK/PLI/FIR in from subscribers and out to publishers, RTX answers (see feedback.pxd)."""
from libc.stdint cimport uint16_t

from engine cimport srtp
from engine.codecs.describe cimport describe_packet
from engine.downtrack cimport WRITE_MEDIA, WRITE_RTX, SeqMapEntry
from engine.fanout cimport fanout_send
from engine.forwarder cimport forwarder_target
from engine.munger cimport munger_sent
from engine.packet cimport ExtPacket, packet_set
from engine.packetcache cimport cache_get
from engine.receiver cimport MAX_MISSING, Layer, layer_due_nacks, layer_top_spatial
from engine.rtcp cimport build_nack, build_pli, parse_nack
from engine.rtp cimport parse_rtp
from engine.state cimport (S_DROP_RTX_BUDGET, S_NACK_MISSES, S_NACK_RATE_LIMITED, S_NACK_STALE_LAYER, S_NACKED_PACKETS, S_NACKS_RECEIVED,
                           S_NACKS_SENT, S_PLIS_RECEIVED, S_PLIS_SENT, S_RETRANSMISSIONS, S_RETRANSMITTED_BYTES,
                           SEND_BUF, Transport, transport_ready)
from engine.udpmux cimport send_rtcp, send_slot_buffer, send_take_slot

cdef enum:
    MAX_NACK_SEQS = 256

# Timing, in microseconds of CLOCK_MONOTONIC.
cdef int64_t PLI_INTERVAL_US = 500000       # keyframe requests per publisher layer
cdef int64_t SPATIAL_STALE_US = 1000000     # an SVC spatial layer without packets this long is not being sent
# NACK answers: a packet is resent at most once per RTX_REPEAT_US, and a DownTrack gets at most RTX_BUDGET
# retransmissions per RTX_WINDOW_US, so one subscriber's feedback cannot multiply into a flood that stalls forwarding.
cdef int64_t RTX_REPEAT_US = 50000
cdef int64_t RTX_WINDOW_US = 20000
cdef int RTX_BUDGET = 64
# And a transport gets retransmissions worth at most RTX_SHARE of the bytes forwarded to it, or RTX_FLOOR_BPS when
# that is more (a token bucket in bytes, at most RTX_BURST_BYTES saved up): NACKs aimed at a victim's address can
# then not multiply its traffic, while a lossy link (libwebrtc asks again for at most ~10 % loss it can repair in
# time) keeps its repairs. RTX_BURST_BYTES holds a 720p keyframe's packets lost at once.
cdef double RTX_SHARE = 0.5
cdef double RTX_FLOOR_BPS = 500000
cdef double RTX_BURST_BYTES = 131072


cdef void feedback_keyframe_request(EngineState *s, DownTrack *d, int64_t now) noexcept nogil:
    cdef Receiver *r = s.receivers[d.receiver]
    cdef int l = d.current_layer if d.current_layer >= 0 else forwarder_target(d, r)
    d.plis_received += 1
    s.counters[<int>S_PLIS_RECEIVED] += 1
    if r.is_video and l >= 0:
        feedback_request_keyframe(s, r, l, now)


cdef void feedback_nack(EngineState *s, DownTrack *d, uint32_t media, const uint8_t *p, int length,
                        int64_t now) noexcept nogil:
    cdef uint16_t seqs[<int>MAX_NACK_SEQS]
    cdef int count = parse_nack(p, length, seqs, MAX_NACK_SEQS)
    cdef int i, cached_length
    cdef SeqMapEntry *e
    cdef Receiver *r = s.receivers[d.receiver]
    cdef ExtPacket packet
    cdef const uint8_t *cached
    cdef Transport *t = s.transports[d.transport]
    d.nacks_received += 1
    s.counters[<int>S_NACKS_RECEIVED] += 1
    refill_rtx_budget(t, now)
    if now - d.rtx_window_us >= RTX_WINDOW_US:
        d.rtx_window_us = now
        d.rtx_window_count = 0
    for i in range(count):
        s.counters[<int>S_NACKED_PACKETS] += 1
        # The seq map numbers the media stream; retransmissions themselves are not kept (nor resent again). Opus
        # stripped from RED is not resent (its cache holds RED; the redundancy repairs loss, and NACK is not offered).
        e = munger_sent(d, seqs[i]) if media == d.ssrc and not d.red_strip else NULL
        if e != NULL and (e.layer != d.current_layer or 0 <= d.current_spatial < e.spatial):
            # Of a layer this DownTrack left (a simulcast stream, or an SVC stream's spatial layer above the one it
            # stepped down to): the subscriber decodes from the new layer on, and resending the old (usually bigger)
            # layer into a link that just made us step down keeps it congested (measured: after 720p -> 180p behind
            # 600 kbit/s, 113 retransmissions of the 720p keyframe held the 180p frames back for 3 s).
            s.counters[<int>S_NACK_STALE_LAYER] += 1
            continue
        cached = cache_get(&r.layers[e.layer].cache, e.in_seq, &cached_length) if e != NULL else NULL
        if cached == NULL or parse_rtp(cached, cached_length, &packet.h) < 0:
            s.counters[<int>S_NACK_MISSES] += 1
            continue
        if (e.last_rtx_us != 0 and now - e.last_rtx_us < RTX_REPEAT_US) or d.rtx_window_count >= RTX_BUDGET:
            s.counters[<int>S_NACK_RATE_LIMITED] += 1
            continue
        if t.rtx_tokens < cached_length:
            s.counters[<int>S_DROP_RTX_BUDGET] += 1
            continue
        packet_set(&packet, cached, cached_length, r, e.layer, now)
        describe_packet(&packet, r.codec, r.is_video)
        if fanout_send(s, &s.send, d, &packet, e, WRITE_RTX if d.rtx_ssrc else WRITE_MEDIA, now):
            e.last_rtx_us = now
            d.rtx_window_count += 1
            d.retransmissions += 1
            t.rtx_tokens -= cached_length
            s.counters[<int>S_RETRANSMISSIONS] += 1
            s.counters[<int>S_RETRANSMITTED_BYTES] += cached_length


cdef void refill_rtx_budget(Transport *t, int64_t now) noexcept nogil:
    cdef double earned = max(RTX_SHARE * (t.bytes_sent - t.bytes_sent_mark), RTX_FLOOR_BPS / 8 * (now - t.rtx_us) / 1e6)
    if t.rtx_us == 0:
        earned = RTX_BURST_BYTES
    t.rtx_tokens = min(RTX_BURST_BYTES, t.rtx_tokens + earned)
    t.rtx_us = now
    t.bytes_sent_mark = t.bytes_sent


cdef void feedback_request_keyframe(EngineState *s, Receiver *r, int l, int64_t now) noexcept nogil:
    cdef Layer *layer = &r.layers[l]
    cdef Transport *t = s.transports[r.transport]
    cdef int slot, length
    if not layer.has_ssrc or now - layer.last_pli_us < PLI_INTERVAL_US or not transport_ready(t):
        return
    layer.last_pli_us = now
    slot = send_take_slot(&s.send)
    length = build_pli(send_slot_buffer(&s.send, slot), SEND_BUF - srtp.SRTCP_TRAILER, t.local_ssrc, layer.ssrc)
    if length > 0:
        layer.plis_sent += 1
        s.counters[<int>S_PLIS_SENT] += 1
        send_rtcp(s, t, slot, length)


cdef void send_nacks(EngineState *s, Receiver *r, Layer *layer, int64_t now) noexcept nogil:
    cdef uint16_t seqs[<int>MAX_MISSING]
    cdef int count = layer_due_nacks(layer, now, seqs)
    cdef int slot, length
    cdef Transport *t = s.transports[r.transport]
    if count == 0 or not transport_ready(t) or not layer.has_ssrc:
        return
    slot = send_take_slot(&s.send)
    length = build_nack(send_slot_buffer(&s.send, slot), SEND_BUF - srtp.SRTCP_TRAILER, t.local_ssrc, layer.ssrc, seqs,
                        count)
    if length > 0:
        layer.nacks_sent += 1
        s.counters[<int>S_NACKS_SENT] += 1
        send_rtcp(s, t, slot, length)


cdef inline bint svc_off_target(const DownTrack *d, const Receiver *r, int64_t now) noexcept nogil:
    """An SVC DownTrack whose spatial layer is below both its cap and the top layer the publisher sends (it goes up
    only at a keyframe: forwarder.pyx vp9_accept, dd_accept), or still above its caps: a Dependency Descriptor
    stream's lower layer whose own frames were not forwarded (K-SVC) is decodable from a keyframe on."""
    cdef int sent = layer_top_spatial(&r.layers[d.current_layer], now, SPATIAL_STALE_US)
    return 0 <= d.current_spatial and (d.current_spatial < min(d.max_layer, sent) or d.dd_overshoot)


cdef void feedback_tick(EngineState *s, int64_t now) noexcept nogil:
    cdef int i, l, top
    cdef Receiver *r
    cdef DownTrack *d
    for i in range(s.receiver_end):
        r = s.receivers[i]
        if r != NULL and r.is_video:
            for l in range(r.num_layers):
                if r.layers[l].missing_count:
                    send_nacks(s, r, &r.layers[l], now)
    for i in range(s.downtrack_end):
        d = s.downtracks[i]
        if d == NULL:
            continue
        r = s.receivers[d.receiver]
        top = forwarder_target(d, r)
        if r.is_video and top >= 0 and not d.paused and (d.current_layer != top or svc_off_target(d, r, now)):
            if now - r.layers[top].last_pli_us >= PLI_INTERVAL_US:
                d.keyframe_requests += 1
            feedback_request_keyframe(s, r, top, now)
