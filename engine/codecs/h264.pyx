"""H264 keyframe detection (see h264.pxd); every read is guarded by a length comparison."""
from engine.wire cimport load16


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
