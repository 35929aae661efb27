"""AV1 keyframe detection (see av1.pxd)."""


cdef int av1_is_keyframe(const uint8_t *payload, int length) noexcept nogil:
    # Aggregation header |Z|Y|W|W|N|-|-|-|: N marks the first packet of a coded video sequence.
    if payload == NULL or length < 1:
        return 0
    return (payload[0] & 0x08) != 0
