# RTP header and header-extension parsing and rewriting (RFC 3550, 8285); codec payloads are in engine/codecs/.
# Every function is C-level, nogil, bounds-checked against `length`, and never reads outside the buffer.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t

cdef enum:
    EXT_ONE_BYTE = 0xBEDE
    EXT_TWO_BYTE = 0x1000     # 0x100X: the low 4 bits are appbits
    EXTRA_MAX = 3             # bytes of rewrite_header's own element
    REPLACE_GROWTH = 5        # a replacement element's value may be this much longer than the one it replaces (a
                              # Dependency Descriptor that gains its active decode targets mask: dd.pxd DD_GROWTH)
    REWRITE_GROWTH = 16       # rewrite_header's output is at most this longer than its input header (a multiple of
                              # 4): a new block header and our element with its id byte, or the replacement's growth,
                              # our element and padding (one-byte form); in the two-byte form, elements that would
                              # pass it are dropped
    ABS_SEND_TIME_WRAP_US = 64000000  # abs-send-time wraps after 2^24 units of 2^-18 s

cdef struct RtpHeader:
    uint8_t marker
    uint8_t payload_type
    uint8_t csrc_count
    uint16_t sequence
    uint32_t timestamp
    uint32_t ssrc
    uint16_t header_length    # bytes before the payload: fixed part + CSRCs + extension block
    uint16_t payload_length   # payload bytes, padding excluded
    uint16_t ext_profile      # 0 when there is no extension block
    uint16_t ext_offset       # offset of the first extension element (after the 4-byte block header)
    uint16_t ext_length       # bytes of extension elements (block length * 4)

# 0 and `h` filled when `buf` holds a valid RTP packet (version 2, lengths consistent), else -1.
cdef int parse_rtp(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil
# The same for an SRTP packet before unprotect: the header and extensions are in the clear (no RFC 6904), the end is
# not (the padding count is not checked and payload_length is meaningless).
cdef int parse_srtp_header(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil
# Completes such an `h` once the packet is unprotected (`length` without the tag): the padding count and payload_length,
# as parse_rtp would have found them. 0, or -1 when they are inconsistent.
cdef int finish_srtp_header(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil
# Finds element `ext_id` in `h`'s extension block (one- or two-byte form). 1 and *value/*value_length set when found, else 0.
cdef int find_extension(const uint8_t *buf, const RtpHeader *h, int ext_id, const uint8_t **value, int *value_length) noexcept nogil
# Writes into `out` (room for at least h.header_length + REWRITE_GROWTH bytes) the fixed header and CSRCs of `buf`,
# followed by an extension block holding only the elements whose id maps to a non-zero id in `id_map[256]`,
# renumbered, then, when `extra_id` is 1..14, an element of ours with the `extra_size` (1..EXTRA_MAX) bytes at
# `extra` (the transport-wide sequence number, or the abs-send-time). The X bit is set only if an element remains.
# The block takes the one-byte form when every element fits it (id 1..14, 1..16 bytes). When one does not: with
# `mixed` (the subscriber negotiated a=extmap-allow-mixed) the packet's block takes the two-byte form, as libwebrtc's
# sender does per packet, keeping the input's appbits; without it, the elements that do not fit are dropped. The
# two-byte form spends a byte more per element, so elements that would push the header past the room are dropped
# (only a one-byte input renumbered to ids over 14, or switched to the two-byte form, can get there). When
# `replace_id` is non-zero, the element of that (input) id gets the `replace_size` (1..255, at most REPLACE_GROWTH
# more than its own) bytes at `replace` as its value: a Dependency Descriptor rewritten for the subscriber, which may
# need the two-byte form.
# Returns the bytes written (the new header length); the caller appends the h.payload_length payload bytes, so the
# P bit is cleared (padding is not carried over). `h` must come from parse_rtp on the same `buf`.
cdef int rewrite_header(const uint8_t *buf, const RtpHeader *h, const uint8_t *id_map, bint mixed, int extra_id,
                        const uint8_t *extra, int extra_size, int replace_id, const uint8_t *replace,
                        int replace_size, uint8_t *out) noexcept nogil

# abs-send-time (http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time): 24 bits of seconds in 6.18 fixed
# point, wrapping every 64 s. Only differences between packets matter to the receiver's estimator, so any clock
# will do: ours is the engine's monotonic microseconds.
cdef inline uint32_t abs_send_time(int64_t now_us) noexcept nogil:
    return <uint32_t>(((now_us % <int64_t>ABS_SEND_TIME_WRAP_US) << 18) // 1000000)
