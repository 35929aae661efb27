"""Demux: from a datagram and its path to an ExtPacket, an RTCP handler or an event (see demux.pxd)."""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memmove

from engine cimport srtp
from engine.batchio cimport MSG_TRUNC
from engine.bwe cimport Bwe
from engine.codecs.describe cimport describe_dd, describe_packet
from engine.downtrack cimport DownTrack, downtrack_lose_layer
from engine.feedback cimport feedback_keyframe_request, feedback_nack
from engine.packet cimport DESC_RED, DESC_VP9, ExtPacket, packet_set
from engine.path cimport path_equal, path_key, path_next_key
from engine.receiver cimport (Layer, Receiver, layer_note_keyframe, layer_note_svc, layer_note_temporal, layer_receive,
                              layer_reset, receiver_find_rid, receiver_note_audio_level, receiver_note_live)
from engine.reports cimport reports_receiver_blocks, reports_sender_info
from engine.rtcp cimport (RTCP_PSFB, RTCP_RR, RTCP_RTPFB, RTCP_SR, RtcpHeader, SenderInfo, is_rtcp,
                          parse_feedback_ssrcs, parse_fir_ssrc, parse_rtcp_header, parse_sender_info)
from engine.rtp cimport RtpHeader, find_extension, finish_srtp_header, parse_rtp, parse_srtp_header
from engine.state cimport (BATCH, DTLS_EVENTS_PER_SECOND, E_DTLS, E_LAYER, E_STUN, EVENT_WINDOW_US, EVENTS_PER_WINDOW,
                           FAIR_EVENT_BURST, FAIR_EVENTS_PER_SECOND, MAX_SRTP_STREAMS, RECV_BUF,
                           RTCP_SENDER_STREAMS, S_BYTES_IN, S_DD_INVALID, S_DD_PACKETS, S_DROP_DTLS_RATE, S_DROP_SSRC_REBIND_RATE,
                           S_DROP_STUN_UNEXPECTED_RESPONSE, S_DROP_UNADMITTED_SSRC, S_RED_RECEIVED, S_STUN_RESPONSES,
                           SSRC_REBIND_BURST, SSRC_REBINDS_PER_SECOND, STUN_BOUND_EVENTS_PER_SECOND,
                           S_DROP_DTLS_UNBOUND, S_DROP_DUPLICATE, S_DROP_EMPTY, S_DROP_EVENT_BUDGET, S_DROP_MALFORMED,
                           S_DROP_NO_SRTP, S_DROP_NOT_RTP, S_DROP_PAYLOAD_TYPE, S_DROP_RTX_PADDING, S_DROP_SSRC_LIMIT,
                           S_DROP_STUN_MALFORMED, S_DROP_STUN_NO_USERNAME, S_DROP_STUN_NOT_REQUEST, S_DROP_STUN_RATE,
                           S_DROP_STUN_UNKNOWN_UFRAG, S_DROP_TRUNCATED, S_DROP_UNKNOWN_SOURCE, S_DROP_UNKNOWN_SSRC,
                           S_DROP_UNPROTECT, S_DTLS_IN, S_KEYFRAMES, S_PACKETS_IN, S_RR_RECEIVED, S_RTCP_IN, S_RTP_IN,
                           S_RTX_RECOVERED, S_SR_RECEIVED, S_SRTP_STREAMS_REMOVED, S_STUN_IN,
                           STUN_EVENTS_PER_SECOND, Transport, bucket_refill, queue_event, stream_key)
from engine.transportcc cimport (transportcc_estimate_event, transportcc_feedback, transportcc_received,
                                 transportcc_remb)
from engine.twcc cimport TWCC_FMT, TWCC_HISTORY
from engine.stun cimport STUN_MALFORMED, STUN_NOT_REQUEST, STUN_OK, STUN_RESPONSE, stun_check, ufrag_key
from engine.memory cimport CACHE_LINE, prefetch
from engine.table cimport map_get, map_prefetch, map_put, map_remove
from engine.wire cimport load16, load32, store16, store32


