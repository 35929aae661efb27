# RTCP parsing and building (RFC 3550, 4585, 5104). The build turns bounds checks off, so every read below is
# guarded by an explicit length comparison; parsers take the bytes available from `pkt` and re-validate its header.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memmove, memset

from engine.wire cimport load16, load32, store16, store32

cdef enum:
    NACK_MAX_SEQS = 256       # build_nack packs at most this many sequence numbers; the rest are dropped
    REPORT_BLOCK = 24
    MAX_REPORT_BLOCKS = 31    # the 5-bit count field
    LOST_MIN = -(1 << 23)     # cumulative_lost is 24-bit signed on the wire
    LOST_MAX = (1 << 23) - 1
    REMB_MAX_SSRCS = 255      # the 8-bit "Num SSRC" field
    REMB_MANTISSA_MAX = 0x3FFFF


cdef bint is_rtcp(const uint8_t *buf, int length) noexcept nogil:
    return buf != NULL and length >= 2 and (buf[0] >> 6) == 2 and 192 <= buf[1] <= 223


cdef int parse_rtcp_header(const uint8_t *buf, int length, RtcpHeader *h) noexcept nogil:
    cdef int total
    if buf == NULL or length < 4 or (buf[0] >> 6) != 2:
        return -1
    total = (<int>load16(buf + 2) + 1) * 4
    if total > length:
        return -1
    h.count = buf[0] & 0x1F
    h.packet_type = buf[1]
    h.total_length = total
    return 0


cdef inline int _content_length(const uint8_t *pkt, int length, RtcpHeader *h) noexcept nogil:
    # Bytes of the packet at `pkt` before its padding, or -1 when the header or the padding count is invalid.
    cdef int padding
    if parse_rtcp_header(pkt, length, h) != 0:
        return -1
    if not (pkt[0] & 0x20):
        return h.total_length
    padding = pkt[h.total_length - 1]
    if padding == 0 or padding > h.total_length - 4:
        return -1
    return h.total_length - padding


cdef int parse_sender_info(const uint8_t *pkt, int length, SenderInfo *info) noexcept nogil:
    cdef RtcpHeader h
    if _content_length(pkt, length, &h) < 28 or h.packet_type != RTCP_SR:
        return -1
    info.ssrc = load32(pkt + 4)
    info.ntp_time = (<uint64_t>load32(pkt + 8) << 32) | load32(pkt + 12)
    info.rtp_time = load32(pkt + 16)
    info.packet_count = load32(pkt + 20)
    info.octet_count = load32(pkt + 24)
    return 0


cdef int parse_report_block(const uint8_t *pkt, int length, int index, ReportBlock *block) noexcept nogil:
    cdef RtcpHeader h
    cdef int n = _content_length(pkt, length, &h)
    cdef int pos
    cdef uint32_t lost
    if n < 0 or index < 0 or index >= h.count:
        return -1
    if h.packet_type == RTCP_SR:
        pos = 28
    elif h.packet_type == RTCP_RR:
        pos = 8
    else:
        return -1
    pos += index * REPORT_BLOCK
    if n - pos < REPORT_BLOCK:
        return -1
    block.ssrc = load32(pkt + pos)
    block.fraction_lost = pkt[pos + 4]
    lost = (<uint32_t>pkt[pos + 5] << 16) | (<uint32_t>pkt[pos + 6] << 8) | pkt[pos + 7]
    block.cumulative_lost = <int32_t>lost - (1 << 24) if lost & 0x800000 else <int32_t>lost
    block.highest_sequence = load32(pkt + pos + 8)
    block.jitter = load32(pkt + pos + 12)
    block.last_sr = load32(pkt + pos + 16)
    block.delay_since_last_sr = load32(pkt + pos + 20)
    return 0


