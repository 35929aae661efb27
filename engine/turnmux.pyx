"""TURN mux: ChannelData / Send / Data for allocations whose peer is this engine, in C (see turnmux.pxd).

Why here and not in Python: every media packet of a relayed client crosses this code twice (in and out), so it
must create no Python object, as the UDP and ICE-TCP paths do not; the rare requests (Allocate, Refresh,
CreatePermission, ChannelBind) and their credentials stay in Python. Unwrapping moves the payload to the front of
its batch buffer; wrapping writes a 4-byte ChannelData header or a 44/56-byte Data indication header in front of a
copy into the TURN socket's send batch (or a TURN stream's queue)."""
from libc.errno cimport EINTR, errno
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memmove, memset

from engine.batchio cimport MSG_DONTWAIT, recvmmsg, sendmmsg
from engine.path cimport PATH_TCP, PATH_TURN, PATH_UDP, SockAddr, path_equal, path_key, path_next_key
from engine.state cimport (BATCH, E_TURN, MAX_TURN_ALLOCATIONS, RECV_BUF, S_BYTES_OUT, S_DROP_TOO_LARGE,
                           S_DROP_TURN_GONE, S_DROP_TURN_MALFORMED, S_DROP_TURN_NO_ALLOCATION,
                           S_DROP_TURN_NO_PERMISSION, S_DROP_TURN_RATE, S_DROP_TURN_SEND_FAILED, S_PACKETS_OUT,
                           S_TURN_HELD, S_TURN_RELAYED_IN, S_TURN_RELAYED_OUT, S_TURN_REQUESTS,
                           TURN_REQUESTS_PER_SECOND, TURN_SEND_BUF, TURN_SEND_SLOTS, TcpConn, TurnAlloc, bucket_refill,
                           queue_event)
from engine.stun cimport STUN_HEADER, STUN_MAX_ATTRIBUTES
from engine.table cimport map_free, map_get, map_init, map_put, map_remove
from engine.tcpmux cimport tcpmux_queue_raw, tcpmux_turn_allocated, tcpmux_handle
from engine.wire cimport load16, load32, store16, store32

cdef enum:
    MAGIC_COOKIE = 0x2112A442
    SEND_INDICATION = 0x0016
    DATA_INDICATION = 0x0017
    ATTR_XOR_PEER_ADDRESS = 0x0012
    ATTR_DATA = 0x0013
    CHANNEL_HEADER = 4


cdef int turnmux_open(EngineState *s, int fd) noexcept nogil:
    cdef int i
    s.turn.allocs = <TurnAlloc **>calloc(MAX_TURN_ALLOCATIONS, sizeof(TurnAlloc *))
    s.turn.bufs = <uint8_t *>malloc(TURN_SEND_SLOTS * TURN_SEND_BUF)
    if s.turn.allocs == NULL or s.turn.bufs == NULL or map_init(&s.turn.by_client, 64) < 0:
        return -1
    for i in range(TURN_SEND_SLOTS):
        s.turn.iov[i].iov_base = s.turn.bufs + i * TURN_SEND_BUF
        memset(&s.turn.msgs[i], 0, sizeof(s.turn.msgs[i]))
        s.turn.msgs[i].msg_hdr.msg_name = &s.turn.addrs[i]
        s.turn.msgs[i].msg_hdr.msg_iov = &s.turn.iov[i]
        s.turn.msgs[i].msg_hdr.msg_iovlen = 1
    s.turn.next_serial = 1
    s.turn.tokens = TURN_REQUESTS_PER_SECOND
    s.turn.fd = fd
    return 0


cdef void turnmux_close(EngineState *s) noexcept nogil:
    cdef int i
    if s.turn.allocs != NULL:
        for i in range(s.turn.end):
            free(s.turn.allocs[i])
    free(s.turn.allocs)
    free(s.turn.bufs)
    map_free(&s.turn.by_client)
    s.turn.allocs = NULL
    s.turn.bufs = NULL
    s.turn.end = 0
    s.turn.count = 0
    s.turn.fd = -1