cdef void demux_batch(EngineState *s, int n, int64_t now) noexcept nogil:
    cdef int i, length
    prefetch_rtcp_state(s, n)
    for i in range(n):
        if s.recv.taken[i]:  # a TURN request raised as an event, or dropped (turnmux_classify)
            continue
        length = s.recv.msgs[i].msg_len
        if s.recv.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            s.counters[<int>S_PACKETS_IN] += 1
            s.counters[<int>S_BYTES_IN] += length
            s.counters[<int>S_DROP_TRUNCATED] += 1
            continue
        demux_datagram(s, s.recv.bufs + i * RECV_BUF, length, &s.recv.paths[i], now)


cdef inline void prefetch_rtcp_state(EngineState *s, int n) noexcept nogil:
    """Starts loading what handling the batch's RTCP will touch before handling any of it. At hundreds of
    subscribers their transport-cc feedback (thousands of datagrams a second) finds each transport's state cold
    again, and handled one after the other each lookup stalls on its misses in turn: the address map's bucket, the
    Transport, then its SRTP session, send history entries and estimator. Three passes over the batch, each needing only
    what the one before started loading; a hint only (a wrong guess, e.g. an IPv6 key collision, costs nothing)."""
    cdef int i
    cdef const uint8_t *buf
    cdef const char *b
    cdef const Transport *t
    cdef bint rtcp[<int>BATCH]
    cdef uint64_t keys[<int>BATCH]
    cdef int64_t slots[<int>BATCH]
    for i in range(n):
        rtcp[i] = not s.recv.taken[i] and s.recv.msgs[i].msg_len >= 8 and is_rtcp(s.recv.bufs + i * RECV_BUF,
                                                                                   s.recv.msgs[i].msg_len)
        if rtcp[i]:
            keys[i] = path_key(&s.recv.paths[i], s.path_seed)
            map_prefetch(&s.by_address, keys[i])
    for i in range(n):
        slots[i] = map_get(&s.by_address, keys[i]) if rtcp[i] else -1
        if slots[i] >= 0 and s.transports[slots[i]] != NULL:
            prefetch(s.transports[slots[i]])
            prefetch(<const char *>s.transports[slots[i]] + CACHE_LINE)
            buf = s.recv.bufs + i * RECV_BUF
            map_prefetch(&s.srtp_ssrcs, stream_key(<int>slots[i], load32(buf + 4)))  # the sender's, in the clear
    for i in range(n):
        if slots[i] < 0 or s.transports[slots[i]] == NULL:
            continue
        t = s.transports[slots[i]]
        prefetch(t.rx)
        if t.twcc_tx.sent != NULL:  # the send history's newest entries, which feedback reports on (2 lines of 8)
            prefetch(&t.twcc_tx.sent[(t.twcc_tx.next_seq - 16) & (TWCC_HISTORY - 1)])
            prefetch(&t.twcc_tx.sent[(t.twcc_tx.next_seq - 8) & (TWCC_HISTORY - 1)])
        if t.bwe != NULL:  # its fields up to the seen window, which bwe_on_feedback mostly goes through
            b = <const char *>t.bwe
            while b < <const char *>&t.bwe.seen_seq:
                prefetch(b)
                b += CACHE_LINE


# ---------------------------------------------------------------- transports by path

cdef inline int64_t find_transport(EngineState *s, const Path *path) noexcept nogil:
    # Keys of different IPv6 paths may collide: the whole address decides, and a collision moves on to the next key.
    cdef uint64_t key = path_key(path, s.path_seed)
    cdef int64_t slot
    while True:
        slot = map_get(&s.by_address, key)
        if slot < 0 or path_equal(&s.transports[slot].path, path):
            return slot
        key = path_next_key(key)


cdef int64_t demux_find_transport(EngineState *s, const Path *path) noexcept nogil:
    return find_transport(s, path)


cdef int place(EngineState *s, int slot) noexcept nogil:
    """Puts the transport's path into by_address at its key, or past keys other paths hold (never an equal path:
    demux_bind_path refuses those)."""
    cdef Transport *t = s.transports[slot]
    cdef uint64_t key = path_key(&t.path, s.path_seed)
    cdef int64_t other
    while True:
        other = map_get(&s.by_address, key)
        if other < 0 or other == slot:
            break
        key = path_next_key(key)
    t.path_key = key
    return map_put(&s.by_address, key, slot)


