# H264 RTP payloads (RFC 6184): keyframe detection. C-level, nogil, bounds-checked against `length`.
from libc.stdint cimport uint8_t

# 1 when the packet carries an IDR slice or an SPS, including inside a STAP-A or at the start of a FU-A; else 0.
cdef int h264_is_keyframe(const uint8_t *payload, int length) noexcept nogil
