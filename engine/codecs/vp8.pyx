"""VP8 payload descriptor parsing (see vp8.pxd); every read is guarded by a length comparison."""


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


# ---- Python face, for tests and debugging (not used on the hot path) ----

def vp8_descriptor(bytes payload) -> dict | None:
    """The Vp8Descriptor fields of an RTP VP8 payload, or None when the descriptor is malformed."""
    cdef Vp8Descriptor d
    if parse_vp8(payload, len(payload), &d) != 0:
        return None
    return d