cdef int demux_bind_path(EngineState *s, int slot, const Path *path) noexcept nogil:
    cdef Transport *t = s.transports[slot]
    cdef int64_t holder = find_transport(s, path)
    if holder >= 0 and holder != slot:
        # Another live transport's address: taking it would send that client's media here (or ours there).
        return -2
    demux_unbind_path(s, slot)
    t.path = path[0]
    if place(s, slot) < 0:
        return -1
    t.bound = True
    return 0


cdef void demux_unbind_path(EngineState *s, int slot) noexcept nogil:
    cdef Transport *t = s.transports[slot]
    cdef uint64_t key
    cdef int64_t other
    if not t.bound:
        return
    t.bound = False
    if map_get(&s.by_address, t.path_key) != slot:
        return
    map_remove(&s.by_address, t.path_key)
    if not (t.path_key >> 63):
        return  # an IPv4 key: nothing collides with it
    # Paths placed past this one (colliding IPv6 keys) are placed again, so the chain find_transport walks is whole.
    key = path_next_key(t.path_key)
    other = map_get(&s.by_address, key)
    while other >= 0:
        map_remove(&s.by_address, key)
        place(s, <int>other)
        key = path_next_key(key)
        other = map_get(&s.by_address, key)


# ---------------------------------------------------------------- datagrams

cdef void demux_datagram(EngineState *s, uint8_t *buf, int length, const Path *path, int64_t now) noexcept nogil:
    cdef uint8_t first
    cdef int64_t t
    s.counters[<int>S_PACKETS_IN] += 1
    s.counters[<int>S_BYTES_IN] += length
    if length < 1:
        s.counters[<int>S_DROP_EMPTY] += 1
        return
    first = buf[0]
    if first <= 3:
        s.counters[<int>S_STUN_IN] += 1
        handle_stun(s, buf, length, path, now)
        return
    if not (20 <= first <= 63 or 128 <= first <= 191):
        s.counters[<int>S_DROP_NOT_RTP] += 1
        return
    t = find_transport(s, path)
    if first <= 63:
        s.counters[<int>S_DTLS_IN] += 1
        if t < 0:
            s.counters[<int>S_DROP_DTLS_UNBOUND] += 1
        elif allow_event(s, s.transports[t], &s.transports[t].dtls_tokens, S_DROP_DTLS_RATE, True, now):
            queue_event(s, E_DTLS, buf, length, path, s.transports[t].id, 0, 0)
        return
    if t < 0:
        s.counters[<int>S_DROP_UNKNOWN_SOURCE] += 1
        return
    if s.transports[t].rx == NULL:
        s.counters[<int>S_DROP_NO_SRTP] += 1
        return
    if is_rtcp(buf, length):
        s.counters[<int>S_RTCP_IN] += 1
        handle_rtcp(s, <int>t, buf, length, now)
    else:
        s.counters[<int>S_RTP_IN] += 1
        handle_rtp(s, <int>t, buf, length, now)


# ---------------------------------------------------------------- events for Python (STUN, DTLS)

cdef int64_t demux_find_ufrag(EngineState *s, const uint8_t *ufrag, int length) noexcept nogil:
    cdef int64_t slot = map_get(&s.by_ufrag, ufrag_key(ufrag, length, s.ufrag_seed))
    cdef Transport *t
    if slot < 0:
        return -1
    t = s.transports[slot]
    if t.ufrag_length != length or memcmp(t.ufrag, ufrag, length) != 0:
        return -1
    return slot


cdef int64_t demux_stun_target(EngineState *s, const uint8_t *buf, int length) noexcept nogil:
    cdef const uint8_t *ufrag = NULL
    cdef int ufrag_length = 0
    if length < 1 or buf[0] > 3 or stun_check(buf, length, &ufrag, &ufrag_length) != STUN_OK:
        return -1
    return demux_find_ufrag(s, ufrag, ufrag_length)


