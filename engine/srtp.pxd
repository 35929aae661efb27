# libsrtp 2.x called from C through the function pointers of the library pylibsrtp bundles (DESIGN.md: no Python per
# packet). `ctx` is an srtp_t created and kept alive by the control plane. Each returns 0 on success (in place;
# *length updated); protect needs SRTP_TRAILER / SRTCP_TRAILER spare bytes after the packet.
from libc.stdint cimport uint32_t

cdef enum:
    SRTP_TRAILER = 16
    SRTCP_TRAILER = 20        # + the 4-byte SRTCP index

cdef int protect(void *ctx, void *packet, int *length) noexcept nogil
cdef int unprotect(void *ctx, void *packet, int *length) noexcept nogil
cdef int protect_rtcp(void *ctx, void *packet, int *length) noexcept nogil
cdef int unprotect_rtcp(void *ctx, void *packet, int *length) noexcept nogil
# Frees the stream of `ssrc` (host order) in a session: 0, or non-zero when it has none.
cdef int remove_stream(void *ctx, uint32_t ssrc) noexcept nogil
# A session made from `policy` (an srtp_policy_t *) on the calling thread, so its memory comes from that thread's
# allocator arena (workers.pxd); 0, or non-zero on failure. Freed with dealloc.
cdef int create(void **session, const void *policy) noexcept nogil
cdef int dealloc(void *session) noexcept nogil
