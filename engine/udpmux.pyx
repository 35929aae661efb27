"""UDP mux: recvmmsg in; the send batch out with sendmmsg and UDP GSO, falling back for good when refused."""
from libc.errno cimport EINTR, EINVAL, EIO, errno
from libc.stdint cimport uint16_t
from libc.string cimport memset

from engine cimport srtp
from engine.batchio cimport (CMSG_DATA, CMSG_LEN, CMSG_SPACE, MSG_DONTWAIT, cmsghdr, msghdr, recvmmsg, sendmmsg,
                             sockaddr_in)
from engine.path cimport AF_INET6, PATH_UDP, SockAddr, path_is_mapped_v4, sockaddr_equal
from engine.tcpmux cimport tcpmux_flush
from engine.turnmux cimport turnmux_flush
from engine.state cimport (BATCH, GSO_CONTROL_WORDS, RECV_BUF, S_DROP_PROTECT, S_DROP_SEND_FAILED, S_GSO_SEGMENTS,
                           S_GSO_SENDS, SendBatch)

cdef enum:
    GSO_MAX_SEGMENTS = 64     # the kernel's UDP_MAX_SEGMENTS on every version that has GSO
    GSO_MAX_BYTES = 65000     # a GSO send is one UDP datagram to the stack: its payload must fit in 64 KiB
    GSO_MAX_SEGMENT = 1472    # larger datagrams go alone: a segment must fit an Ethernet MTU after IPv4 + UDP...
    GSO_MAX_SEGMENT_V6 = 1452  # ... or after IPv6 + UDP


cdef void udpmux_init(EngineState *s) noexcept nogil:
    cdef int i
    for i in range(BATCH):
        s.recv.iov[i].iov_base = s.recv.bufs + i * RECV_BUF
        s.recv.iov[i].iov_len = RECV_BUF
        memset(&s.recv.msgs[i], 0, sizeof(s.recv.msgs[i]))
        s.recv.msgs[i].msg_hdr.msg_name = &s.recv.paths[i].addr
        s.recv.msgs[i].msg_hdr.msg_iov = &s.recv.iov[i]
        s.recv.msgs[i].msg_hdr.msg_iovlen = 1
        s.recv.paths[i].kind = PATH_UDP
    s.send.counters = s.counters
    s.send.shared = True
    send_batch_init(&s.send)


cdef void send_batch_init(SendBatch *b) noexcept nogil:
    cdef int i
    for i in range(SEND_SLOTS):
        b.iov[i].iov_base = b.bufs + i * SEND_BUF
        memset(&b.msgs[i], 0, sizeof(b.msgs[i]))
        b.msgs[i].msg_hdr.msg_name = &b.addrs[i]
        b.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        b.msgs[i].msg_hdr.msg_iov = &b.iov[i]
        b.msgs[i].msg_hdr.msg_iovlen = 1


cdef int udpmux_read(EngineState *s) noexcept nogil:
    cdef int i, n
    for i in range(BATCH):
        s.recv.msgs[i].msg_hdr.msg_namelen = sizeof(SockAddr)
    n = recvmmsg(s.fd, s.recv.msgs, BATCH, MSG_DONTWAIT, NULL)
    for i in range(n):
        s.recv.paths[i].kind = PATH_UDP  # the batch may have held TCP frames (tcpmux_read) before
        s.recv.paths[i].addr_length = s.recv.msgs[i].msg_hdr.msg_namelen
        s.recv.taken[i] = False
    return n


cdef void udpmux_flush(EngineState *s) noexcept nogil:
    send_batch_flush(&s.send)
    if s.turn.count:
        turnmux_flush(s)
    if s.tcp.dirty.count:
        tcpmux_flush(s)


