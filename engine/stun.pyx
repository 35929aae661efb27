"""STUN prefilter: Binding request framing and the USERNAME's local ufrag, success responses, in C (see stun.pxd)."""
from libc.stdint cimport uint16_t, uint32_t

from engine.table cimport mix64
from engine.wire cimport load16, load32

cdef enum:
    MAGIC_COOKIE = 0x2112A442
    BINDING_REQUEST = 0x0001
    BINDING_SUCCESS = 0x0101
    ATTR_USERNAME = 0x0006
    ATTR_MESSAGE_INTEGRITY = 0x0008


cdef int stun_check(const uint8_t *buf, int length, const uint8_t **ufrag, int *ufrag_length) noexcept nogil:
    cdef int pos = STUN_HEADER, count = 0, size, i
    cdef uint16_t kind
    cdef const uint8_t *username = NULL
    cdef int username_length = 0
    cdef bint integrity = False
    if length < STUN_HEADER or load32(buf + 4) != MAGIC_COOKIE:
        return STUN_MALFORMED
    if load16(buf + 2) != length - STUN_HEADER or length & 3:
        return STUN_MALFORMED
    if load16(buf) == BINDING_SUCCESS:
        return STUN_RESPONSE  # demux lets it up only when its transaction id is one of our outstanding checks
    if load16(buf) != BINDING_REQUEST:
        return STUN_NOT_REQUEST
    while pos < length:
        if count == STUN_MAX_ATTRIBUTES or length - pos < 4:
            return STUN_MALFORMED
        count += 1
        kind = load16(buf + pos)
        size = load16(buf + pos + 2)
        pos += 4
        if size > length - pos:
            return STUN_MALFORMED
        if kind == ATTR_USERNAME and username == NULL:
            username = buf + pos
            username_length = size
        elif kind == ATTR_MESSAGE_INTEGRITY:
            integrity = True
        pos += (size + 3) & ~3
    if pos != length:
        return STUN_MALFORMED  # the last attribute's padding ran past the end
    if username == NULL or not integrity:
        return STUN_NO_USERNAME
    for i in range(min(username_length, MAX_UFRAG + 1)):
        if username[i] == b':':
            if i == 0:
                return STUN_NO_USERNAME
            ufrag[0] = username
            ufrag_length[0] = i
            return STUN_OK
    return STUN_NO_USERNAME


cdef uint64_t ufrag_key(const uint8_t *ufrag, int length, uint64_t seed) noexcept nogil:
    # FNV-1a over the bytes, started from the engine's random seed, then splitmix64's finalizer.
    cdef uint64_t h = seed ^ 0xCBF29CE484222325ULL
    cdef int i
    for i in range(length):
        h = (h ^ ufrag[i]) * 0x100000001B3ULL
    return mix64(h)