# ---------------------------------------------------------------- allocations

cdef inline TurnAlloc *alloc_named(EngineState *s, uint64_t handle) noexcept nogil:
    cdef uint32_t slot = <uint32_t>handle & ~(<uint32_t>TURN_HANDLE_FLAG)
    cdef TurnAlloc *a
    if s.turn.allocs == NULL or not (handle & TURN_HANDLE_FLAG) or slot >= <uint32_t>MAX_TURN_ALLOCATIONS:
        return NULL
    a = s.turn.allocs[slot]
    return a if a != NULL and a.serial == <uint32_t>(handle >> 32) else NULL


cdef TurnAlloc *find_client(EngineState *s, const Path *client) noexcept nogil:
    """The allocation of this 5-tuple (keys of IPv6 and stream paths may collide: the whole path decides)."""
    cdef uint64_t key = path_key(client, s.path_seed)
    cdef int64_t slot
    while True:
        slot = map_get(&s.turn.by_client, key)
        if slot < 0:
            return NULL
        if path_equal(&s.turn.allocs[slot].client, client):
            return s.turn.allocs[slot]
        key = path_next_key(key)


cdef uint64_t turnmux_allocate(EngineState *s, const Path *client, const Path *relayed) noexcept nogil:
    cdef int slot = 0
    cdef uint64_t key
    cdef TurnAlloc *a
    if s.turn.allocs == NULL or find_client(s, client) != NULL:
        return 0
    while slot < MAX_TURN_ALLOCATIONS and s.turn.allocs[slot] != NULL:
        slot += 1
    if slot == MAX_TURN_ALLOCATIONS:
        return 0
    a = <TurnAlloc *>calloc(1, sizeof(TurnAlloc))
    if a == NULL:
        return 0
    key = path_key(client, s.path_seed)
    while map_get(&s.turn.by_client, key) >= 0:
        key = path_next_key(key)
    if map_put(&s.turn.by_client, key, slot) < 0:
        free(a)
        return 0
    a.serial = s.turn.next_serial
    s.turn.next_serial += 1
    if s.turn.next_serial == 0:
        s.turn.next_serial = 1
    a.client = client[0]
    a.client_key = key
    a.path = relayed[0]
    a.path.kind = PATH_TURN
    a.path.conn_slot = slot
    a.path.conn_serial = a.serial
    s.turn.allocs[slot] = a
    s.turn.end = max(s.turn.end, slot + 1)
    if client.kind == PATH_TCP:
        tcpmux_turn_allocated(s, tcpmux_handle(client))
    return turnmux_handle(&a.path)


cdef void turnmux_release(EngineState *s, uint64_t handle) noexcept nogil:
    cdef TurnAlloc *a = alloc_named(s, handle)
    cdef int slot
    if a == NULL:
        return
    slot = a.path.conn_slot
    map_remove(&s.turn.by_client, a.client_key)
    free(a)
    s.turn.allocs[slot] = NULL
    while s.turn.end > 0 and s.turn.allocs[s.turn.end - 1] == NULL:
        s.turn.end -= 1


cdef bint turnmux_set_peer(EngineState *s, uint64_t handle, uint8_t family, uint16_t port, const uint8_t *ip,
                           bint permitted, uint16_t channel) noexcept nogil:
    cdef TurnAlloc *a = alloc_named(s, handle)
    if a == NULL:
        return False
    a.peer_family = family
    a.peer_port = port
    memset(a.peer_ip, 0, 16)
    memcpy(a.peer_ip, ip, 4 if family == 1 else 16)
    a.permitted = permitted
    a.channel = channel
    return True


cdef int turnmux_path(EngineState *s, uint64_t handle, Path *path) noexcept nogil:
    cdef TurnAlloc *a = alloc_named(s, handle)
    if a == NULL:
        return -1
    path[0] = a.path
    return 0


