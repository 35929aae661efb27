# H264 RTP payloads (RFC 6184): keyframe detection. C-level, nogil, bounds-checked against `length`.
from libc.stdint cimport uint8_t

# 1 when the packet starts a keyframe: it carries an SPS (alone, inside a STAP-A without a non-IDR slice, or at the
# start of a FU-A); else 0. An IDR without its SPS is not one: a decoder cannot start from it.
cdef int h264_is_keyframe(const uint8_t *payload, int length) noexcept nogil
