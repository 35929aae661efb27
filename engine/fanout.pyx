"""Fan-out: the batch's ExtPackets to their DownTracks, in an order that lets runs leave as GSO sends."""
from libc.stdint cimport int16_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine cimport srtp
from engine.bwe cimport bwe_on_sent
from engine.codecs.red cimport RedBlock
from engine.downtrack cimport SEQMAP_SIZE, WRITE_GROWTH, WRITE_MEDIA, WRITE_PADDING, WRITE_RTX, downtrack_write
from engine.forwarder cimport (FORWARD_CUT, FORWARD_DROP, FORWARD_DROP_TEMPORAL, FORWARD_PAUSED, FORWARD_SWITCHED,
                               forwarder_accept)
from engine.memory cimport CACHE_LINE, prefetch
from engine.munger cimport DROP_PADDING, munger_drop, munger_forwarded, munger_map
from engine.packet cimport DESC_NONE, DESC_RED
from engine.receiver cimport Receiver
from engine.state cimport (BATCH, S_DROP_LAYER_CUT, S_DROP_PROTECT, S_DROP_SUBSCRIBER_NOT_READY,
                           S_DROP_TEMPORAL_LAYER, S_DROP_TOO_LARGE, S_FORWARDED, S_LAYER_SWITCHES, S_PAUSED_SKIPPED,
                           S_RED_RECOVERED, S_TEMPORAL_PADDING, SEND_BUF, SendBatch, Transport, transport_ready)
from engine.twcc cimport TWCC_HISTORY, TwccHistory, twcc_history_add
from engine.udpmux cimport send_commit, send_slot_buffer, send_take_slot


cdef void fanout_batch(EngineState *s, SendBatch *b, int worker, int64_t now) noexcept nogil:
    """DownTrack by DownTrack, each in arrival order: a subscriber's packets then sit in consecutive send slots,
    which send_batch_flush can hand to the kernel as one GSO send. Only the DownTracks `worker` owns
    (EngineState.owners): every worker reads the batch's packets in place, each writes only its own DownTracks,
    transports and send batch."""
    cdef bint done[<int>BATCH]
    cdef int i, j, k, slot
    cdef Receiver *r
    cdef ExtPacket *p
    cdef uint64_t mine = (<uint64_t>1) << worker
    for i in range(s.packet_count):
        done[i] = False
    for i in range(s.packet_count):
        if done[i]:
            continue
        r = s.packets[i].r
        if r.workers & mine:
            for k in range(r.downtracks.count):
                slot = r.downtracks.items[k]
                if s.owners[slot] != worker:
                    continue
                prefetch_ahead(s, r, k, worker)
                for j in range(i, s.packet_count):
                    p = &s.packets[j]
                    if p.r == r:
                        forward(s, b, s.downtracks[slot], p, now)
        for j in range(i, s.packet_count):
            if s.packets[j].r == r:
                done[j] = True


cdef inline void prefetch_ahead(EngineState *s, const Receiver *r, int k, int worker) noexcept nogil:
    """Starts loading what forwarding to the Receiver's next DownTracks will touch: at hundreds of subscribers each
    one's state is cold again by the next frame, and forwarding a frame to one DownTrack (SRTP, the send slot) takes
    far longer than a cache miss. One step per DownTrack ahead, each needing only what the step before loaded: the
    DownTrack's first lines; its Transport's (which hold the send history's header); its next seqmap entry, Munger
    run and SRTP session; the send history's next entry. (A prefetch of NULL is a no-op: an absent session costs
    nothing.)"""
    cdef const DownTrack *d
    cdef const Transport *t
    d = ahead(s, r, k + 4, worker)
    if d != NULL:
        prefetch(d)
        prefetch(<const char *>d + CACHE_LINE)
        prefetch(<const char *>d + 2 * CACHE_LINE)
    d = ahead(s, r, k + 3, worker)
    if d != NULL:
        t = s.transports[d.transport]
        if t != NULL:
            prefetch(t)
            prefetch(<const char *>t + CACHE_LINE)
    d = ahead(s, r, k + 2, worker)
    if d != NULL:
        prefetch(&d.seqmap[<uint16_t>(d.last_out_seq + 1) & (SEQMAP_SIZE - 1)])
        prefetch(&d.runs[d.run_newest])
        t = s.transports[d.transport]
        if t != NULL:
            prefetch(t.tx)
    d = ahead(s, r, k + 1, worker)
    if d != NULL:
        t = s.transports[d.transport]
        if t != NULL and t.twcc_tx.sent != NULL:
            prefetch(&t.twcc_tx.sent[t.twcc_tx.next_seq & (TWCC_HISTORY - 1)])


cdef inline const DownTrack *ahead(EngineState *s, const Receiver *r, int k, int worker) noexcept nogil:
    """The Receiver's k-th DownTrack if there is one and `worker` forwards to it (another worker's lines are its own)."""
    cdef int slot
    if k >= r.downtracks.count:
        return NULL
    slot = r.downtracks.items[k]
    return s.downtracks[slot] if s.owners[slot] == worker else NULL