cdef int parse_feedback_ssrcs(const uint8_t *pkt, int length, uint32_t *sender_ssrc,
                              uint32_t *media_ssrc) noexcept nogil:
    cdef RtcpHeader h
    if _content_length(pkt, length, &h) < 12 or (h.packet_type != RTCP_RTPFB and h.packet_type != RTCP_PSFB):
        return -1
    sender_ssrc[0] = load32(pkt + 4)
    media_ssrc[0] = load32(pkt + 8)
    return 0


cdef int parse_nack(const uint8_t *pkt, int length, uint16_t *seqs, int max_seqs) noexcept nogil:
    cdef RtcpHeader h
    cdef int n = _content_length(pkt, length, &h)
    cdef int pos = 12, found = 0, bit
    cdef uint16_t pid, blp
    if n < 12 or h.packet_type != RTCP_RTPFB or h.count != 1:
        return 0
    while n - pos >= 4 and found < max_seqs:
        pid = load16(pkt + pos)
        blp = load16(pkt + pos + 2)
        pos += 4
        seqs[found] = pid
        found += 1
        bit = 0
        while bit < 16 and found < max_seqs:
            if blp & (1 << bit):
                seqs[found] = <uint16_t>(pid + bit + 1)
                found += 1
            bit += 1
    return found


cdef int parse_fir_ssrc(const uint8_t *pkt, int length, uint32_t *media_ssrc) noexcept nogil:
    cdef RtcpHeader h
    if _content_length(pkt, length, &h) < 20 or h.packet_type != RTCP_PSFB or h.count != 4:
        return -1
    media_ssrc[0] = load32(pkt + 12)    # first FCI entry: SSRC, seq nr, 3 reserved bytes
    return 0


cdef int64_t parse_remb(const uint8_t *pkt, int length) noexcept nogil:
    cdef RtcpHeader h
    cdef int n = _content_length(pkt, length, &h)
    cdef int exponent
    if n < 20 or h.packet_type != RTCP_PSFB or h.count != 15 or memcmp(pkt + 12, b"REMB", 4) != 0:
        return -1
    if n < 20 + 4 * <int>pkt[16]:
        return -1
    exponent = pkt[17] >> 2
    if exponent > 40:  # beyond any link (2^18 x 2^40 bps): garbage
        return -1
    return <int64_t>(((<uint32_t>(pkt[17] & 3)) << 16) | load16(pkt + 18)) << exponent


