# PacketCache: a Receiver layer's recent packets by sequence number, kept to answer NACKs (probe padding later).
# C-level, nogil; the per-packet operations are inline so the ingress path pays no call for them.
from libc.stdint cimport int16_t, int32_t, uint8_t, uint16_t
from libc.string cimport memcpy

cdef enum:
    CACHE_SLOT = 1536         # bytes per cached packet; larger packets are forwarded but not cached

cdef struct PacketCache:
    uint8_t *data             # `size` slots of CACHE_SLOT bytes, indexed by seq % size
    int32_t *seqs             # -1 = empty
    uint16_t *lengths
    int size                  # a power of two

# Allocates an empty cache of `size` packets; 0, or -1 when out of memory (cache_free still frees what was made).
cdef int cache_init(PacketCache *c, int size) noexcept nogil
cdef void cache_free(PacketCache *c) noexcept nogil
# Forgets every packet (keeps the buffers).
cdef void cache_clear(PacketCache *c) noexcept nogil


cdef inline bint cache_has(const PacketCache *c, uint16_t seq) noexcept nogil:
    return c.seqs[seq & (c.size - 1)] == seq


cdef inline void cache_put(PacketCache *c, const uint8_t *buf, int length, uint16_t seq) noexcept nogil:
    cdef int slot = seq & (c.size - 1)
    # Keep the newest packet of a slot: a late, older one must not evict it.
    if length <= CACHE_SLOT and (c.seqs[slot] < 0 or <int16_t>(seq - <uint16_t>c.seqs[slot]) > 0):
        memcpy(c.data + slot * CACHE_SLOT, buf, length)
        c.seqs[slot] = seq
        c.lengths[slot] = length


cdef inline const uint8_t *cache_get(const PacketCache *c, uint16_t seq, int *length) noexcept nogil:
    """The cached packet with sequence number `seq` (and its length), or NULL."""
    cdef int slot = seq & (c.size - 1)
    if c.seqs[slot] != seq:
        return NULL
    length[0] = c.lengths[slot]
    return c.data + slot * CACHE_SLOT
