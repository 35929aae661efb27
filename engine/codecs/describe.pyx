"""Per-codec dispatch: which parser fills an ExtPacket's codec part (see describe.pxd)."""
from libc.stdint cimport uint8_t

from engine.codecs.av1 cimport av1_is_keyframe
from engine.codecs.dd cimport parse_dd
from engine.codecs.h264 cimport h264_is_keyframe
from engine.codecs.red cimport parse_red
from engine.codecs.vp8 cimport parse_vp8
from engine.codecs.vp9 cimport parse_vp9
from engine.packet cimport DESC_NONE, DESC_RED, DESC_VP8, DESC_VP9
from engine.rtp cimport find_extension

_IDS = {"opus": C_OPUS, "vp8": C_VP8, "h264": C_H264, "vp9": C_VP9, "av1": C_AV1}


cdef void describe_packet(ExtPacket *p, int codec, bint is_video) noexcept nogil:
    cdef const uint8_t *payload = p.buf + p.h.header_length
    cdef int length = p.h.payload_length
    p.descriptor = DESC_NONE
    p.temporal = -1
    p.keyframe = False
    if not is_video:
        if p.h.payload_type == p.r.red_payload_type and parse_red(payload, length, &p.desc.red) == 0:
            p.descriptor = DESC_RED
        return
    if codec == C_VP8:
        if parse_vp8(payload, length, &p.desc.vp8) == 0:
            p.descriptor = DESC_VP8
            p.temporal = p.desc.vp8.temporal_id
            p.keyframe = length > 0 and p.desc.vp8.is_keyframe
    elif length <= 0:
        pass
    elif codec == C_H264:
        p.keyframe = h264_is_keyframe(payload, length) == 1
    elif codec == C_VP9:
        if parse_vp9(payload, length, &p.desc.vp9) == 0:
            p.keyframe = p.desc.vp9.is_keyframe
            if p.desc.vp9.layered:  # without layer indices there is nothing to select: it passes as a whole
                p.descriptor = DESC_VP9
                p.spatial = p.desc.vp9.spatial_id
                p.temporal = p.desc.vp9.temporal_id
    elif codec == C_AV1:
        p.keyframe = av1_is_keyframe(payload, length) == 1
    else:
        p.keyframe = True


cdef int describe_dd(ExtPacket *p) noexcept nogil:
    cdef const uint8_t *value = NULL
    cdef int value_length = 0, result
    if p.r.ext_dd == 0 or p.r.dd == NULL or not find_extension(p.buf, &p.h, p.r.ext_dd, &value, &value_length):
        return 1
    result = parse_dd(value, value_length, p.r.dd, &p.dd)
    if result == 0:
        p.has_dd = True
        p.spatial = p.dd.spatial_id
        p.temporal = p.dd.temporal_id
        if p.dd.has_structure:
            p.keyframe = True
    return result


cdef int codec_id(str name):
    return _IDS.get(name.lower().rpartition("/")[2], C_OTHER)


# ---- Python face, for tests and debugging (not used on the hot path) ----

def is_keyframe(str codec, bytes payload) -> bool:
    """Whether `payload` starts a keyframe; `codec` is vp8, vp9, h264 or av1 (any case, optional "video/")."""
    cdef ExtPacket p
    cdef int codec_value = codec_id(codec)
    if codec_value in (C_OPUS, C_OTHER):
        raise ValueError(f"unknown codec {codec!r}")
    p.buf = payload
    p.length = len(payload)
    p.h.header_length = 0
    p.h.payload_length = len(payload)
    describe_packet(&p, codec_value, True)
    return p.keyframe
