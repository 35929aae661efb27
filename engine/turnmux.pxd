# TURN mux: the data path of the embedded TURN server (RFC 8656), whose only permitted peer is this engine. A client's
# ChannelData and Send indications (from the TURN UDP socket, or from a TURN/TCP or TURN/TLS stream in tcpmux.pyx) are
# unwrapped in place into the batch as packets from the allocation's PATH_TURN path, so STUN, DTLS, SRTP and the
# fan-out treat a relayed client like any other; packets toward a PATH_TURN path are wrapped (ChannelData when a channel
# is bound, else a Data indication) and go back the way the client came. The control (Allocate, Refresh,
# CreatePermission, ChannelBind, credentials, lifetimes) is Python's (signaling/peer/turn.py): its requests come up as
# E_TURN events within TURN_REQUESTS_PER_SECOND, and it installs allocations, permissions and channels here.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine.path cimport Path
from engine.state cimport EngineState

cdef enum:
    # A handle names an allocation to Python as (serial << 32) | TURN_HANDLE_FLAG | slot, apart from ICE-TCP
    # connections' handles (whose slots stay below MAX_TCP_CONNECTIONS).
    TURN_HANDLE_FLAG = 0x40000000

# Allocates the tables and takes the TURN UDP socket `fd` (non-blocking; the caller keeps it open; -1: none, TURN
# streams only): 0, or -1.
cdef int turnmux_open(EngineState *s, int fd) noexcept nogil
cdef void turnmux_close(EngineState *s) noexcept nogil
# One recvmmsg on the TURN socket into s.recv, each datagram sorted out as turnmux_classify does: how many entries
# to forward. Those behind a request from a client with more datagrams in the batch wait (s.turn.held) until Python has
# answered it: then turnmux_resume sorts them out (and marks those before taken), the same way.
cdef int turnmux_read(EngineState *s, int64_t now) noexcept nogil
cdef int turnmux_resume(EngineState *s, int64_t now) noexcept nogil
# Sorts out the batch entries [first, n) that came from TURN streams (the TURN socket's: turnmux_read): ChannelData
# and Send indications to a permitted peer become packets of the allocation's path; requests become E_TURN events;
# the rest is dropped and counted. Events and drops are marked taken, so demux skips them.
cdef void turnmux_classify(EngineState *s, int first, int n, int64_t now) noexcept nogil
# Wraps `data` toward the allocation `to` names (dropped and counted when it is gone or the queue is full).
cdef void turnmux_queue(EngineState *s, const uint8_t *data, int length, const Path *to) noexcept nogil
# Sends the TURN socket's batch.
cdef void turnmux_flush(EngineState *s) noexcept nogil
# A new allocation for `client` (UDP on the TURN socket or a TURN stream) whose relayed address is `relayed`'s: its
# handle, 0 when MAX_TURN_ALLOCATIONS are in use or the client has one already.
cdef uint64_t turnmux_allocate(EngineState *s, const Path *client, const Path *relayed) noexcept nogil
cdef void turnmux_release(EngineState *s, uint64_t handle) noexcept nogil
# The peer (STUN family 1 or 2, port, address bytes) the client names this engine by, and whether it is permitted;
# `channel` bound to it (0 = none). False when the allocation is gone.
cdef bint turnmux_set_peer(EngineState *s, uint64_t handle, uint8_t family, uint16_t port, const uint8_t *ip,
                           bint permitted, uint16_t channel) noexcept nogil
# The PATH_TURN path of the allocation `handle` names: 0, or -1 when it is gone.
cdef int turnmux_path(EngineState *s, uint64_t handle, Path *path) noexcept nogil
# Its client's path: 0, or -1 when it is gone.
cdef int turnmux_client(EngineState *s, uint64_t handle, Path *path) noexcept nogil


cdef inline bint turnmux_is_handle(uint64_t handle) noexcept nogil:
    return (handle & TURN_HANDLE_FLAG) != 0


cdef inline uint64_t turnmux_handle(const Path *p) noexcept nogil:
    return (<uint64_t>p.conn_serial << 32) | TURN_HANDLE_FLAG | p.conn_slot
