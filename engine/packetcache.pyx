"""PacketCache allocation (see packetcache.pxd for what it keeps and the inline per-packet operations)."""
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset


cdef int cache_init(PacketCache *c, int size) noexcept nogil:
    c.size = size
    c.data = <uint8_t *>malloc(size * CACHE_SLOT)
    c.seqs = <int32_t *>malloc(size * sizeof(int32_t))
    c.lengths = <uint16_t *>calloc(size, sizeof(uint16_t))
    if c.data == NULL or c.seqs == NULL or c.lengths == NULL:
        return -1
    cache_clear(c)
    return 0


cdef void cache_free(PacketCache *c) noexcept nogil:
    free(c.data)
    free(c.seqs)
    free(c.lengths)
    c.data = NULL
    c.seqs = NULL
    c.lengths = NULL


cdef void cache_clear(PacketCache *c) noexcept nogil:
    if c.seqs != NULL:
        memset(c.seqs, 0xFF, c.size * sizeof(int32_t))
