# RTP header, header-extension and payload-descriptor parsing. The build turns bounds checks off, so every read
# below is guarded by an explicit length comparison; malformed input yields -1 / 0, never an out-of-range access.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from engine.wire cimport load16, load32

cdef enum:
    FIXED_HEADER = 12
    UDP_MAX = 0xFFFF         # lengths are stored in uint16_t fields; no datagram is longer


cdef int parse_rtp(const uint8_t *buf, int length, RtpHeader *h) noexcept nogil:
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
    if first & 0x20:
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


cdef int rewrite_header(const uint8_t *buf, const RtpHeader *h, const uint8_t *id_map,
                        uint8_t *out) noexcept nogil:
    # Output elements are never longer than input ones (the two-byte form spends one byte more per element), so the
    # rewritten header is at most h.header_length bytes.
    cdef int fixed = FIXED_HEADER + 4 * (buf[0] & 0x0F)
    cdef int form = _form(h)
    cdef int pos = 0, elem_id = 0, size = 0, new_id, w
    cdef const uint8_t *block = buf + h.ext_offset
    memcpy(out, buf, fixed)
    # The caller appends h.payload_length bytes, i.e. without the padding: clear P along with X.
    out[0] &= 0xCF
    if form == 0:
        return fixed
    w = fixed + 4
    while _next_element(block, h.ext_length, form == 2, &pos, &elem_id, &size):
        new_id = id_map[elem_id]
        if new_id != 0 and new_id <= 14 and 1 <= size <= 16:
            out[w] = <uint8_t>((new_id << 4) | (size - 1))
            memcpy(out + w + 1, block + pos, size)
            w += 1 + size
        pos += size
    if w == fixed + 4:
        return fixed
    while (w - fixed) & 3:
        out[w] = 0
        w += 1
    out[0] |= 0x10
    out[fixed] = 0xBE
    out[fixed + 1] = 0xDE
    out[fixed + 2] = <uint8_t>(((w - fixed - 4) >> 10) & 0xFF)
    out[fixed + 3] = <uint8_t>(((w - fixed - 4) >> 2) & 0xFF)
    return w


cdef int parse_vp8(const uint8_t *payload, int length, Vp8Descriptor *d) noexcept nogil:
    # RFC 7741 section 4.2: |X|R|N|S|R|PID| then, if X, |I|L|T|K|RSV| and the optional fields in that order.
    cdef int pos = 1
    cdef uint8_t first, ext
    if payload == NULL or length < 1:
        return -1
    first = payload[0]
    d.start_of_partition = (first >> 4) & 1
    d.partition_id = first & 0x07
    d.picture_id = -1
    d.picture_id_16bit = 0
    d.picture_id_offset = 0
    d.tl0picidx = -1
    d.tl0picidx_offset = 0
    d.temporal_id = -1
    d.layer_sync = 0
    d.is_keyframe = 0
    if first & 0x80:
        if pos >= length:
            return -1
        ext = payload[pos]
        pos += 1
        if ext & 0x80:
            if pos >= length:
                return -1
            d.picture_id_offset = <uint16_t>pos
            if payload[pos] & 0x80:
                if length - pos < 2:
                    return -1
                d.picture_id = ((payload[pos] & 0x7F) << 8) | payload[pos + 1]
                d.picture_id_16bit = 1
                pos += 2
            else:
                d.picture_id = payload[pos]
                pos += 1
        if ext & 0x40:
            if pos >= length:
                return -1
            d.tl0picidx = payload[pos]
            d.tl0picidx_offset = <uint16_t>pos
            pos += 1
        if ext & 0x30:
            # One byte carries TID|Y|KEYIDX when either T or K is set.
            if pos >= length:
                return -1
            if ext & 0x20:
                d.temporal_id = payload[pos] >> 6
                d.layer_sync = (payload[pos] >> 5) & 1
            pos += 1
    d.size = <uint16_t>pos
    # VP8 payload header (RFC 7741 section 4.3): bit 0 of its first byte is the inverse key frame flag.
    if d.start_of_partition and d.partition_id == 0 and pos < length and (payload[pos] & 0x01) == 0:
        d.is_keyframe = 1
    return 0