cdef void send_batch_flush(SendBatch *b) noexcept nogil:
    cdef int sent = 0
    cdef int r
    if b.use_gso and b.count > 1:
        sent = flush_gso(b)
    while sent < b.count:
        r = sendmmsg(b.fd, b.msgs + sent, b.count - sent, MSG_DONTWAIT)
        if r > 0:
            sent += r
        elif r < 0 and errno == EINTR:
            continue
        else:
            # A full socket buffer or an unreachable peer: drop the packet at the head and carry on.
            b.counters[<int>S_DROP_SEND_FAILED] += 1
            sent += 1
    b.count = 0


cdef inline size_t max_segment(const SockAddr *a) noexcept nogil:
    if a.family == AF_INET6 and not path_is_mapped_v4(&a.v6):
        return GSO_MAX_SEGMENT_V6
    return GSO_MAX_SEGMENT


cdef int flush_gso(SendBatch *b) noexcept nogil:
    """Sends the batch as runs of consecutive equal-size datagrams to one address (the last may be shorter), one
    message each. Returns how many slots were handled: all, or those before the first run the kernel refused to
    segment, after which GSO stays off and send_batch_flush sends the rest one datagram each."""
    cdef int count = 0
    cdef int i = 0
    cdef int j, k, r, sent
    cdef size_t size, total
    cdef msghdr *m
    cdef cmsghdr *c
    while i < b.count:
        size = b.iov[i].iov_len
        total = size
        j = i + 1
        while (size <= max_segment(&b.addrs[i]) and j < b.count and j - i < GSO_MAX_SEGMENTS
               and b.iov[j - 1].iov_len == size and b.iov[j].iov_len <= size
               and total + b.iov[j].iov_len <= GSO_MAX_BYTES
               and sockaddr_equal(&b.addrs[i], &b.addrs[j])):
            total += b.iov[j].iov_len
            j += 1
        m = &b.gso_msgs[count].msg_hdr
        m.msg_name = &b.addrs[i]
        m.msg_namelen = b.msgs[i].msg_hdr.msg_namelen
        m.msg_iov = &b.iov[i]
        m.msg_iovlen = j - i
        m.msg_control = NULL
        m.msg_controllen = 0
        if j - i > 1:
            c = <cmsghdr *>&b.gso_control[count * GSO_CONTROL_WORDS]
            c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            c.cmsg_level = SOL_UDP_LEVEL
            c.cmsg_type = UDP_SEGMENT_OPTION
            (<uint16_t *>CMSG_DATA(c))[0] = <uint16_t>size
            m.msg_control = c
            m.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
        b.gso_first[count] = i
        count += 1
        i = j
    sent = 0
    while sent < count:
        r = sendmmsg(b.fd, b.gso_msgs + sent, count - sent, MSG_DONTWAIT)
        if r > 0:
            for k in range(sent, sent + r):
                if b.gso_msgs[k].msg_hdr.msg_iovlen > 1:
                    b.counters[<int>S_GSO_SENDS] += 1
                    b.counters[<int>S_GSO_SEGMENTS] += b.gso_msgs[k].msg_hdr.msg_iovlen
            sent += r
        elif r < 0 and errno == EINTR:
            continue
        elif r < 0 and (errno == EINVAL or errno == EIO) and b.gso_msgs[sent].msg_hdr.msg_iovlen > 1:
            # This socket's route cannot segment (no checksum offload, SO_NO_CHECK, IPsec...): never again.
            b.use_gso = False
            return b.gso_first[sent]
        else:
            # As in send_batch_flush: a full socket buffer or an unreachable peer drops this message and no more.
            b.counters[<int>S_DROP_SEND_FAILED] += b.gso_msgs[sent].msg_hdr.msg_iovlen
            sent += 1
    return b.count


cdef void send_rtcp(EngineState *s, Transport *t, int slot, int length) noexcept nogil:
    if not t.plain and srtp.protect_rtcp(t.tx, send_slot_buffer(&s.send, slot), &length) != 0:
        s.counters[<int>S_DROP_PROTECT] += 1
        return
    send_commit(s, &s.send, slot, length, &t.path)
