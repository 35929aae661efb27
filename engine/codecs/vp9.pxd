# VP9 RTP payload descriptor (RFC 9628): parsing, flexible and non-flexible modes, layer indices (SVC), the
# scalability structure's extent. C-level, nogil, bounds-checked against `length`.
from libc.stdint cimport int32_t, uint8_t, uint16_t

cdef enum:
    VP9_MAX_SPATIAL = 4       # spatial ids we track (SID is 3 bits; libwebrtc encodes at most 3 spatial layers)
    VP9_MAX_PDIFFS = 3        # flexible mode: reference indices per frame (RFC 9628 4.2, N bit chain)

cdef struct Vp9Descriptor:
    uint16_t size             # descriptor bytes before the VP9 frame data
    uint8_t inter_picture     # P: the frame references an earlier picture (0 = an up-switch point for its layer)
    uint8_t layered           # L: the layer byte (TID U SID D) is present
    uint8_t flexible          # F: flexible mode (references as P_DIFFs) rather than a GOF in the SS
    uint8_t begin_of_frame    # B
    uint8_t end_of_frame      # E
    uint8_t has_ss            # V: carries a scalability structure (libwebrtc: on keyframes)
    uint8_t not_reference     # Z: no upper spatial layer of this picture references this frame
    int32_t picture_id        # -1 when absent
    uint8_t picture_id_16bit
    uint8_t temporal_id       # TID (0 without layer indices)
    uint8_t switching_up      # U: the frame references only lower temporal layers: a temporal up-switch point
    uint8_t spatial_id        # SID (0 without layer indices)
    uint8_t inter_layer       # D: the frame references the spatial layer below in the same picture
    int32_t tl0picidx         # -1 when absent (flexible mode, or no layer indices)
    uint8_t ss_spatial_layers # N_S + 1 from a scalability structure, 0 without one
    uint16_t ss_width         # the top spatial layer's resolution from the SS (0 when not given)
    uint16_t ss_height
    uint8_t is_keyframe       # B, P = 0 and spatial layer 0: a picture that starts decoding afresh

# 0 and `d` filled for a well-formed VP9 payload descriptor (RFC 9628 section 4.2), else -1.
cdef int parse_vp9(const uint8_t *payload, int length, Vp9Descriptor *d) noexcept nogil
