# UDP mux: the socket's batched I/O: recvmmsg into EngineState.recv, and the send batch out with sendmmsg and UDP GSO.
# take a slot, write into its buffer, commit it with its path; flush sends everything committed. A packet committed
# toward an ICE-TCP path is framed into its connection's queue instead (its slot is free again at once), and the
# flush writes those queues too; one toward a TURN allocation is wrapped into the TURN socket's batch or stream
# (turnmux.pyx).
from libc.stdint cimport uint8_t

from engine.path cimport PATH_TCP, PATH_TURN, Path
from engine.state cimport S_BYTES_OUT, S_PACKETS_OUT, SEND_BUF, SEND_SLOTS, EngineState, Transport
from engine.tcpmux cimport tcpmux_queue
from engine.turnmux cimport turnmux_queue

cdef enum:
    # UDP GSO (Linux >= 4.18): a run of equal-size datagrams to one address leaves in one send, split by the kernel.
    SOL_UDP_LEVEL = 17
    UDP_SEGMENT_OPTION = 103

# Points the batches' messages at their buffers and addresses (once, with the buffers allocated).
cdef void udpmux_init(EngineState *s) noexcept nogil
# One recvmmsg into s.recv: how many datagrams arrived (<= 0: none).
cdef int udpmux_read(EngineState *s) noexcept nogil
# Sends every committed slot and empties the batch. Runs of equal-size datagrams to one address go as GSO sends while
# the kernel accepts them; a send that fails drops its datagrams (counted) and the rest still go. Then writes the TCP
# connections' queues that received packets (tcpmux_flush) and the TURN socket's batch (turnmux_flush).
cdef void udpmux_flush(EngineState *s) noexcept nogil
# Protects the RTCP packet built in `slot` (`length` bytes) with `t`'s SRTCP context and commits it to `t`'s path.
cdef void send_rtcp(EngineState *s, Transport *t, int slot, int length) noexcept nogil


cdef inline int send_take_slot(EngineState *s) noexcept nogil:
    """A free send slot (flushing a full batch first); nothing is committed until send_commit."""
    if s.send.count == SEND_SLOTS:
        udpmux_flush(s)
    return s.send.count


cdef inline uint8_t *send_slot_buffer(EngineState *s, int slot) noexcept nogil:
    return s.send.bufs + slot * SEND_BUF


cdef inline void send_commit(EngineState *s, int slot, int length, const Path *to) noexcept nogil:
    if to.kind == PATH_TCP:
        tcpmux_queue(s, send_slot_buffer(s, slot), length, to)
        return
    if to.kind == PATH_TURN:
        turnmux_queue(s, send_slot_buffer(s, slot), length, to)
        return
    s.send.iov[slot].iov_len = length
    s.send.addrs[slot] = to.addr
    s.send.msgs[slot].msg_hdr.msg_namelen = to.addr_length
    s.send.count += 1
    s.counters[<int>S_PACKETS_OUT] += 1
    s.counters[<int>S_BYTES_OUT] += length