cdef bint allow_event(EngineState *s, Transport *t, double *tokens, int counter, bint shared,
                      int64_t now) noexcept nogil:
    """One of the transport's token buckets (`tokens`; `counter` counts refusals); then, when `shared`, its fair share
    or else the engine's budget for the current window (state.pxd, EVENTS_PER_WINDOW)."""
    cdef int64_t elapsed = now - t.events_us
    t.events_us = now
    bucket_refill(&t.stun_tokens, STUN_EVENTS_PER_SECOND, STUN_EVENTS_PER_SECOND, elapsed)
    bucket_refill(&t.stun_bound_tokens, STUN_BOUND_EVENTS_PER_SECOND, STUN_BOUND_EVENTS_PER_SECOND, elapsed)
    bucket_refill(&t.dtls_tokens, DTLS_EVENTS_PER_SECOND, DTLS_EVENTS_PER_SECOND, elapsed)
    bucket_refill(&t.fair_tokens, FAIR_EVENTS_PER_SECOND, FAIR_EVENT_BURST, elapsed)
    if tokens[0] < 1:
        s.counters[counter] += 1
        return False
    if shared:
        if t.fair_tokens >= 1:
            t.fair_tokens -= 1
        else:
            if now - s.event_window_us >= EVENT_WINDOW_US:
                s.event_window_us = now
                s.window_events = 0
            if s.window_events >= EVENTS_PER_WINDOW:
                s.counters[<int>S_DROP_EVENT_BUDGET] += 1
                return False
            s.window_events += 1
    tokens[0] -= 1
    return True


cdef uint64_t demux_check_key(EngineState *s, const uint8_t *transaction_id) noexcept nogil:
    return ufrag_key(transaction_id, 12, ~s.ufrag_seed)


cdef void handle_response(EngineState *s, const uint8_t *buf, int length, const Path *path) noexcept nogil:
    """A Binding success response reaches Python only as the first answer to one of our outstanding checks (its
    transaction id, 96 random bits, is not guessable); Python checks its source and MESSAGE-INTEGRITY."""
    cdef uint64_t key = demux_check_key(s, buf + 8)
    cdef int64_t slot = map_get(&s.checks, key)
    if slot < 0:
        s.counters[<int>S_DROP_STUN_UNEXPECTED_RESPONSE] += 1
        return
    map_remove(&s.checks, key)
    s.counters[<int>S_STUN_RESPONSES] += 1
    queue_event(s, E_STUN, buf, length, path, s.transports[slot].id, 0, 0)


cdef void handle_stun(EngineState *s, const uint8_t *buf, int length, const Path *path, int64_t now) noexcept nogil:
    """Only a well-formed Binding request to the ufrag of a live transport, within its rates, or the answer to one
    of our consent checks reaches Python."""
    cdef const uint8_t *ufrag = NULL
    cdef int ufrag_length = 0
    cdef int check = stun_check(buf, length, &ufrag, &ufrag_length)
    cdef int64_t slot
    cdef Transport *t
    cdef bint bound
    if check == STUN_RESPONSE:
        handle_response(s, buf, length, path)
        return
    if check != STUN_OK:
        if check == STUN_MALFORMED:
            s.counters[<int>S_DROP_STUN_MALFORMED] += 1
        elif check == STUN_NOT_REQUEST:
            s.counters[<int>S_DROP_STUN_NOT_REQUEST] += 1
        else:
            s.counters[<int>S_DROP_STUN_NO_USERNAME] += 1
        return
    slot = demux_find_ufrag(s, ufrag, ufrag_length)
    if slot < 0:
        s.counters[<int>S_DROP_STUN_UNKNOWN_UFRAG] += 1
        return
    t = s.transports[slot]
    bound = t.bound and path_equal(&t.path, path)
    if allow_event(s, t, &t.stun_bound_tokens if bound else &t.stun_tokens, S_DROP_STUN_RATE, not bound, now):
        queue_event(s, E_STUN, buf, length, path, t.id, 0, 0)


# ---------------------------------------------------------------- SRTP receive streams

