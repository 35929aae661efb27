"""Conversions between Paths and (host, port) pairs, for the control API and events (see path.pxd)."""
import socket

from libc.string cimport memcpy, memset


cdef int path_set(Path *p, str host, int port, bint ipv6) except -1:
    cdef bytes packed
    cdef int scope = 0
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    memset(p, 0, sizeof(Path))
    p.kind = PATH_UDP
    if ":" in host:
        if not ipv6:
            raise ValueError(f"IPv6 address {host!r} on the engine's IPv4 socket")
        # getaddrinfo understands "%scope" (a name or an index); numeric only, never a DNS lookup.
        try:
            info = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
        except socket.gaierror:
            raise ValueError(f"not an IPv6 address: {host!r}") from None
        address = info[0][4]
        packed = socket.inet_pton(socket.AF_INET6, address[0].partition("%")[0])
        scope = address[3]
    else:
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            raise ValueError(f"not an IPv4 address: {host!r}") from None
        if not ipv6:
            p.addr_length = sizeof(sockaddr_in)
            p.addr.v4.sin_family = AF_INET
            p.addr.v4.sin_port = socket.htons(port)
            memcpy(&p.addr.v4.sin_addr.s_addr, <const char *>packed, 4)
            return 0
        packed = b"\x00" * 10 + b"\xff\xff" + packed
    p.addr_length = sizeof(sockaddr_in6)
    p.addr.v6.sin6_family = AF_INET6
    p.addr.v6.sin6_port = socket.htons(port)
    p.addr.v6.sin6_scope_id = scope
    memcpy(&p.addr.v6.sin6_addr, <const char *>packed, 16)
    return 0


cdef tuple path_address(const Path *p):
    cdef const sockaddr_in6 *a
    if p.addr.family == AF_INET:
        return (socket.inet_ntop(socket.AF_INET, (<const char *>&p.addr.v4.sin_addr.s_addr)[:4]),
                socket.ntohs(p.addr.v4.sin_port))
    a = &p.addr.v6
    if path_is_mapped_v4(a):
        host = socket.inet_ntop(socket.AF_INET, (<const char *>&a.sin6_addr.s6_addr[12])[:4])
    else:
        host = socket.inet_ntop(socket.AF_INET6, (<const char *>&a.sin6_addr.s6_addr[0])[:16])
        if a.sin6_scope_id:
            host = f"{host}%{a.sin6_scope_id}"
    return host, socket.ntohs(a.sin6_port)
