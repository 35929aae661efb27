# VP9 RTP payload descriptor (RFC 9628): keyframe detection; its layer indices (spatial/temporal SVC) go here next.
from libc.stdint cimport uint8_t

# 1 when the packet starts a frame that is not inter-picture predicted (spatial layer 0 when layers are signalled).
cdef int vp9_is_keyframe(const uint8_t *payload, int length) noexcept nogil