cdef int admit_ssrc(EngineState *s, int t, uint32_t ssrc, bint known) noexcept nogil:
    """Whether a packet of `ssrc` may reach srtp_unprotect, where a new SSRC that authenticates gets a libsrtp stream
    (SSRC_ANY_INBOUND): 1 when it has one, 0 when it may get one (a `known` SSRC, while the transport has fewer than
    MAX_SRTP_STREAMS; note_srtp_stream once it authenticated), -1 when not (counted)."""
    if map_get(&s.srtp_ssrcs, stream_key(t, ssrc)) >= 0:
        return 1
    if not known:
        s.counters[<int>S_DROP_UNADMITTED_SSRC] += 1
        return -1
    if s.transports[t].srtp_streams >= MAX_SRTP_STREAMS:
        s.counters[<int>S_DROP_SSRC_LIMIT] += 1
        return -1
    return 0


cdef void note_srtp_stream(EngineState *s, int t, uint32_t ssrc) noexcept nogil:
    """`ssrc`, admitted with 0, just authenticated, so libsrtp now holds a stream for it."""
    cdef Transport *tr = s.transports[t]
    if tr.srtp_ssrc_list == NULL:
        tr.srtp_ssrc_list = <uint32_t *>malloc(MAX_SRTP_STREAMS * sizeof(uint32_t))
        if tr.srtp_ssrc_list == NULL:
            return
    if map_put(&s.srtp_ssrcs, stream_key(t, ssrc), tr.srtp_streams) == 0:
        tr.srtp_ssrc_list[tr.srtp_streams] = ssrc
        tr.srtp_streams += 1


cdef void note_rtcp_sender(EngineState *s, int t, uint32_t ssrc) noexcept nogil:
    """SRTCP from `ssrc`, which has no media stream here, authenticated: libsrtp holds a stream for it, kept in the
    transport's ring of RTCP_SENDER_STREAMS; the oldest one's stream is freed (unless media took it over since)."""
    cdef Transport *tr = s.transports[t]
    cdef uint32_t old
    cdef int i
    for i in range(tr.rtcp_ssrc_count):
        if tr.rtcp_ssrcs[i] == ssrc:
            return
    if tr.rtcp_ssrc_count < RTCP_SENDER_STREAMS:
        tr.rtcp_ssrcs[tr.rtcp_ssrc_count] = ssrc
        tr.rtcp_ssrc_count += 1
        return
    old = tr.rtcp_ssrcs[tr.rtcp_ssrc_next]
    tr.rtcp_ssrcs[tr.rtcp_ssrc_next] = ssrc
    tr.rtcp_ssrc_next = (tr.rtcp_ssrc_next + 1) % RTCP_SENDER_STREAMS
    if map_get(&s.srtp_ssrcs, stream_key(t, old)) < 0 and srtp.remove_stream(tr.rx, old) == 0:
        s.counters[<int>S_SRTP_STREAMS_REMOVED] += 1


cdef void demux_release_ssrc(EngineState *s, int t, uint32_t ssrc) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef int64_t index = map_get(&s.srtp_ssrcs, stream_key(t, ssrc))
    cdef uint32_t last
    if index < 0:
        return
    map_remove(&s.srtp_ssrcs, stream_key(t, ssrc))
    tr.srtp_streams -= 1
    if index != tr.srtp_streams:  # the list stays dense: its last SSRC takes the freed place
        last = tr.srtp_ssrc_list[tr.srtp_streams]
        tr.srtp_ssrc_list[index] = last
        map_put(&s.srtp_ssrcs, stream_key(t, last), index)
    if tr.rx != NULL and srtp.remove_stream(tr.rx, ssrc) == 0:
        s.counters[<int>S_SRTP_STREAMS_REMOVED] += 1


cdef void demux_forget_ssrcs(EngineState *s, int t) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef int i
    for i in range(tr.srtp_streams):
        map_remove(&s.srtp_ssrcs, stream_key(t, tr.srtp_ssrc_list[i]))
    tr.srtp_streams = 0
    tr.rtcp_ssrc_count = 0
    tr.rtcp_ssrc_next = 0
    free(tr.srtp_ssrc_list)
    tr.srtp_ssrc_list = NULL


# ---------------------------------------------------------------- RTP

