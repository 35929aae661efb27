"""Binds the libsrtp entry points once, at import, from pylibsrtp's cffi library."""
import pylibsrtp  # noqa: F401  (importing it runs srtp_init)
from libc.stdint cimport uint32_t, uintptr_t


cdef extern from "<arpa/inet.h>" nogil:
    uint32_t htonl(uint32_t)

ctypedef int (*srtp_fn)(void *ctx, void *hdr, int *len_ptr) noexcept nogil
ctypedef int (*remove_fn)(void *ctx, uint32_t ssrc) noexcept nogil
ctypedef int (*create_fn)(void **session, const void *policy) noexcept nogil
ctypedef int (*dealloc_fn)(void *session) noexcept nogil

cdef srtp_fn _protect
cdef srtp_fn _unprotect
cdef srtp_fn _protect_rtcp
cdef srtp_fn _unprotect_rtcp
cdef remove_fn _remove_stream
cdef create_fn _create
cdef dealloc_fn _dealloc


cdef srtp_fn _function(object ffi, object lib, str name):
    cdef uintptr_t address = int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    return <srtp_fn><void *>address


def _bind() -> None:
    from pylibsrtp._binding import ffi, lib
    global _protect, _unprotect, _protect_rtcp, _unprotect_rtcp, _remove_stream, _create, _dealloc
    _protect = _function(ffi, lib, "srtp_protect")
    _unprotect = _function(ffi, lib, "srtp_unprotect")
    _protect_rtcp = _function(ffi, lib, "srtp_protect_rtcp")
    _unprotect_rtcp = _function(ffi, lib, "srtp_unprotect_rtcp")
    _remove_stream = <remove_fn><void *><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_remove_stream")))
    _create = <create_fn><void *><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_create")))
    _dealloc = <dealloc_fn><void *><uintptr_t>int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_dealloc")))


_bind()


cdef int protect(void *ctx, void *packet, int *length) noexcept nogil:
    return _protect(ctx, packet, length)


cdef int unprotect(void *ctx, void *packet, int *length) noexcept nogil:
    return _unprotect(ctx, packet, length)


cdef int protect_rtcp(void *ctx, void *packet, int *length) noexcept nogil:
    return _protect_rtcp(ctx, packet, length)


cdef int unprotect_rtcp(void *ctx, void *packet, int *length) noexcept nogil:
    return _unprotect_rtcp(ctx, packet, length)


cdef int create(void **session, const void *policy) noexcept nogil:
    return _create(session, policy)


cdef int dealloc(void *session) noexcept nogil:
    return _dealloc(session)


cdef int remove_stream(void *ctx, uint32_t ssrc) noexcept nogil:
    # libsrtp keys streams by the SSRC as it appears in the packet (network order).
    return _remove_stream(ctx, htonl(ssrc))
