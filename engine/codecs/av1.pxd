# AV1 RTP payloads (AV1 RTP specification): keyframe detection from the aggregation header.
from libc.stdint cimport uint8_t

# 1 for the first packet of a new coded video sequence (aggregation header N bit).
cdef int av1_is_keyframe(const uint8_t *payload, int length) noexcept nogil
