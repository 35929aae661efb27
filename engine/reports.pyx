"""Reports: SR and report blocks in; SR/RR/SDES/REMB out every report interval (see reports.pxd)."""
from libc.stdint cimport uint8_t, uint32_t

from engine cimport srtp
from engine.downtrack cimport DownTrack
from engine.munger cimport munger_rtp_time
from engine.receiver cimport Layer, Receiver, layer_report_block
from engine.rtcp cimport ReportBlock, build_remb, build_rr, build_sdes_cname, build_sr, parse_report_block
from engine.state cimport (S_REMB_SENT, S_RR_SENT, S_SR_SENT, SEND_BUF, Transport, ntp_now, stream_key,
                           transport_ready)
from engine.table cimport map_get
from engine.udpmux cimport send_rtcp, send_slot_buffer, send_take_slot

cdef int64_t REPORT_INTERVAL_US = 1000000   # RR + REMB to publishers, SR to subscribers
# A round trip computed from a report block beyond this is a clock error or a forged LSR/DLSR: not kept.
cdef uint32_t MAX_RTT_NTP16 = 10 * 65536    # 10 s in 1/65536 s


cdef void reports_sender_info(EngineState *s, int t, const SenderInfo *info, int64_t now) noexcept nogil:
    cdef int64_t v = map_get(&s.streams, stream_key(t, info.ssrc))
    cdef Layer *layer
    if v >= 0 and not (v & 1):
        layer = &s.receivers[v >> 8].layers[(v >> 1) & 0x7F]
        layer.sr_ntp = info.ntp_time
        layer.sr_rtp = info.rtp_time
        layer.sr_arrival_us = now


cdef void reports_receiver_blocks(EngineState *s, int t, const uint8_t *pkt, int length, int count,
                                  int64_t now) noexcept nogil:
    cdef ReportBlock block
    cdef int i
    cdef int64_t v
    cdef DownTrack *d
    cdef uint32_t rtt
    for i in range(count):
        if parse_report_block(pkt, length, i, &block) != 0:
            return
        v = map_get(&s.downtrack_ssrcs, stream_key(t, block.ssrc))
        if v < 0 or s.downtracks[v].ssrc != block.ssrc:  # not ours, or about the RTX stream
            continue
        d = s.downtracks[v]
        d.rr_blocks += 1
        d.rr_highest = block.highest_sequence
        d.rr_lost = block.cumulative_lost
        d.rr_jitter = block.jitter
        if block.last_sr != 0:  # 0 = no SR received yet
            rtt = <uint32_t>(ntp_now() >> 16) - block.last_sr - block.delay_since_last_sr
            if rtt <= MAX_RTT_NTP16:
                d.rr_has_rtt = True
                d.rr_rtt_us = <int64_t>rtt * 1000000 // 65536


cdef void reports_tick(EngineState *s, int64_t now) noexcept nogil:
    cdef int i
    cdef DownTrack *d
    if now - s.last_report_us < REPORT_INTERVAL_US:
        return
    for i in range(s.downtrack_end):
        d = s.downtracks[i]
        if d != NULL and d.started:
            send_sender_report(s, d, s.receivers[d.receiver], now)
    s.last_report_us = now
    for i in range(s.transport_end):
        if s.transports[i] != NULL and s.transports[i].receivers.count:
            send_receiver_report(s, s.transports[i], now)


cdef void send_receiver_report(EngineState *s, Transport *t, int64_t now) noexcept nogil:
    """RR for every publisher layer on `t` + SDES + REMB (so the publisher's encoder ramps up to all layers) unless
    transport-cc is negotiated on it."""
    cdef ReportBlock blocks[31]
    cdef uint32_t video_ssrcs[31]
    cdef int count = 0
    cdef int video = 0
    cdef int i, l, slot, length, n
    cdef int cap = SEND_BUF - srtp.SRTCP_TRAILER
    cdef Receiver *r
    cdef uint8_t *out
    if not transport_ready(t):
        return
    for i in range(t.receivers.count):
        r = s.receivers[t.receivers.items[i]]
        for l in range(r.num_layers):
            if not r.layers[l].active or count == 31:
                continue
            layer_report_block(&r.layers[l], now, &blocks[count])
            count += 1
            if r.is_video:
                video_ssrcs[video] = r.layers[l].ssrc
                video += 1
    if count == 0:
        return
    slot = send_take_slot(&s.send)
    out = send_slot_buffer(&s.send, slot)
    length = build_rr(out, cap, t.local_ssrc, blocks, count)
    if length < 0:
        return
    n = build_sdes_cname(out + length, cap - length, t.local_ssrc, s.cname, s.cname_length)
    if n > 0:
        length += n
    s.counters[<int>S_RR_SENT] += 1
    if video and t.twcc_rx == NULL:  # with transport-cc the publisher estimates itself; a REMB would cap it
        n = build_remb(out + length, cap - length, t.local_ssrc, s.remb_bitrate, video_ssrcs, video)
        if n > 0:
            length += n
            s.counters[<int>S_REMB_SENT] += 1
    send_rtcp(s, t, slot, length)


cdef void send_sender_report(EngineState *s, DownTrack *d, Receiver *r, int64_t now) noexcept nogil:
    """SR + SDES CNAME for one DownTrack."""
    cdef Transport *t = s.transports[d.transport]
    cdef SenderInfo info
    cdef int slot, length, n
    cdef int cap = SEND_BUF - srtp.SRTCP_TRAILER
    cdef uint8_t *out
    if not transport_ready(t):
        return
    info.ssrc = d.ssrc
    info.ntp_time = ntp_now()
    info.rtp_time = munger_rtp_time(d, &r.layers[d.current_layer] if d.current_layer >= 0 else NULL, r.clock_rate,
                                    now)
    info.packet_count = <uint32_t>d.packets
    info.octet_count = <uint32_t>d.octets
    slot = send_take_slot(&s.send)
    out = send_slot_buffer(&s.send, slot)
    length = build_sr(out, cap, &info, NULL, 0)
    if length < 0:
        return
    n = build_sdes_cname(out + length, cap - length, d.ssrc, s.cname, s.cname_length)
    if n > 0:
        length += n
    s.counters[<int>S_SR_SENT] += 1
    send_rtcp(s, t, slot, length)
