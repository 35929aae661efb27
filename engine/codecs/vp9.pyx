"""VP9 payload descriptor parsing (see vp9.pxd); every read is guarded by a length comparison."""
from engine.wire cimport load16


cdef int parse_vp9(const uint8_t *payload, int length, Vp9Descriptor *d) noexcept nogil:
    # |I|P|L|F|B|E|V|Z| then, in this order: picture id (I), layer byte (L) and TL0PICIDX (L, non-flexible),
    # P_DIFFs (F and P), scalability structure (V).
    cdef int pos = 1, i, count, refs
    cdef uint8_t first, ss
    if payload == NULL or length < 1:
        return -1
    first = payload[0]
    d.inter_picture = (first >> 6) & 1
    d.layered = (first >> 5) & 1
    d.flexible = (first >> 4) & 1
    d.begin_of_frame = (first >> 3) & 1
    d.end_of_frame = (first >> 2) & 1
    d.has_ss = (first >> 1) & 1
    d.not_reference = first & 1
    d.picture_id = -1
    d.picture_id_16bit = 0
    d.temporal_id = 0
    d.switching_up = 0
    d.spatial_id = 0
    d.inter_layer = 0
    d.tl0picidx = -1
    d.ss_spatial_layers = 0
    d.ss_width = 0
    d.ss_height = 0
    d.is_keyframe = 0
    if first & 0x80:
        if pos >= length:
            return -1
        if payload[pos] & 0x80:
            if length - pos < 2:
                return -1
            d.picture_id = load16(payload + pos) & 0x7FFF
            d.picture_id_16bit = 1
            pos += 2
        else:
            d.picture_id = payload[pos]
            pos += 1
    if d.layered:
        if pos >= length:
            return -1
        d.temporal_id = payload[pos] >> 5
        d.switching_up = (payload[pos] >> 4) & 1
        d.spatial_id = (payload[pos] >> 1) & 0x07
        d.inter_layer = payload[pos] & 1
        pos += 1
        if not d.flexible:
            if pos >= length:
                return -1
            d.tl0picidx = payload[pos]
            pos += 1
    if d.flexible and d.inter_picture:
        # Up to VP9_MAX_PDIFFS reference indices, each |P_DIFF(7)|N|, N = another follows.
        for i in range(VP9_MAX_PDIFFS):
            if pos >= length:
                return -1
            pos += 1
            if not (payload[pos - 1] & 1):
                break
        else:
            return -1
    if d.has_ss:
        # |N_S(3)|Y|G|-|-|-|, Y: N_S + 1 resolutions (16 + 16 bits), G: N_G then N_G × (|T(3)|U|R(2)|-|-| R P_DIFFs).
        if pos >= length:
            return -1
        ss = payload[pos]
        pos += 1
        d.ss_spatial_layers = (ss >> 5) + 1
        if ss & 0x10:
            if length - pos < 4 * d.ss_spatial_layers:
                return -1
            d.ss_width = load16(payload + pos + 4 * (d.ss_spatial_layers - 1))
            d.ss_height = load16(payload + pos + 4 * (d.ss_spatial_layers - 1) + 2)
            pos += 4 * d.ss_spatial_layers
        if ss & 0x08:
            if pos >= length:
                return -1
            count = payload[pos]
            pos += 1
            for i in range(count):
                if pos >= length:
                    return -1
                refs = (payload[pos] >> 2) & 0x03
                pos += 1 + refs
            if pos > length:
                return -1
    d.size = <uint16_t>pos
    d.is_keyframe = d.begin_of_frame and not d.inter_picture and d.spatial_id == 0
    return 0


# ---- Python face, for tests and debugging (not used on the hot path) ----

def vp9_descriptor(bytes payload) -> dict | None:
    """The Vp9Descriptor fields of an RTP VP9 payload, or None when the descriptor is malformed."""
    cdef Vp9Descriptor d
    if parse_vp9(payload, len(payload), &d) != 0:
        return None
    return d
