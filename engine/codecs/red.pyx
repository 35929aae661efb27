"""RED payload parsing (see red.pxd); every read is guarded by a length comparison."""


cdef int parse_red(const uint8_t *payload, int length, RedDescriptor *d) noexcept nogil:
    # Headers: |F|PT(7)|TS offset(14)|length(10)| per redundant block (F = 1), then |0|PT(7)| for the primary;
    # the blocks' data follows in the same order, the primary's taking what is left.
    cdef int pos = 0, headers = 0, offset, i, count, data
    cdef uint16_t lengths[<int>RED_MAX_HEADERS]
    cdef uint16_t ts_offsets[<int>RED_MAX_HEADERS]
    cdef uint8_t types[<int>RED_MAX_HEADERS]
    if payload == NULL:
        return -1
    while True:
        if pos >= length:
            return -1
        if not payload[pos] & 0x80:
            break
        if length - pos < 4 or headers >= RED_MAX_HEADERS - 1:
            return -1
        types[headers] = payload[pos] & 0x7F
        ts_offsets[headers] = <uint16_t>((payload[pos + 1] << 6) | (payload[pos + 2] >> 2))
        lengths[headers] = <uint16_t>(((payload[pos + 2] & 0x03) << 8) | payload[pos + 3])
        headers += 1
        pos += 4
    d.primary.payload_type = payload[pos] & 0x7F
    d.primary.ts_offset = 0
    pos += 1
    offset = pos
    data = 0
    for i in range(headers):
        data += lengths[i]
    if data > length - pos:
        return -1
    count = min(headers, <int>RED_RECOVER)
    d.redundant = <uint8_t>count
    for i in range(headers):
        if i >= headers - count:
            d.blocks[i - (headers - count)].offset = <uint16_t>offset
            d.blocks[i - (headers - count)].length = lengths[i]
            d.blocks[i - (headers - count)].ts_offset = ts_offsets[i]
            d.blocks[i - (headers - count)].payload_type = types[i]
            d.distance[i - (headers - count)] = <uint8_t>(headers - i)
        offset += lengths[i]
    d.primary.offset = <uint16_t>offset
    d.primary.length = <uint16_t>(length - offset)
    return 0


cdef void red_renumber(uint8_t *payload, int length, uint8_t source, uint8_t target) noexcept nogil:
    cdef int pos = 0
    while pos < length:
        if (payload[pos] & 0x7F) == source:
            payload[pos] = (payload[pos] & 0x80) | target
        if not payload[pos] & 0x80:
            return
        pos += 4


# ---- Python face, for tests (not used on the hot path) ----

def red_blocks(bytes payload) -> list[tuple[int, int, bytes]] | None:
    """The blocks of a RED payload as (payload type, timestamp offset, data): the kept redundant ones (at most
    RED_RECOVER, oldest first), then the primary; None when it is malformed."""
    cdef RedDescriptor d
    cdef const uint8_t *data = payload
    if parse_red(data, len(payload), &d) < 0:
        return None
    blocks = [d.blocks[i] for i in range(d.redundant)] + [d.primary]
    return [(b["payload_type"], b["ts_offset"], payload[b["offset"]:b["offset"] + b["length"]]) for b in blocks]
