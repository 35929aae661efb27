# Per-codec dispatch: the codec ids, and filling an ExtPacket's codec part (descriptor, temporal layer, keyframe flag).
from engine.packet cimport ExtPacket

cdef enum:  # codec ids (Receiver.codec)
    C_OPUS
    C_VP8
    C_H264
    C_VP9
    C_AV1
    C_OTHER

# Sets p.descriptor / p.desc, p.temporal and p.keyframe from the payload of `p` (p.buf, p.h, p.r). Audio has no
# keyframes, and a descriptor only in RED (a well-formed packet of the Receiver's red_payload_type); a video codec we cannot parse makes every packet a keyframe (any packet is a switch point).
cdef void describe_packet(ExtPacket *p, int codec, bint is_video) noexcept nogil
# With the Receiver's Dependency Descriptor id (p.r.ext_dd): parses the packet's descriptor against the Receiver's
# structure (which a structure it carries replaces) and, when it is valid, sets p.has_dd / p.dd and takes the layer
# ids (p.spatial, p.temporal) from it; a descriptor with a structure also marks a keyframe. parse_dd's result (0,
# -1 malformed, -2 no structure yet), or 1 when the packet has none.
cdef int describe_dd(ExtPacket *p) noexcept nogil
# The id of a codec name as SDP spells it ("VP8", "video/vp8"...); C_OTHER for names we do not know.
cdef int codec_id(str name)