cdef inline void _write_header(uint8_t *out, int count, int packet_type, int total) noexcept nogil:
    out[0] = <uint8_t>(0x80 | count)
    out[1] = <uint8_t>packet_type
    store16(out + 2, <uint16_t>(total // 4 - 1))


cdef int build_pli(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc) noexcept nogil:
    if out == NULL or cap < 12:
        return -1
    _write_header(out, 1, RTCP_PSFB, 12)
    store32(out + 4, sender_ssrc)
    store32(out + 8, media_ssrc)
    return 12


cdef int build_fir(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, uint8_t seq_nr) noexcept nogil:
    if out == NULL or cap < 20:
        return -1
    _write_header(out, 4, RTCP_PSFB, 20)
    store32(out + 4, sender_ssrc)
    store32(out + 8, 0)                 # RFC 5104 4.3.1.2: the header's media SSRC is unused; the FCI names it
    store32(out + 12, media_ssrc)
    out[16] = seq_nr
    out[17] = 0
    out[18] = 0
    out[19] = 0
    return 20


cdef int build_nack(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, const uint16_t *seqs,
                    int count) noexcept nogil:
    cdef uint16_t s[NACK_MAX_SEQS]
    cdef int n = 0, i, j, start = 0, pos = 12
    cdef uint16_t v, gap, widest = 0, pid, blp, d
    if out == NULL or seqs == NULL or count <= 0:
        return -1
    if count > NACK_MAX_SEQS:
        count = NACK_MAX_SEQS
    # Insertion sort of the small local copy, skipping duplicates.
    for i in range(count):
        v = seqs[i]
        j = n
        while j > 0 and s[j - 1] > v:
            j -= 1
        if j > 0 and s[j - 1] == v:
            continue
        memmove(&s[j + 1], &s[j], (n - j) * sizeof(uint16_t))
        s[j] = v
        n += 1
    # Sequence numbers wrap: start after the widest circular gap, so 65534, 65535, 0, 1 stay one run.
    for i in range(n):
        gap = <uint16_t>(s[(i + 1) % n] - s[i])
        if gap > widest:
            widest = gap
            start = (i + 1) % n
    i = 0
    while i < n:
        pid = s[(start + i) % n]
        blp = 0
        i += 1
        while i < n:
            d = <uint16_t>(s[(start + i) % n] - pid)
            if d > 16:
                break
            blp |= <uint16_t>(1 << (d - 1))
            i += 1
        if cap - pos < 4:
            return -1
        store16(out + pos, pid)
        store16(out + pos + 2, blp)
        pos += 4
    _write_header(out, 1, RTCP_RTPFB, pos)
    store32(out + 4, sender_ssrc)
    store32(out + 8, media_ssrc)
    return pos


cdef inline void _write_report_block(uint8_t *out, const ReportBlock *b) noexcept nogil:
    cdef int32_t lost = b.cumulative_lost
    if lost < LOST_MIN:
        lost = LOST_MIN
    elif lost > LOST_MAX:
        lost = LOST_MAX
    store32(out, b.ssrc)
    out[4] = b.fraction_lost
    out[5] = <uint8_t>((<uint32_t>lost >> 16) & 0xFF)
    out[6] = <uint8_t>((<uint32_t>lost >> 8) & 0xFF)
    out[7] = <uint8_t>(<uint32_t>lost & 0xFF)
    store32(out + 8, b.highest_sequence)
    store32(out + 12, b.jitter)
    store32(out + 16, b.last_sr)
    store32(out + 20, b.delay_since_last_sr)


cdef inline int _write_report_blocks(uint8_t *out, const ReportBlock *blocks, int count) noexcept nogil:
    cdef int i
    for i in range(count):
        _write_report_block(out + i * REPORT_BLOCK, &blocks[i])
    return count * REPORT_BLOCK


cdef int build_rr(uint8_t *out, int cap, uint32_t sender_ssrc, const ReportBlock *blocks, int count) noexcept nogil:
    cdef int total = 8 + count * REPORT_BLOCK
    if out == NULL or count < 0 or count > MAX_REPORT_BLOCKS or (count > 0 and blocks == NULL) or cap < total:
        return -1
    _write_header(out, count, RTCP_RR, total)
    store32(out + 4, sender_ssrc)
    _write_report_blocks(out + 8, blocks, count)
    return total


cdef int build_sr(uint8_t *out, int cap, const SenderInfo *info, const ReportBlock *blocks, int count) noexcept nogil:
    cdef int total = 28 + count * REPORT_BLOCK
    if (out == NULL or info == NULL or count < 0 or count > MAX_REPORT_BLOCKS or (count > 0 and blocks == NULL)
            or cap < total):
        return -1
    _write_header(out, count, RTCP_SR, total)
    store32(out + 4, info.ssrc)
    store32(out + 8, <uint32_t>(info.ntp_time >> 32))
    store32(out + 12, <uint32_t>info.ntp_time)
    store32(out + 16, info.rtp_time)
    store32(out + 20, info.packet_count)
    store32(out + 24, info.octet_count)
    _write_report_blocks(out + 28, blocks, count)
    return total


cdef int build_sdes_cname(uint8_t *out, int cap, uint32_t ssrc, const char *cname, int cname_length) noexcept nogil:
    # One chunk: SSRC, CNAME item (type 1, length, text), then at least one zero octet ending the item list,
    # padded with zeros to a 32-bit boundary (RFC 3550 6.5).
    cdef int items_end = 8 + 2 + cname_length
    cdef int total = (items_end + 1 + 3) & ~3
    if out == NULL or cname_length < 0 or cname_length > 255 or (cname_length > 0 and cname == NULL) or cap < total:
        return -1
    _write_header(out, 1, RTCP_SDES, total)
    store32(out + 4, ssrc)
    out[8] = 1
    out[9] = <uint8_t>cname_length
    memcpy(out + 10, cname, cname_length)
    memset(out + items_end, 0, total - items_end)
    return total



cdef int build_remb(uint8_t *out, int cap, uint32_t sender_ssrc, uint64_t bitrate, const uint32_t *ssrcs,
                    int count) noexcept nogil:
    # PSFB fmt 15 "REMB" (draft-alvestrand-rmcat-remb): media SSRC 0, "REMB", SSRC count, bitrate as a 6-bit
    # exponent and 18-bit mantissa (precision is dropped from the bottom), then the SSRCs it applies to.
    cdef int total = 20 + 4 * count
    cdef int exponent = 0
    cdef int i
    if out == NULL or count < 0 or count > REMB_MAX_SSRCS or (count > 0 and ssrcs == NULL) or cap < total:
        return -1
    while bitrate > REMB_MANTISSA_MAX:
        bitrate >>= 1
        exponent += 1
    _write_header(out, 15, RTCP_PSFB, total)
    store32(out + 4, sender_ssrc)
    store32(out + 8, 0)
    memcpy(out + 12, b"REMB", 4)
    out[16] = <uint8_t>count
    out[17] = <uint8_t>((exponent << 2) | (bitrate >> 16))
    store16(out + 18, <uint16_t>bitrate)
    for i in range(count):
        store32(out + 20 + 4 * i, ssrcs[i])
    return total

# ---- thin Python faces, for tests and debugging (not used on the hot path) ----

cdef enum:
    BUILD_CAP = 1500


def is_rtcp_packet(bytes data) -> bool:
    """RFC 5761 demultiplexing: whether `data` is RTCP rather than RTP."""
    return is_rtcp(data, len(data))


def parse_compound(bytes data) -> list | None:
    """Each packet of the compound RTCP `data` as a dict (type, count, length and, by type, the parsed body),
    or None when any packet in it is malformed."""
    cdef const uint8_t *buf = data
    cdef int pos = 0, remaining, n, i
    cdef RtcpHeader h
    cdef SenderInfo info
    cdef ReportBlock block
    cdef uint32_t sender_ssrc, media_ssrc
    cdef uint16_t seqs[NACK_MAX_SEQS * 17]
    packets = []
    while pos < len(data):
        remaining = len(data) - pos
        if parse_rtcp_header(buf + pos, remaining, &h) != 0:
            return None
        packet = {"type": h.packet_type, "count": h.count, "length": h.total_length}
        if h.packet_type == RTCP_SR or h.packet_type == RTCP_RR:
            if h.packet_type == RTCP_SR:
                if parse_sender_info(buf + pos, remaining, &info) != 0:
                    return None
                packet["sender_info"] = info
            else:
                if h.total_length < 8:
                    return None
                packet["ssrc"] = load32(buf + pos + 4)
            reports = []
            for i in range(h.count):
                if parse_report_block(buf + pos, remaining, i, &block) != 0:
                    return None
                reports.append(block)
            packet["reports"] = reports
        elif h.packet_type == RTCP_RTPFB or h.packet_type == RTCP_PSFB:
            if parse_feedback_ssrcs(buf + pos, remaining, &sender_ssrc, &media_ssrc) != 0:
                return None
            packet["sender_ssrc"] = sender_ssrc
            packet["media_ssrc"] = media_ssrc
            if h.packet_type == RTCP_RTPFB and h.count == 1:
                n = parse_nack(buf + pos, remaining, seqs, NACK_MAX_SEQS * 17)
                packet["nack"] = [seqs[i] for i in range(n)]
            elif h.packet_type == RTCP_PSFB and h.count == 4:
                if parse_fir_ssrc(buf + pos, remaining, &media_ssrc) != 0:
                    return None
                packet["fir_ssrc"] = media_ssrc
        packets.append(packet)
        pos += h.total_length
    return packets


cdef int _cap(int cap) except -1:
    # Builders take the room they may use, so tests can exercise the cdef functions' `cap` checks.
    if not 0 <= cap <= BUILD_CAP:
        raise ValueError(f"cap must be within 0..{BUILD_CAP}")
    return cap


cdef bytes _built(uint8_t *out, int n):
    if n < 0:
        raise ValueError("RTCP packet does not fit or has invalid arguments")
    return out[:n]


def pli(uint32_t sender_ssrc, uint32_t media_ssrc, int cap=BUILD_CAP) -> bytes:
    cdef uint8_t out[BUILD_CAP]
    return _built(out, build_pli(out, _cap(cap), sender_ssrc, media_ssrc))


def fir(uint32_t sender_ssrc, uint32_t media_ssrc, uint8_t seq_nr, int cap=BUILD_CAP) -> bytes:
    cdef uint8_t out[BUILD_CAP]
    return _built(out, build_fir(out, _cap(cap), sender_ssrc, media_ssrc, seq_nr))


def nack(uint32_t sender_ssrc, uint32_t media_ssrc, seqs, int cap=BUILD_CAP) -> bytes:
    """Generic NACK for `seqs` (any order, duplicates allowed; only the first 256 are used)."""
    cdef uint8_t out[BUILD_CAP]
    cdef uint16_t values[NACK_MAX_SEQS]
    cdef int count = 0
    for seq in seqs:
        if count == NACK_MAX_SEQS:
            break
        values[count] = seq
        count += 1
    return _built(out, build_nack(out, _cap(cap), sender_ssrc, media_ssrc, values, count))


cdef int _report_blocks(reports, ReportBlock *blocks) except -1:
    # `reports` holds dicts with the ReportBlock fields.
    cdef int count = 0
    for report in reports:
        if count == MAX_REPORT_BLOCKS:
            raise ValueError(f"more than {MAX_REPORT_BLOCKS} report blocks")
        blocks[count] = report
        count += 1
    return count


def rr(uint32_t sender_ssrc, reports=(), int cap=BUILD_CAP) -> bytes:
    cdef uint8_t out[BUILD_CAP]
    cdef ReportBlock blocks[MAX_REPORT_BLOCKS]
    cdef int count = _report_blocks(reports, blocks)
    return _built(out, build_rr(out, _cap(cap), sender_ssrc, blocks, count))


def sr(dict info, reports=(), int cap=BUILD_CAP) -> bytes:
    """`info` holds the SenderInfo fields (ssrc, ntp_time, rtp_time, packet_count, octet_count)."""
    cdef uint8_t out[BUILD_CAP]
    cdef ReportBlock blocks[MAX_REPORT_BLOCKS]
    cdef SenderInfo sender = info
    cdef int count = _report_blocks(reports, blocks)
    return _built(out, build_sr(out, _cap(cap), &sender, blocks, count))


def sdes_cname(uint32_t ssrc, str cname, int cap=BUILD_CAP) -> bytes:
    cdef uint8_t out[BUILD_CAP]
    cdef bytes text = cname.encode()
    return _built(out, build_sdes_cname(out, _cap(cap), ssrc, text, len(text)))


def remb(uint32_t sender_ssrc, bitrate: int, ssrcs=(), int cap=BUILD_CAP) -> bytes:
    """REMB announcing `bitrate` (bits per second, 0..2**64-1) for the media `ssrcs` (at most 255)."""
    cdef uint8_t out[BUILD_CAP]
    cdef uint32_t values[REMB_MAX_SSRCS]
    cdef uint64_t rate = bitrate
    cdef list media = list(ssrcs)
    if len(media) > REMB_MAX_SSRCS:
        raise ValueError(f"more than {REMB_MAX_SSRCS} SSRCs")
    for i, ssrc in enumerate(media):
        values[i] = ssrc
    return _built(out, build_remb(out, _cap(cap), sender_ssrc, rate, values, len(media)))
