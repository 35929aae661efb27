"""H264 keyframe detection (see h264.pxd); every read is guarded by a length comparison."""
from engine.wire cimport load16

cdef enum:
    NAL_SLICE = 1       # a slice of a non-IDR picture (predicted from earlier ones)
    NAL_IDR = 5
    NAL_SPS = 7
    NAL_STAP_A = 24
    NAL_FU_A = 28


cdef int h264_is_keyframe(const uint8_t *payload, int length) noexcept nogil:
    # A decoder starts only at an IDR whose SPS and PPS it has. libwebrtc sends them in front of every IDR: with
    # packetization-mode 1 in a STAP-A (with the IDR when it fits, else before the IDR's FU-A fragments), with mode 0
    # as single NAL units. The packet with the SPS is where a subscriber can start; an IDR alone (its SPS in an
    # earlier packet that a switch there would skip) is not.
    cdef int pos, size
    cdef bint sps = False
    cdef uint8_t nal_type
    if payload == NULL or length < 1:
        return 0
    nal_type = payload[0] & 0x1F
    if nal_type == NAL_SPS:
        return 1
    if nal_type == NAL_STAP_A:
        # A sequence of 16-bit size + NAL unit; a slice of a predicted picture beside an SPS is not a keyframe.
        pos = 1
        while length - pos > 2:
            size = load16(payload + pos)
            pos += 2
            if size == 0 or size > length - pos:
                return 0
            nal_type = payload[pos] & 0x1F
            if nal_type == NAL_SLICE:
                return 0
            sps = sps or nal_type == NAL_SPS
            pos += size
        return 1 if sps else 0
    if nal_type == NAL_FU_A:
        # The FU header's S bit marks the fragment that starts the NAL unit of the inner type.
        return length >= 2 and (payload[1] & 0x80) != 0 and (payload[1] & 0x1F) == NAL_SPS
    return 0
