"""Dependency Descriptor parsing (see dd.pxd): a bit reader that fails (never reads past the end) and the syntax of
the AV1 RTP specification's appendix A, with its limits as hard caps."""
from libc.string cimport memcpy, memset


cdef struct Bits:
    const uint8_t *data
    int size                  # bits
    int pos
    bint overrun


cdef inline uint32_t read_bits(Bits *b, int n) noexcept nogil:
    """`n` (0..32) bits, most significant first; 0 with b.overrun set when fewer remain."""
    cdef uint32_t value = 0
    cdef int i
    if n > b.size - b.pos:
        b.overrun = True
        b.pos = b.size
        return 0
    for i in range(n):
        value = (value << 1) | ((b.data[(b.pos + i) >> 3] >> (7 - ((b.pos + i) & 7))) & 1)
    b.pos += n
    return value


cdef inline uint32_t read_ns(Bits *b, uint32_t n) noexcept nogil:
    """A non-symmetric unsigned value in 0..n-1 (appendix A.8.1's ns(n))."""
    cdef int w = 0
    cdef uint32_t x = n, m, v
    while x != 0:
        x >>= 1
        w += 1
    m = (1u << w) - n
    v = read_bits(b, w - 1)
    if v < m:
        return v
    return (v << 1) - m + read_bits(b, 1)


cdef int read_structure(Bits *b, DdStructure *s) noexcept nogil:
    cdef int next_layer, spatial = 0, temporal = 0, t, dt, chain, follows
    cdef DdTemplate *tpl
    s.structure_id = <uint8_t>read_bits(b, 6)
    s.decode_targets = <uint8_t>(read_bits(b, 5) + 1)
    s.template_count = 0
    s.max_temporal_id = 0
    while True:   # template layers: each template's ids, then how the next one's differ
        if s.template_count >= DD_MAX_TEMPLATES:
            return -1
        tpl = &s.templates[s.template_count]
        tpl.spatial_id = <uint8_t>spatial
        tpl.temporal_id = <uint8_t>temporal
        s.template_count += 1
        next_layer = read_bits(b, 2)
        if b.overrun:
            return -1
        if next_layer == 1:
            temporal += 1
            if temporal >= DD_MAX_TEMPORAL:
                return -1
            if temporal > s.max_temporal_id:
                s.max_temporal_id = <uint8_t>temporal
        elif next_layer == 2:
            temporal = 0
            spatial += 1
            if spatial >= DD_MAX_SPATIAL:
                return -1
        elif next_layer == 3:
            break
    s.max_spatial_id = <uint8_t>spatial
    for t in range(s.template_count):
        for dt in range(s.decode_targets):
            s.templates[t].dti[dt] = <uint8_t>read_bits(b, 2)
    for t in range(s.template_count):
        tpl = &s.templates[t]
        tpl.fdiff_count = 0
        follows = read_bits(b, 1)
        while follows and not b.overrun:
            if tpl.fdiff_count >= DD_MAX_FDIFFS:
                return -1
            tpl.fdiffs[tpl.fdiff_count] = <uint8_t>(read_bits(b, 4) + 1)
            tpl.fdiff_count += 1
            follows = read_bits(b, 1)
    s.chain_count = <uint8_t>read_ns(b, s.decode_targets + 1)
    if s.chain_count:
        for dt in range(s.decode_targets):
            s.protected_by[dt] = <uint8_t>read_ns(b, s.chain_count)
        for t in range(s.template_count):
            for chain in range(s.chain_count):
                s.templates[t].chain_fdiffs[chain] = <uint8_t>read_bits(b, 4)
    s.has_resolutions = <uint8_t>read_bits(b, 1)
    if s.has_resolutions:
        for spatial in range(s.max_spatial_id + 1):
            s.width[spatial] = read_bits(b, 16) + 1
            s.height[spatial] = read_bits(b, 16) + 1
    if b.overrun:
        return -1
    for dt in range(s.decode_targets):
        s.dt_layers[dt] = 0
        for t in range(s.template_count):
            tpl = &s.templates[t]
            if tpl.dti[dt] != DTI_NOT_PRESENT:
                s.dt_layers[dt] = <uint8_t>((max(s.dt_layers[dt] >> 4, tpl.spatial_id) << 4)
                                            | max(s.dt_layers[dt] & 0x0F, tpl.temporal_id))
    s.valid = True
    return 0


