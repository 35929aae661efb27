# C-level lookup tables for the hot path, nogil, no Python objects: an open-addressing hash map from a 64-bit key to a
# non-negative value (Transport by source address, Receiver stream / DownTrack by (transport, SSRC)), and a small
# growable list of slot numbers (a Receiver's DownTracks, a Transport's Receivers).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from engine.memory cimport prefetch

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

cdef struct IntList:
    int *items
    int count
    int capacity

# 0, or -1 when out of memory.
cdef int list_add(IntList *l, int value) noexcept nogil
# Removes one occurrence (order is not kept).
cdef void list_discard(IntList *l, int value) noexcept nogil


cdef inline uint64_t mix64(uint64_t x) noexcept nogil:
    # splitmix64's finalizer: every input bit reaches every output bit, so keys built from addresses or ufrags spread
    # over the map's buckets.
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef inline void map_prefetch(const U64Map *m, uint64_t key) noexcept nogil:
    """Starts loading the bucket where map_get(m, key) starts looking (a hint: see memory.pxd's prefetch)."""
    cdef uint32_t i
    if m.capacity:
        i = <uint32_t>(mix64(key) & (m.capacity - 1))
        prefetch(&m.keys[i])
        prefetch(&m.used[i])
        prefetch(&m.values[i])