cdef int turnmux_client(EngineState *s, uint64_t handle, Path *path) noexcept nogil:
    cdef TurnAlloc *a = alloc_named(s, handle)
    if a == NULL:
        return -1
    path[0] = a.client
    return 0


# ---------------------------------------------------------------- from clients

cdef int turnmux_read(EngineState *s, int64_t now) noexcept nogil:
    cdef int i, n
    s.turn.held = 0
    for i in range(BATCH):
        s.recv.msgs[i].msg_hdr.msg_namelen = sizeof(SockAddr)
    n = recvmmsg(s.turn.fd, s.recv.msgs, BATCH, MSG_DONTWAIT, NULL)
    if n <= 0:
        return n
    for i in range(n):
        s.recv.paths[i].kind = PATH_UDP
        s.recv.paths[i].addr_length = s.recv.msgs[i].msg_hdr.msg_namelen
    s.turn.received = n
    return classify_datagrams(s, 0, now)


cdef int turnmux_resume(EngineState *s, int64_t now) noexcept nogil:
    cdef int i
    for i in range(s.turn.held):
        s.recv.taken[i] = True  # forwarded already, with the request they came before
    return classify_datagrams(s, s.turn.held, now)


cdef int classify_datagrams(EngineState *s, int first, int64_t now) noexcept nogil:
    """Sorts out the batch's datagrams from `first` on, and stops behind a request whose client has more datagrams
    in the batch: Python answers it when the batch's events are dispatched, so the rest waits (s.turn.held) until
    turnmux_resume. A client's first ChannelData or Send indication right behind its ChannelBind or CreatePermission
    would meet no permission yet. Returns the end of those sorted out."""
    cdef int i, j, n = s.turn.received
    s.turn.held = 0
    for i in range(first, n):
        if classify(s, i, now):
            for j in range(i + 1, n):
                if path_equal(&s.recv.paths[j], &s.recv.paths[i]):
                    s.turn.held = i + 1
                    s.counters[<int>S_TURN_HELD] += 1
                    return i + 1
    return n


cdef bint peer_matches(const TurnAlloc *a, const uint8_t *value, int length, const uint8_t *transaction) noexcept nogil:
    """Whether an XOR-PEER-ADDRESS value names the allocation's peer (RFC 8489 section 14.2: the port is XORed with
    the cookie's top half, an IPv4 address with the cookie, an IPv6 one with the cookie and transaction id)."""
    cdef uint8_t mask[16]
    cdef int i, size
    if length < 8 or value[1] != a.peer_family:
        return False
    size = 4 if a.peer_family == 1 else 16
    if length != 4 + size or (load16(value + 2) ^ (MAGIC_COOKIE >> 16)) != a.peer_port:
        return False
    store32(mask, MAGIC_COOKIE)
    memcpy(mask + 4, transaction, 12)
    for i in range(size):
        if (value[4 + i] ^ mask[i]) != a.peer_ip[i]:
            return False
    return True


cdef int relay_send(EngineState *s, uint8_t *buf, int length, const Path *client, int *offset,
                    TurnAlloc **allocation) noexcept nogil:
    """A Send indication: the length of its DATA (at *offset) when it goes to the permitted peer of the client's
    *allocation, else -1 (counted)."""
    cdef int pos = STUN_HEADER
    cdef int end = STUN_HEADER + load16(buf + 2)
    cdef int steps = 0
    cdef int kind, size, data_at = -1, data_length = 0, peer_at = -1, peer_length = 0
    cdef TurnAlloc *a
    while pos + 4 <= end and steps < STUN_MAX_ATTRIBUTES:
        kind = load16(buf + pos)
        size = load16(buf + pos + 2)
        if pos + 4 + size > end:
            break
        if kind == ATTR_DATA and data_at < 0:
            data_at = pos + 4
            data_length = size
        elif kind == ATTR_XOR_PEER_ADDRESS and peer_at < 0:
            peer_at = pos + 4
            peer_length = size
        pos += 4 + ((size + 3) & ~3)
        steps += 1
    if data_at < 0 or peer_at < 0:
        s.counters[<int>S_DROP_TURN_MALFORMED] += 1
        return -1
    a = find_client(s, client)
    if a == NULL:
        s.counters[<int>S_DROP_TURN_NO_ALLOCATION] += 1
        return -1
    if not a.permitted or not peer_matches(a, buf + peer_at, peer_length, buf + 8):
        s.counters[<int>S_DROP_TURN_NO_PERMISSION] += 1
        return -1
    offset[0] = data_at
    allocation[0] = a
    return data_length


