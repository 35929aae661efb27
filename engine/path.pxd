# Path: where a transport's packets come from and go to: a UDP address of either family (IPv4, or IPv6 with IPv4 peers
# as ::ffff:a.b.c.d on a dual-stack socket), or an ICE-TCP connection (tcpmux.pyx) named by its slot and serial, with
# the peer's address beside it for events and logs, or a TURN allocation (turnmux.pyx) named the same way by its slot
# and serial, with its relayed address beside it (what the client's relay candidate says).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy

from engine.batchio cimport sockaddr_in, socklen_t
from engine.table cimport mix64

cdef extern from "<netinet/in.h>" nogil:
    cdef struct in6_addr:
        uint8_t s6_addr[16]
    cdef struct sockaddr_in6:
        unsigned short sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    enum:
        AF_INET
        AF_INET6

cdef enum:  # Path.kind
    PATH_NONE                 # not bound
    PATH_UDP                  # the UDP mux socket (engine/udpmux.pyx)
    PATH_TCP                  # an ICE-TCP connection (engine/tcpmux.pyx)
    PATH_TURN                 # a TURN allocation whose peer is this engine (engine/turnmux.pyx)

cdef union SockAddr:
    unsigned short family     # sa_family: the first field of both forms
    sockaddr_in v4
    sockaddr_in6 v6

cdef struct Path:
    uint8_t kind
    socklen_t addr_length     # bytes of `addr` in use (sockaddr_in or sockaddr_in6)
    SockAddr addr
    uint32_t conn_slot        # PATH_TCP: the connection's slot in TcpMux.conns, and its serial there, so a path to a
    uint32_t conn_serial      # closed connection never names the next one in that slot (serials start at 1);
                              # PATH_TURN: the allocation's slot in TurnMux.allocs and its serial


# path_key(p, seed), below: the key of `p` in the engine's by-address map. UDP IPv4 (plain or mapped into IPv6) keys are
# the address and port themselves, so they never collide; UDP IPv6 and TCP keys are a hash seeded with `seed` (top
# bit set, apart from IPv4 keys), so callers must still compare the whole path (path_equal) and move past a colliding
# key (path_next_key).
# Fills `p` from a numeric host (IPv4 or IPv6 literal, "%scope" allowed) and port. On an IPv6 socket (`ipv6`) IPv4
# hosts become IPv4-mapped addresses, which is how such a socket sends to them and reports them. ValueError on a host
# that is not an address of a family the socket speaks.
cdef int path_set(Path *p, str host, int port, bint ipv6) except -1
# (host, port) of `p` for events and logs: IPv4-mapped addresses as plain IPv4, "%scope" after scoped IPv6 ones.
cdef tuple path_address(const Path *p)


cdef inline bint path_is_mapped_v4(const sockaddr_in6 *a) noexcept nogil:
    cdef int i
    for i in range(10):
        if a.sin6_addr.s6_addr[i] != 0:
            return False
    return a.sin6_addr.s6_addr[10] == 0xFF and a.sin6_addr.s6_addr[11] == 0xFF


cdef inline bint sockaddr_equal(const SockAddr *a, const SockAddr *b) noexcept nogil:
    if a.family != b.family:
        return False
    if a.family == AF_INET:
        return a.v4.sin_addr.s_addr == b.v4.sin_addr.s_addr and a.v4.sin_port == b.v4.sin_port
    return (a.v6.sin6_port == b.v6.sin6_port and a.v6.sin6_scope_id == b.v6.sin6_scope_id
            and memcmp(&a.v6.sin6_addr, &b.v6.sin6_addr, 16) == 0)


cdef inline bint path_equal(const Path *a, const Path *b) noexcept nogil:
    if a.kind != b.kind:
        return False
    if a.kind == PATH_TCP or a.kind == PATH_TURN:
        return a.conn_slot == b.conn_slot and a.conn_serial == b.conn_serial
    return sockaddr_equal(&a.addr, &b.addr)


cdef inline uint64_t path_next_key(uint64_t key) noexcept nogil:
    # Only IPv6 keys collide; the next one stays among IPv6 keys (top bit set).
    return (key + 1) | (<uint64_t>1 << 63)


cdef inline uint64_t path_key(const Path *p, uint64_t seed) noexcept nogil:
    cdef const sockaddr_in6 *a
    cdef uint64_t high = 0, low = 0
    cdef int i
    if p.kind == PATH_TCP or p.kind == PATH_TURN:
        return mix64(seed ^ p.kind ^ ((<uint64_t>p.conn_serial << 32) | p.conn_slot)) | (<uint64_t>1 << 63)
    if p.addr.family == AF_INET:
        return (<uint64_t>p.addr.v4.sin_addr.s_addr << 16) | p.addr.v4.sin_port
    a = &p.addr.v6
    if path_is_mapped_v4(a):
        # The same key as the plain IPv4 form: s_addr holds the last four bytes in memory order.
        memcpy(&low, &a.sin6_addr.s6_addr[12], 4)
        return (low << 16) | a.sin6_port
    for i in range(8):
        high = (high << 8) | a.sin6_addr.s6_addr[i]
        low = (low << 8) | a.sin6_addr.s6_addr[i + 8]
    return mix64(mix64(mix64(seed ^ high) ^ low) ^ ((<uint64_t>a.sin6_scope_id << 16) | a.sin6_port)) | (<uint64_t>1 << 63)
