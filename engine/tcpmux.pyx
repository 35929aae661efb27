"""TCP mux: ICE-TCP passive connections in C: accept, RFC 4571 frames in and out, bounded queues (see tcpmux.pxd)."""
from libc.errno cimport EAGAIN, ECONNABORTED, EINTR, errno
from libc.stdint cimport uint16_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.unistd cimport close

from engine.batchio cimport iovec, msghdr, socklen_t, MSG_DONTWAIT
from engine.demux cimport demux_stun_target
from engine.path cimport PATH_TCP, Path, SockAddr
from engine.state cimport (BATCH, MAX_TCP_CONNECTIONS, MAX_TCP_PENDING, MAX_TCP_PER_TRANSPORT, RECV_BUF,
                           S_BYTES_OUT, S_DROP_TCP_CLOSED, S_DROP_TCP_OVERSIZED, S_DROP_TCP_QUEUE_FULL, S_DROP_TOO_LARGE,
                           S_PACKETS_OUT, S_TCP_ACCEPT_FAILED, S_TCP_ACCEPTED, S_TCP_CLAIMED, S_TCP_CLOSED,
                           S_TCP_CLOSED_HALF_OPEN, S_TCP_CLOSED_IDLE, S_TCP_CLOSED_INVALID, S_TCP_CLOSED_LIMIT,
                           S_TCP_CLOSED_PENDING_LIMIT, S_TCP_CLOSED_SLOW_READER, S_TCP_CLOSED_UNAUTHENTICATED,
                           S_TURN_CONNECTIONS, S_TURN_HELD, TCP_EPOLL_EVENTS, TCP_SEND_QUEUE_INITIAL, TCP_SEND_QUEUE_MAX, TcpConn,
                           monotonic_us)
from engine.table cimport list_add, list_discard
from engine.tcpframer cimport (FRAME_HEADER, FRAME_INVALID, FRAME_NONE, FRAME_OVERSIZED, framer_init, framer_next,
                               framer_space, framer_wrote)