cdef bint allow_request(EngineState *s, int64_t now) noexcept nogil:
    bucket_refill(&s.turn.tokens, TURN_REQUESTS_PER_SECOND, TURN_REQUESTS_PER_SECOND, now - s.turn.tokens_us)
    s.turn.tokens_us = now
    if s.turn.tokens < 1:
        s.counters[<int>S_DROP_TURN_RATE] += 1
        return False
    s.turn.tokens -= 1
    return True


cdef bint classify(EngineState *s, int i, int64_t now) noexcept nogil:
    """Sorts out batch entry i (see turnmux.pxd): whether it was a request raised as an event."""
    cdef uint8_t *buf = s.recv.bufs + i * RECV_BUF
    cdef int length = s.recv.msgs[i].msg_len
    cdef Path *client = &s.recv.paths[i]
    cdef int offset = CHANNEL_HEADER, size
    cdef uint16_t kind
    cdef TurnAlloc *a
    s.recv.taken[i] = True
    if length < CHANNEL_HEADER:
        s.counters[<int>S_DROP_TURN_MALFORMED] += 1
        return False
    if buf[0] & 0xC0 == 0x40:  # ChannelData (RFC 8656 section 12.4); UDP may carry padding after it
        size = load16(buf + 2)
        if CHANNEL_HEADER + size > length:  # (0x40-0x7F first: channels 0x4000-0x7FFF, RFC 5766 as clients use)
            s.counters[<int>S_DROP_TURN_MALFORMED] += 1
            return False
        a = find_client(s, client)
        if a == NULL:
            s.counters[<int>S_DROP_TURN_NO_ALLOCATION] += 1
            return False
        if a.channel == 0 or a.channel != load16(buf):
            s.counters[<int>S_DROP_TURN_NO_PERMISSION] += 1
            return False
    else:
        if (buf[0] & 0xC0 or length < STUN_HEADER or load32(buf + 4) != MAGIC_COOKIE
                or STUN_HEADER + load16(buf + 2) != length or length & 3):
            s.counters[<int>S_DROP_TURN_MALFORMED] += 1
            return False
        kind = load16(buf)
        if kind & 0x0110 == 0:  # a request: Python's
            if allow_request(s, now):
                s.counters[<int>S_TURN_REQUESTS] += 1
                queue_event(s, E_TURN, buf, length, client, 0, 0, 0)
                return True
            return False
        if kind != SEND_INDICATION:
            s.counters[<int>S_DROP_TURN_MALFORMED] += 1
            return False
        size = relay_send(s, buf, length, client, &offset, &a)
        if size < 0:
            return False
    memmove(buf, buf + offset, size)
    s.recv.msgs[i].msg_len = size
    s.recv.msgs[i].msg_hdr.msg_flags = 0
    s.recv.paths[i] = a.path
    s.recv.taken[i] = False
    s.counters[<int>S_TURN_RELAYED_IN] += 1
    return False


cdef void turnmux_classify(EngineState *s, int first, int n, int64_t now) noexcept nogil:
    cdef int i
    cdef TcpConn *c
    for i in range(first, n):
        # Only the frames of TURN streams, not ICE-TCP connections' (tcpmux.pyx holds what follows their requests).
        if s.recv.paths[i].kind != PATH_TCP or s.recv.taken[i]:
            continue
        c = s.tcp.conns[s.recv.paths[i].conn_slot]
        if c == NULL or not c.turn or c.serial != s.recv.paths[i].conn_serial:
            continue
        classify(s, i, now)


