# Dependency Descriptor RTP header extension (AV1 RTP specification, appendix A; also used for VP9 SVC): the
# template dependency structure a keyframe carries, and each frame's layer ids, decode target indications, frame
# dependencies and chains, resolved against the structure. C-level, nogil, bounds-checked; linear in the extension's
# length, with every count capped so the state stays a fixed size.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t

cdef enum:
    DD_MAX_TEMPLATES = 64     # the template id is 6 bits
    DD_MAX_DECODE_TARGETS = 32  # DtCnt: 5 bits + 1
    DD_MAX_SPATIAL = 4        # the spec's limits on layer ids a structure may define
    DD_MAX_TEMPORAL = 8
    DD_MAX_FDIFFS = 8         # references per frame we keep (AV1 frames reference at most 7; more is refused)
    DD_MANDATORY = 3          # bytes: start/end of frame, template id, frame number
    DD_GROWTH = 5             # write_dd's value is at most this longer than the one it rewrites: the extended
                              # fields' flags (5 bits) and a 32-target mask added to the mandatory 3 bytes

cdef enum:  # decode target indications (2 bits)
    DTI_NOT_PRESENT
    DTI_DISCARDABLE
    DTI_SWITCH
    DTI_REQUIRED

cdef struct DdTemplate:
    uint8_t spatial_id
    uint8_t temporal_id
    uint8_t dti[32]           # DD_MAX_DECODE_TARGETS
    uint8_t fdiff_count
    uint8_t fdiffs[8]         # DD_MAX_FDIFFS
    uint8_t chain_fdiffs[32]  # per chain

cdef struct DdStructure:
    bint valid                # a structure has been received
    uint8_t structure_id      # template_id_offset
    uint8_t decode_targets    # DtCnt
    uint8_t template_count
    uint8_t chain_count
    uint8_t max_spatial_id
    uint8_t max_temporal_id
    uint8_t protected_by[32]  # decode target -> chain
    uint8_t has_resolutions
    uint32_t width[4]         # per spatial id (render resolution, 1..65536)
    uint32_t height[4]
    DdTemplate templates[64]
    uint8_t dt_layers[32]     # per decode target: (spatial << 4) | temporal, the highest ids of the templates it is
                              # present in (what a subscriber of that target decodes)
    uint32_t dt_subsets[32]   # per decode target: the targets (bits) present only in templates it is present in,
                              # itself included: what its subscriber can decode, so its active mask
    uint32_t active_decode_targets  # the publisher's mask: all at a structure, then as its packets set it (a mask
                              # stands until the next one, AV1 RTP specification A.8.3.1)

cdef struct DdFrame:
    uint8_t start_of_frame
    uint8_t end_of_frame
    uint8_t template_id
    uint16_t frame_number
    uint8_t has_structure     # this packet attached a (new) structure
    uint8_t has_active_mask
    uint32_t active_decode_targets  # bitmask (all DTs after a new structure)
    uint8_t spatial_id
    uint8_t temporal_id
    uint8_t dti[32]
    uint8_t fdiff_count
    uint16_t fdiffs[8]        # custom fdiffs may be 12 bits
    uint8_t chain_fdiffs[32]
    # Of the structure it was resolved against, what a Forwarder needs to choose a decode target: a later packet of
    # the same batch may replace the Receiver's structure before this one is forwarded (a keyframe's).
    uint8_t decode_targets
    uint8_t chain_count
    uint8_t protected_by[32]  # decode target -> the chain that protects it
    uint8_t dt_layers[32]     # DdStructure.dt_layers
    uint32_t dt_subsets[32]   # DdStructure.dt_subsets
    # Where its fields lie in the value (bits), for write_dd: the active mask's place (after the structure, if any),
    # where what follows the mask starts (the same when it has none), and the end of the last field.
    uint16_t mask_bit
    uint16_t after_mask_bit
    uint16_t end_bit

# Parses one extension value of `length` bytes into `frame`, resolving it against `structure`; a structure in the
# packet replaces `structure` (only when the whole descriptor is valid). 0 on success; -1 malformed or over a limit
# (nothing changed); -2 a frame that needs a structure we do not have (or whose template it lacks).
cdef int parse_dd(const uint8_t *data, int length, DdStructure *structure, DdFrame *frame) noexcept nogil
# Writes into `out` (room for the value's length + DD_GROWTH bytes) the descriptor `value`, as parsed into `frame`,
# with `frame_number` and, when `with_mask`, the active decode targets bitmask `mask` (present flag set); every other
# field as it was. Returns the length written.
cdef int write_dd(const uint8_t *value, const DdFrame *frame, uint16_t frame_number, bint with_mask, uint32_t mask,
                  uint8_t *out) noexcept nogil
