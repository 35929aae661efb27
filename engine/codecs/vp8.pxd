# VP8 RTP payload descriptor (RFC 7741): parsing, keyframe flag, and rewriting picture id / TL0PICIDX in place.
# C-level, nogil, bounds-checked against `length`.
from libc.stdint cimport int32_t, uint8_t, uint16_t

cdef struct Vp8Descriptor:
    uint16_t size             # descriptor bytes before the VP8 payload header
    uint8_t start_of_partition
    uint8_t partition_id
    int32_t picture_id        # -1 when absent
    uint8_t picture_id_16bit  # 1 when the M bit selected the 15-bit form
    uint16_t picture_id_offset  # offset of the picture id field within the payload (valid when picture_id >= 0)
    int32_t tl0picidx         # -1 when absent
    uint16_t tl0picidx_offset
    int32_t temporal_id       # -1 when absent
    uint8_t layer_sync
    uint8_t is_keyframe       # start of partition 0 and the VP8 payload header's P bit clear

# 0 and `d` filled for a well-formed VP8 payload descriptor (RFC 7741), else -1.
cdef int parse_vp8(const uint8_t *payload, int length, Vp8Descriptor *d) noexcept nogil


cdef inline void vp8_write_ids(uint8_t *payload, const Vp8Descriptor *d, int32_t picture_id,
                               int32_t tl0picidx) noexcept nogil:
    """Overwrites the descriptor's picture id (in its own 7- or 15-bit form) and TL0PICIDX in `payload`, which `d`
    describes; a value < 0 leaves its field alone."""
    if picture_id >= 0:
        if d.picture_id_16bit:
            payload[d.picture_id_offset] = 0x80 | ((picture_id >> 8) & 0x7F)
            payload[d.picture_id_offset + 1] = picture_id & 0xFF
        else:
            payload[d.picture_id_offset] = picture_id & 0x7F
    if tl0picidx >= 0:
        payload[d.tl0picidx_offset] = <uint8_t>tl0picidx