cdef int parse_dd(const uint8_t *data, int length, DdStructure *structure, DdFrame *frame) noexcept nogil:
    cdef Bits b
    cdef DdStructure attached
    cdef const DdStructure *s = structure
    cdef bint custom_dtis = False, custom_fdiffs = False, custom_chains = False
    cdef int index, i, size
    cdef const DdTemplate *tpl
    if data == NULL or length < DD_MANDATORY:
        return -1
    b.data = data
    b.size = length * 8
    b.pos = 0
    b.overrun = False
    frame.start_of_frame = <uint8_t>read_bits(&b, 1)
    frame.end_of_frame = <uint8_t>read_bits(&b, 1)
    frame.template_id = <uint8_t>read_bits(&b, 6)
    frame.frame_number = <uint16_t>read_bits(&b, 16)
    frame.has_structure = 0
    frame.has_active_mask = 0
    if length > DD_MANDATORY:
        frame.has_structure = <uint8_t>read_bits(&b, 1)
        frame.has_active_mask = <uint8_t>read_bits(&b, 1)
        custom_dtis = read_bits(&b, 1)
        custom_fdiffs = read_bits(&b, 1)
        custom_chains = read_bits(&b, 1)
        if frame.has_structure:
            if read_structure(&b, &attached) < 0:
                return -1
            s = &attached
            frame.active_decode_targets = <uint32_t>((1ull << s.decode_targets) - 1)
        if frame.has_active_mask:
            if not s.valid:
                return -2
            frame.active_decode_targets = read_bits(&b, s.decode_targets)
    if not s.valid:
        return -2 if not b.overrun else -1
    if not frame.has_structure and not frame.has_active_mask:
        frame.active_decode_targets = <uint32_t>((1ull << s.decode_targets) - 1)
    index = (frame.template_id + DD_MAX_TEMPLATES - s.structure_id) % DD_MAX_TEMPLATES
    if index >= s.template_count:
        return -2
    tpl = &s.templates[index]
    frame.spatial_id = tpl.spatial_id
    frame.temporal_id = tpl.temporal_id
    if custom_dtis:
        for i in range(s.decode_targets):
            frame.dti[i] = <uint8_t>read_bits(&b, 2)
    else:
        memcpy(frame.dti, tpl.dti, s.decode_targets)
    if custom_fdiffs:
        frame.fdiff_count = 0
        size = read_bits(&b, 2)
        while size and not b.overrun:
            if frame.fdiff_count >= DD_MAX_FDIFFS:
                return -1
            frame.fdiffs[frame.fdiff_count] = <uint16_t>(read_bits(&b, 4 * size) + 1)
            frame.fdiff_count += 1
            size = read_bits(&b, 2)
    else:
        frame.fdiff_count = tpl.fdiff_count
        for i in range(tpl.fdiff_count):
            frame.fdiffs[i] = tpl.fdiffs[i]
    if custom_chains:
        for i in range(s.chain_count):
            frame.chain_fdiffs[i] = <uint8_t>read_bits(&b, 8)
    else:
        memcpy(frame.chain_fdiffs, tpl.chain_fdiffs, s.chain_count)
    if b.overrun:
        return -1
    frame.decode_targets = s.decode_targets
    frame.chain_count = s.chain_count
    memcpy(frame.protected_by, s.protected_by, s.decode_targets if s.chain_count else 0)
    memcpy(frame.dt_layers, s.dt_layers, s.decode_targets)
    if frame.has_structure:
        memcpy(structure, &attached, sizeof(DdStructure))
    return 0


# ---- Python face, for tests and debugging (not used on the hot path) ----

cdef class DependencyDescriptorReader:
    """One stream's parser state (the last structure): `read` parses one extension value."""

    cdef DdStructure structure

    def __cinit__(self):
        memset(&self.structure, 0, sizeof(DdStructure))

    def read(self, bytes data) -> dict | str:
        """The frame's fields, or "malformed" / "no structure"."""
        cdef DdFrame frame
        cdef int result = parse_dd(data, len(data), &self.structure, &frame)
        if result == -1:
            return "malformed"
        if result == -2:
            return "no structure"
        s = self.structure
        return {
            "start_of_frame": bool(frame.start_of_frame), "end_of_frame": bool(frame.end_of_frame),
            "template_id": frame.template_id, "frame_number": frame.frame_number,
            "has_structure": bool(frame.has_structure), "active_decode_targets": frame.active_decode_targets,
            "spatial_id": frame.spatial_id, "temporal_id": frame.temporal_id,
            "dtis": [frame.dti[i] for i in range(s.decode_targets)],
            "fdiffs": [frame.fdiffs[i] for i in range(frame.fdiff_count)],
            "chain_fdiffs": [frame.chain_fdiffs[i] for i in range(s.chain_count)],
            "decode_target_layers": [(frame.dt_layers[i] >> 4, frame.dt_layers[i] & 0x0F)
                                     for i in range(frame.decode_targets)],
        }

    @property
    def structure_info(self) -> dict | None:
        s = self.structure
        if not s.valid:
            return None
        return {
            "structure_id": s.structure_id, "decode_targets": s.decode_targets, "templates": s.template_count,
            "chains": s.chain_count, "protected_by": [s.protected_by[i] for i in range(s.decode_targets)]
            if s.chain_count else [],
            "max_spatial_id": s.max_spatial_id, "max_temporal_id": s.max_temporal_id,
            "resolutions": [(s.width[i], s.height[i]) for i in range(s.max_spatial_id + 1)]
            if s.has_resolutions else [],
        }