cdef int64_t match_stream(EngineState *s, int t, const uint8_t *buf, const RtpHeader *h) noexcept nogil:
    """Matches an unknown SSRC to (receiver slot << 8 | layer << 1 | is_rtx) by its mid / rid / repaired-rid
    extensions, or -1. Changes nothing, so it can run on a packet not yet authenticated."""
    cdef Transport *tr = s.transports[t]
    cdef Receiver *r
    cdef const uint8_t *value
    cdef int value_length, i, l, index
    cdef bint rtx
    for i in range(tr.receivers.count):
        index = tr.receivers.items[i]
        r = s.receivers[index]
        if r.ext_mid == 0 or r.mid_length == 0:
            continue
        if not find_extension(buf, h, r.ext_mid, &value, &value_length):
            continue
        if value_length != r.mid_length or memcmp(value, r.mid, value_length) != 0:
            continue
        l = -1
        rtx = r.rtx_payload_type == h.payload_type
        if not rtx and h.payload_type != r.payload_type:
            return -1  # e.g. a FEC stream under the same mid: it must not take over a layer
        if not r.simulcast:
            l = 0
        elif r.ext_rrid and find_extension(buf, h, r.ext_rrid, &value, &value_length):
            rtx = True
            l = receiver_find_rid(r, value, value_length)
        elif r.ext_rid and find_extension(buf, h, r.ext_rid, &value, &value_length):
            l = receiver_find_rid(r, value, value_length)
        if l < 0:
            return -1
        return (<int64_t>index << 8) | (l << 1) | rtx
    return -1


cdef bint rebind_allowed(EngineState *s, int64_t v, uint32_t ssrc, bint take, int64_t now) noexcept nogil:
    """Whether `ssrc` may take layer `v` (a match_stream result) over: a first SSRC may; a different one needs the
    layer's SSRC_REBINDS_PER_SECOND bucket (`take` spends a token)."""
    cdef Layer *layer = &s.receivers[v >> 8].layers[(v >> 1) & 0x7F]
    if not ((layer.has_rtx and layer.rtx_ssrc != ssrc) if v & 1 else (layer.has_ssrc and layer.ssrc != ssrc)):
        return True
    bucket_refill(&layer.rebind_tokens, SSRC_REBINDS_PER_SECOND, SSRC_REBIND_BURST, now - layer.rebind_us)
    layer.rebind_us = now
    if layer.rebind_tokens < 1:
        return False
    if take:
        layer.rebind_tokens -= 1
    return True


cdef int64_t bind_stream(EngineState *s, int t, int64_t v, const RtpHeader *h, int64_t now) noexcept nogil:
    """Binds an unknown, authenticated SSRC to the layer `v` match_stream found; the SSRC it replaces loses its map
    entry and its libsrtp stream."""
    cdef Receiver *r = s.receivers[v >> 8]
    cdef int l = (v >> 1) & 0x7F
    cdef Layer *layer = &r.layers[l]
    cdef DownTrack *d
    cdef int j
    rebind_allowed(s, v, h.ssrc, True, now)
    if v & 1:
        if layer.has_rtx and layer.rtx_ssrc != h.ssrc:
            map_remove(&s.streams, stream_key(t, layer.rtx_ssrc))
            demux_release_ssrc(s, t, layer.rtx_ssrc)
        layer.rtx_ssrc = h.ssrc
        layer.has_rtx = True
    else:
        if layer.has_ssrc and layer.ssrc != h.ssrc:
            # The publisher restarted this layer with a new SSRC: its history no longer applies.
            map_remove(&s.streams, stream_key(t, layer.ssrc))
            demux_release_ssrc(s, t, layer.ssrc)
            layer_reset(layer)
            for j in range(r.downtracks.count):
                d = s.downtracks[r.downtracks.items[j]]
                if d.current_layer == l:
                    downtrack_lose_layer(d)
        layer.ssrc = h.ssrc
        layer.has_ssrc = True
    if map_put(&s.streams, stream_key(t, h.ssrc), v) < 0:
        return -1
    return v


