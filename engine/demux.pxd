# Demux: the packet entry (buffer, length, path): RFC 7983 demultiplexing, SRTP/SRTCP unprotect, binding transports
# by path and streams by SSRC / mid / rid, RTX unwrap; RTP becomes an ExtPacket for the fan-out, RTCP goes to
# feedback.pyx / reports.pyx; STUN Binding requests to a live transport's ufrag (checked in C, stun.pyx), success
# responses to our consent checks and DTLS from a bound address are queued as events for Python, within
# per-transport, fair-share and per-window rates (state.pxd); SSRCs are admitted to srtp_unprotect only when bound or
# bindable, at most MAX_SRTP_STREAMS per transport, plus a ring of RTCP_SENDER_STREAMS RTCP-only senders.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from engine.path cimport Path
from engine.state cimport EngineState

# Hands every datagram (or TCP frame) of the batch just read (`n` of them, udpmux_read, tcpmux_read or turnmux_read)
# to demux_datagram, except those turnmux_classify took.
cdef void demux_batch(EngineState *s, int n, int64_t now) noexcept nogil
# One datagram from `path`. `buf` must stay put until the batch has been forwarded (RTP) and its events dispatched.
cdef void demux_datagram(EngineState *s, uint8_t *buf, int length, const Path *path, int64_t now) noexcept nogil
# Makes `path` the transport's (in `slot`) address, for lookups and sending. 0; -2 when another transport
# holds that address (it keeps it; this one keeps its own); -1 when out of memory.
cdef int demux_bind_path(EngineState *s, int slot, const Path *path) noexcept nogil
# The slot of the transport bound to `path`, or -1.
cdef int64_t demux_find_transport(EngineState *s, const Path *path) noexcept nogil
# Forgets the transport's address (if it still owns it).
cdef void demux_unbind_path(EngineState *s, int slot) noexcept nogil
# Frees the transport's libsrtp receive stream of `ssrc` (a receiver or layer that used it is gone), if it has one.
cdef void demux_release_ssrc(EngineState *s, int t, uint32_t ssrc) noexcept nogil
# Forgets the transport's receive SSRCs and frees its list (the transport is going; its session goes with it).
cdef void demux_forget_ssrcs(EngineState *s, int t) noexcept nogil
# The slot of the live transport that the STUN Binding request in `buf` is addressed to (its USERNAME's local ufrag),
# or -1: not a well-formed Binding request with USERNAME and MESSAGE-INTEGRITY, or no such ufrag. Counts nothing.
cdef int64_t demux_stun_target(EngineState *s, const uint8_t *buf, int length) noexcept nogil
# The key in EngineState.checks of a consent check's 12-byte transaction id (a response with it is let up once).
cdef uint64_t demux_check_key(EngineState *s, const uint8_t *transaction_id) noexcept nogil
