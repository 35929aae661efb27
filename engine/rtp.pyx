# RTP header and header-extension parsing and rewriting. The build turns bounds checks off, so every read
# below is guarded by an explicit length comparison; malformed input yields -1 / 0, never an out-of-range access.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from engine.wire cimport load16, load32

cdef enum:
    FIXED_HEADER = 12
    UDP_MAX = 0xFFFF         # lengths are stored in uint16_t fields; no datagram is longer


cdef int parse_rtp(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil:
    return _parse(buf, length, h, True)


cdef int parse_srtp_header(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil:
    return _parse(buf, length, h, False)


cdef int finish_srtp_header(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil:
    cdef int padding = 0
    if h.header_length > length:
        return -1
    if buf[0] & 0x20:
        padding = buf[length - 1]
        if padding == 0 or padding > length - h.header_length:
            return -1
    h.payload_length = <uint16_t>(length - h.header_length - padding)
    return 0


cdef inline int _parse(const uint8_t *buf, int length, RtpHeader *h, bint with_padding) noexcept nogil:
    cdef int pos, ext_bytes, padding = 0
    cdef uint16_t profile = 0
    cdef uint8_t first
    if buf == NULL or length < FIXED_HEADER or length > UDP_MAX:
        return -1
    first = buf[0]
    if (first >> 6) != 2:
        return -1
    pos = FIXED_HEADER + 4 * (first & 0x0F)
    if pos > length:
        return -1
    h.ext_profile = 0
    h.ext_offset = 0
    h.ext_length = 0
    if first & 0x10:
        if length - pos < 4:
            return -1
        profile = load16(buf + pos)
        ext_bytes = 4 * <int>load16(buf + pos + 2)
        pos += 4
        if ext_bytes > length - pos:
            return -1
        h.ext_profile = profile
        h.ext_offset = <uint16_t>pos
        h.ext_length = <uint16_t>ext_bytes
        pos += ext_bytes
    if first & 0x20 and with_padding:
        # The last byte counts the padding including itself, so 0 is invalid.
        padding = buf[length - 1]
        if padding == 0 or padding > length - pos:
            return -1
    h.marker = buf[1] >> 7
    h.payload_type = buf[1] & 0x7F
    h.csrc_count = first & 0x0F
    h.sequence = load16(buf + 2)
    h.timestamp = load32(buf + 4)
    h.ssrc = load32(buf + 8)
    h.header_length = <uint16_t>pos
    h.payload_length = <uint16_t>(length - pos - padding)
    return 0


cdef inline int _next_element(const uint8_t *p, int n, bint two_byte, int *pos, int *elem_id,
                              int *size) noexcept nogil:
    # Moves *pos past padding to the next element of an RFC 8285 block of n bytes. 1 with *elem_id, *size and *pos
    # at the element's data; 0 at the end, at the one-byte stop id 15, or when the element overruns the block.
    cdef int i = pos[0]
    if two_byte:
        while i < n and p[i] == 0:
            i += 1
        if n - i < 2:
            return 0
        elem_id[0] = p[i]
        size[0] = p[i + 1]
        i += 2
    else:
        # Like libwebrtc, a byte whose id is 0 is one byte of padding whatever its length nibble says.
        while i < n and (p[i] >> 4) == 0:
            i += 1
        if i >= n or (p[i] >> 4) == 15:
            return 0
        elem_id[0] = p[i] >> 4
        size[0] = (p[i] & 0x0F) + 1
        i += 1
    if size[0] > n - i:
        return 0
    pos[0] = i
    return 1


cdef inline int _form(const RtpHeader *h) noexcept nogil:
    # 1 = one-byte form, 2 = two-byte form (0x100X, X = appbits), 0 = no block or a profile we do not interpret.
    if h.ext_length == 0:
        return 0
    if h.ext_profile == EXT_ONE_BYTE:
        return 1
    if (h.ext_profile & 0xFFF0) == EXT_TWO_BYTE:
        return 2
    return 0


cdef int find_extension(const uint8_t *buf, const RtpHeader *h, int ext_id, const uint8_t **value,
                        int *value_length) noexcept nogil:
    cdef int form = _form(h)
    cdef int pos = 0, elem_id = 0, size = 0
    cdef const uint8_t *block = buf + h.ext_offset
    if form == 0 or ext_id <= 0:
        return 0
    while _next_element(block, h.ext_length, form == 2, &pos, &elem_id, &size):
        if elem_id == ext_id:
            value[0] = block + pos
            value_length[0] = size
            return 1
        pos += size
    return 0


cdef struct Replacement:
    int id                    # input id whose value is replaced, 0 = none
    const uint8_t *value
    int size


cdef inline const uint8_t *_value(const uint8_t *block, int pos, int elem_id, int *size,
                                  const Replacement *r) noexcept nogil:
    # The element's value as written out: its own, or the replacement (whose size then replaces *size).
    if elem_id == r.id:
        size[0] = r.size
        return r.value
    return block + pos


cdef inline int _one_byte_elements(const uint8_t *block, int n, int form, const uint8_t *id_map, bint mixed,
                                   const Replacement *r, uint8_t *out) noexcept nogil:
    # Writes the kept elements of the block in the one-byte form; the bytes written, or -1 when `mixed` and one does
    # not fit that form (the packet then takes the two-byte form). Output elements are never longer than input ones,
    # but for the replacement.
    cdef int pos = 0, elem_id = 0, size = 0, new_id, w = 0, out_size
    cdef const uint8_t *value
    while _next_element(block, n, form == 2, &pos, &elem_id, &size):
        new_id = id_map[elem_id]
        if new_id != 0:
            out_size = size
            value = _value(block, pos, elem_id, &out_size, r)
            if new_id <= 14 and 1 <= out_size <= 16:
                out[w] = <uint8_t>((new_id << 4) | (out_size - 1))
                memcpy(out + w + 1, value, out_size)
                w += 1 + out_size
            elif mixed:
                return -1
        pos += size
    return w


cdef inline int _two_byte_elements(const uint8_t *block, int n, int form, const uint8_t *id_map, int room,
                                   const Replacement *r, uint8_t *out) noexcept nogil:
    # The same in the two-byte form, in at most `room` bytes: an element that would overrun it is dropped.
    cdef int pos = 0, elem_id = 0, size = 0, new_id, w = 0, out_size
    cdef const uint8_t *value
    while _next_element(block, n, form == 2, &pos, &elem_id, &size):
        new_id = id_map[elem_id]
        out_size = size
        value = _value(block, pos, elem_id, &out_size, r)
        if new_id != 0 and 2 + out_size <= room - w:
            out[w] = <uint8_t>new_id
            out[w + 1] = <uint8_t>out_size
            memcpy(out + w + 2, value, out_size)
            w += 2 + out_size
        pos += size
    return w


cdef int rewrite_header(const uint8_t *buf, const RtpHeader *h, const uint8_t *id_map, bint mixed, int extra_id,
                        const uint8_t *extra, int extra_size, int replace_id, const uint8_t *replace,
                        int replace_size, uint8_t *out) noexcept nogil:
    cdef int fixed = FIXED_HEADER + 4 * (buf[0] & 0x0F)
    cdef int form = _form(h)
    cdef bint own = 0 < extra_id <= 14 and 1 <= extra_size <= EXTRA_MAX
    cdef int w = 0
    cdef uint16_t profile = EXT_ONE_BYTE
    cdef uint8_t *elements = out + fixed + 4
    cdef Replacement r
    r.id = replace_id if replace != NULL and 1 <= replace_size <= 255 else 0
    r.value = replace
    r.size = replace_size
    memcpy(out, buf, fixed)
    # The caller appends h.payload_length bytes, i.e. without the padding: clear P along with X.
    out[0] &= 0xCF
    if form != 0:
        w = _one_byte_elements(buf + h.ext_offset, h.ext_length, form, id_map, mixed, &r, elements)
    if w < 0:
        # Only with an input block, so the room is its elements' bytes plus REWRITE_GROWTH (our element's is kept).
        profile = h.ext_profile if form == 2 else EXT_TWO_BYTE
        w = _two_byte_elements(buf + h.ext_offset, h.ext_length, form, id_map,
                               h.ext_length + REWRITE_GROWTH - (2 + extra_size if own else 0), &r, elements)
        if own:
            elements[w] = <uint8_t>extra_id
            elements[w + 1] = <uint8_t>extra_size
            memcpy(elements + w + 2, extra, extra_size)
            w += 2 + extra_size
    elif own:
        elements[w] = <uint8_t>((extra_id << 4) | (extra_size - 1))
        memcpy(elements + w + 1, extra, extra_size)
        w += 1 + extra_size
    if w == 0:
        return fixed
    while w & 3:
        elements[w] = 0
        w += 1
    out[0] |= 0x10
    out[fixed] = <uint8_t>(profile >> 8)
    out[fixed + 1] = <uint8_t>(profile & 0xFF)
    out[fixed + 2] = <uint8_t>((w >> 10) & 0xFF)
    out[fixed + 3] = <uint8_t>((w >> 2) & 0xFF)
    return fixed + 4 + w


# ---- thin Python faces, for tests and debugging (not used on the hot path) ----

def parse_rtp_header(bytes data) -> dict | None:
    """The RtpHeader fields of `data`, or None when it is not a valid RTP packet."""
    cdef RtpHeader h
    if parse_rtp(data, len(data), &h) != 0:
        return None
    return h


def extension(bytes data, int ext_id) -> bytes | None:
    """The value of header extension `ext_id` in the RTP packet `data`, or None."""
    cdef RtpHeader h
    cdef const uint8_t *value = NULL
    cdef int value_length = 0
    cdef const uint8_t *buf = data
    if parse_rtp(buf, len(data), &h) != 0 or not find_extension(buf, &h, ext_id, &value, &value_length):
        return None
    return value[:value_length]


GUARD = bytes(range(0xA0, 0xC0))


def rewrite(bytes data, dict id_map, int extra_id=0, bytes extra=b"", bint mixed=False, int replace_id=0,
            bytes replace=b"") -> bytes:
    """`data` with its header extensions renumbered by `id_map` (incoming id -> outgoing id, 0 or absent = drop),
    plus an element `extra_id` (1..14, 0 = none) holding `extra` (1..3 bytes), and its padding removed; `mixed`: the
    two-byte form may be used (a=extmap-allow-mixed); element `replace_id` (input id, 0 = none) holds `replace`
    instead of its value. Raises ValueError when `data` is not valid RTP, an id is outside 0..255, `extra` has no
    room, or `replace` is longer than that element's value by more than REPLACE_GROWTH."""
    cdef RtpHeader h
    cdef uint8_t ids[256]
    cdef const uint8_t *buf = data
    cdef const uint8_t *extra_bytes = extra
    cdef const uint8_t *replace_bytes = replace
    cdef int written
    if extra_id and not 1 <= len(extra) <= EXTRA_MAX:
        raise ValueError(f"the extra element holds 1 to {EXTRA_MAX} bytes")
    memset(ids, 0, sizeof(ids))
    for incoming, outgoing in id_map.items():
        if not (0 <= incoming <= 255 and 0 <= outgoing <= 255):
            raise ValueError(f"extension id out of range: {incoming} -> {outgoing}")
        ids[incoming] = outgoing
    if parse_rtp(buf, len(data), &h) != 0:
        raise ValueError("not a valid RTP packet")
    if replace_id:
        own = extension(data, replace_id)
        if not 1 <= len(replace) <= min(255, len(own or b"") + REPLACE_GROWTH):
            raise ValueError(f"the replacement may grow its element by {REPLACE_GROWTH} bytes")
    room = h.header_length + REWRITE_GROWTH
    out = bytearray(room) + GUARD  # the guard bytes catch a write past the room the contract promises
    written = rewrite_header(buf, &h, ids, mixed, extra_id, extra_bytes, len(extra), replace_id, replace_bytes,
                             len(replace), out)
    if out[room:] != GUARD or not 0 < written <= room:
        raise RuntimeError(f"rewrite_header wrote past its room of {room} bytes")
    return bytes(out[:written]) + data[h.header_length:h.header_length + h.payload_length]

