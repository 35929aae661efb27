# TCP mux: ICE-TCP (RFC 6544) passive connections, owned in C like the UDP socket. One epoll set holds the listener
# and every connection, so the event loop watches one descriptor; reads fill EngineState.recv with RFC 4571 frames
# (tcpframer.pxd), which then take the same path as datagrams (demux_batch); packets toward a PATH_TCP path are
# framed into the connection's bounded send queue and written after the batch. A connection is pending until its
# first Binding request authenticates (Python's verdict: tcpmux_claim / tcpmux_reject); until then every frame must
# be a Binding request to a live transport's ufrag, or it is closed. Limits and timeouts: state.pxd, tcpmux.pyx.
# Connections, framers and queues are C state beside the UDP socket, so a forwarding thread can later own a share of
# the connections (an epoll set of its own) as it will own a UDP socket; Python sees only their STUN.
from libc.stdint cimport int64_t, uint8_t, uint64_t

from engine.path cimport Path
from engine.state cimport EngineState

# Watches `listen_fd` (a listening, non-blocking TCP socket the caller keeps open; -1: none, only TURN streams are
# adopted) in a new epoll set: the descriptor
# to watch for readability (s.tcp.epoll_fd), or -1 (errno set).
cdef int tcpmux_open(EngineState *s, int listen_fd) noexcept nogil
# Closes every connection and the epoll set (not the listener).
cdef void tcpmux_close(EngineState *s) noexcept nogil
# Accepts, writes what the kernel will now take, reads, and fills s.recv with up to BATCH frames (their paths are the
# connections'); returns how many. Whole frames left over (the batch was full) come first next time: see
# s.tcp.ready.count.
cdef int tcpmux_read(EngineState *s, int64_t now) noexcept nogil
# Queues `data` framed toward the connection `to` names (dropped and counted when the queue is full or the
# connection gone); it is written by the next tcpmux_flush.
cdef void tcpmux_queue(EngineState *s, const uint8_t *data, int length, const Path *to) noexcept nogil
# Queues head + data + `pad` zero bytes, unframed (TURN streams frame themselves), toward the connection `to` names:
# False when dropped (counted) as tcpmux_queue drops.
cdef bint tcpmux_queue_raw(EngineState *s, const uint8_t *head, int head_length, const uint8_t *data, int length,
                           int pad, const Path *to) noexcept nogil
# A connected TCP stream carrying TURN (TURN/TCP accepted by Python, or the engine's end of a socketpair behind
# Python's TLS), from `peer` (its address): its handle, or 0 when refused (closed, counted). Pending (closed as
# half-open after TCP_CLAIM_TIMEOUT_US) until an allocation is made on it (tcpmux_turn_allocated).
cdef uint64_t tcpmux_adopt(EngineState *s, int fd, const Path *peer, int64_t now) noexcept nogil
cdef void tcpmux_turn_allocated(EngineState *s, uint64_t handle) noexcept nogil
# After the batch's events are dispatched: TURN streams held behind a request in it (tcpmux_read stops taking their
# frames there, until Python has acted on it) go on; their buffered frames come first in the next tcpmux_read.
cdef void tcpmux_release(EngineState *s) noexcept nogil
# Writes every connection's queued bytes that the kernel takes; the rest waits for EPOLLOUT.
cdef void tcpmux_flush(EngineState *s) noexcept nogil
# At most every TCP_SWEEP_US: closes half-open, idle and slow-reading connections; resumes a paused listener.
cdef void tcpmux_sweep(EngineState *s, int64_t now) noexcept nogil
# A pending connection authenticated for the transport in `slot`: 1 when it now carries that transport's packets
# (or already did), 0 when it is gone, another transport's, or over the transport's MAX_TCP_PER_TRANSPORT (closed).
cdef int tcpmux_claim(EngineState *s, uint64_t handle, int slot) noexcept nogil
# A pending connection's Binding request failed authentication: closed and counted (True), unless already claimed.
cdef bint tcpmux_reject(EngineState *s, uint64_t handle) noexcept nogil
# Closes the connections the transport in `slot` claimed (it is going).
cdef void tcpmux_forget_transport(EngineState *s, int slot) noexcept nogil
# The path of the connection `handle` names: 0, or -1 when it is gone.
cdef int tcpmux_path(EngineState *s, uint64_t handle, Path *path) noexcept nogil
# Bytes queued toward the connection (-1 when it is gone).
cdef int tcpmux_queued(EngineState *s, uint64_t handle) noexcept nogil


cdef inline uint64_t tcpmux_handle(const Path *p) noexcept nogil:
    """The connection a PATH_TCP path names, as the control plane sees it (never 0: serials start at 1)."""
    return (<uint64_t>p.conn_serial << 32) | p.conn_slot