from engine.wire cimport load16, store16

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLRDHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef long ssize_t
    struct sockaddr:
        pass
    int accept4(int sockfd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t recv(int sockfd, void *buf, size_t length, int flags)
    ssize_t sendmsg(int sockfd, const msghdr *msg, int flags)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        SOL_SOCKET
        SO_SNDBUF

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef enum:
    ACCEPTS_PER_WAKE = 16     # accept() calls per listener readiness, so a connection flood cannot hold the batch
    # The kernel's send buffer per connection (it doubles it for bookkeeping). Fixed, not autotuned up to megabytes:
    # media queued in the kernel is out of our hands (never dropped, only late), so most of the backlog should wait
    # in our queue, where a full one drops. 64 KiB still fills a 5 Mbit/s link at 100 ms round trip.
    SOCKET_SEND_BUFFER = 65536

cdef uint64_t LISTENER = 0xFFFFFFFFFFFFFFFFULL  # the listener's epoll token; connections' are their handles
# Timeouts, in microseconds of CLOCK_MONOTONIC, checked every TCP_SWEEP_US.
cdef int64_t TCP_SWEEP_US = 1000000
# A connection must authenticate within this: clients send their first Binding request right after connecting (pion,
# LiveKit's stack, waits 30 s; a few seconds are plenty and free the pending slots much sooner).
cdef int64_t TCP_CLAIM_TIMEOUT_US = 5000000
# An authenticated connection with nothing received for this long is dead: clients check consent every 5 s or more
# often (RFC 7675), and the transport's consent expires after the same 30 s (peer/ice.py CONSENT_TIMEOUT).
cdef int64_t TCP_IDLE_TIMEOUT_US = 30000000
# A connection whose send queue stayed full this long does not read (or its link carries far less than what the
# estimate let through): what is queued is seconds late; it is closed, and the client reconnects or goes.
cdef int64_t TCP_SLOW_READER_US = 5000000


cdef int tcpmux_open(EngineState *s, int listen_fd) noexcept nogil:
    s.tcp.conns = <TcpConn **>calloc(MAX_TCP_CONNECTIONS, sizeof(TcpConn *))
    if s.tcp.conns == NULL:
        return -1
    s.tcp.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
    if s.tcp.epoll_fd < 0:
        return -1
    s.tcp.listen_fd = listen_fd
    s.tcp.next_serial = 1
    listen_watch(s, True)
    return s.tcp.epoll_fd


cdef void tcpmux_close(EngineState *s) noexcept nogil:
    cdef int slot
    if s.tcp.conns != NULL:
        for slot in range(s.tcp.end):
            if s.tcp.conns[slot] != NULL:
                conn_close(s, slot, S_TCP_CLOSED)
    if s.tcp.epoll_fd >= 0:
        close(s.tcp.epoll_fd)
    s.tcp.epoll_fd = -1
    s.tcp.listen_fd = -1
    free(s.tcp.conns)
    s.tcp.conns = NULL
    free(s.tcp.pending.items)
    free(s.tcp.ready.items)
    free(s.tcp.dirty.items)
    free(s.tcp.held.items)
    s.tcp.pending.items = s.tcp.ready.items = s.tcp.dirty.items = s.tcp.held.items = NULL
    s.tcp.pending.count = s.tcp.ready.count = s.tcp.dirty.count = s.tcp.held.count = 0
    s.tcp.pending.capacity = s.tcp.ready.capacity = s.tcp.dirty.capacity = s.tcp.held.capacity = 0


cdef void listen_watch(EngineState *s, bint on) noexcept nogil:
    cdef epoll_event event
    if s.tcp.listen_fd < 0:  # TURN streams only, no ICE-TCP listener
        return
    event.events = EPOLLIN
    event.data.u64 = LISTENER
    if on and not s.tcp.listening:
        s.tcp.listening = epoll_ctl(s.tcp.epoll_fd, EPOLL_CTL_ADD, s.tcp.listen_fd, &event) == 0
    elif not on and s.tcp.listening:
        epoll_ctl(s.tcp.epoll_fd, EPOLL_CTL_DEL, s.tcp.listen_fd, &event)
        s.tcp.listening = False


# ---------------------------------------------------------------- connections

cdef inline uint64_t conn_token(const TcpConn *c) noexcept nogil:
    return (<uint64_t>c.serial << 32) | <uint32_t>c.path.conn_slot


cdef inline TcpConn *conn_named(EngineState *s, uint32_t slot, uint32_t serial) noexcept nogil:
    cdef TcpConn *c
    if s.tcp.conns == NULL or slot >= <uint32_t>MAX_TCP_CONNECTIONS:
        return NULL
    c = s.tcp.conns[slot]
    return c if c != NULL and c.serial == serial else NULL


cdef void conn_close(EngineState *s, int slot, int counter) noexcept nogil:
    cdef TcpConn *c = s.tcp.conns[slot]
    s.counters[counter] += 1
    epoll_ctl(s.tcp.epoll_fd, EPOLL_CTL_DEL, c.fd, NULL)
    close(c.fd)
    if c.owner >= 0:
        s.transports[c.owner].tcp_connections -= 1
    else:
        list_discard(&s.tcp.pending, slot)
    if c.ready:
        list_discard(&s.tcp.ready, slot)
    if c.dirty:
        list_discard(&s.tcp.dirty, slot)
    if c.held:
        list_discard(&s.tcp.held, slot)
    free(c.out)
    free(c)
    s.tcp.conns[slot] = NULL
    s.tcp.count -= 1
    while s.tcp.end > 0 and s.tcp.conns[s.tcp.end - 1] == NULL:
        s.tcp.end -= 1


cdef int oldest_pending(EngineState *s) noexcept nogil:
    cdef int i, oldest = s.tcp.pending.items[0]
    for i in range(1, s.tcp.pending.count):
        if s.tcp.conns[s.tcp.pending.items[i]].accepted_us < s.tcp.conns[oldest].accepted_us:
            oldest = s.tcp.pending.items[i]
    return oldest


cdef int conn_add(EngineState *s, int fd, const SockAddr *address, socklen_t length, int64_t now,
                  bint turn) noexcept nogil:
    """A new pending connection on `fd` (closed on failure): its slot, or -1."""
    cdef int slot
    cdef int one = 1, send_buffer = SOCKET_SEND_BUFFER
    cdef TcpConn *c
    cdef epoll_event event
    if s.tcp.count >= MAX_TCP_CONNECTIONS:
        close(fd)
        s.counters[<int>S_TCP_CLOSED_LIMIT] += 1
        return -1
    if s.tcp.pending.count >= MAX_TCP_PENDING:
        conn_close(s, oldest_pending(s), S_TCP_CLOSED_PENDING_LIMIT)
    slot = 0
    while s.tcp.conns[slot] != NULL:  # count < MAX_TCP_CONNECTIONS: a free slot exists
        slot += 1
    c = <TcpConn *>calloc(1, sizeof(TcpConn))
    if c == NULL or list_add(&s.tcp.pending, slot) < 0:
        free(c)
        close(fd)
        s.counters[<int>S_TCP_ACCEPT_FAILED] += 1
        return -1
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))  # media must not wait for Nagle
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer))
    c.fd = fd
    c.serial = s.tcp.next_serial
    s.tcp.next_serial += 1
    if s.tcp.next_serial == 0:  # 2^32 connections later: 0 stays unused, so no handle is 0
        s.tcp.next_serial = 1
    c.owner = -1
    c.turn = turn
    c.accepted_us = now
    c.received_us = now
    c.path.kind = PATH_TCP
    c.path.addr = address[0]
    c.path.addr_length = length
    c.path.conn_slot = slot
    c.path.conn_serial = c.serial
    framer_init(&c.framer, RECV_BUF, turn)
    event.events = EPOLLIN | EPOLLRDHUP
    event.data.u64 = conn_token(c)
    if epoll_ctl(s.tcp.epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0:
        list_discard(&s.tcp.pending, slot)
        free(c)
        close(fd)
        s.counters[<int>S_TCP_ACCEPT_FAILED] += 1
        return -1
    s.tcp.conns[slot] = c
    s.tcp.count += 1
    s.tcp.end = max(s.tcp.end, slot + 1)
    return slot


cdef void accept_all(EngineState *s, int64_t now) noexcept nogil:
    cdef SockAddr address
    cdef socklen_t length
    cdef int i, fd
    for i in range(ACCEPTS_PER_WAKE):
        length = sizeof(SockAddr)
        fd = accept4(s.tcp.listen_fd, <sockaddr *>&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            if errno == EINTR or errno == ECONNABORTED:
                continue
            if errno != EAGAIN:
                # Out of descriptors or memory: the listener would stay readable and spin the loop; it rests until
                # the next sweep.
                s.counters[<int>S_TCP_ACCEPT_FAILED] += 1
                listen_watch(s, False)
            return
        s.counters[<int>S_TCP_ACCEPTED] += 1
        conn_add(s, fd, &address, length, now, False)


cdef uint64_t tcpmux_adopt(EngineState *s, int fd, const Path *peer, int64_t now) noexcept nogil:
    cdef int slot
    if s.tcp.conns == NULL:
        close(fd)
        return 0
    s.counters[<int>S_TURN_CONNECTIONS] += 1
    slot = conn_add(s, fd, &peer.addr, peer.addr_length, now, True)
    return 0 if slot < 0 else conn_token(s.tcp.conns[slot])


cdef void tcpmux_turn_allocated(EngineState *s, uint64_t handle) noexcept nogil:
    cdef TcpConn *c = conn_named(s, <uint32_t>handle, <uint32_t>(handle >> 32))
    if c != NULL and c.turn and not c.turn_allocated:
        c.turn_allocated = True
        list_discard(&s.tcp.pending, <uint32_t>handle)


# ---------------------------------------------------------------- receiving

cdef void conn_read(EngineState *s, int slot) noexcept nogil:
    """One recv into the connection's framer (it has no whole frame left: see tcpmux_read); it joins `ready`."""
    cdef TcpConn *c = s.tcp.conns[slot]
    cdef uint8_t *space
    cdef int room = framer_space(&c.framer, &space)
    cdef ssize_t r = recv(c.fd, space, room, MSG_DONTWAIT)
    if r > 0:
        framer_wrote(&c.framer, <int>r)
        if not c.ready:
            if list_add(&s.tcp.ready, slot) < 0:
                conn_close(s, slot, S_TCP_ACCEPT_FAILED)  # out of memory: it could never be read again
                return
            c.ready = True
    elif r == 0 or (errno != EAGAIN and errno != EINTR):
        conn_close(s, slot, S_TCP_CLOSED)  # end of stream, reset or another error


cdef int take_frames(EngineState *s, int n, int64_t now) noexcept nogil:
    """Copies whole frames of `ready` connections into s.recv from index `n` on, until the batch is full; a
    connection with none left leaves `ready`. Before an ICE-TCP connection is claimed, each frame must be a Binding
    request to a live transport's ufrag (demux_stun_target), else it is closed; a TURN stream's frames may be anything
    its framing allows (turnmux_classify judges them). Returns the batch's new size."""
    cdef TcpConn *c
    cdef const uint8_t *frame
    cdef int slot, length, result
    while s.tcp.ready.count and n < BATCH:
        slot = s.tcp.ready.items[0]
        c = s.tcp.conns[slot]
        while n < BATCH:
            result = framer_next(&c.framer, &frame, &length)
            if result == FRAME_NONE:
                c.ready = False
                list_discard(&s.tcp.ready, slot)
                break
            if result == FRAME_INVALID:
                conn_close(s, slot, S_TCP_CLOSED_INVALID)
                break
            if result == FRAME_OVERSIZED:
                if c.owner < 0 and not c.turn_allocated:
                    conn_close(s, slot, S_TCP_CLOSED_INVALID)
                    break
                s.counters[<int>S_DROP_TCP_OVERSIZED] += 1
                continue
            if c.owner < 0 and not c.turn and demux_stun_target(s, frame, length) < 0:
                conn_close(s, slot, S_TCP_CLOSED_INVALID)
                break
            c.received_us = now
            memcpy(s.recv.bufs + n * RECV_BUF, frame, length)
            s.recv.msgs[n].msg_len = length
            s.recv.msgs[n].msg_hdr.msg_flags = 0
            s.recv.paths[n] = c.path
            s.recv.taken[n] = False  # a TURN stream's frames are sorted out by turnmux_classify
            n += 1
            if c.turn and length >= 4 and frame[0] & 0xC0 == 0 and load16(frame) & 0x0110 == 0:
                conn_hold(s, slot)
                break
    return n


cdef void conn_hold(EngineState *s, int slot) noexcept nogil:
    """A TURN stream's request (Allocate, CreatePermission, ChannelBind, ...) is in the batch: Python answers it when
    the batch's events are dispatched, so the stream's later frames wait in its framer (and its socket) until
    tcpmux_release. A client's first ChannelData or Send indication may come in the same read as the ChannelBind or
    CreatePermission before it: relayed in this batch, it would meet no permission yet."""
    cdef TcpConn *c = s.tcp.conns[slot]
    if list_add(&s.tcp.held, slot) < 0:
        return  # out of memory: not held, as before holds existed
    c.held = True
    if c.ready:
        c.ready = False
        list_discard(&s.tcp.ready, slot)
    if c.framer.end > c.framer.start:
        s.counters[<int>S_TURN_HELD] += 1


cdef void tcpmux_release(EngineState *s) noexcept nogil:
    cdef TcpConn *c
    cdef int slot
    while s.tcp.held.count:
        s.tcp.held.count -= 1
        slot = s.tcp.held.items[s.tcp.held.count]
        c = s.tcp.conns[slot]
        c.held = False
        if c.framer.end > c.framer.start and not c.ready:
            if list_add(&s.tcp.ready, slot) < 0:
                conn_close(s, slot, S_TCP_ACCEPT_FAILED)  # out of memory: its frames could never be taken
                continue
            c.ready = True


cdef int tcpmux_read(EngineState *s, int64_t now) noexcept nogil:
    cdef epoll_event events[<int>TCP_EPOLL_EVENTS]
    cdef int n = take_frames(s, 0, now)
    cdef int count, i
    cdef uint64_t token
    cdef TcpConn *c
    if n == BATCH:
        return n
    # Every connection's whole frames are taken: reading into any of them compacts at most a partial frame.
    count = epoll_wait(s.tcp.epoll_fd, events, TCP_EPOLL_EVENTS, 0)
    for i in range(count):
        token = events[i].data.u64
        if token == LISTENER:
            accept_all(s, now)
            continue
        c = conn_named(s, <uint32_t>token, <uint32_t>(token >> 32))
        if c == NULL:
            continue  # closed earlier in this round
        if events[i].events & EPOLLOUT:
            conn_write(s, <uint32_t>token)
            if conn_named(s, <uint32_t>token, <uint32_t>(token >> 32)) == NULL:
                continue
        # Data, end of stream or an error: recv tells which. A held stream is read after its release (epoll is
        # level-triggered: it says so again), so its framer keeps the frames behind the request in order.
        if events[i].events & ~(<uint32_t>EPOLLOUT) and not c.held:
            conn_read(s, <uint32_t>token)
    return take_frames(s, n, now)


# ---------------------------------------------------------------- sending

cdef bint queue_reserve(TcpConn *c, int need) noexcept nogil:
    """Room for `need` more bytes in the send queue, growing it up to TCP_SEND_QUEUE_MAX."""
    cdef int capacity = c.out_capacity if c.out_capacity else TCP_SEND_QUEUE_INITIAL
    cdef int first
    cdef uint8_t *grown
    if c.out_capacity - c.out_used >= need:
        return True
    while capacity - c.out_used < need and capacity < TCP_SEND_QUEUE_MAX:
        capacity *= 2
    capacity = min(capacity, TCP_SEND_QUEUE_MAX)
    if capacity - c.out_used < need:
        return False
    grown = <uint8_t *>malloc(capacity)
    if grown == NULL:
        return False
    first = min(c.out_used, c.out_capacity - c.out_head)  # the queue, unwrapped to the front of the new ring
    if first:
        memcpy(grown, c.out + c.out_head, first)
    if c.out_used > first:
        memcpy(grown + first, c.out, c.out_used - first)
    free(c.out)
    c.out = grown
    c.out_capacity = capacity
    c.out_head = 0
    return True


cdef inline void queue_put(TcpConn *c, const uint8_t *data, int length) noexcept nogil:
    cdef int tail = (c.out_head + c.out_used) % c.out_capacity
    cdef int first = min(length, c.out_capacity - tail)
    memcpy(c.out + tail, data, first)
    memcpy(c.out, data + first, length - first)
    c.out_used += length


cdef void tcpmux_queue(EngineState *s, const uint8_t *data, int length, const Path *to) noexcept nogil:
    cdef uint8_t header[<int>FRAME_HEADER]
    if length > 0xFFFF:  # the length field's limit (the engine's packets are SEND_BUF at most; this guards Python's)
        s.counters[<int>S_DROP_TOO_LARGE] += 1
        return
    store16(header, <uint16_t>length)
    tcpmux_queue_raw(s, header, FRAME_HEADER, data, length, 0, to)


cdef bint tcpmux_queue_raw(EngineState *s, const uint8_t *head, int head_length, const uint8_t *data, int length,
                           int pad, const Path *to) noexcept nogil:
    cdef TcpConn *c = conn_named(s, to.conn_slot, to.conn_serial)
    cdef uint8_t zeros[4]
    if c == NULL:
        s.counters[<int>S_DROP_TCP_CLOSED] += 1
        return False
    if not queue_reserve(c, head_length + length + pad):
        s.counters[<int>S_DROP_TCP_QUEUE_FULL] += 1
        if c.full_since_us == 0:
            c.full_since_us = monotonic_us()
        return False
    queue_put(c, head, head_length)
    if length:
        queue_put(c, data, length)
    if pad:
        memset(zeros, 0, 4)
        queue_put(c, zeros, pad)
    s.counters[<int>S_PACKETS_OUT] += 1
    s.counters[<int>S_BYTES_OUT] += length
    if not c.dirty and not c.want_write and list_add(&s.tcp.dirty, to.conn_slot) == 0:
        c.dirty = True
    return True


cdef void set_want_write(EngineState *s, TcpConn *c, bint on) noexcept nogil:
    cdef epoll_event event
    event.events = EPOLLIN | EPOLLRDHUP | (EPOLLOUT if on else 0)
    event.data.u64 = conn_token(c)
    if epoll_ctl(s.tcp.epoll_fd, EPOLL_CTL_MOD, c.fd, &event) == 0:
        c.want_write = on


cdef void conn_write(EngineState *s, int slot) noexcept nogil:
    """Offers the queue to the kernel until it is empty or the kernel refuses more (then EPOLLOUT is armed)."""
    cdef TcpConn *c = s.tcp.conns[slot]
    cdef iovec parts[2]
    cdef msghdr message
    cdef ssize_t r
    cdef int first
    while c.out_used:
        first = min(c.out_used, c.out_capacity - c.out_head)
        parts[0].iov_base = c.out + c.out_head
        parts[0].iov_len = first
        parts[1].iov_base = c.out
        parts[1].iov_len = c.out_used - first
        message.msg_name = NULL
        message.msg_namelen = 0
        message.msg_iov = parts
        message.msg_iovlen = 2 if c.out_used > first else 1
        message.msg_control = NULL
        message.msg_controllen = 0
        message.msg_flags = 0
        r = sendmsg(c.fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL)
        if r > 0:
            c.out_head = (c.out_head + <int>r) % c.out_capacity
            c.out_used -= <int>r
        elif r < 0 and errno == EINTR:
            continue
        elif r < 0 and errno == EAGAIN:
            break
        else:
            conn_close(s, slot, S_TCP_CLOSED)  # reset or broken pipe
            return
    if c.out_used <= TCP_SEND_QUEUE_MAX // 2:
        c.full_since_us = 0  # it reads again: a full queue later starts a new stall
    if (c.out_used > 0) != c.want_write:
        set_want_write(s, c, c.out_used > 0)


cdef void tcpmux_flush(EngineState *s) noexcept nogil:
    cdef int slot
    while s.tcp.dirty.count:
        s.tcp.dirty.count -= 1
        slot = s.tcp.dirty.items[s.tcp.dirty.count]
        s.tcp.conns[slot].dirty = False
        conn_write(s, slot)


# ---------------------------------------------------------------- control

cdef void tcpmux_sweep(EngineState *s, int64_t now) noexcept nogil:
    cdef int slot
    cdef TcpConn *c
    if s.tcp.epoll_fd < 0 or now < s.tcp.next_sweep_us:
        return
    s.tcp.next_sweep_us = now + TCP_SWEEP_US
    listen_watch(s, True)
    for slot in range(s.tcp.end):
        c = s.tcp.conns[slot]
        if c == NULL:
            continue
        if c.owner < 0 and not c.turn_allocated and now - c.accepted_us > TCP_CLAIM_TIMEOUT_US:
            conn_close(s, slot, S_TCP_CLOSED_HALF_OPEN)
        elif now - c.received_us > TCP_IDLE_TIMEOUT_US:
            conn_close(s, slot, S_TCP_CLOSED_IDLE)
        elif c.full_since_us and now - c.full_since_us > TCP_SLOW_READER_US:
            conn_close(s, slot, S_TCP_CLOSED_SLOW_READER)


cdef int tcpmux_claim(EngineState *s, uint64_t handle, int slot) noexcept nogil:
    cdef TcpConn *c = conn_named(s, <uint32_t>handle, <uint32_t>(handle >> 32))
    if c == NULL or c.turn:
        return 0
    if c.owner >= 0:
        return c.owner == slot
    if s.transports[slot].tcp_connections >= MAX_TCP_PER_TRANSPORT:
        conn_close(s, <uint32_t>handle, S_TCP_CLOSED_LIMIT)
        return 0
    list_discard(&s.tcp.pending, <uint32_t>handle)
    c.owner = slot
    s.transports[slot].tcp_connections += 1
    s.counters[<int>S_TCP_CLAIMED] += 1
    return 1


cdef bint tcpmux_reject(EngineState *s, uint64_t handle) noexcept nogil:
    cdef TcpConn *c = conn_named(s, <uint32_t>handle, <uint32_t>(handle >> 32))
    if c == NULL or c.owner >= 0 or c.turn:
        return False
    conn_close(s, <uint32_t>handle, S_TCP_CLOSED_UNAUTHENTICATED)
    return True


cdef void tcpmux_forget_transport(EngineState *s, int slot) noexcept nogil:
    cdef int i
    if s.transports[slot].tcp_connections == 0:
        return
    for i in range(s.tcp.end):
        if s.tcp.conns[i] != NULL and s.tcp.conns[i].owner == slot:
            conn_close(s, i, S_TCP_CLOSED)


cdef int tcpmux_path(EngineState *s, uint64_t handle, Path *path) noexcept nogil:
    cdef TcpConn *c = conn_named(s, <uint32_t>handle, <uint32_t>(handle >> 32))
    if c == NULL:
        return -1
    path[0] = c.path
    return 0


cdef int tcpmux_queued(EngineState *s, uint64_t handle) noexcept nogil:
    cdef TcpConn *c = conn_named(s, <uint32_t>handle, <uint32_t>(handle >> 32))
    return c.out_used if c != NULL else -1
