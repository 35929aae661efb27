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
    cdef uint32_t all_targets
    cdef uint32_t present[64]  # DD_MAX_TEMPLATES: per template, the decode targets it is present in
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
    all_targets = <uint32_t>((1ull << s.decode_targets) - 1)
    for t in range(s.template_count):
        present[t] = 0
        for dt in range(s.decode_targets):
            if s.templates[t].dti[dt] != DTI_NOT_PRESENT:
                present[t] |= 1u << dt
    for dt in range(s.decode_targets):
        s.dt_layers[dt] = 0
        s.dt_subsets[dt] = all_targets
        for t in range(s.template_count):
            tpl = &s.templates[t]
            if (present[t] >> dt) & 1:
                s.dt_layers[dt] = <uint8_t>((max(s.dt_layers[dt] >> 4, tpl.spatial_id) << 4)
                                            | max(s.dt_layers[dt] & 0x0F, tpl.temporal_id))
            else:   # a target present in a template this one lacks has frames this one's subscriber does not get
                s.dt_subsets[dt] &= ~present[t]
    s.active_decode_targets = all_targets
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
        frame.mask_bit = <uint16_t>b.pos
        if frame.has_active_mask:
            if not s.valid:
                return -2
            frame.active_decode_targets = read_bits(&b, s.decode_targets)
    else:
        frame.mask_bit = <uint16_t>b.pos
    frame.after_mask_bit = <uint16_t>b.pos
    if not s.valid:
        return -2 if not b.overrun else -1
    if not frame.has_active_mask:
        frame.active_decode_targets = s.active_decode_targets
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
    frame.end_bit = <uint16_t>b.pos
    frame.decode_targets = s.decode_targets
    frame.chain_count = s.chain_count
    memcpy(frame.protected_by, s.protected_by, s.decode_targets if s.chain_count else 0)
    memcpy(frame.dt_layers, s.dt_layers, s.decode_targets)
    memcpy(frame.dt_subsets, s.dt_subsets, s.decode_targets * sizeof(uint32_t))
    if frame.has_structure:
        memcpy(structure, &attached, sizeof(DdStructure))
    structure.active_decode_targets = frame.active_decode_targets
    return 0


cdef inline void write_bits(uint8_t *out, int pos, uint32_t value, int n) noexcept nogil:
    """`n` bits of `value` at bit `pos` of `out`, most significant first, into bytes already zeroed."""
    cdef int i
    for i in range(n):
        if (value >> (n - 1 - i)) & 1:
            out[(pos + i) >> 3] |= 0x80 >> ((pos + i) & 7)


cdef inline int copy_bits(const uint8_t *src, int start, int end, uint8_t *out, int pos) noexcept nogil:
    """Bits start..end of `src` to bit `pos` of `out` (zeroed); the bit position after them."""
    cdef int i
    for i in range(start, end):
        if (src[i >> 3] >> (7 - (i & 7))) & 1:
            out[pos >> 3] |= 0x80 >> (pos & 7)
        pos += 1
    return pos


cdef int write_dd(const uint8_t *value, const DdFrame *frame, uint16_t frame_number, bint with_mask, uint32_t mask,
                  uint8_t *out) noexcept nogil:
    cdef int pos
    if not with_mask:   # the fields keep their places: only the frame number changes
        pos = (frame.end_bit + 7) >> 3
        memcpy(out, value, pos)
        out[1] = <uint8_t>(frame_number >> 8)
        out[2] = <uint8_t>(frame_number & 0xFF)
        return pos
    memset(out, 0, (frame.end_bit + 7) // 8 + DD_GROWTH)
    out[0] = value[0]
    out[1] = <uint8_t>(frame_number >> 8)
    out[2] = <uint8_t>(frame_number & 0xFF)
    if frame.end_bit > DD_MANDATORY * 8:
        # The extended fields' flags and the structure as they were, then the mask in its place (its flag set).
        pos = copy_bits(value, DD_MANDATORY * 8, frame.mask_bit, out, DD_MANDATORY * 8)
        out[DD_MANDATORY] |= 0x40
    else:
        out[DD_MANDATORY] = 0x40   # the mandatory fields only: flags with just the mask's present
        pos = DD_MANDATORY * 8 + 5
    write_bits(out, pos, mask, frame.decode_targets)
    pos = copy_bits(value, frame.after_mask_bit, frame.end_bit, out, pos + frame.decode_targets)
    return (pos + 7) >> 3


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
            "decode_target_subsets": [frame.dt_subsets[i] for i in range(frame.decode_targets)],
        }

    def rewrite(self, bytes data, int frame_number, mask: int | None = None) -> bytes | str:
        """Reads `data` (as `read`) and writes it back with `frame_number` and, unless None, the active decode
        targets `mask` (write_dd); "malformed" / "no structure" when it does not read."""
        cdef DdFrame frame
        cdef uint8_t out[255 + DD_GROWTH]
        cdef int result, length
        if len(data) > 255:
            raise ValueError("an extension element holds at most 255 bytes")
        result = parse_dd(data, len(data), &self.structure, &frame)
        if result == -1:
            return "malformed"
        if result == -2:
            return "no structure"
        length = write_dd(data, &frame, <uint16_t>frame_number, mask is not None,
                          <uint32_t>(mask or 0) & <uint32_t>((1ull << frame.decode_targets) - 1), out)
        return out[:length]

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
