# Demux: the packet entry (buffer, length, path): RFC 7983 demultiplexing, SRTP/SRTCP unprotect, binding transports
# by path and streams by SSRC / mid / rid, RTX unwrap; RTP becomes an ExtPacket for the fan-out, RTCP goes to
# feedback.pyx / reports.pyx, STUN and DTLS are queued as events for Python.
from libc.stdint cimport int64_t, uint8_t

from engine.path cimport Path
from engine.state cimport EngineState

# Hands every datagram of the UDP batch just read (`n` of them, udpmux_read) to demux_datagram.
cdef void demux_udp_batch(EngineState *s, int n, int64_t now) noexcept nogil
# One datagram from `path`. `buf` must stay put until the batch has been forwarded (RTP) and its events dispatched.
cdef void demux_datagram(EngineState *s, uint8_t *buf, int length, const Path *path, int64_t now) noexcept nogil
# Makes `path` the transport's (in `slot`) address, for lookups and sending; a transport that had it loses it
# (a client reconnected from the same port). 0, or -1 when out of memory.
cdef int demux_bind_path(EngineState *s, int slot, const Path *path) noexcept nogil
# Forgets the transport's address (if it still owns it).
cdef void demux_unbind_path(EngineState *s, int slot) noexcept nogil
