"""transport-cc on the engine's transports: feedback to publishers, estimates from subscribers (see
transportcc.pxd)."""
from libc.stdint cimport uint16_t
from libc.stdlib cimport free, malloc

from engine cimport srtp
from engine.bwe cimport Bwe, bwe_congested, bwe_estimate_bps, bwe_init, bwe_on_feedback, bwe_on_remb, bwe_take_change
from engine.rtcp cimport parse_remb
from engine.rtp cimport find_extension
from engine.state cimport (E_BANDWIDTH, S_BANDWIDTH_EVENTS, S_DROP_MALFORMED, S_REMB_RECEIVED,
                           S_TWCC_FEEDBACK_RECEIVED, S_TWCC_FEEDBACK_SENT, S_TWCC_LATE, S_TWCC_UNMATCHED, SEND_BUF,
                           TWCC_HISTORY, queue_event, transport_ready)
from engine.twcc cimport (TWCC_LATE, TwccFeedback, TwccRecorder, TwccSent, twcc_history_init,
                          twcc_history_resolve, twcc_parse, twcc_recorder_add, twcc_recorder_feedback,
                          twcc_recorder_full, twcc_recorder_init)
from engine.table cimport list_add, list_discard
from engine.udpmux cimport send_rtcp, send_slot_buffer, send_take_slot
from engine.wire cimport load16


cdef int transportcc_enable_receive(EngineState *s, int slot) noexcept nogil:
    cdef Transport *t = s.transports[slot]
    if t.twcc_rx == NULL:
        if list_add(&s.twcc_receivers, slot) < 0:
            return -1
        t.twcc_rx = <TwccRecorder *>malloc(sizeof(TwccRecorder))
        if t.twcc_rx == NULL:
            list_discard(&s.twcc_receivers, slot)
            return -1
        twcc_recorder_init(t.twcc_rx)
    return 0


cdef int transportcc_enable_send(Transport *t, bint stamp, int first_seq, int64_t now) noexcept nogil:
    cdef TwccSent *sent
    if t.bwe == NULL:
        t.bwe = <Bwe *>malloc(sizeof(Bwe))
        if t.bwe == NULL:
            return -1
        bwe_init(t.bwe, BWE_START_BPS, now)
    if stamp and t.twcc_tx.sent == NULL:
        sent = <TwccSent *>malloc(TWCC_HISTORY * sizeof(TwccSent))
        if sent == NULL:
            return -1
        twcc_history_init(&t.twcc_tx, sent, <uint16_t>first_seq)
    return 0


cdef void transportcc_free(EngineState *s, int slot) noexcept nogil:
    cdef Transport *t = s.transports[slot]
    if t.twcc_rx != NULL:
        list_discard(&s.twcc_receivers, slot)
    free(t.twcc_rx)
    free(t.twcc_tx.sent)
    free(t.bwe)
    t.twcc_rx = NULL
    t.twcc_tx.sent = NULL
    t.bwe = NULL


# ---------------------------------------------------------------- toward publishers

cdef void send_feedback(EngineState *s, Transport *t, int64_t now) noexcept nogil:
    cdef int i, slot, length
    if not transport_ready(t):
        return  # kept until it is (a full record starts over: twcc_recorder_add)
    for i in range(TWCC_FEEDBACKS_PER_SEND):
        slot = send_take_slot(&s.send)
        length = twcc_recorder_feedback(t.twcc_rx, send_slot_buffer(&s.send, slot), SEND_BUF - srtp.SRTCP_TRAILER,
                                        t.local_ssrc, now)
        if length <= 0:
            return
        s.counters[<int>S_TWCC_FEEDBACK_SENT] += 1
        send_rtcp(s, t, slot, length)


cdef void transportcc_received(EngineState *s, int t, const uint8_t *buf, const RtpHeader *h, int ext_id,
                               int64_t now) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef TwccRecorder *rec = tr.twcc_rx
    cdef const uint8_t *value
    cdef int value_length
    cdef uint16_t seq
    if rec == NULL or not find_extension(buf, h, ext_id, &value, &value_length) or value_length < 2:
        return
    seq = load16(value)
    if twcc_recorder_full(rec, seq):
        send_feedback(s, tr, now)
    if twcc_recorder_add(rec, seq, h.ssrc, now) == TWCC_LATE:
        s.counters[<int>S_TWCC_LATE] += 1
    if rec.held >= TWCC_FEEDBACK_PACKETS or (h.marker and now - rec.last_feedback_us >= TWCC_MARKER_INTERVAL_US):
        send_feedback(s, tr, now)


cdef void transportcc_tick(EngineState *s, int64_t now) noexcept nogil:
    cdef int i
    cdef Transport *t
    for i in range(s.twcc_receivers.count):  # not every transport: a scan of all of them cost ~1 % of the server
        t = s.transports[s.twcc_receivers.items[i]]
        if t.twcc_rx.held > 0 and now - t.twcc_rx.last_feedback_us >= TWCC_FEEDBACK_INTERVAL_US:
            send_feedback(s, t, now)


# ---------------------------------------------------------------- from subscribers

cdef void transportcc_estimate_event(EngineState *s, int t, bint first, int64_t now) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    if tr.bwe != NULL and (bwe_take_change(tr.bwe) or first):
        s.counters[<int>S_BANDWIDTH_EVENTS] += 1
        queue_event(s, E_BANDWIDTH, NULL, 0, NULL, tr.id, bwe_estimate_bps(tr.bwe), bwe_congested(tr.bwe, now))


cdef bint transportcc_feedback(EngineState *s, int t, const uint8_t *p, int length, int64_t now) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef TwccFeedback fb
    cdef bint first
    cdef int n = twcc_parse(p, length, &fb, s.twcc_results, TWCC_HISTORY)
    if n < 0:
        s.counters[<int>S_DROP_MALFORMED] += 1
        return False
    s.counters[<int>S_TWCC_FEEDBACK_RECEIVED] += 1
    if tr.twcc_tx.sent == NULL or tr.bwe == NULL:
        s.counters[<int>S_TWCC_UNMATCHED] += n  # we never numbered packets for it
        return False
    n = twcc_history_resolve(&tr.twcc_tx, s.twcc_results, n, s.bwe_results, &s.counters[<int>S_TWCC_UNMATCHED])
    if n == 0:
        return False
    first = not tr.bwe.twcc_seen
    bwe_on_feedback(tr.bwe, s.bwe_results, n, now)
    return first and tr.bwe.twcc_seen


cdef bint transportcc_remb(EngineState *s, int t, const uint8_t *p, int length, int64_t now) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef int64_t bps = parse_remb(p, length)
    cdef bint first
    if bps < 0:
        s.counters[<int>S_DROP_MALFORMED] += 1
        return False
    s.counters[<int>S_REMB_RECEIVED] += 1
    if tr.bwe == NULL:
        return False
    first = tr.bwe.rembs == 0
    bwe_on_remb(tr.bwe, bps, now)
    return first and tr.bwe.rembs == 1
