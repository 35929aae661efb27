# cython: language_level=3
"""The packet engine: one UDP mux socket read with recvmmsg and forwarded in C (DESIGN.md, "The hot path").

Per datagram: demultiplex by first byte (RFC 7983). STUN and DTLS go up to Python as events. SRTP/SRTCP are
unprotected in place with libsrtp (called through raw function pointers); RTP is cached per Receiver layer and,
for every DownTrack, passed by the Forwarder, rewritten by the Munger into a send-batch slot, protected and
flushed with sendmmsg; a batch is forwarded DownTrack by DownTrack, so runs of equal-size packets to one subscriber
leave as single UDP GSO sends where the kernel allows. Engine methods must be called from the event loop's thread.
"""
import logging
import os
import socket

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EINTR, EINVAL, EIO, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from engine cimport srtp
from engine.batchio cimport (CMSG_DATA, CMSG_LEN, CMSG_SPACE, MSG_DONTWAIT, MSG_TRUNC, cmsghdr, iovec,
                             mmsghdr, msghdr, recvmmsg, sendmmsg, sockaddr_in, socklen_t)
from engine.downtrack cimport (FORWARD_DROP, FORWARD_SWITCHED, WRITE_GROWTH, DownTrack, SeqMapEntry, downtrack_free,
                               downtrack_lose_layer, downtrack_new, downtrack_rtp_time, downtrack_sent, downtrack_write,
                               forwarder_accept, munger_map)
from engine.receiver cimport (C_AV1, C_H264, C_OPUS, C_OTHER, C_VP8, C_VP9, MAX_LAYERS, MAX_MISSING, Layer, Receiver,
                              layer_cached, layer_due_nacks, layer_receive, layer_report_block, layer_reset,
                              receiver_best_layer, receiver_find_rid, receiver_free, receiver_is_keyframe, receiver_new,
                              receiver_note_audio_level, receiver_note_live, receiver_take_audio_level,
                              receiver_update_top)
from engine.rtcp cimport (RTCP_PSFB, RTCP_RR, RTCP_RTPFB, RTCP_SR, ReportBlock, RtcpHeader, SenderInfo,
                          build_nack, build_pli, build_remb, build_rr, build_sdes_cname, build_sr, is_rtcp,
                          parse_feedback_ssrcs, parse_fir_ssrc, parse_nack, parse_rtcp_header, parse_sender_info)
from engine.rtp cimport RtpHeader, Vp8Descriptor, find_extension, parse_rtp, parse_vp8
from engine.table cimport IntList, U64Map, list_add, list_discard, map_free, map_get, map_init, map_put, map_remove
from engine.wire cimport load16, store16, store32

log = logging.getLogger(__name__)

EV_STUN = "stun"
EV_DTLS = "dtls"
EV_RECEIVER_LAYER = "receiver_layer"


cdef enum:
    BATCH = 64                # datagrams per recvmmsg
    RECV_BUF = 2048
    SEND_SLOTS = 256          # packets per sendmmsg
    SEND_BUF = 2112           # a received datagram + WRITE_GROWTH + SRTP(C) trailer
    MAX_NACK_SEQS = 256
    MAX_TRANSPORTS = 16384    # a fanout of thousands of subscribers with two transports each
    MAX_RECEIVERS = 8192
    MAX_DOWNTRACKS = 65536
    MAX_BATCHES = 16          # recvmmsg batches per readable callback, so timers still run under load
    # UDP GSO (Linux >= 4.18): a run of equal-size datagrams to one address leaves in one send, split by the kernel.
    SOL_UDP_LEVEL = 17
    UDP_SEGMENT_OPTION = 103
    GSO_MAX_SEGMENTS = 64     # the kernel's UDP_MAX_SEGMENTS on every version that has GSO
    GSO_MAX_BYTES = 65000     # a GSO send is one UDP datagram to the stack: its payload must fit in 64 KiB
    GSO_MAX_SEGMENT = 1472    # larger datagrams go alone: a segment must fit an Ethernet MTU after IPv4 + UDP
    GSO_CONTROL_WORDS = 4     # 8-byte words holding CMSG_SPACE(sizeof(uint16_t))

SOCKET_BUFFER = 8 * 1024 * 1024
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux values
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

cdef enum:  # event kinds
    E_STUN
    E_DTLS
    E_LAYER

_CODECS = {"opus": C_OPUS, "vp8": C_VP8, "h264": C_H264, "vp9": C_VP9, "av1": C_AV1}

# Timing, in microseconds of CLOCK_MONOTONIC.
cdef int64_t LAYER_STALE_US = 1000000       # a layer without packets for this long is not available
cdef int64_t PLI_INTERVAL_US = 500000       # keyframe requests per publisher layer
cdef int64_t REPORT_INTERVAL_US = 1000000   # RR + REMB to publishers, SR to subscribers
cdef double TICK_SECONDS = 0.02
# NACK answers: a packet is resent at most once per RTX_REPEAT_US, and a DownTrack gets at most RTX_BUDGET
# retransmissions per RTX_WINDOW_US, so one subscriber's feedback cannot multiply into a flood that stalls forwarding.
cdef int64_t RTX_REPEAT_US = 50000
cdef int64_t RTX_WINDOW_US = 20000
cdef int RTX_BUDGET = 64
cdef uint32_t DEFAULT_REMB_BPS = 5000000

cdef enum:  # statistics counters (indexes)
    S_PACKETS_IN
    S_BYTES_IN
    S_PACKETS_OUT
    S_BYTES_OUT
    S_RTP_IN
    S_RTCP_IN
    S_STUN_IN
    S_DTLS_IN
    S_FORWARDED
    S_PAUSED_SKIPPED
    S_DROP_EMPTY
    S_DROP_TRUNCATED
    S_DROP_NOT_RTP
    S_DROP_UNKNOWN_SOURCE
    S_DROP_DTLS_UNBOUND
    S_DROP_NO_SRTP
    S_DROP_UNPROTECT
    S_DROP_MALFORMED
    S_DROP_UNKNOWN_SSRC
    S_DROP_DUPLICATE
    S_DROP_PAYLOAD_TYPE
    S_DROP_RTX_PADDING
    S_DROP_TOO_LARGE
    S_DROP_PROTECT
    S_DROP_SUBSCRIBER_NOT_READY
    S_DROP_SEND_FAILED
    S_GSO_SENDS
    S_GSO_SEGMENTS
    S_NACKS_RECEIVED
    S_NACKED_PACKETS
    S_NACK_MISSES
    S_RETRANSMISSIONS
    S_NACK_RATE_LIMITED
    S_RTX_RECOVERED
    S_NACKS_SENT
    S_PLIS_RECEIVED
    S_PLIS_SENT
    S_KEYFRAMES
    S_LAYER_SWITCHES
    S_SR_RECEIVED
    S_RR_RECEIVED
    S_SR_SENT
    S_RR_SENT
    S_REMB_SENT
    S_EVENT_ERRORS
    S_COUNT

