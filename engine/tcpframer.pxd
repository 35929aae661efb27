# RFC 4571 framing (as RFC 6544 uses it for ICE-TCP): on the stream, every packet (STUN, DTLS, SRTP, SRTCP) follows a
# 2-byte big-endian length. TURN over TCP/TLS (RFC 8656 section 11.5) frames itself instead: a STUN message says
# its length in its header (20 + length bytes), a ChannelData message too (4 + length, padded to a multiple of 4).
# The Framer is sans-I/O: the caller reads into framer_space, then takes frames with framer_next until it says
# FRAME_NONE. State is one fixed buffer and a skip count, so it is bounded whatever arrives,
# and compaction copies fewer bytes than arrive (see framer_space), so the work is linear in what arrives.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memmove

from engine.wire cimport load16

cdef enum:
    FRAME_HEADER = 2
    TURN_FRAME_HEADER = 4     # the part of a STUN or ChannelData header that holds the length
    # Bytes buffered per connection: four frames of the largest size a connection may carry (RECV_BUF), so a read
    # takes several packets at once and the partial frame compaction moves is at most a quarter of the buffer.
    FRAMER_BUFFER = 8192

cdef enum:  # framer_next results
    FRAME_OK = 1              # *frame, *length: one whole frame, valid until the next framer_space
    FRAME_NONE = 0            # no whole frame buffered: read more
    FRAME_OVERSIZED = -1      # a frame longer than max_frame began: it is skipped as it arrives (the stream stays in
                              # step); the caller counts it, or closes the connection
    FRAME_INVALID = -2        # TURN framing: neither STUN nor ChannelData (the stream cannot be followed: close it)

cdef struct Framer:
    int start                 # the first unconsumed byte in buf
    int end                   # one past the last byte read
    int skip                  # bytes of an oversized frame still to discard
    int max_frame             # the longest frame accepted (<= FRAMER_BUFFER / 4)
    bint turn                 # TURN framing rather than RFC 4571's
    uint64_t moved            # bytes compaction has moved, for tests of linearity
    uint8_t buf[<int>FRAMER_BUFFER]


cdef inline void framer_init(Framer *f, int max_frame, bint turn) noexcept nogil:
    f.turn = turn
    f.start = 0
    f.end = 0
    f.skip = 0
    f.max_frame = max_frame
    f.moved = 0


cdef inline int framer_space(Framer *f, uint8_t **space) noexcept nogil:
    """Where to read to (*space) and how many bytes fit. Only a full buffer is compacted: what is left then is one
    partial frame (the caller took every whole one first), at most max_frame + 1 bytes, moved once per at least
    FRAMER_BUFFER - max_frame - 1 bytes read."""
    if f.end == FRAMER_BUFFER:
        f.moved += f.end - f.start
        memmove(f.buf, f.buf + f.start, f.end - f.start)
        f.end -= f.start
        f.start = 0
    space[0] = f.buf + f.end
    return FRAMER_BUFFER - f.end


cdef inline void framer_wrote(Framer *f, int count) noexcept nogil:
    f.end += count


cdef inline int framer_next(Framer *f, const uint8_t **frame, int *length) noexcept nogil:
    cdef int available = f.end - f.start
    cdef int header = TURN_FRAME_HEADER if f.turn else FRAME_HEADER
    cdef int size, taken, consumed
    cdef const uint8_t *p
    if f.skip:
        taken = min(f.skip, available)
        f.skip -= taken
        f.start += taken
        available -= taken
    if f.skip or available < header:
        if f.start == f.end:  # empty: start over at the front, for free
            f.start = 0
            f.end = 0
        return FRAME_NONE
    p = f.buf + f.start
    if not f.turn:
        size = load16(p)
        if size > f.max_frame:
            f.start += FRAME_HEADER
            f.skip = size
            return FRAME_OVERSIZED
        if available < FRAME_HEADER + size:
            return FRAME_NONE
        frame[0] = p + FRAME_HEADER
        length[0] = size
        f.start += FRAME_HEADER + size
        return FRAME_OK
    if p[0] & 0xC0 == 0x40:   # ChannelData: 4-byte header, padded to 4 on a stream
        size = TURN_FRAME_HEADER + load16(p + 2)
        consumed = (size + 3) & ~3
    elif p[0] & 0xC0 == 0 and load16(p + 2) & 3 == 0:  # STUN: 20-byte header, attributes padded to 4
        size = consumed = 20 + load16(p + 2)
    else:
        return FRAME_INVALID
    if size > f.max_frame:
        f.skip = consumed
        return FRAME_OVERSIZED
    if available < consumed:
        return FRAME_NONE
    frame[0] = p
    length[0] = size
    f.start += consumed
    return FRAME_OK