cdef inline void forward(EngineState *s, SendBatch *b, DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil:
    cdef SeqMapEntry slot
    cdef int verdict = forwarder_accept(d, p, now)
    if verdict == FORWARD_DROP:
        return
    if verdict == FORWARD_PAUSED:
        b.counters[<int>S_PAUSED_SKIPPED] += 1
        return
    if verdict == FORWARD_CUT:
        d.dropped += 1
        b.counters[<int>S_DROP_LAYER_CUT] += 1
        return
    if verdict == FORWARD_DROP_TEMPORAL:
        b.counters[<int>S_DROP_TEMPORAL_LAYER] += 1
        if munger_drop(d, p, &slot) == DROP_PADDING and fanout_send(s, b, d, p, &slot, WRITE_PADDING, now):
            d.temporal_padding += 1
            b.counters[<int>S_TEMPORAL_PADDING] += 1
        return
    if verdict == FORWARD_SWITCHED:
        b.counters[<int>S_LAYER_SWITCHES] += 1
    if p.descriptor == DESC_RED and d.red_strip:
        forward_red_primary(s, b, d, p, now)
    else:
        forward_media(s, b, d, p, now)


cdef inline bint forward_media(EngineState *s, SendBatch *b, DownTrack *d, const ExtPacket *p,
                               int64_t now) noexcept nogil:
    cdef const SeqMapEntry *e = munger_map(d, p, now)
    if e == NULL or not fanout_send(s, b, d, p, e, WRITE_MEDIA, now):
        return False
    d.packets += 1
    d.octets += p.h.payload_length
    s.transports[d.transport].bytes_sent += p.h.header_length + p.h.payload_length  # retransmission budget
    b.counters[<int>S_FORWARDED] += 1
    return True


cdef void forward_red_primary(EngineState *s, SendBatch *b, DownTrack *d, const ExtPacket *p,
                              int64_t now) noexcept nogil:
    """A RED packet to a subscriber without RED: its primary Opus block, as the packet it repeats. Before it, the
    redundant blocks of packets that never reached `d` (newer than any it got: lost upstream, or still to come late,
    when they are then not sent again), so one lost packet in a row (two, with two blocks) costs no concealment."""
    cdef ExtPacket block
    cdef const RedBlock *redundant
    cdef uint16_t seq
    cdef int i
    cdef uint8_t opus = p.r.payload_type
    if d.started:
        for i in range(p.desc.red.redundant):
            redundant = &p.desc.red.blocks[i]
            seq = <uint16_t>(p.h.sequence - p.desc.red.distance[i])
            if <int16_t>(seq - d.highest_in) > 0 and redundant.length > 0 and redundant.payload_type == opus:
                red_block(p, redundant, seq, &block)
                if forward_media(s, b, d, &block, now):
                    d.red_recovered += 1
                    b.counters[<int>S_RED_RECOVERED] += 1
    if p.desc.red.primary.payload_type != opus or (
            <int16_t>(p.h.sequence - d.highest_in) <= 0 and munger_forwarded(d, p.h.sequence)):
        d.dropped += 1  # not Opus, or recovered from a later packet's redundancy before it came
        return
    red_block(p, &p.desc.red.primary, p.h.sequence, &block)
    forward_media(s, b, d, &block, now)


cdef inline void red_block(const ExtPacket *p, const RedBlock *b, uint16_t seq, ExtPacket *out) noexcept nogil:
    """`p` as the Opus packet of one of its blocks: the block's number, timestamp and payload."""
    out[0] = p[0]
    out.h.sequence = seq
    out.h.timestamp = <uint32_t>(p.h.timestamp - b.ts_offset)
    out.h.payload_length = b.length
    out.payload_offset = b.offset
    out.descriptor = DESC_NONE


cdef bint fanout_send(EngineState *s, SendBatch *b, DownTrack *d, const ExtPacket *p, const SeqMapEntry *e,
                      int kind, int64_t now) noexcept nogil:
    cdef Transport *t = s.transports[d.transport]
    cdef TwccHistory *history = &t.twcc_tx if d.ext_transport_cc and t.twcc_tx.sent != NULL else NULL
    cdef int slot, length, rtp_length
    cdef uint8_t *out
    if not transport_ready(t):
        b.counters[<int>S_DROP_SUBSCRIBER_NOT_READY] += 1
        return False
    if p.h.header_length + p.h.payload_length + WRITE_GROWTH + srtp.SRTP_TRAILER > SEND_BUF:
        b.counters[<int>S_DROP_TOO_LARGE] += 1
        return False
    slot = send_take_slot(b)
    out = send_slot_buffer(b, slot)
    # The transport-wide number (or the abs-send-time) is taken here, where the packet's final bytes are written into
    # the send batch (which leaves in this batch's sendmmsg), and the number is only spent when the packet really goes.
    length = downtrack_write(d, p, e, kind, <uint16_t>history.next_seq if history != NULL else 0, now, out)
    rtp_length = length
    if not t.plain and srtp.protect(t.tx, out, &length) != 0:
        b.counters[<int>S_DROP_PROTECT] += 1
        return False
    if history != NULL:
        twcc_history_add(history, rtp_length, now)
        if t.probing:
            t.probe_sent_bytes += rtp_length  # a cluster's rate counts what it tags, media included
    elif d.ext_abs_send_time and t.bwe != NULL:  # what the client's estimator counts, for its REMB
        bwe_on_sent(t.bwe, p.h.payload_length + (2 if kind == WRITE_RTX else 0), now)
    send_commit(s, b, slot, length, &t.path)
    return True
