# Cache-line aligned allocation for state that threads write: a worker's counters and send batch, a Transport's or a
# DownTrack's per-packet fields. Two threads writing neighbours in one 64-byte line pass the line back and forth
# between cores at every write (false sharing); aligned, each allocation starts its own lines. Freed with free().
from libc.string cimport memset

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef enum:
    CACHE_LINE = 64


cdef inline void *aligned_calloc(size_t size) noexcept nogil:
    """`size` zeroed bytes starting on a cache line, rounded up to whole lines; NULL when out of memory."""
    cdef void *p = NULL
    size = (size + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE
    if posix_memalign(&p, CACHE_LINE, size) != 0:
        return NULL
    memset(p, 0, size)
    return p


cdef extern from *:
    # A hint (no fault, no effect on results) to start loading the cache line holding `address`: for state the hot
    # path will touch a little later, so its miss overlaps work instead of stalling it.
    void prefetch "__builtin_prefetch"(const void *address) noexcept nogil