cdef void handle_rtp(EngineState *s, int t, uint8_t *buf, int length, int64_t now) noexcept nogil:
    cdef RtpHeader h
    cdef int64_t v, match = -1
    cdef Receiver *r
    cdef Layer *layer
    cdef int l, admitted
    cdef uint16_t osn
    # Before unprotect, from the header in the clear: an SSRC that is neither bound nor bindable (its mid / rid match
    # a receiver of this transport) would only cost a libsrtp stream; one that would take a layer over too often
    # would cost a stream, a layer reset and an event each time.
    if parse_srtp_header(buf, length, &h) < 0:
        s.counters[<int>S_DROP_MALFORMED] += 1
        return
    v = map_get(&s.streams, stream_key(t, h.ssrc))
    if v < 0:
        match = match_stream(s, t, buf, &h)
        if match >= 0 and not rebind_allowed(s, match, h.ssrc, False, now):
            s.counters[<int>S_DROP_SSRC_REBIND_RATE] += 1
            return
    admitted = admit_ssrc(s, t, h.ssrc, v >= 0 or match >= 0)
    if admitted < 0:
        return
    if srtp.unprotect(s.transports[t].rx, buf, &length) != 0:
        s.counters[<int>S_DROP_UNPROTECT] += 1
        return
    if admitted == 0:
        note_srtp_stream(s, t, h.ssrc)
    if finish_srtp_header(buf, length, &h) < 0:  # the header is unchanged by unprotect: only its end is new
        s.counters[<int>S_DROP_MALFORMED] += 1
        return
    if v < 0:
        v = bind_stream(s, t, match, &h, now) if match >= 0 else -1
        if v < 0:
            s.counters[<int>S_DROP_UNKNOWN_SSRC] += 1
            return
    r = s.receivers[v >> 8]
    l = (v >> 1) & 0x7F
    layer = &r.layers[l]
    if r.ext_transport_cc:
        # Every packet that arrived counts for the publisher's estimator, RTX and padding-only probes included.
        transportcc_received(s, t, buf, &h, r.ext_transport_cc, now)
    if v & 1:
        # RTX (RFC 4588): the payload starts with the original sequence number; rebuild the original in place.
        if h.payload_length <= 2:
            s.counters[<int>S_DROP_RTX_PADDING] += 1
            return
        if not layer.has_ssrc:
            s.counters[<int>S_DROP_UNKNOWN_SSRC] += 1
            return
        osn = load16(buf + h.header_length)
        memmove(buf + 2, buf, h.header_length)
        buf += 2
        length -= 2
        buf[1] = (buf[1] & 0x80) | r.payload_type
        store16(buf + 2, osn)
        store32(buf + 8, layer.ssrc)
        if parse_rtp(buf, length, &h) < 0:
            s.counters[<int>S_DROP_MALFORMED] += 1
            return
        receive(s, r, l, buf, length, &h, now, True)
    elif h.payload_type != r.payload_type and h.payload_type != r.red_payload_type:
        # Subscribers are told one codec (and RED when negotiated with it): anything else (FEC, a renegotiated codec)
        # would decode as garbage.
        s.counters[<int>S_DROP_PAYLOAD_TYPE] += 1
    else:
        receive(s, r, l, buf, length, &h, now, False)


cdef void receive(EngineState *s, Receiver *r, int l, const uint8_t *buf, int length, const RtpHeader *h,
                  int64_t now, bint recovered) noexcept nogil:
    """Accounts for the packet on its Receiver layer and appends it to the batch's ExtPackets (see fanout.pyx)."""
    cdef Layer *layer = &r.layers[l]
    cdef int first, value_length, described
    cdef const uint8_t *value
    cdef ExtPacket *p
    p = &s.packets[s.packet_count]  # one per datagram at most, so BATCH entries always suffice
    p.h = h[0]
    packet_set(p, buf, length, r, l, now)
    describe_packet(p, r.codec, r.is_video)
    if r.ext_dd:
        described = describe_dd(p)
        if described == 0:
            s.counters[<int>S_DD_PACKETS] += 1
        elif described == -1:
            s.counters[<int>S_DD_INVALID] += 1
    if h.payload_type == r.red_payload_type:
        if p.descriptor != DESC_RED:
            s.counters[<int>S_DROP_MALFORMED] += 1  # its blocks cannot be told apart, for those that get them stripped
            return
        s.counters[<int>S_RED_RECEIVED] += 1
    first = layer_receive(layer, buf, length, h, r.clock_rate, now, recovered)
    if first < 0:
        s.counters[<int>S_DROP_DUPLICATE] += 1
        return
    if first:
        queue_event(s, E_LAYER, NULL, 0, NULL, r.id, l, layer.ssrc)
    if recovered:
        s.counters[<int>S_RTX_RECOVERED] += 1
    receiver_note_live(r, l)
    if r.ext_audio_level and find_extension(buf, h, r.ext_audio_level, &value, &value_length) and value_length >= 1:
        receiver_note_audio_level(r, value[0] & 0x7F)
    layer_note_temporal(layer, p.temporal, length, h.payload_length)
    layer_note_keyframe(layer, h.timestamp, p.keyframe, length, h.payload_length)
    if p.descriptor == DESC_VP9 or p.has_dd:
        layer_note_svc(layer, p.spatial, p.temporal, length, h.payload_length, now)
    if p.keyframe:
        layer.keyframes += 1
        s.counters[<int>S_KEYFRAMES] += 1
    s.packet_count += 1