# ---------------------------------------------------------------- to clients

cdef int data_indication(TurnAlloc *a, uint8_t *header, int length) noexcept nogil:
    """Writes a Data indication's header (STUN header, XOR-PEER-ADDRESS, DATA's type and length) for `length` bytes
    of data into `header`; returns its size."""
    cdef int size = 4 if a.peer_family == 1 else 16
    cdef int attributes = (4 + 4 + size) + 4 + ((length + 3) & ~3)
    cdef uint8_t mask[16]
    cdef int i
    store16(header, DATA_INDICATION)
    store16(header + 2, <uint16_t>attributes)
    store32(header + 4, MAGIC_COOKIE)
    a.indications += 1
    store32(header + 8, a.serial)  # any transaction id will do for an indication; unique per allocation
    store32(header + 12, a.indications)
    store32(header + 16, <uint32_t>a.path.conn_slot)
    store16(header + 20, ATTR_XOR_PEER_ADDRESS)
    store16(header + 22, <uint16_t>(4 + size))
    header[24] = 0
    header[25] = a.peer_family
    store16(header + 26, a.peer_port ^ (MAGIC_COOKIE >> 16))
    store32(mask, MAGIC_COOKIE)
    memcpy(mask + 4, header + 8, 12)
    for i in range(size):
        header[28 + i] = a.peer_ip[i] ^ mask[i]
    store16(header + 28 + size, ATTR_DATA)
    store16(header + 30 + size, <uint16_t>length)
    return 32 + size


cdef void turnmux_queue(EngineState *s, const uint8_t *data, int length, const Path *to) noexcept nogil:
    cdef TurnAlloc *a = alloc_named(s, turnmux_handle(to))
    cdef uint8_t header[64]
    cdef uint8_t *out
    cdef int head, pad, slot
    if a == NULL:
        s.counters[<int>S_DROP_TURN_GONE] += 1
        return
    if a.channel:
        store16(header, a.channel)
        store16(header + 2, <uint16_t>length)
        head = CHANNEL_HEADER
        # Padding is required on streams (RFC 8656 section 12.5) and optional over UDP, where we leave it out.
        pad = (-length) & 3 if a.client.kind == PATH_TCP else 0
    else:
        head = data_indication(a, header, length)
        pad = (-length) & 3  # STUN attributes are always padded
    if a.client.kind == PATH_TCP:
        if tcpmux_queue_raw(s, header, head, data, length, pad, &a.client):
            s.counters[<int>S_TURN_RELAYED_OUT] += 1
        return
    if head + length + pad > TURN_SEND_BUF:  # the engine's packets fit; this guards Python's
        s.counters[<int>S_DROP_TOO_LARGE] += 1
        return
    if s.turn.count == TURN_SEND_SLOTS:
        turnmux_flush(s)
    slot = s.turn.count
    out = s.turn.bufs + slot * TURN_SEND_BUF
    memcpy(out, header, head)
    memcpy(out + head, data, length)
    memset(out + head + length, 0, pad)
    s.turn.iov[slot].iov_len = head + length + pad
    s.turn.addrs[slot] = a.client.addr
    s.turn.msgs[slot].msg_hdr.msg_namelen = a.client.addr_length
    s.turn.count += 1
    s.counters[<int>S_PACKETS_OUT] += 1
    s.counters[<int>S_BYTES_OUT] += length
    s.counters[<int>S_TURN_RELAYED_OUT] += 1


cdef void turnmux_flush(EngineState *s) noexcept nogil:
    cdef int sent = 0
    cdef int r
    while sent < s.turn.count:
        r = sendmmsg(s.turn.fd, s.turn.msgs + sent, s.turn.count - sent, MSG_DONTWAIT)
        if r > 0:
            sent += r
        elif r < 0 and errno == EINTR:
            continue
        else:
            s.counters[<int>S_DROP_TURN_SEND_FAILED] += 1
            sent += 1
    s.turn.count = 0
