# UDP mux: the socket's batched I/O: recvmmsg into EngineState.recv, and the send batch out with sendmmsg and UDP GSO.
# take a slot, write into its buffer, commit it with its path; flush sends everything committed. A packet committed
# toward an ICE-TCP path is framed into its connection's queue instead (its slot is free again at once), and the
# flush writes those queues too; one toward a TURN allocation is wrapped into the TURN socket's batch or stream
# (turnmux.pyx).
from libc.stdint cimport uint8_t

from engine.path cimport PATH_TCP, PATH_TURN, Path
from engine.state cimport (S_BYTES_OUT, S_DROP_SUBSCRIBER_NOT_READY, S_PACKETS_OUT, SEND_BUF, SEND_SLOTS, EngineState,
                           SendBatch, Transport)
from engine.tcpmux cimport tcpmux_queue
from engine.turnmux cimport turnmux_queue

cdef enum:
    # UDP GSO (Linux >= 4.18): a run of equal-size datagrams to one address leaves in one send, split by the kernel.
    SOL_UDP_LEVEL = 17
    UDP_SEGMENT_OPTION = 103

# Points the batches' messages at their buffers and addresses (once, with the buffers allocated); the send batch
# leaves by `fd` and counts into EngineState.counters.
cdef void udpmux_init(EngineState *s) noexcept nogil
# Points a send batch's messages at its buffers (allocated) and addresses.
cdef void send_batch_init(SendBatch *b) noexcept nogil
# One recvmmsg into s.recv: how many datagrams arrived (<= 0: none).
cdef int udpmux_read(EngineState *s) noexcept nogil
# Sends every committed slot of s.send (send_batch_flush), then writes the TCP connections' queues that received
# packets (tcpmux_flush) and the TURN socket's batch (turnmux_flush).
cdef void udpmux_flush(EngineState *s) noexcept nogil
# Sends every committed slot of `b` and empties it. Runs of equal-size datagrams to one address go as GSO sends while
# the kernel accepts them; a send that fails drops its datagrams (counted) and the rest still go.
cdef void send_batch_flush(SendBatch *b) noexcept nogil
# Protects the RTCP packet built in `slot` (`length` bytes) with `t`'s SRTCP context and commits it to `t`'s path.
cdef void send_rtcp(EngineState *s, Transport *t, int slot, int length) noexcept nogil


cdef inline int send_take_slot(SendBatch *b) noexcept nogil:
    """A free send slot (flushing a full batch first); nothing is committed until send_commit."""
    if b.count == SEND_SLOTS:
        send_batch_flush(b)
    return b.count


cdef inline uint8_t *send_slot_buffer(SendBatch *b, int slot) noexcept nogil:
    return b.bufs + slot * SEND_BUF


cdef inline void send_commit(EngineState *s, SendBatch *b, int slot, int length, const Path *to) noexcept nogil:
    if to.kind == PATH_TCP or to.kind == PATH_TURN:
        if not b.shared:  # a worker's batch: such paths are worker 0's (EngineState.owners), this is a bug's guard
            b.counters[<int>S_DROP_SUBSCRIBER_NOT_READY] += 1
        elif to.kind == PATH_TCP:
            tcpmux_queue(s, send_slot_buffer(b, slot), length, to)
        else:
            turnmux_queue(s, send_slot_buffer(b, slot), length, to)
        return
    b.iov[slot].iov_len = length
    b.addrs[slot] = to.addr
    b.msgs[slot].msg_hdr.msg_namelen = to.addr_length
    b.count += 1
    b.counters[<int>S_PACKETS_OUT] += 1
    b.counters[<int>S_BYTES_OUT] += length
