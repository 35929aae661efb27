# C-level lookup tables for the hot path: open-addressing hash map from a 64-bit key to a non-negative value.
# Used for Transport by source address and Receiver stream / DownTrack by (transport, SSRC). nogil, no Python objects.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cdef struct U64Map:
    uint64_t *keys
    int64_t *values
    uint8_t *used
    uint32_t capacity         # a power of two, kept at least twice `count`
    uint32_t count

# 0, or -1 when out of memory.
cdef int map_init(U64Map *m, uint32_t capacity) noexcept nogil
cdef void map_free(U64Map *m) noexcept nogil
# The value stored for `key`, or -1.
cdef int64_t map_get(const U64Map *m, uint64_t key) noexcept nogil
# Inserts or replaces (`value` >= 0); 0, or -1 when out of memory.
cdef int map_put(U64Map *m, uint64_t key, int64_t value) noexcept nogil
cdef void map_remove(U64Map *m, uint64_t key) noexcept nogil
