"""VP9 keyframe detection (see vp9.pxd); every read is guarded by a length comparison."""


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