# Names of the S_* counters, in their order.
STAT_NAMES = (
    "packets_in", "bytes_in", "packets_out", "bytes_out", "rtp_in", "rtcp_in", "stun_in", "dtls_in", "forwarded",
    "paused_skipped",
    "drop_empty", "drop_truncated", "drop_not_rtp", "drop_unknown_source", "drop_dtls_unbound", "drop_no_srtp",
    "drop_srtp_unprotect_failed", "drop_malformed", "drop_unknown_ssrc", "drop_duplicate", "drop_payload_type",
    "drop_rtx_padding",
    "drop_too_large", "drop_srtp_protect_failed", "drop_subscriber_not_ready", "drop_send_failed", "gso_sends",
    "gso_segments",
    "nacks_received", "nacked_packets", "nack_cache_misses", "retransmissions", "nack_rate_limited", "rtx_recovered", "nacks_sent",
    "plis_received", "plis_sent", "keyframes", "layer_switches", "sr_received", "rr_received", "sr_sent", "rr_sent",
    "remb_sent", "event_errors",
)
assert len(STAT_NAMES) == S_COUNT

cdef struct Transport:
    int64_t id
    bint bound
    sockaddr_in addr
    uint64_t addr_key
    void *rx                  # srtp_t, owned by the control plane
    void *tx
    uint32_t local_ssrc       # sender SSRC of our RTCP feedback
    IntList receivers         # slots of the Receivers published on this transport

cdef struct Pending:
    # An RTP packet of the current recvmmsg batch, already received by its Receiver and waiting to be forwarded.
    Receiver *r               # NULL once forwarded
    int l
    const uint8_t *buf        # in the receive buffers, which stay put until the next recvmmsg
    RtpHeader h
    Vp8Descriptor vp8
    bint has_vp8
    bint keyframe


