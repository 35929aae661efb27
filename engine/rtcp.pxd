# RTCP parsing and building (RFC 3550, 4585, 5104). C-level, nogil, bounds-checked.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    RTCP_SR = 200
    RTCP_RR = 201
    RTCP_SDES = 202
    RTCP_BYE = 203
    RTCP_RTPFB = 205          # fmt 1 = generic NACK, 15 = transport-wide CC
    RTCP_PSFB = 206           # fmt 1 = PLI, 4 = FIR, 15 = application layer (REMB)

cdef struct RtcpHeader:
    uint8_t count             # the 5-bit RC / FMT field
    uint8_t packet_type
    int total_length          # bytes of this packet: (length field + 1) * 4

cdef struct ReportBlock:
    uint32_t ssrc
    uint8_t fraction_lost
    int32_t cumulative_lost   # 24-bit signed on the wire
    uint32_t highest_sequence  # extended highest sequence number received
    uint32_t jitter
    uint32_t last_sr          # middle 32 bits of the last SR's NTP time
    uint32_t delay_since_last_sr  # 1/65536 s

cdef struct SenderInfo:
    uint32_t ssrc
    uint64_t ntp_time
    uint32_t rtp_time
    uint32_t packet_count
    uint32_t octet_count

# True when the second byte is an RTCP packet type (192-223, RFC 5761 demultiplexing).
cdef bint is_rtcp(const uint8_t *buf, int length) noexcept nogil
# Header of the RTCP packet at `buf`; 0 when version is 2 and total_length fits in `length`, else -1.
# A compound packet is walked by advancing total_length bytes at a time.
cdef int parse_rtcp_header(const uint8_t *buf, int length, RtcpHeader *h) noexcept nogil
# For SR packets: fills `info`; 0 or -1.
cdef int parse_sender_info(const uint8_t *pkt, int length, SenderInfo *info) noexcept nogil
# Report block `index` (0-based, < count) of the SR or RR packet at `pkt`; 0 or -1. Receivers need it for RTT and loss.
cdef int parse_report_block(const uint8_t *pkt, int length, int index, ReportBlock *block) noexcept nogil
# For RTPFB/PSFB: sender and media SSRC (bytes 4..11). 0 or -1.
cdef int parse_feedback_ssrcs(const uint8_t *pkt, int length, uint32_t *sender_ssrc, uint32_t *media_ssrc) noexcept nogil
# Generic NACK FCI (PID + BLP pairs) of the RTPFB packet at `pkt` expanded into sequence numbers; returns how many (<= max_seqs).
cdef int parse_nack(const uint8_t *pkt, int length, uint16_t *seqs, int max_seqs) noexcept nogil
# REMB (PSFB fmt 15 "REMB"): the bitrate in bits per second, or -1 when it is not a well-formed REMB.
cdef int64_t parse_remb(const uint8_t *pkt, int length) noexcept nogil
# FIR (PSFB fmt 4) entries: first media SSRC; 0 or -1.
cdef int parse_fir_ssrc(const uint8_t *pkt, int length, uint32_t *media_ssrc) noexcept nogil

# Builders write one RTCP packet into `out` (caller guarantees `cap` bytes) and return its length, or -1 if it does not fit.
cdef int build_pli(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc) noexcept nogil
cdef int build_fir(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, uint8_t seq_nr) noexcept nogil
# Packs the sorted-or-not `seqs` into PID/BLP pairs.
cdef int build_nack(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, const uint16_t *seqs, int count) noexcept nogil
cdef int build_rr(uint8_t *out, int cap, uint32_t sender_ssrc, const ReportBlock *blocks, int count) noexcept nogil
cdef int build_sr(uint8_t *out, int cap, const SenderInfo *info, const ReportBlock *blocks, int count) noexcept nogil
# SDES with one CNAME chunk (needed in compound packets by RFC 3550).
cdef int build_sdes_cname(uint8_t *out, int cap, uint32_t ssrc, const char *cname, int cname_length) noexcept nogil
# REMB (PSFB fmt 15): the receive bitrate estimate `bitrate` (bits per second) for the `count` (<= 255) media `ssrcs`.
cdef int build_remb(uint8_t *out, int cap, uint32_t sender_ssrc, uint64_t bitrate, const uint32_t *ssrcs,
                    int count) noexcept nogil