# ---------------------------------------------------------------- RTCP

cdef void handle_rtcp(EngineState *s, int t, uint8_t *buf, int length, int64_t now) noexcept nogil:
    """Walks a compound packet: sender reports to reports.pyx, keyframe requests and NACKs to feedback.pyx,
    transport-wide congestion control feedback (RTPFB fmt 15) and REMB (PSFB fmt 15) to transportcc.pyx."""
    cdef RtcpHeader rh
    cdef SenderInfo info
    cdef uint32_t sender, media
    cdef int offset = 0
    cdef int64_t v
    cdef const uint8_t *p
    cdef bint ok
    cdef bint estimate_input = False, first_input = False
    cdef uint32_t first_sender
    if length < 8:
        s.counters[<int>S_DROP_MALFORMED] += 1
        return
    # SRTCP keeps the first header and its sender SSRC in the clear; a new one costs a libsrtp stream too: one of a
    # media stream uses that stream, any other one is kept in the transport's small ring (note_rtcp_sender).
    first_sender = load32(buf + 4)
    if srtp.unprotect_rtcp(s.transports[t].rx, buf, &length) != 0:
        s.counters[<int>S_DROP_UNPROTECT] += 1
        return
    if map_get(&s.srtp_ssrcs, stream_key(t, first_sender)) < 0:
        note_rtcp_sender(s, t, first_sender)
    while offset < length:
        p = buf + offset
        if parse_rtcp_header(p, length - offset, &rh) < 0:
            s.counters[<int>S_DROP_MALFORMED] += 1
            break
        if rh.packet_type == RTCP_SR:
            s.counters[<int>S_SR_RECEIVED] += 1
            if parse_sender_info(p, rh.total_length, &info) == 0:
                reports_sender_info(s, t, &info, now)
            reports_receiver_blocks(s, t, p, rh.total_length, rh.count, now)
        elif rh.packet_type == RTCP_RR:
            s.counters[<int>S_RR_RECEIVED] += 1
            reports_receiver_blocks(s, t, p, rh.total_length, rh.count, now)
        elif rh.packet_type == RTCP_PSFB and (rh.count == 1 or rh.count == 4):
            if rh.count == 1:
                ok = parse_feedback_ssrcs(p, rh.total_length, &sender, &media) == 0
            else:
                ok = parse_fir_ssrc(p, rh.total_length, &media) == 0
            if ok:
                v = map_get(&s.downtrack_ssrcs, stream_key(t, media))
                if v >= 0:
                    feedback_keyframe_request(s, s.downtracks[v], now)
        elif rh.packet_type == RTCP_RTPFB and rh.count == TWCC_FMT:
            first_input |= transportcc_feedback(s, t, p, rh.total_length, now)
            estimate_input = True
        elif rh.packet_type == RTCP_PSFB and rh.count == 15:
            first_input |= transportcc_remb(s, t, p, rh.total_length, now)
            estimate_input = True
        elif rh.packet_type == RTCP_RTPFB and rh.count == 1:
            if parse_feedback_ssrcs(p, rh.total_length, &sender, &media) == 0:
                v = map_get(&s.downtrack_ssrcs, stream_key(t, media))
                if v >= 0:
                    feedback_nack(s, s.downtracks[v], media, p, rh.total_length, now)
        offset += rh.total_length
    if estimate_input:
        transportcc_estimate_event(s, t, first_input, now)