cdef inline bint _h264_key_nal(uint8_t nal_type) noexcept nogil:
    return nal_type == 5 or nal_type == 7    # IDR slice, SPS


cdef int h264_is_keyframe(const uint8_t *payload, int length) noexcept nogil:
    cdef int pos, size
    cdef uint8_t nal_type
    if payload == NULL or length < 1:
        return 0
    nal_type = payload[0] & 0x1F
    if _h264_key_nal(nal_type):
        return 1
    if nal_type == 24:
        # STAP-A: a sequence of 16-bit size + NAL unit.
        pos = 1
        while length - pos > 2:
            size = load16(payload + pos)
            pos += 2
            if size == 0 or size > length - pos:
                return 0
            if _h264_key_nal(payload[pos] & 0x1F):
                return 1
            pos += size
        return 0
    if nal_type == 28:
        # FU-A: the FU header's S bit marks the fragment that starts the NAL unit of the inner type.
        return length >= 2 and (payload[1] & 0x80) != 0 and _h264_key_nal(payload[1] & 0x1F)
    return 0


cdef int vp9_is_keyframe(const uint8_t *payload, int length) noexcept nogil:
    # |I|P|L|F|B|E|V|Z|: not inter-picture predicted (P = 0) at the beginning of a frame (B = 1). With layer indices
    # present (L) only spatial layer 0 counts: an upper layer with P = 0 may just be an inter-layer switch-up point.
    cdef uint8_t first
    cdef int pos = 1
    if payload == NULL or length < 1:
        return 0
    first = payload[0]
    if (first & 0x40) or not (first & 0x08):
        return 0
    if first & 0x20:
        if first & 0x80:
            if pos >= length:
                return 0
            pos += 2 if payload[pos] & 0x80 else 1
        if pos >= length:
            return 0
        return ((payload[pos] >> 1) & 0x07) == 0    # |TID|U|SID|D|
    return 1


cdef int av1_is_keyframe(const uint8_t *payload, int length) noexcept nogil:
    # Aggregation header |Z|Y|W|W|N|-|-|-|: N marks the first packet of a coded video sequence.
    if payload == NULL or length < 1:
        return 0
    return (payload[0] & 0x08) != 0


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


def rewrite(bytes data, dict id_map) -> bytes:
    """`data` with its header extensions renumbered by `id_map` (incoming id -> outgoing id, 0 or absent = drop)
    and its padding removed. Raises ValueError when `data` is not valid RTP or an id is outside 0..255."""
    cdef RtpHeader h
    cdef uint8_t ids[256]
    cdef const uint8_t *buf = data
    cdef int written
    memset(ids, 0, sizeof(ids))
    for incoming, outgoing in id_map.items():
        if not (0 <= incoming <= 255 and 0 <= outgoing <= 255):
            raise ValueError(f"extension id out of range: {incoming} -> {outgoing}")
        ids[incoming] = outgoing
    if parse_rtp(buf, len(data), &h) != 0:
        raise ValueError("not a valid RTP packet")
    out = bytearray(h.header_length + 4)
    written = rewrite_header(buf, &h, ids, out)
    return bytes(out[:written]) + data[h.header_length:h.header_length + h.payload_length]


def vp8_descriptor(bytes payload) -> dict | None:
    """The Vp8Descriptor fields of an RTP VP8 payload, or None when the descriptor is malformed."""
    cdef Vp8Descriptor d
    if parse_vp8(payload, len(payload), &d) != 0:
        return None
    return d


def is_keyframe(str codec, bytes payload) -> bool:
    """Whether `payload` starts a keyframe; `codec` is vp8, vp9, h264 or av1 (any case, optional "video/")."""
    cdef Vp8Descriptor d
    cdef const uint8_t *p = payload
    cdef int n = len(payload)
    name = codec.lower().removeprefix("video/")
    if name == "vp8":
        return parse_vp8(p, n, &d) == 0 and d.is_keyframe == 1
    if name == "vp9":
        return vp9_is_keyframe(p, n) == 1
    if name == "h264":
        return h264_is_keyframe(p, n) == 1
    if name == "av1":
        return av1_is_keyframe(p, n) == 1
    raise ValueError(f"unknown codec {codec!r}")