cdef inline int64_t monotonic_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef inline uint64_t ntp_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ((<uint64_t>ts.tv_sec + 2208988800ULL) << 32) | ((<uint64_t>ts.tv_nsec << 32) // 1000000000ULL)


cdef inline uint64_t stream_key(int slot, uint32_t ssrc) noexcept nogil:
    return (<uint64_t>slot << 32) | ssrc


cdef inline uint64_t address_key(const sockaddr_in *a) noexcept nogil:
    return (<uint64_t>a.sin_addr.s_addr << 16) | a.sin_port


cdef inline bint same_address(const sockaddr_in *a, const sockaddr_in *b) noexcept nogil:
    return a.sin_addr.s_addr == b.sin_addr.s_addr and a.sin_port == b.sin_port


cdef class Engine:
    """The data plane: see the module docstring. Events are tuples passed to `on_event` (EV_* constants)."""

    cdef object _sock
    cdef object _on_event
    cdef object _loop
    cdef object _tick_handle
    cdef int _fd
    cdef readonly int port
    cdef int64_t _next_id
    cdef dict _transport_slots
    cdef dict _receiver_slots
    cdef dict _downtrack_slots
    cdef Transport **transports
    cdef Receiver **receivers
    cdef DownTrack **downtracks
    cdef int transport_end      # one past the highest slot ever used, to bound scans
    cdef int receiver_end
    cdef int downtrack_end
    cdef U64Map by_address      # address_key -> transport slot
    cdef U64Map streams         # (transport slot, SSRC) -> receiver slot << 8 | layer << 1 | is_rtx
    cdef U64Map downtrack_ssrcs  # (transport slot, downtrack SSRC or RTX SSRC) -> downtrack slot
    cdef uint64_t counters[<int>S_COUNT]
    cdef uint8_t *recv_bufs
    cdef mmsghdr recv_msgs[<int>BATCH]
    cdef iovec recv_iov[<int>BATCH]
    cdef sockaddr_in recv_addrs[<int>BATCH]
    cdef uint8_t *send_bufs
    cdef mmsghdr send_msgs[<int>SEND_SLOTS]
    cdef iovec send_iov[<int>SEND_SLOTS]
    cdef sockaddr_in send_addrs[<int>SEND_SLOTS]
    cdef int send_count
    cdef bint use_gso            # the kernel segments UDP for us; cleared for good the first time it refuses
    cdef mmsghdr gso_msgs[<int>SEND_SLOTS]
    cdef int gso_first[<int>SEND_SLOTS]  # the first send slot of each GSO message
    cdef uint64_t gso_control[<int>SEND_SLOTS * <int>GSO_CONTROL_WORDS]
    cdef Pending pending[<int>BATCH]
    cdef int pending_count
    cdef int ev_count
    cdef int ev_kind[<int>BATCH]
    cdef int ev_msg[<int>BATCH]
    cdef int64_t ev_a[<int>BATCH]
    cdef int64_t ev_b[<int>BATCH]
    cdef int64_t ev_c[<int>BATCH]
    cdef int64_t last_report_us
    cdef uint64_t remb_bitrate
    cdef char cname[32]
    cdef int cname_length

    def __cinit__(self):
        self.transports = <Transport **>calloc(MAX_TRANSPORTS, sizeof(Transport *))
        self.receivers = <Receiver **>calloc(MAX_RECEIVERS, sizeof(Receiver *))
        self.downtracks = <DownTrack **>calloc(MAX_DOWNTRACKS, sizeof(DownTrack *))
        self.recv_bufs = <uint8_t *>malloc(BATCH * RECV_BUF)
        self.send_bufs = <uint8_t *>malloc(SEND_SLOTS * SEND_BUF)
        if (self.transports == NULL or self.receivers == NULL or self.downtracks == NULL or self.recv_bufs == NULL
                or self.send_bufs == NULL or map_init(&self.by_address, 64) < 0 or map_init(&self.streams, 256) < 0
                or map_init(&self.downtrack_ssrcs, 256) < 0):
            raise MemoryError()
        cdef int i
        for i in range(BATCH):
            self.recv_iov[i].iov_base = self.recv_bufs + i * RECV_BUF
            self.recv_iov[i].iov_len = RECV_BUF
            memset(&self.recv_msgs[i], 0, sizeof(mmsghdr))
            self.recv_msgs[i].msg_hdr.msg_name = &self.recv_addrs[i]
            self.recv_msgs[i].msg_hdr.msg_iov = &self.recv_iov[i]
            self.recv_msgs[i].msg_hdr.msg_iovlen = 1
        for i in range(SEND_SLOTS):
            self.send_iov[i].iov_base = self.send_bufs + i * SEND_BUF
            memset(&self.send_msgs[i], 0, sizeof(mmsghdr))
            self.send_msgs[i].msg_hdr.msg_name = &self.send_addrs[i]
            self.send_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
            self.send_msgs[i].msg_hdr.msg_iov = &self.send_iov[i]
            self.send_msgs[i].msg_hdr.msg_iovlen = 1
        memset(self.counters, 0, sizeof(self.counters))
        self._fd = -1

    def __init__(self, host: str, udp_port: int, on_event) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for option, forced in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
                try:
                    # Past net.core.[rw]mem_max when privileged: bursts of video must not overflow the kernel queue.
                    sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
            sock.setblocking(False)
            sock.bind((host, udp_port))
            try:
                sock.getsockopt(SOL_UDP_LEVEL, UDP_SEGMENT_OPTION)  # fails before Linux 4.18, which has no UDP GSO
                self.use_gso = True
            except OSError:
                self.use_gso = False
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._fd = sock.fileno()
        self.port = sock.getsockname()[1]
        self._on_event = on_event
        self._next_id = 1
        self._transport_slots = {}
        self._receiver_slots = {}
        self._downtrack_slots = {}
        self.remb_bitrate = DEFAULT_REMB_BPS
        self.set_cname("tern")

    def __dealloc__(self):
        cdef int i
        if self.downtracks != NULL:
            for i in range(self.downtrack_end):
                if self.downtracks[i] != NULL:
                    downtrack_free(self.downtracks[i])
        if self.receivers != NULL:
            for i in range(self.receiver_end):
                if self.receivers[i] != NULL:
                    receiver_free(self.receivers[i])
        if self.transports != NULL:
            for i in range(self.transport_end):
                if self.transports[i] != NULL:
                    free(self.transports[i].receivers.items)
                    free(self.transports[i])
        free(self.transports)
        free(self.receivers)
        free(self.downtracks)
        free(self.recv_bufs)
        free(self.send_bufs)
        map_free(&self.by_address)
        map_free(&self.streams)
        map_free(&self.downtrack_ssrcs)

    # ------------------------------------------------------------------ event loop glue

    def attach(self, loop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._on_readable)
        self._tick_handle = loop.call_later(TICK_SECONDS, self._tick)

    def close(self) -> None:
        if self._loop is not None:
            if self._fd >= 0:
                self._loop.remove_reader(self._fd)
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            self._loop = None
            self._tick_handle = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._fd = -1

    def _on_readable(self) -> None:
        cdef int n = 0
        cdef int batches = 0
        cdef int i
        cdef int64_t now
        if self._fd < 0:
            return
        while batches < MAX_BATCHES:
            batches += 1
            with nogil:
                for i in range(BATCH):
                    self.recv_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                n = recvmmsg(self._fd, self.recv_msgs, BATCH, MSG_DONTWAIT, NULL)
                if n > 0:
                    now = monotonic_us()
                    self.ev_count = 0
                    for i in range(n):
                        self.handle_datagram(i, now)
                    self.forward_pending(now)
                    self.flush()
            if n <= 0:
                break
            if self.ev_count:
                self._dispatch_events()
            if n < BATCH:
                break

    def _tick(self) -> None:
        if self._loop is None:
            return
        try:
            with nogil:
                self.run_timers(monotonic_us())
                self.flush()
        finally:
            self._tick_handle = self._loop.call_later(TICK_SECONDS, self._tick)

    cdef _dispatch_events(self):
        cdef int i, m
        for i in range(self.ev_count):
            m = self.ev_msg[i]
            if self.ev_kind[i] == E_STUN:
                event = (EV_STUN, PyBytes_FromStringAndSize(<char *>self.recv_bufs + m * RECV_BUF, self.recv_msgs[m].msg_len),
                         *_address(&self.recv_addrs[m]))
            elif self.ev_kind[i] == E_DTLS:
                event = (EV_DTLS, self.ev_a[i],
                         PyBytes_FromStringAndSize(<char *>self.recv_bufs + m * RECV_BUF, self.recv_msgs[m].msg_len))
            else:
                event = (EV_RECEIVER_LAYER, self.ev_a[i], self.ev_b[i], self.ev_c[i])
            try:
                self._on_event(event)
            except Exception:
                self.counters[S_EVENT_ERRORS] += 1
                log.exception("engine event handler failed on %s", event[0])
        self.ev_count = 0

    # ------------------------------------------------------------------ send batch

    cdef int take_slot(self) noexcept nogil:
        if self.send_count == SEND_SLOTS:
            self.flush()
        return self.send_count

    cdef inline uint8_t *slot_buffer(self, int slot) noexcept nogil:
        return self.send_bufs + slot * SEND_BUF

    cdef void commit_slot(self, int slot, int length, Transport *t) noexcept nogil:
        self.send_iov[slot].iov_len = length
        self.send_addrs[slot] = t.addr
        self.send_count += 1
        self.counters[S_PACKETS_OUT] += 1
        self.counters[S_BYTES_OUT] += length

    cdef void flush(self) noexcept nogil:
        cdef int sent = 0
        cdef int r
        if self.use_gso and self.send_count > 1:
            sent = self.flush_gso()
        while sent < self.send_count:
            r = sendmmsg(self._fd, self.send_msgs + sent, self.send_count - sent, MSG_DONTWAIT)
            if r > 0:
                sent += r
            elif r < 0 and errno == EINTR:
                continue
            else:
                # A full socket buffer or an unreachable peer: drop the packet at the head and carry on.
                self.counters[S_DROP_SEND_FAILED] += 1
                sent += 1
        self.send_count = 0

    cdef int flush_gso(self) noexcept nogil:
        """Sends the batch as runs of consecutive equal-size datagrams to one address (the last may be shorter),
        one message each. Returns how many slots were handled: all, or those before the first run the kernel refused
        to segment, after which GSO stays off and flush() sends the rest one datagram each."""
        cdef int count = 0
        cdef int i = 0
        cdef int j, k, r, sent
        cdef size_t size, total
        cdef msghdr *m
        cdef cmsghdr *c
        while i < self.send_count:
            size = self.send_iov[i].iov_len
            total = size
            j = i + 1
            while (size <= GSO_MAX_SEGMENT and j < self.send_count and j - i < GSO_MAX_SEGMENTS
                   and self.send_iov[j - 1].iov_len == size and self.send_iov[j].iov_len <= size
                   and total + self.send_iov[j].iov_len <= GSO_MAX_BYTES
                   and same_address(&self.send_addrs[i], &self.send_addrs[j])):
                total += self.send_iov[j].iov_len
                j += 1
            m = &self.gso_msgs[count].msg_hdr
            m.msg_name = &self.send_addrs[i]
            m.msg_namelen = sizeof(sockaddr_in)
            m.msg_iov = &self.send_iov[i]
            m.msg_iovlen = j - i
            m.msg_control = NULL
            m.msg_controllen = 0
            if j - i > 1:
                c = <cmsghdr *>&self.gso_control[count * GSO_CONTROL_WORDS]
                c.cmsg_len = CMSG_LEN(sizeof(uint16_t))
                c.cmsg_level = SOL_UDP_LEVEL
                c.cmsg_type = UDP_SEGMENT_OPTION
                (<uint16_t *>CMSG_DATA(c))[0] = <uint16_t>size
                m.msg_control = c
                m.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            self.gso_first[count] = i
            count += 1
            i = j
        sent = 0
        while sent < count:
            r = sendmmsg(self._fd, self.gso_msgs + sent, count - sent, MSG_DONTWAIT)
            if r > 0:
                for k in range(sent, sent + r):
                    if self.gso_msgs[k].msg_hdr.msg_iovlen > 1:
                        self.counters[S_GSO_SENDS] += 1
                        self.counters[S_GSO_SEGMENTS] += self.gso_msgs[k].msg_hdr.msg_iovlen
                sent += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and (errno == EINVAL or errno == EIO) and self.gso_msgs[sent].msg_hdr.msg_iovlen > 1:
                # This socket's route cannot segment (no checksum offload, SO_NO_CHECK, IPsec...): never again.
                self.use_gso = False
                return self.gso_first[sent]
            else:
                # As in flush(): a full socket buffer or an unreachable peer drops this message and no more.
                self.counters[S_DROP_SEND_FAILED] += self.gso_msgs[sent].msg_hdr.msg_iovlen
                sent += 1
        return self.send_count

    cdef void send_rtcp(self, Transport *t, int length, int slot) noexcept nogil:
        """Protects the RTCP packet built in `slot` with `t`'s tx context and queues it."""
        if srtp.protect_rtcp(t.tx, self.slot_buffer(slot), &length) != 0:
            self.counters[S_DROP_PROTECT] += 1
            return
        self.commit_slot(slot, length, t)

    cdef inline bint ready(self, Transport *t) noexcept nogil:
        return t != NULL and t.bound and t.tx != NULL

    # ------------------------------------------------------------------ ingress

    cdef void queue_event(self, int kind, int msg, int64_t a, int64_t b, int64_t c) noexcept nogil:
        # One event per datagram at most, so BATCH entries always suffice.
        if self.ev_count < BATCH:
            self.ev_kind[self.ev_count] = kind
            self.ev_msg[self.ev_count] = msg
            self.ev_a[self.ev_count] = a
            self.ev_b[self.ev_count] = b
            self.ev_c[self.ev_count] = c
            self.ev_count += 1

    cdef void handle_datagram(self, int msg, int64_t now) noexcept nogil:
        cdef uint8_t *buf = self.recv_bufs + msg * RECV_BUF
        cdef int length = self.recv_msgs[msg].msg_len
        cdef uint8_t first
        cdef int64_t t
        self.counters[S_PACKETS_IN] += 1
        self.counters[S_BYTES_IN] += length
        if self.recv_msgs[msg].msg_hdr.msg_flags & MSG_TRUNC:
            self.counters[S_DROP_TRUNCATED] += 1
            return
        if length < 1:
            self.counters[S_DROP_EMPTY] += 1
            return
        first = buf[0]
        if first <= 3:
            self.counters[S_STUN_IN] += 1
            if length < 20:
                self.counters[S_DROP_MALFORMED] += 1
            else:
                self.queue_event(E_STUN, msg, 0, 0, 0)
            return
        if not (20 <= first <= 63 or 128 <= first <= 191):
            self.counters[S_DROP_NOT_RTP] += 1
            return
        t = map_get(&self.by_address, address_key(&self.recv_addrs[msg]))
        if first <= 63:
            self.counters[S_DTLS_IN] += 1
            if t < 0:
                self.counters[S_DROP_DTLS_UNBOUND] += 1
            else:
                self.queue_event(E_DTLS, msg, self.transports[t].id, 0, 0)
            return
        if t < 0:
            self.counters[S_DROP_UNKNOWN_SOURCE] += 1
            return
        if self.transports[t].rx == NULL:
            self.counters[S_DROP_NO_SRTP] += 1
            return
        if is_rtcp(buf, length):
            self.counters[S_RTCP_IN] += 1
            self.handle_rtcp(<int>t, buf, length, now)
        else:
            self.counters[S_RTP_IN] += 1
            self.handle_rtp(msg, <int>t, buf, length, now)

    cdef int64_t bind_stream(self, int t, const uint8_t *buf, RtpHeader *h) noexcept nogil:
        """Matches an unknown SSRC to (receiver, layer, is_rtx) by its mid / rid / repaired-rid extensions."""
        cdef Transport *tr = self.transports[t]
        cdef Receiver *r
        cdef Layer *layer
        cdef const uint8_t *value
        cdef DownTrack *d
        cdef int value_length, i, j, l, index
        cdef bint rtx
        for i in range(tr.receivers.count):
            index = tr.receivers.items[i]
            r = self.receivers[index]
            if r.ext_mid == 0 or r.mid_length == 0:
                continue
            if not find_extension(buf, h, r.ext_mid, &value, &value_length):
                continue
            if value_length != r.mid_length or memcmp(value, r.mid, value_length) != 0:
                continue
            l = -1
            rtx = r.rtx_payload_type == h.payload_type
            if not rtx and h.payload_type != r.payload_type:
                return -1  # e.g. a FEC stream under the same mid: it must not take over a layer
            if not r.simulcast:
                l = 0
            elif r.ext_rrid and find_extension(buf, h, r.ext_rrid, &value, &value_length):
                rtx = True
                l = receiver_find_rid(r, value, value_length)
            elif r.ext_rid and find_extension(buf, h, r.ext_rid, &value, &value_length):
                l = receiver_find_rid(r, value, value_length)
            if l < 0:
                return -1
            layer = &r.layers[l]
            if rtx:
                if layer.has_rtx and layer.rtx_ssrc != h.ssrc:
                    map_remove(&self.streams, stream_key(t, layer.rtx_ssrc))
                layer.rtx_ssrc = h.ssrc
                layer.has_rtx = True
            else:
                if layer.has_ssrc and layer.ssrc != h.ssrc:
                    # The publisher restarted this layer with a new SSRC: its history no longer applies.
                    map_remove(&self.streams, stream_key(t, layer.ssrc))
                    layer_reset(layer)
                    for j in range(r.downtracks.count):
                        d = self.downtracks[r.downtracks.items[j]]
                        if d.current_layer == l:
                            downtrack_lose_layer(d)
                layer.ssrc = h.ssrc
                layer.has_ssrc = True
            if map_put(&self.streams, stream_key(t, h.ssrc), (<int64_t>index << 8) | (l << 1) | rtx) < 0:
                return -1
            return (<int64_t>index << 8) | (l << 1) | rtx
        return -1

    cdef void handle_rtp(self, int msg, int t, uint8_t *buf, int length, int64_t now) noexcept nogil:
        cdef RtpHeader h
        cdef int64_t v
        cdef Receiver *r
        cdef Layer *layer
        cdef int l
        cdef uint16_t osn
        if srtp.unprotect(self.transports[t].rx, buf, &length) != 0:
            self.counters[S_DROP_UNPROTECT] += 1
            return
        if parse_rtp(buf, length, &h) < 0:
            self.counters[S_DROP_MALFORMED] += 1
            return
        v = map_get(&self.streams, stream_key(t, h.ssrc))
        if v < 0:
            v = self.bind_stream(t, buf, &h)
            if v < 0:
                self.counters[S_DROP_UNKNOWN_SSRC] += 1
                return
        r = self.receivers[v >> 8]
        l = (v >> 1) & 0x7F
        layer = &r.layers[l]
        if v & 1:
            # RTX (RFC 4588): the payload starts with the original sequence number; rebuild the original in place.
            if h.payload_length <= 2:
                self.counters[S_DROP_RTX_PADDING] += 1
                return
            if not layer.has_ssrc:
                self.counters[S_DROP_UNKNOWN_SSRC] += 1
                return
            osn = load16(buf + h.header_length)
            memmove(buf + 2, buf, h.header_length)
            buf += 2
            length -= 2
            buf[1] = (buf[1] & 0x80) | r.payload_type
            store16(buf + 2, osn)
            store32(buf + 8, layer.ssrc)
            if parse_rtp(buf, length, &h) < 0:
                self.counters[S_DROP_MALFORMED] += 1
                return
            self.receive(r, l, buf, length, &h, now, True, msg)
        elif h.payload_type != r.payload_type:
            # Subscribers are told one codec: anything else (RED, FEC, a renegotiated codec) would decode as garbage.
            self.counters[S_DROP_PAYLOAD_TYPE] += 1
        else:
            self.receive(r, l, buf, length, &h, now, False, msg)

    cdef void receive(self, Receiver *r, int l, const uint8_t *buf, int length, RtpHeader *h, int64_t now,
                      bint recovered, int msg) noexcept nogil:
        cdef Layer *layer = &r.layers[l]
        cdef Vp8Descriptor vp8
        cdef bint has_vp8 = False
        cdef bint keyframe = False
        cdef int i, first, value_length
        cdef const uint8_t *value
        cdef Pending *p
        first = layer_receive(layer, buf, length, h, r.clock_rate, now, recovered)
        if first < 0:
            self.counters[S_DROP_DUPLICATE] += 1
            return
        if first:
            self.queue_event(E_LAYER, msg, r.id, l, layer.ssrc)
        if recovered:
            self.counters[S_RTX_RECOVERED] += 1
        receiver_note_live(r, l)
        if r.ext_audio_level and find_extension(buf, h, r.ext_audio_level, &value, &value_length) and value_length >= 1:
            receiver_note_audio_level(r, value[0] & 0x7F)
        if r.is_video:
            if r.codec == C_VP8:
                has_vp8 = parse_vp8(buf + h.header_length, h.payload_length, &vp8) == 0
            keyframe = receiver_is_keyframe(r, buf + h.header_length, h.payload_length, &vp8, has_vp8)
            if keyframe:
                layer.keyframes += 1
                self.counters[S_KEYFRAMES] += 1
        # Forwarded with the rest of the batch: see forward_pending.
        p = &self.pending[self.pending_count]  # one per datagram at most, so BATCH entries always suffice
        self.pending_count += 1
        p.r = r
        p.l = l
        p.buf = buf
        p.h = h[0]
        p.vp8 = vp8
        p.has_vp8 = has_vp8
        p.keyframe = keyframe

    cdef void forward_pending(self, int64_t now) noexcept nogil:
        """Forwards the batch's packets DownTrack by DownTrack, each in arrival order: a subscriber's packets then sit
        in consecutive send slots, which flush() can hand to the kernel as one GSO send."""
        cdef int i, j, k
        cdef Receiver *r
        cdef Pending *p
        for i in range(self.pending_count):
            r = self.pending[i].r
            if r == NULL:
                continue
            for k in range(r.downtracks.count):
                for j in range(i, self.pending_count):
                    p = &self.pending[j]
                    if p.r == r:
                        self.forward(self.downtracks[r.downtracks.items[k]], r, p.l, p.buf, &p.h, &p.vp8, p.has_vp8,
                                     p.keyframe, now)
            for j in range(i, self.pending_count):
                if self.pending[j].r == r:
                    self.pending[j].r = NULL
        self.pending_count = 0

    cdef inline int target_layer(self, DownTrack *d, Receiver *r) noexcept nogil:
        return receiver_best_layer(r, d.max_layer)

    cdef void forward(self, DownTrack *d, Receiver *r, int l, const uint8_t *buf, RtpHeader *h,
                      Vp8Descriptor *vp8, bint has_vp8, bint keyframe, int64_t now) noexcept nogil:
        cdef const SeqMapEntry *e
        cdef int verdict
        if d.paused:
            self.counters[S_PAUSED_SKIPPED] += 1
            return
        verdict = forwarder_accept(d, l, self.target_layer(d, r), r.is_video, keyframe, h, vp8, has_vp8,
                                            r.clock_rate, now)
        if verdict == FORWARD_DROP:
            return
        if verdict == FORWARD_SWITCHED:
            self.counters[S_LAYER_SWITCHES] += 1
        e = munger_map(d, l, h, vp8, has_vp8, now)
        if e != NULL and self.send_media(d, buf, h, e, vp8, has_vp8, False):
            d.packets += 1
            d.octets += h.payload_length
            self.counters[S_FORWARDED] += 1

    cdef bint send_media(self, DownTrack *d, const uint8_t *buf, RtpHeader *h, const SeqMapEntry *e,
                         Vp8Descriptor *vp8, bint has_vp8, bint as_rtx) noexcept nogil:
        """Writes the DownTrack's packet (or its RTX form) into a send slot, protects and queues it."""
        cdef Transport *t = self.transports[d.transport]
        cdef int slot, length
        cdef uint8_t *out
        if not self.ready(t):
            self.counters[S_DROP_SUBSCRIBER_NOT_READY] += 1
            return False
        if h.header_length + h.payload_length + WRITE_GROWTH + srtp.SRTP_TRAILER > SEND_BUF:
            self.counters[S_DROP_TOO_LARGE] += 1
            return False
        slot = self.take_slot()
        out = self.slot_buffer(slot)
        length = downtrack_write(d, buf, h, e, vp8, has_vp8, as_rtx, out)
        if srtp.protect(t.tx, out, &length) != 0:
            self.counters[S_DROP_PROTECT] += 1
            return False
        self.commit_slot(slot, length, t)
        return True

    # ------------------------------------------------------------------ RTCP

    cdef void handle_rtcp(self, int t, uint8_t *buf, int length, int64_t now) noexcept nogil:
        cdef RtcpHeader rh
        cdef SenderInfo info
        cdef uint32_t sender, media
        cdef int offset = 0
        cdef int64_t v
        cdef const uint8_t *p
        cdef Layer *layer
        cdef bint ok
        if srtp.unprotect_rtcp(self.transports[t].rx, buf, &length) != 0:
            self.counters[S_DROP_UNPROTECT] += 1
            return
        while offset < length:
            p = buf + offset
            if parse_rtcp_header(p, length - offset, &rh) < 0:
                self.counters[S_DROP_MALFORMED] += 1
                return
            if rh.packet_type == RTCP_SR:
                self.counters[S_SR_RECEIVED] += 1
                if parse_sender_info(p, rh.total_length, &info) == 0:
                    v = map_get(&self.streams, stream_key(t, info.ssrc))
                    if v >= 0 and not (v & 1):
                        layer = &self.receivers[v >> 8].layers[(v >> 1) & 0x7F]
                        layer.sr_ntp = info.ntp_time
                        layer.sr_rtp = info.rtp_time
                        layer.sr_arrival_us = now
            elif rh.packet_type == RTCP_RR:
                self.counters[S_RR_RECEIVED] += 1
            elif rh.packet_type == RTCP_PSFB and (rh.count == 1 or rh.count == 4):
                if rh.count == 1:
                    ok = parse_feedback_ssrcs(p, rh.total_length, &sender, &media) == 0
                else:
                    ok = parse_fir_ssrc(p, rh.total_length, &media) == 0
                if ok:
                    v = map_get(&self.downtrack_ssrcs, stream_key(t, media))
                    if v >= 0:
                        self.on_keyframe_request(self.downtracks[v], now)
            elif rh.packet_type == RTCP_RTPFB and rh.count == 1:
                if parse_feedback_ssrcs(p, rh.total_length, &sender, &media) == 0:
                    v = map_get(&self.downtrack_ssrcs, stream_key(t, media))
                    if v >= 0:
                        self.on_nack(self.downtracks[v], media, p, rh.total_length, now)
            offset += rh.total_length

    cdef void on_keyframe_request(self, DownTrack *d, int64_t now) noexcept nogil:
        cdef Receiver *r = self.receivers[d.receiver]
        cdef int l = d.current_layer if d.current_layer >= 0 else self.target_layer(d, r)
        d.plis_received += 1
        self.counters[S_PLIS_RECEIVED] += 1
        if r.is_video and l >= 0:
            self.request_layer_keyframe(r, l, now)

    cdef void on_nack(self, DownTrack *d, uint32_t media, const uint8_t *p, int length, int64_t now) noexcept nogil:
        cdef uint16_t seqs[<int>MAX_NACK_SEQS]
        cdef int count = parse_nack(p, length, seqs, MAX_NACK_SEQS)
        cdef int i, cached_length
        cdef SeqMapEntry *e
        cdef Receiver *r = self.receivers[d.receiver]
        cdef RtpHeader h
        cdef Vp8Descriptor vp8
        cdef bint has_vp8
        cdef const uint8_t *cached
        d.nacks_received += 1
        self.counters[S_NACKS_RECEIVED] += 1
        if now - d.rtx_window_us >= RTX_WINDOW_US:
            d.rtx_window_us = now
            d.rtx_window_count = 0
        for i in range(count):
            self.counters[S_NACKED_PACKETS] += 1
            # The seq map numbers the media stream; retransmissions themselves are not kept (nor resent again).
            e = downtrack_sent(d, seqs[i]) if media == d.ssrc else NULL
            cached = layer_cached(&r.layers[e.layer], e.in_seq, &cached_length) if e != NULL else NULL
            if cached == NULL or parse_rtp(cached, cached_length, &h) < 0:
                self.counters[S_NACK_MISSES] += 1
                continue
            if (e.last_rtx_us != 0 and now - e.last_rtx_us < RTX_REPEAT_US) or d.rtx_window_count >= RTX_BUDGET:
                self.counters[S_NACK_RATE_LIMITED] += 1
                continue
            has_vp8 = r.codec == C_VP8 and parse_vp8(cached + h.header_length, h.payload_length, &vp8) == 0
            if self.send_media(d, cached, &h, e, &vp8, has_vp8, d.rtx_ssrc != 0):
                e.last_rtx_us = now
                d.rtx_window_count += 1
                d.retransmissions += 1
                self.counters[S_RETRANSMISSIONS] += 1

    cdef void request_layer_keyframe(self, Receiver *r, int l, int64_t now) noexcept nogil:
        """PLI to the publisher for layer `l`, at most once per PLI_INTERVAL_US."""
        cdef Layer *layer = &r.layers[l]
        cdef Transport *t = self.transports[r.transport]
        cdef int slot, length
        if not layer.has_ssrc or now - layer.last_pli_us < PLI_INTERVAL_US or not self.ready(t):
            return
        layer.last_pli_us = now
        slot = self.take_slot()
        length = build_pli(self.slot_buffer(slot), SEND_BUF - srtp.SRTCP_TRAILER, t.local_ssrc, layer.ssrc)
        if length > 0:
            layer.plis_sent += 1
            self.counters[S_PLIS_SENT] += 1
            self.send_rtcp(t, length, slot)

    # ------------------------------------------------------------------ timers

    cdef void run_timers(self, int64_t now) noexcept nogil:
        """Every tick: layer availability, NACKs to publishers, keyframe requests for waiting DownTracks; every
        REPORT_INTERVAL_US: SR to subscribers, RR + REMB to publishers."""
        cdef int i, l, top
        cdef Receiver *r
        cdef DownTrack *d
        cdef bint report = now - self.last_report_us >= REPORT_INTERVAL_US
        for i in range(self.receiver_end):
            r = self.receivers[i]
            if r == NULL:
                continue
            receiver_update_top(r, now, LAYER_STALE_US)
            if r.is_video:
                for l in range(r.num_layers):
                    if r.layers[l].missing_count:
                        self.send_nacks(r, &r.layers[l], now)
        for i in range(self.downtrack_end):
            d = self.downtracks[i]
            if d == NULL:
                continue
            r = self.receivers[d.receiver]
            top = self.target_layer(d, r)
            if r.is_video and top >= 0 and d.current_layer != top and not d.paused:
                if now - r.layers[top].last_pli_us >= PLI_INTERVAL_US:
                    d.keyframe_requests += 1
                self.request_layer_keyframe(r, top, now)
            if report and d.started:
                self.send_sender_report(d, r, now)
        if report:
            self.last_report_us = now
            for i in range(self.transport_end):
                if self.transports[i] != NULL and self.transports[i].receivers.count:
                    self.send_receiver_report(self.transports[i], now)

    cdef void send_nacks(self, Receiver *r, Layer *layer, int64_t now) noexcept nogil:
        cdef uint16_t seqs[<int>MAX_MISSING]
        cdef int count = layer_due_nacks(layer, now, seqs)
        cdef int slot, length
        cdef Transport *t = self.transports[r.transport]
        if count == 0 or not self.ready(t) or not layer.has_ssrc:
            return
        slot = self.take_slot()
        length = build_nack(self.slot_buffer(slot), SEND_BUF - srtp.SRTCP_TRAILER, t.local_ssrc, layer.ssrc, seqs,
                            count)
        if length > 0:
            layer.nacks_sent += 1
            self.counters[S_NACKS_SENT] += 1
            self.send_rtcp(t, length, slot)

    cdef void send_receiver_report(self, Transport *t, int64_t now) noexcept nogil:
        """RR for every publisher layer on `t` + SDES + REMB (so the publisher's encoder ramps up to all layers)."""
        cdef ReportBlock blocks[31]
        cdef uint32_t video_ssrcs[31]
        cdef int count = 0
        cdef int video = 0
        cdef int i, l, slot, length, n
        cdef int cap = SEND_BUF - srtp.SRTCP_TRAILER
        cdef Receiver *r
        cdef uint8_t *out
        if not self.ready(t):
            return
        for i in range(t.receivers.count):
            r = self.receivers[t.receivers.items[i]]
            for l in range(r.num_layers):
                if not r.layers[l].active or count == 31:
                    continue
                layer_report_block(&r.layers[l], now, &blocks[count])
                count += 1
                if r.is_video:
                    video_ssrcs[video] = r.layers[l].ssrc
                    video += 1
        if count == 0:
            return
        slot = self.take_slot()
        out = self.slot_buffer(slot)
        length = build_rr(out, cap, t.local_ssrc, blocks, count)
        if length < 0:
            return
        n = build_sdes_cname(out + length, cap - length, t.local_ssrc, self.cname, self.cname_length)
        if n > 0:
            length += n
        self.counters[S_RR_SENT] += 1
        if video:
            n = build_remb(out + length, cap - length, t.local_ssrc, self.remb_bitrate, video_ssrcs, video)
            if n > 0:
                length += n
                self.counters[S_REMB_SENT] += 1
        self.send_rtcp(t, length, slot)

    cdef void send_sender_report(self, DownTrack *d, Receiver *r, int64_t now) noexcept nogil:
        """SR + SDES CNAME for one DownTrack."""
        cdef Transport *t = self.transports[d.transport]
        cdef SenderInfo info
        cdef int slot, length, n
        cdef int cap = SEND_BUF - srtp.SRTCP_TRAILER
        cdef uint8_t *out
        if not self.ready(t):
            return
        info.ssrc = d.ssrc
        info.ntp_time = ntp_now()
        info.rtp_time = downtrack_rtp_time(d, &r.layers[d.current_layer] if d.current_layer >= 0 else NULL,
                                           r.clock_rate, now)
        info.packet_count = <uint32_t>d.packets
        info.octet_count = <uint32_t>d.octets
        slot = self.take_slot()
        out = self.slot_buffer(slot)
        length = build_sr(out, cap, &info, NULL, 0)
        if length < 0:
            return
        n = build_sdes_cname(out + length, cap - length, d.ssrc, self.cname, self.cname_length)
        if n > 0:
            length += n
        self.counters[S_SR_SENT] += 1
        self.send_rtcp(t, length, slot)

    # ------------------------------------------------------------------ control API (Python)

    cdef int _slot(self, dict slots, object object_id, str what) except -1:
        try:
            return slots[object_id]
        except KeyError:
            raise KeyError(f"unknown {what} {object_id}") from None

    cdef int64_t _new_id(self):
        self._next_id += 1
        return self._next_id - 1

    def send_to(self, data: bytes, host: str, port: int) -> None:
        """A raw datagram (STUN responses)."""
        try:
            self._sock.sendto(data, (host, port))
        except OSError as e:
            self.counters[S_DROP_SEND_FAILED] += 1
            log.debug("send_to %s:%s failed: %s", host, port, e)

    def add_transport(self) -> int:
        cdef int slot = _free_slot(<void **>self.transports, MAX_TRANSPORTS)
        cdef Transport *t
        if slot < 0:
            raise RuntimeError("too many transports")
        t = <Transport *>calloc(1, sizeof(Transport))
        if t == NULL:
            raise MemoryError()
        t.id = self._new_id()
        t.local_ssrc = int.from_bytes(os.urandom(4), "big")
        self.transports[slot] = t
        self.transport_end = max(self.transport_end, slot + 1)
        self._transport_slots[t.id] = slot
        return t.id

    def bind_transport(self, transport_id: int, host: str, port: int) -> None:
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef Transport *t = self.transports[slot]
        cdef sockaddr_in address
        memset(&address, 0, sizeof(address))
        address.sin_family = socket.AF_INET
        address.sin_port = socket.htons(port)
        address.sin_addr.s_addr = int.from_bytes(socket.inet_aton(host), "little")
        if t.bound:
            map_remove(&self.by_address, t.addr_key)
        old = map_get(&self.by_address, address_key(&address))
        if old >= 0 and old != slot:
            # The address moved to another transport (a client reconnected from the same port).
            self.transports[old].bound = False
        t.addr = address
        t.addr_key = address_key(&address)
        if map_put(&self.by_address, t.addr_key, slot) < 0:
            raise MemoryError()
        t.bound = True

    def send_transport(self, transport_id: int, data: bytes) -> None:
        """A raw datagram to the transport's bound address (DTLS records)."""
        cdef Transport *t = self.transports[self._slot(self._transport_slots, transport_id, "transport")]
        if not t.bound:
            self.counters[S_DROP_SUBSCRIBER_NOT_READY] += 1
            return
        self.send_to(data, socket.inet_ntoa(int(t.addr.sin_addr.s_addr).to_bytes(4, "little")), socket.ntohs(t.addr.sin_port))

    def set_srtp(self, transport_id: int, rx_session: int, tx_session: int) -> None:
        cdef Transport *t = self.transports[self._slot(self._transport_slots, transport_id, "transport")]
        t.rx = <void *><uintptr_t>rx_session
        t.tx = <void *><uintptr_t>tx_session

    def remove_transport(self, transport_id: int) -> None:
        slot = self._transport_slots.pop(transport_id, None)
        if slot is None:
            return
        cdef Transport *t = self.transports[<int>slot]
        cdef int i
        while t.receivers.count:
            self.remove_receiver(self.receivers[t.receivers.items[0]].id)
        for i in range(self.downtrack_end):
            if self.downtracks[i] != NULL and self.downtracks[i].transport == slot:
                self.remove_downtrack(self.downtracks[i].id)
        if t.bound and map_get(&self.by_address, t.addr_key) == slot:
            map_remove(&self.by_address, t.addr_key)
        free(t.receivers.items)
        free(t)
        self.transports[<int>slot] = NULL

    def add_receiver(self, transport_id: int, mid: str, kind: str, codec: str, payload_type: int,
                     rtx_payload_type: int, clock_rate: int, rids: list, ssrcs: list, rtx_ssrcs: list,
                     extmap: dict) -> int:
        cdef int tslot = self._slot(self._transport_slots, transport_id, "transport")
        cdef int slot, l
        cdef Receiver *r
        if kind not in ("audio", "video"):
            raise ValueError(f"kind must be audio or video, not {kind!r}")
        if len(rids) > MAX_LAYERS or len(ssrcs) > MAX_LAYERS or len(rtx_ssrcs) > MAX_LAYERS:
            raise ValueError(f"at most {MAX_LAYERS} layers")
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        num_layers = max(1, len(rids), len(ssrcs))
        if len(rtx_ssrcs) > num_layers:
            # An RTX SSRC needs the media layer (and its packet cache) it repairs.
            raise ValueError("more rtx_ssrcs than layers")
        mid_bytes = mid.encode()
        rid_bytes = [rid.encode() for rid in rids]
        if len(mid_bytes) > 64 or any(len(rid) > 16 for rid in rid_bytes):
            raise ValueError("mid or rid too long")
        slot = _free_slot(<void **>self.receivers, MAX_RECEIVERS)
        if slot < 0:
            raise RuntimeError("too many receivers")
        r = receiver_new(kind == "video", num_layers)
        if r == NULL:
            raise MemoryError()
        r.id = self._new_id()
        r.transport = tslot
        r.codec = _CODECS.get(codec.lower().rpartition("/")[2], C_OTHER)
        r.payload_type = payload_type & 0x7F
        r.rtx_payload_type = rtx_payload_type & 0x7F if rtx_payload_type > 0 else -1
        r.clock_rate = clock_rate
        memcpy(r.mid, <const char *>mid_bytes, len(mid_bytes))
        r.mid_length = len(mid_bytes)
        r.simulcast = len(rids) > 0
        r.ext_mid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:mid", 0) & 0xFF
        r.ext_rid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", 0) & 0xFF
        r.ext_rrid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", 0) & 0xFF
        if not r.is_video:
            r.ext_audio_level = extmap.get("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 0) & 0xFF
        for l, rid in enumerate(rid_bytes):
            memcpy(r.layers[l].rid, <const char *>rid, len(rid))
            r.layers[l].rid_length = len(rid)
        if list_add(&self.transports[tslot].receivers, slot) < 0:
            receiver_free(r)
            raise MemoryError()
        self.receivers[slot] = r
        self.receiver_end = max(self.receiver_end, slot + 1)
        self._receiver_slots[r.id] = slot
        # Declared SSRCs (non-simulcast offers, or simulcast with a=ssrc-group:SIM) bind without extensions.
        for l, ssrc in enumerate(ssrcs):
            r.layers[l].ssrc = ssrc
            r.layers[l].has_ssrc = True
            map_put(&self.streams, stream_key(tslot, ssrc), (<int64_t>slot << 8) | (l << 1))
        for l, ssrc in enumerate(rtx_ssrcs):
            r.layers[l].rtx_ssrc = ssrc
            r.layers[l].has_rtx = True
            map_put(&self.streams, stream_key(tslot, ssrc), (<int64_t>slot << 8) | (l << 1) | 1)
        return r.id

    def remove_receiver(self, receiver_id: int) -> None:
        slot = self._receiver_slots.pop(receiver_id, None)
        if slot is None:
            return
        cdef Receiver *r = self.receivers[<int>slot]
        cdef int l
        cdef Layer *layer
        while r.downtracks.count:
            self.remove_downtrack(self.downtracks[r.downtracks.items[0]].id)
        for l in range(MAX_LAYERS):  # unused layers have no SSRCs, so every stream this receiver mapped is covered
            layer = &r.layers[l]
            if layer.has_ssrc and map_get(&self.streams, stream_key(r.transport, layer.ssrc)) >> 8 == slot:
                map_remove(&self.streams, stream_key(r.transport, layer.ssrc))
            if layer.has_rtx and map_get(&self.streams, stream_key(r.transport, layer.rtx_ssrc)) >> 8 == slot:
                map_remove(&self.streams, stream_key(r.transport, layer.rtx_ssrc))
        list_discard(&self.transports[r.transport].receivers, slot)
        receiver_free(r)
        self.receivers[<int>slot] = NULL

    def add_downtrack(self, receiver_id: int, transport_id: int, ssrc: int, rtx_ssrc: int, payload_type: int,
                      rtx_payload_type: int, extmap: dict) -> int:
        cdef int rslot = self._slot(self._receiver_slots, receiver_id, "receiver")
        cdef int tslot = self._slot(self._transport_slots, transport_id, "transport")
        cdef int slot = _free_slot(<void **>self.downtracks, MAX_DOWNTRACKS)
        cdef DownTrack *d
        if slot < 0:
            raise RuntimeError("too many downtracks")
        d = downtrack_new()
        if d == NULL:
            raise MemoryError()
        if list_add(&self.receivers[rslot].downtracks, slot) < 0:
            downtrack_free(d)
            raise MemoryError()
        d.id = self._new_id()
        d.receiver = rslot
        d.transport = tslot
        d.ssrc = ssrc
        d.rtx_ssrc = rtx_ssrc
        d.payload_type = payload_type & 0x7F
        d.rtx_payload_type = rtx_payload_type & 0x7F
        for source, target in extmap.items():
            # Output uses the one-byte form (ids 1-14); anything else is stripped rather than written corrupt.
            if 0 < source < 256 and 0 < target < 15:
                d.ext_map[source] = target
        d.max_layer = MAX_LAYERS - 1
        d.rtx_seq = int.from_bytes(os.urandom(2), "big")
        self.downtracks[slot] = d
        self.downtrack_end = max(self.downtrack_end, slot + 1)
        self._downtrack_slots[d.id] = slot
        map_put(&self.downtrack_ssrcs, stream_key(tslot, ssrc), slot)
        if rtx_ssrc:
            map_put(&self.downtrack_ssrcs, stream_key(tslot, rtx_ssrc), slot)
        return d.id

    def remove_downtrack(self, downtrack_id: int) -> None:
        slot = self._downtrack_slots.pop(downtrack_id, None)
        if slot is None:
            return
        cdef DownTrack *d = self.downtracks[<int>slot]
        if map_get(&self.downtrack_ssrcs, stream_key(d.transport, d.ssrc)) == slot:
            map_remove(&self.downtrack_ssrcs, stream_key(d.transport, d.ssrc))
        if d.rtx_ssrc and map_get(&self.downtrack_ssrcs, stream_key(d.transport, d.rtx_ssrc)) == slot:
            map_remove(&self.downtrack_ssrcs, stream_key(d.transport, d.rtx_ssrc))
        list_discard(&self.receivers[d.receiver].downtracks, slot)
        downtrack_free(d)
        self.downtracks[<int>slot] = NULL

    def set_target_layer(self, downtrack_id: int, layer: int) -> None:
        """Caps the layer the Forwarder aims at (StreamAllocator hook); it still switches only at keyframes."""
        cdef DownTrack *d = self.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        d.max_layer = max(0, min(layer, MAX_LAYERS - 1))

    def set_paused(self, downtrack_id: int, paused: bool) -> None:
        """Stops or resumes forwarding to a DownTrack. Video resumes at a keyframe, which is requested at once;
        the output numbering continues from the last packet sent."""
        cdef DownTrack *d = self.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        cdef Receiver *r = self.receivers[d.receiver]
        cdef int top
        if paused == d.paused:
            return
        d.paused = paused
        if not paused:
            downtrack_lose_layer(d)
            top = self.target_layer(d, r)
            if r.is_video and top >= 0:
                d.keyframe_requests += 1
                self.request_layer_keyframe(r, top, monotonic_us())
                self.flush()

    def set_cname(self, cname: str) -> None:
        """The CNAME in our SDES chunks (RFC 3550 wants one per endpoint)."""
        data = cname.encode()[:31]
        memcpy(self.cname, <const char *>data, len(data))
        self.cname_length = len(data)

    def set_remb_bitrate(self, bitrate: int) -> None:
        """The bitrate announced to publishers in REMB (bits per second)."""
        self.remb_bitrate = max(0, bitrate)

    def request_keyframe(self, receiver_id: int) -> None:
        cdef Receiver *r = self.receivers[self._slot(self._receiver_slots, receiver_id, "receiver")]
        cdef int l
        cdef int64_t now = monotonic_us()
        if r.is_video:
            for l in range(r.num_layers):
                self.request_layer_keyframe(r, l, now)
            self.flush()

    def fileno(self) -> int:
        """The UDP socket's descriptor (-1 once closed)."""
        return self._fd

    @property
    def gso(self) -> bool:
        """Whether datagram runs still go out as UDP GSO sends."""
        return self.use_gso

    def stats(self) -> dict:
        return {name: self.counters[i] for i, name in enumerate(STAT_NAMES)}

    def audio_levels(self, interval: float) -> dict[int, float]:
        """Mean linear audio level (0..1, 1 = 0 dBov) of every receiver that has the audio-level extension,
        over the `interval` seconds since the last call (20 ms packets expected; DTX gaps count as silence)."""
        cdef Receiver *r
        cdef int slot
        levels = {}
        for receiver_id, slot in self._receiver_slots.items():
            r = self.receivers[slot]
            if r.ext_audio_level:
                levels[receiver_id] = receiver_take_audio_level(r, interval * 50)
        return levels

    def receiver_stats(self, receiver_id: int) -> dict:
        cdef Receiver *r = self.receivers[self._slot(self._receiver_slots, receiver_id, "receiver")]
        cdef Layer *layer
        cdef int l
        layers = []
        for l in range(r.num_layers):
            layer = &r.layers[l]
            layers.append({
                "rid": (<char *>layer.rid)[:layer.rid_length].decode(errors="replace"),
                "ssrc": layer.ssrc if layer.has_ssrc else None,
                "rtx_ssrc": layer.rtx_ssrc if layer.has_rtx else None,
                "packets": layer.received,
                "bytes": layer.bytes,
                "highest_sequence": layer.cycles + layer.max_seq if layer.active else None,
                "lost": max(0, <int64_t>layer.cycles + layer.max_seq - layer.base_seq + 1 - <int64_t>layer.received)
                        if layer.active else 0,
                "jitter": layer.jitter_q4 >> 4,
                "keyframes": layer.keyframes,
                "nacks_sent": layer.nacks_sent,
                "plis_sent": layer.plis_sent,
                "missing": layer.missing_count,
            })
        return {
            "top_layer": r.top_layer,
            "downtracks": r.downtracks.count,
            "layers": layers,
        }

    def downtrack_stats(self, downtrack_id: int) -> dict:
        cdef DownTrack *d = self.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        return {
            "current_layer": d.current_layer,
            "paused": bool(d.paused),
            "target_layer": self.target_layer(d, self.receivers[d.receiver]),
            "packets": d.packets,
            "octets": d.octets,
            "dropped": d.dropped,
            "layer_switches": d.layer_switches,
            "nacks_received": d.nacks_received,
            "retransmissions": d.retransmissions,
            "plis_received": d.plis_received,
            "keyframe_requests": d.keyframe_requests,
        }


cdef int _free_slot(void **table, int capacity):
    cdef int i
    for i in range(capacity):
        if table[i] == NULL:
            return i
    return -1


cdef object _address(sockaddr_in *a):
    return socket.inet_ntoa(int(a.sin_addr.s_addr).to_bytes(4, "little")), socket.ntohs(a.sin_port)

