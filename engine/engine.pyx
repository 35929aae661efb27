"""Engine: the packet engine's Python face: socket setup, event-loop glue, the control API (ids -> slots), stats.

The packets themselves never reach Python (DESIGN.md, "The hot path"). Per readable event, batches of datagrams are
read (udpmux.pyx; ICE-TCP connections' RFC 4571 frames, from tcpmux.pyx, go the same way), demultiplexed,
unprotected and bound to their streams (demux.pyx), turned into ExtPackets (packet.pxd, codecs/) and forwarded
DownTrack by DownTrack (fanout.pyx: forwarder.pyx, munger.pyx, downtrack.pyx) into the send batch, which leaves with
sendmmsg and UDP GSO (or into a TCP connection's bounded queue). A TURN client's relayed packets (turnmux.pyx) are
unwrapped into the same batches as packets of its allocation's path, and what goes to that path is wrapped back.
RTCP feedback and reports are feedback.pyx and reports.pyx, transport-cc both ways is transportcc.pyx; a timer drives
their periodic parts. All of them share one EngineState (state.pxd), which this class owns. Only STUN, DTLS, layer
and bandwidth events come up to Python, and
only what C let through: STUN Binding requests whose USERNAME names a live transport's ufrag (stun.pyx; aioice then
checks MESSAGE-INTEGRITY), success responses to our own consent checks (expect_stun_response), DTLS from a
transport's bound address, each within per-transport, fair-share and per-window rates (state.pxd); a subscriber
transport's estimate changes, at most one per RTCP datagram; STUN requests from TURN clients (EV_TURN, within
TURN_REQUESTS_PER_SECOND), for signaling/peer/turn.py. Engine methods must be called from the event loop's thread.
"""
import ctypes
import logging
import os
import socket
import struct

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from engine.codecs.describe cimport codec_id
from engine.codecs.vp9 cimport VP9_MAX_SPATIAL
from engine cimport srtp
from engine.demux cimport (demux_bind_path, demux_check_key, demux_find_transport, demux_forget_ssrcs,
                           demux_release_ssrc, demux_batch, demux_unbind_path)
from engine.downtrack cimport MAX_TEMPORAL, DownTrack, downtrack_free, downtrack_map_extension, downtrack_new
from engine.feedback cimport feedback_request_keyframe, feedback_tick
from engine.forwarder cimport forwarder_set_cap, forwarder_set_paused, forwarder_target
from engine.path cimport PATH_TCP, PATH_TURN, Path, path_address, path_set
from engine.receiver cimport (MAX_LAYERS, Layer, Receiver, receiver_free, receiver_new, receiver_take_audio_level,
                              receiver_update_top)
from engine.reports cimport reports_tick
from engine.bwe cimport (Bwe, bwe_congested, bwe_estimate_bps, bwe_loss_fraction, bwe_probe_result_bps,
                        bwe_probe_status, bwe_state)
from engine.prober cimport prober_forget, prober_pump, prober_start
from engine.transportcc cimport (transportcc_enable_receive, transportcc_enable_send, transportcc_free,
                                 transportcc_tick)
from engine.state cimport (BATCH, E_BANDWIDTH, E_DTLS, E_STUN, E_TURN, MAX_CONSENT_CHECKS, MAX_DOWNTRACKS,
                           MAX_RECEIVERS, MAX_TRANSPORTS, MAX_WORKERS, RECV_BUF, S_COUNT, S_DROP_SEND_FAILED,
                           S_DROP_SUBSCRIBER_NOT_READY, S_DROP_TCP_CLOSED, S_DROP_TURN_GONE, S_EVENT_ERRORS,
                           S_SRTP_STREAMS_REMOVED, SEND_BUF, SEND_SLOTS, EngineState, Event, Transport, Worker,
                           monotonic_us, stream_key)
from engine.stun cimport MAX_UFRAG, ufrag_key
from engine.table cimport list_add, list_discard, map_free, map_get, map_init, map_put, map_remove
from engine.tcpmux cimport (tcpmux_adopt, tcpmux_claim, tcpmux_close, tcpmux_flush, tcpmux_forget_transport,
                            tcpmux_handle, tcpmux_open, tcpmux_path, tcpmux_queue, tcpmux_queue_raw, tcpmux_queued,
                            tcpmux_read, tcpmux_reject, tcpmux_release, tcpmux_sweep)
from engine.turnmux cimport (turnmux_allocate, turnmux_classify, turnmux_client, turnmux_close, turnmux_handle,
                             turnmux_is_handle, turnmux_open, turnmux_path, turnmux_queue, turnmux_read,
                             turnmux_release, turnmux_resume, turnmux_set_peer)
from engine.udpmux cimport SOL_UDP_LEVEL, UDP_SEGMENT_OPTION, udpmux_flush, udpmux_init, udpmux_read
from engine.workers cimport (workers_call, workers_fanout, workers_free, workers_least_loaded, workers_reown,
                             workers_start, workers_stop, workers_update_receiver)
from engine.memory cimport aligned_calloc

log = logging.getLogger(__name__)

EV_STUN = "stun"
EV_DTLS = "dtls"
EV_RECEIVER_LAYER = "receiver_layer"
EV_BANDWIDTH = "bandwidth"
EV_TURN = "turn"
BWE_STATES = ("normal", "overusing", "underusing")  # bwe.pxd BWE_* by value
PROBE_STATUSES = ("unknown", "pending", "succeeded", "failed")  # bwe.pxd PROBE_* by value
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_DEPENDENCY_DESCRIPTOR = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"

cdef enum:
    MAX_BATCHES = 16          # recvmmsg batches per readable callback, so timers still run under load

SOCKET_BUFFER = 8 * 1024 * 1024
TCP_BACKLOG = 128  # connections the kernel holds before accept(): the engine accepts on every readiness
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux values
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_REUSEPORT_CBPF = 51  # Linux >= 4.5
# A classic BPF program for SO_ATTACH_REUSEPORT_CBPF: one instruction, BPF_RET | BPF_K 0 (the group's socket 0).
_STEER_PROGRAM = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
_STEER_TO_FIRST = struct.pack("HxxxxxxP", 1, ctypes.addressof(_STEER_PROGRAM))  # struct sock_fprog

# Timing, in microseconds of CLOCK_MONOTONIC.
cdef int64_t LAYER_STALE_US = 1000000       # a layer without packets for this long is not available
cdef double TICK_SECONDS = 0.02
cdef uint64_t DEFAULT_REMB_BPS = 5000000

# Names of the S_* counters (state.pxd), in their order.
STAT_NAMES = (
    "packets_in", "bytes_in", "packets_out", "bytes_out", "rtp_in", "rtcp_in", "stun_in", "dtls_in", "forwarded",
    "paused_skipped",
    "drop_empty", "drop_truncated", "drop_not_rtp", "drop_unknown_source", "drop_dtls_unbound", "drop_no_srtp",
    "drop_srtp_unprotect_failed", "drop_malformed", "drop_unknown_ssrc", "drop_unadmitted_ssrc", "drop_duplicate",
    "drop_payload_type",
    "drop_rtx_padding",
    "drop_too_large", "drop_srtp_protect_failed", "drop_subscriber_not_ready", "drop_send_failed", "gso_sends",
    "gso_segments",
    "nacks_received", "nacked_packets", "nack_cache_misses", "nack_stale_layer", "retransmissions", "nack_rate_limited", "rtx_recovered", "nacks_sent",
    "plis_received", "plis_sent", "keyframes", "layer_switches", "sr_received", "rr_received", "sr_sent", "rr_sent",
    "remb_sent", "event_errors",
    "drop_stun_malformed", "drop_stun_not_request", "drop_stun_no_username", "drop_stun_unknown_ufrag",
    "drop_stun_rate_limited", "drop_dtls_rate_limited", "drop_event_budget", "drop_srtp_stream_limit",
    "srtp_streams_removed", "drop_rtx_budget", "retransmitted_bytes", "stun_responses",
    "drop_stun_unexpected_response", "drop_ssrc_rebind_rate", "twcc_feedback_sent", "twcc_late",
    "twcc_feedback_received", "twcc_unmatched", "remb_received", "bandwidth_events",
    "probe_clusters", "probe_packets",
    "drop_temporal_layer", "temporal_padding",
    "tcp_accepted", "tcp_claimed", "tcp_closed", "tcp_closed_invalid", "tcp_closed_unauthenticated",
    "tcp_closed_half_open", "tcp_closed_pending_limit", "tcp_closed_limit", "tcp_closed_idle", "tcp_closed_slow_reader",
    "tcp_accept_failed", "drop_tcp_oversized", "drop_tcp_queue_full", "drop_tcp_closed",
    "turn_connections", "turn_requests", "turn_relayed_in", "turn_relayed_out", "drop_turn_malformed",
    "drop_turn_no_allocation", "drop_turn_no_permission", "drop_turn_rate_limited", "drop_turn_gone",
    "drop_turn_send_failed", "drop_layer_cut", "red_received", "red_recovered", "turn_held", "dd_packets", "dd_invalid",
)
assert len(STAT_NAMES) == S_COUNT
# The drops a forwarding share counts (fanout.pyx, udpmux.pyx), reported per worker.
WORKER_DROPS = ("drop_subscriber_not_ready", "drop_too_large", "drop_srtp_protect_failed", "drop_send_failed",
                "drop_layer_cut", "drop_temporal_layer")


cdef void run_timers(EngineState *s, int64_t now) noexcept nogil:
    """Every tick: layer availability, then feedback (NACKs to publishers, keyframe requests for DownTracks waiting
    for a layer, transport-cc feedback held too long) and, every report interval, reports (SR to subscribers, RR + SDES + REMB to publishers)."""
    cdef int i
    for i in range(s.receiver_end):
        if s.receivers[i] != NULL:
            receiver_update_top(s.receivers[i], now, LAYER_STALE_US)
    feedback_tick(s, now)
    transportcc_tick(s, now)
    prober_pump(s, now)
    reports_tick(s, now)
    tcpmux_sweep(s, now)


cdef void forward_batch(EngineState *s, int n, int64_t now) noexcept nogil:
    """What every receive path does with a batch of n packets: demultiplex, forward, and pace the probes between
    ticks too (a cluster's packets leave evenly)."""
    demux_batch(s, n, now)
    workers_fanout(s, now)
    if s.probing.count:
        prober_pump(s, now)


cdef class Engine:
    """The data plane: see the module docstring. Events are tuples passed to `on_event` (EV_* constants); an
    EV_STUN's source is (host, port) for UDP, (host, port, connection) for an ICE-TCP connection, (relayed host,
    relayed port, allocation) for a TURN allocation, and the methods that take an address take it in the same form.
    An EV_TURN is (EV_TURN, request, host, port[, connection]): from the TURN socket, or a TURN stream."""

    cdef EngineState *s
    cdef object _sock
    cdef list _worker_socks                 # workers 1.. send from these (SO_REUSEPORT, the same port)
    cdef object _tcp_sock
    cdef object _on_event
    cdef object _loop
    cdef object _tick_handle
    cdef readonly int port
    cdef readonly int tcp_port              # 0: no ICE-TCP
    cdef readonly int turn_port             # 0: no TURN/UDP socket
    cdef object _turn_sock
    cdef int64_t _next_id
    cdef dict _transport_slots
    cdef dict _receiver_slots
    cdef dict _downtrack_slots

    def __cinit__(self):
        cdef EngineState *s = <EngineState *>calloc(1, sizeof(EngineState))
        self.s = s
        if s == NULL:
            raise MemoryError()
        s.fd = -1
        s.tcp.listen_fd = -1
        s.tcp.epoll_fd = -1
        s.turn.fd = -1
        s.transports = <Transport **>calloc(MAX_TRANSPORTS, sizeof(Transport *))
        s.receivers = <Receiver **>calloc(MAX_RECEIVERS, sizeof(Receiver *))
        s.downtracks = <DownTrack **>calloc(MAX_DOWNTRACKS, sizeof(DownTrack *))
        s.owners = <uint8_t *>calloc(MAX_DOWNTRACKS, sizeof(uint8_t))
        s.recv.bufs = <uint8_t *>malloc(BATCH * RECV_BUF)
        s.send.bufs = <uint8_t *>malloc(SEND_SLOTS * SEND_BUF)
        if (s.transports == NULL or s.receivers == NULL or s.downtracks == NULL or s.owners == NULL
                or s.recv.bufs == NULL
                or s.send.bufs == NULL or map_init(&s.by_address, 64) < 0 or map_init(&s.streams, 256) < 0
                or map_init(&s.downtrack_ssrcs, 256) < 0 or map_init(&s.by_ufrag, 64) < 0
                or map_init(&s.srtp_ssrcs, 256) < 0 or map_init(&s.checks, 64) < 0):
            raise MemoryError()
        udpmux_init(s)
        s.path_seed = int.from_bytes(os.urandom(8), "little")
        s.ufrag_seed = int.from_bytes(os.urandom(8), "little")

    def __init__(self, host: str, udp_port: int, on_event, tcp_port: int | None = None,
                 turn: bool = False, turn_port: int | None = None, workers: int = 1) -> None:
        """Media on UDP `udp_port` of `host`, ICE-TCP on TCP `tcp_port` of the same address when given (0: a
        port the kernel picks), and, with `turn`, TURN's data path: its UDP socket on `turn_port` when given (0: a
        port the kernel picks), its streams through turn_adopt. An IPv6 host gets dual-stack sockets (IPv4 peers
        appear as IPv4-mapped addresses); IPv4 hosts IPv4 ones. `workers` threads forward (workers.pxd), each
        sending from its own socket on the same port. OSError (EADDRINUSE) when the port is taken, by another
        process of ours too."""
        ipv6 = ":" in host
        if not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1..{MAX_WORKERS}")
        sockets = []
        try:
            if workers > 1:
                # SO_REUSEPORT lets a second process bind the port silently. A socket without it cannot bind a port
                # any socket holds: bound first, it makes a taken port the clear error it is without workers.
                probe = media_socket(host, udp_port, ipv6, False)
                udp_port = probe.getsockname()[1]
                probe.close()
            sockets.append(media_socket(host, udp_port, ipv6, workers > 1))
            if workers > 1:
                # Every datagram to the port goes to the first socket of the group (the loop thread's): the workers'
                # sockets only send.
                sockets[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, _STEER_TO_FIRST)
                for _ in range(1, workers):
                    sockets.append(media_socket(host, udp_port, ipv6, True))
            try:
                sockets[0].getsockopt(SOL_UDP_LEVEL, UDP_SEGMENT_OPTION)  # fails before Linux 4.18: no UDP GSO
                self.s.send.use_gso = True
            except OSError:
                self.s.send.use_gso = False
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._sock = sockets[0]
        self._worker_socks = sockets[1:]
        self.s.fd = self.s.send.fd = self._sock.fileno()
        self.s.ipv6 = ipv6
        self.port = self._sock.getsockname()[1]
        self._start_workers(workers)
        if tcp_port is not None:
            self._listen_tcp(host, tcp_port, ipv6)
        if turn:
            self._enable_turn(host, turn_port, ipv6)
        self._on_event = on_event
        self._next_id = 1
        self._transport_slots = {}
        self._receiver_slots = {}
        self._downtrack_slots = {}
        self.s.remb_bitrate = DEFAULT_REMB_BPS
        self.set_cname("tern")

    def _start_workers(self, int count) -> None:
        cdef int fds[MAX_WORKERS]
        cdef int i
        for i in range(1, count):
            fds[i] = self._worker_socks[i - 1].fileno()
        if workers_start(self.s, count, fds) < 0:
            self.close()
            raise MemoryError("cannot start the forwarding workers")

    def _listen_tcp(self, host: str, tcp_port: int, ipv6: bool) -> None:
        sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait out TIME_WAIT
            sock.setblocking(False)
            sock.bind((host, tcp_port))
            sock.listen(TCP_BACKLOG)
            if tcpmux_open(self.s, sock.fileno()) < 0:
                raise OSError("no epoll for the ICE-TCP connections")
        except BaseException:
            sock.close()
            raise
        self._tcp_sock = sock
        self.tcp_port = sock.getsockname()[1]

    def _enable_turn(self, host: str, turn_port: int | None, ipv6: bool) -> None:
        sock = None
        try:
            if turn_port is not None:
                sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
                if ipv6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
                sock.setblocking(False)
                sock.bind((host, turn_port))
            if turnmux_open(self.s, sock.fileno() if sock is not None else -1) < 0:
                raise MemoryError()
            if self.s.tcp.epoll_fd < 0 and tcpmux_open(self.s, -1) < 0:  # TURN streams without ICE-TCP
                raise OSError("no epoll for the TURN streams")
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if sock is not None:
            self._turn_sock = sock
            self.turn_port = sock.getsockname()[1]

    def __dealloc__(self):
        cdef EngineState *s = self.s
        cdef int i
        if s == NULL:
            return
        workers_free(s)
        tcpmux_close(s)
        turnmux_close(s)  # before the transports: it gives back their connection counts
        if s.downtracks != NULL:
            for i in range(s.downtrack_end):
                if s.downtracks[i] != NULL:
                    downtrack_free(s.downtracks[i])
        if s.receivers != NULL:
            for i in range(s.receiver_end):
                if s.receivers[i] != NULL:
                    receiver_free(s.receivers[i])
        if s.transports != NULL:
            for i in range(s.transport_end):
                if s.transports[i] != NULL:
                    free(s.transports[i].receivers.items)
                    free(s.transports[i].srtp_ssrc_list)
                    transportcc_free(s, i)
                    _drop_tx(s.transports[i])
                    free(s.transports[i])
        free(s.twcc_receivers.items)
        free(s.probing.items)
        free(s.transports)
        free(s.receivers)
        free(s.downtracks)
        free(s.owners)
        free(s.recv.bufs)
        free(s.send.bufs)
        map_free(&s.by_address)
        map_free(&s.streams)
        map_free(&s.downtrack_ssrcs)
        map_free(&s.by_ufrag)
        map_free(&s.srtp_ssrcs)
        map_free(&s.checks)
        free(s)
        self.s = NULL

    # ------------------------------------------------------------------ event loop glue

    def attach(self, loop) -> None:
        self._loop = loop
        loop.add_reader(self.s.fd, self._on_readable)
        if self.s.tcp.epoll_fd >= 0:
            loop.add_reader(self.s.tcp.epoll_fd, self._on_tcp_readable)
        if self.s.turn.fd >= 0:
            loop.add_reader(self.s.turn.fd, self._on_turn_readable)
        self._tick_handle = loop.call_later(TICK_SECONDS, self._tick)

    def close(self) -> None:
        if self._loop is not None:
            if self.s.fd >= 0:
                self._loop.remove_reader(self.s.fd)
            if self.s.tcp.epoll_fd >= 0:
                self._loop.remove_reader(self.s.tcp.epoll_fd)
            if self.s.turn.fd >= 0:
                self._loop.remove_reader(self.s.turn.fd)
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            self._loop = None
            self._tick_handle = None
        workers_stop(self.s)  # no batch runs: this is the loop thread
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for sock in self._worker_socks or ():
            sock.close()
        self._worker_socks = []
        self.s.fd = self.s.send.fd = -1
        tcpmux_close(self.s)
        turnmux_close(self.s)
        if self._tcp_sock is not None:
            self._tcp_sock.close()
            self._tcp_sock = None
        if self._turn_sock is not None:
            self._turn_sock.close()
            self._turn_sock = None

    def _on_readable(self) -> None:
        cdef EngineState *s = self.s
        cdef int n = 0
        cdef int batches = 0
        cdef int64_t now
        if s.fd < 0:
            return
        while batches < MAX_BATCHES:
            batches += 1
            with nogil:
                n = udpmux_read(s)
                if n > 0:
                    now = monotonic_us()
                    s.event_count = 0
                    forward_batch(s, n, now)
                    udpmux_flush(s)
            if n <= 0:
                break
            if s.event_count:
                self._dispatch_events()
            if n < BATCH:
                break

    def _on_tcp_readable(self) -> None:
        """The epoll set of the ICE-TCP listener and connections is readable: as _on_readable, with frames."""
        cdef EngineState *s = self.s
        cdef int n = 0
        cdef int batches = 0
        cdef int64_t now
        if s.tcp.epoll_fd < 0:
            return
        while batches < MAX_BATCHES:
            batches += 1
            with nogil:
                now = monotonic_us()
                s.event_count = 0
                n = tcpmux_read(s, now)
                if n > 0:
                    if s.turn.allocs != NULL:
                        turnmux_classify(s, 0, n, now)
                    forward_batch(s, n, now)
                udpmux_flush(s)  # writes what accepting and reading queued too (tcpmux_flush)
            if s.event_count:
                self._dispatch_events()
            if s.tcp.held.count:
                tcpmux_release(s)  # Python has answered their requests: the frames behind them may go on
            if n < BATCH:
                break
        if s.tcp.ready.count and self._loop is not None:
            # Whole frames are still buffered; epoll will not say so again: come back after other callbacks.
            self._loop.call_soon(self._on_tcp_readable)

    def _on_turn_readable(self) -> None:
        """The TURN UDP socket is readable: as _on_readable, with ChannelData and Send indications unwrapped."""
        cdef EngineState *s = self.s
        cdef int n = 0
        cdef int batches = 0
        cdef int64_t now
        if s.turn.fd < 0:
            return
        while batches < MAX_BATCHES:
            batches += 1
            with nogil:
                now = monotonic_us()
                s.event_count = 0
                n = turnmux_read(s, now)
                if n > 0:
                    forward_batch(s, n, now)
                    udpmux_flush(s)
            if n <= 0:
                break
            if s.event_count:
                self._dispatch_events()
            while s.turn.held:  # Python has answered the request: the datagrams behind it go on (in this batch)
                with nogil:
                    now = monotonic_us()
                    s.event_count = 0
                    n = turnmux_resume(s, now)
                    forward_batch(s, n, now)
                    udpmux_flush(s)
                if s.event_count:
                    self._dispatch_events()
            if n < BATCH:
                break

    def _tick(self) -> None:
        if self._loop is None:
            return
        try:
            with nogil:
                run_timers(self.s, monotonic_us())
                udpmux_flush(self.s)
        finally:
            self._tick_handle = self._loop.call_later(TICK_SECONDS, self._tick)

    cdef _dispatch_events(self):
        cdef int i
        cdef Event *e
        for i in range(self.s.event_count):
            e = &self.s.events[i]
            if e.kind == E_STUN:
                event = (EV_STUN, e.a, PyBytes_FromStringAndSize(<const char *>e.data, e.length),
                         *_address(e.path))
            elif e.kind == E_DTLS:
                event = (EV_DTLS, e.a, PyBytes_FromStringAndSize(<const char *>e.data, e.length))
            elif e.kind == E_BANDWIDTH:
                event = (EV_BANDWIDTH, e.a, e.b, bool(e.c))
            elif e.kind == E_TURN:
                event = (EV_TURN, PyBytes_FromStringAndSize(<const char *>e.data, e.length), *_address(e.path))
            else:
                event = (EV_RECEIVER_LAYER, e.a, e.b, e.c)
            try:
                self._on_event(event)
            except Exception:
                self.s.counters[<int>S_EVENT_ERRORS] += 1
                log.exception("engine event handler failed on %s", event[0])
        self.s.event_count = 0

    # ------------------------------------------------------------------ control API (Python)

    cdef int _slot(self, dict slots, object object_id, str what) except -1:
        try:
            return slots[object_id]
        except KeyError:
            raise KeyError(f"unknown {what} {object_id}") from None

    cdef int64_t _new_id(self):
        self._next_id += 1
        return self._next_id - 1

    cdef int _path(self, Path *path, str host, int port, uint64_t connection) except -1:
        """The path (host, port[, connection]) names, as events give them: 0, or 1 for a connection (or TURN
        allocation) that is gone."""
        if turnmux_is_handle(connection):
            return 1 if turnmux_path(self.s, connection, path) < 0 else 0
        if connection:
            return 1 if tcpmux_path(self.s, connection, path) < 0 else 0
        path_set(path, host, port, self.s.ipv6)
        return 0

    def send_to(self, data: bytes, host: str, port: int, connection: int = 0) -> None:
        """A raw packet (STUN) to an address (an IPv4 or IPv6 `host`), or, with `connection` (from an event's
        address), framed into that ICE-TCP connection."""
        cdef Path path
        if connection:
            if self._path(&path, host, port, connection):
                self.s.counters[<int>(S_DROP_TURN_GONE if turnmux_is_handle(connection) else S_DROP_TCP_CLOSED)] += 1
                return
            self._send_path(&path, data)
            return
        if self.s.ipv6 and ":" not in host:
            host = "::ffff:" + host  # how a dual-stack socket names an IPv4 peer
        try:
            self._sock.sendto(data, (host, port))
        except OSError as e:
            self.s.counters[<int>S_DROP_SEND_FAILED] += 1
            log.debug("send_to %s:%s failed: %s", host, port, e)

    def add_transport(self, ice_ufrag: str | None = None) -> int:
        """A transport; STUN Binding requests reach Python (as EV_STUN with its id) only when their USERNAME starts
        with `ice_ufrag` (a transport without one gets none). ValueError for an unusable or colliding ufrag."""
        cdef int slot = _free_slot(<void **>self.s.transports, MAX_TRANSPORTS)
        cdef Transport *t
        cdef bytes ufrag = ice_ufrag.encode() if ice_ufrag else b""
        cdef uint64_t key = ufrag_key(ufrag, len(ufrag), self.s.ufrag_seed)
        if len(ufrag) > MAX_UFRAG or b":" in ufrag:
            raise ValueError(f"unusable ufrag {ice_ufrag!r}")
        if ufrag and map_get(&self.s.by_ufrag, key) >= 0:
            raise ValueError("ufrag in use")  # the same ufrag, or (2^-64) its key: the caller draws another
        if slot < 0:
            raise RuntimeError("too many transports")
        t = <Transport *>aligned_calloc(sizeof(Transport))  # a worker writes it per packet: its own cache lines
        if t == NULL:
            raise MemoryError()
        if ufrag and map_put(&self.s.by_ufrag, key, slot) < 0:
            free(t)
            raise MemoryError()
        t.id = self._new_id()
        t.worker = workers_least_loaded(self.s)
        self.s.workers[t.worker].transports += 1
        t.local_ssrc = int.from_bytes(os.urandom(4), "big")
        memcpy(t.ufrag, <const char *>ufrag, len(ufrag))
        t.ufrag_length = len(ufrag)
        t.ufrag_key = key
        self.s.transports[slot] = t
        self.s.transport_end = max(self.s.transport_end, slot + 1)
        self._transport_slots[t.id] = slot
        return t.id

    def add_plain_transport(self, host: str, port: int) -> int:
        """A transport that sends its DownTracks' RTP (and our SR) unencrypted to `host`:`port`, without ICE or DTLS:
        an in-process consumer's socket on this machine (an egress), as mediasoup's PlainTransport. Nothing it sends
        is accepted (it has no SRTP receive keys). ValueError for an unusable address or one another transport holds."""
        transport_id = self.add_transport()
        self.s.transports[self._transport_slots[transport_id]].plain = True
        if not self.bind_transport(transport_id, host, port):
            self.remove_transport(transport_id)
            raise ValueError(f"{host}:{port} is bound to another transport")
        return transport_id

    def set_transport_ufrag(self, transport_id: int, ice_ufrag: str) -> None:
        """Replaces the transport's ufrag (an ICE restart): from now on only STUN naming the new one reaches Python.
        ValueError for an unusable or colliding ufrag (the caller draws another)."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef Transport *t = self.s.transports[slot]
        cdef bytes ufrag = ice_ufrag.encode()
        cdef uint64_t key = ufrag_key(ufrag, len(ufrag), self.s.ufrag_seed)
        if not ufrag or len(ufrag) > MAX_UFRAG or b":" in ufrag:
            raise ValueError(f"unusable ufrag {ice_ufrag!r}")
        if map_get(&self.s.by_ufrag, key) >= 0:
            raise ValueError("ufrag in use")
        if map_put(&self.s.by_ufrag, key, slot) < 0:
            raise MemoryError()
        if t.ufrag_length and map_get(&self.s.by_ufrag, t.ufrag_key) == slot:
            map_remove(&self.s.by_ufrag, t.ufrag_key)
        memcpy(t.ufrag, <const char *>ufrag, len(ufrag))
        t.ufrag_length = len(ufrag)
        t.ufrag_key = key

    def bind_transport(self, transport_id: int, host: str, port: int, connection: int = 0) -> bool:
        """Where the transport's packets come from and go to: an IPv4 or IPv6 (on an IPv6 engine) address, or the
        ICE-TCP `connection` it claimed. False when another transport holds that path (it is not taken from it), or
        the connection is gone."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef Path path
        cdef int result
        if self._path(&path, host, port, connection):
            return False
        result = demux_bind_path(self.s, slot, &path)
        if result == -1:
            raise MemoryError()
        workers_reown(self.s, slot)  # an ICE-TCP or TURN path is the loop thread's
        return result == 0

    def transport_at(self, host: str, port: int, connection: int = 0) -> int | None:
        """The id of the transport bound to this address (or ICE-TCP connection), if any."""
        cdef Path path
        if self._path(&path, host, port, connection):
            return None
        slot = demux_find_transport(self.s, &path)
        return self.s.transports[slot].id if slot >= 0 else None

    def expect_stun_response(self, transport_id: int, transaction_id: bytes) -> None:
        """We sent a Binding request (a consent check) with this 12-byte transaction id for the transport: the first
        success response carrying it will surface as EV_STUN (from any address: Python checks that). The transport's
        last MAX_CONSENT_CHECKS are remembered; other responses are dropped in C."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef Transport *t = self.s.transports[slot]
        cdef uint64_t old = t.checks[t.check_next]
        cdef uint64_t key
        if len(transaction_id) != 12:
            raise ValueError("a STUN transaction id has 12 bytes")
        key = demux_check_key(self.s, transaction_id)
        if old and map_get(&self.s.checks, old) == slot:
            map_remove(&self.s.checks, old)
        if map_put(&self.s.checks, key, slot) < 0:
            raise MemoryError()
        t.checks[t.check_next] = key
        t.check_next = (t.check_next + 1) % MAX_CONSENT_CHECKS

    def unbind_transport(self, transport_id: int) -> None:
        """Stops sending to the transport's address and forgets it (its consent expired)."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        demux_unbind_path(self.s, slot)
        workers_reown(self.s, slot)

    def send_transport(self, transport_id: int, data: bytes) -> None:
        """A raw packet to the transport's bound path (DTLS records)."""
        cdef Transport *t = self.s.transports[self._slot(self._transport_slots, transport_id, "transport")]
        if not t.bound:
            self.s.counters[<int>S_DROP_SUBSCRIBER_NOT_READY] += 1
            return
        self._send_path(&t.path, data)

    cdef _send_path(self, const Path *path, bytes data):
        if path.kind == PATH_TCP or path.kind == PATH_TURN:
            if path.kind == PATH_TCP:
                tcpmux_queue(self.s, <const uint8_t *>data, len(data), path)
            else:
                turnmux_queue(self.s, <const uint8_t *>data, len(data), path)
            udpmux_flush(self.s)
        else:
            self.send_to(data, *path_address(path))

    def tcp_claim(self, connection: int, transport_id: int) -> bool:
        """The ICE-TCP `connection`'s Binding request authenticated with the transport's credentials: from now on it
        carries that transport's packets. False when it is gone, another transport's, or one too many for this
        transport (then it is closed and counted)."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef Path path
        if turnmux_is_handle(connection):
            return turnmux_path(self.s, connection, &path) == 0  # the allocation authenticated its client already
        return tcpmux_claim(self.s, connection, slot) == 1

    def tcp_reject(self, connection: int) -> bool:
        """The ICE-TCP `connection`'s Binding request failed authentication: if nothing claimed it yet, it is closed
        and counted (True). A TURN allocation is not closed: its client authenticated with its TURN credentials."""
        if turnmux_is_handle(connection):
            return False
        return tcpmux_reject(self.s, connection)

    def tcp_queued(self, connection: int) -> int | None:
        """Bytes waiting in the ICE-TCP connection's send queue (None when it is gone)."""
        cdef int queued = tcpmux_queued(self.s, connection)
        return None if queued < 0 else queued

    # ------------------------------------------------------------------ TURN (signaling/peer/turn.py drives these)

    def turn_adopt(self, fd: int, host: str, port: int) -> int | None:
        """Takes a connected TCP stream carrying TURN (TURN/TCP, or the engine's end of a socketpair behind Python's
        TLS) whose client is (host, port): the descriptor is the engine's from now on (closed with the connection).
        Its requests surface as EV_TURN with its handle; None when refused (closed and counted)."""
        cdef Path peer
        cdef uint64_t handle
        if self.s.tcp.epoll_fd < 0:
            os.close(fd)
            return None
        try:
            path_set(&peer, host, port, self.s.ipv6)
        except ValueError:
            path_set(&peer, "::" if self.s.ipv6 else "0.0.0.0", 0, self.s.ipv6)  # a socketpair's "address"
        os.set_blocking(fd, False)
        handle = tcpmux_adopt(self.s, fd, &peer, monotonic_us())
        return handle or None

    def turn_send(self, data: bytes, host: str, port: int, connection: int = 0) -> None:
        """A STUN message to a TURN client: a datagram from the TURN socket to (host, port), or onto its stream."""
        cdef Path path
        if connection:
            if tcpmux_path(self.s, connection, &path) < 0:
                self.s.counters[<int>S_DROP_TCP_CLOSED] += 1
                return
            # Unframed: a STUN message says its own length on a TURN stream.
            tcpmux_queue_raw(self.s, <const uint8_t *>data, len(data), NULL, 0, 0, &path)
            tcpmux_flush(self.s)
            return
        if self._turn_sock is None:
            return
        if self.s.ipv6 and ":" not in host:
            host = "::ffff:" + host
        try:
            self._turn_sock.sendto(data, (host, port))
        except OSError:
            self.s.counters[<int>S_DROP_SEND_FAILED] += 1

    def turn_allocate(self, host: str, port: int, connection: int, relayed_host: str, relayed_port: int) -> int | None:
        """An allocation for the client at (host, port) on the TURN socket, or on the TURN stream `connection`,
        relayed as (relayed_host, relayed_port): the handle its packets' events carry, or None when the engine holds
        MAX_TURN_ALLOCATIONS, the client has one, or its stream is gone."""
        cdef Path client, relayed
        cdef uint64_t handle
        if self.s.turn.allocs == NULL:
            return None
        if connection:
            if tcpmux_path(self.s, connection, &client) < 0:
                return None
        else:
            path_set(&client, host, port, self.s.ipv6)
        path_set(&relayed, relayed_host, relayed_port, self.s.ipv6)
        handle = turnmux_allocate(self.s, &client, &relayed)
        return handle or None

    def turn_release(self, handle: int) -> None:
        """Ends an allocation: its packets are dropped from now on (a transport bound to it loses consent)."""
        turnmux_release(self.s, handle)

    def turn_peer(self, handle: int, host: str, port: int, permitted: bool, channel: int = 0) -> bool:
        """The peer address the allocation's client names this engine by (XOR-PEER-ADDRESS), whether a permission
        for it is installed, and the channel bound to it (0: none). False when the allocation is gone."""
        packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return turnmux_set_peer(self.s, handle, 2 if len(packed) == 16 else 1, port, <const uint8_t *>packed,
                                permitted, channel)

    def turn_open(self, handle: int) -> bool:
        """Whether the allocation still has its client: it exists, and its stream (if any) is open."""
        cdef Path client
        if turnmux_client(self.s, handle, &client) < 0:
            return False
        return client.kind != PATH_TCP or tcpmux_queued(self.s, tcpmux_handle(&client)) >= 0

    def set_srtp(self, transport_id: int, rx_session: int, tx_session: int) -> None:
        """The transport's libsrtp sessions (srtp_t addresses), which the caller keeps alive."""
        cdef Transport *t = self.s.transports[self._slot(self._transport_slots, transport_id, "transport")]
        _drop_tx(t)
        t.rx = <void *><uintptr_t>rx_session
        t.tx = <void *><uintptr_t>tx_session

    def set_srtp_policy(self, transport_id: int, rx_session: int, tx_policy: int) -> None:
        """As set_srtp, with the send session made here from `tx_policy` (an srtp_policy_t address, read during this
        call only) on the thread of the worker that forwards to the transport, and freed with the transport or when
        replaced. libsrtp's per-SSRC send streams share their session's cipher contexts, written at every packet: made
        by the loop thread, the contexts of transports of different workers would sit side by side in memory, and
        the cores would pass their cache lines back and forth. RuntimeError when libsrtp refuses the policy."""
        cdef Transport *t = self.s.transports[self._slot(self._transport_slots, transport_id, "transport")]
        cdef SrtpCreate create
        create.session = NULL
        create.policy = <const void *><uintptr_t>tx_policy
        create.result = 0
        with nogil:
            workers_call(self.s, t.worker, _create_session, &create)
        if create.result != 0:
            raise RuntimeError(f"libsrtp refused the send policy (error {create.result})")
        _drop_tx(t)
        t.rx = <void *><uintptr_t>rx_session
        t.tx = create.session
        t.tx_owned = True

    def remove_transport(self, transport_id: int) -> None:
        slot = self._transport_slots.pop(transport_id, None)
        if slot is None:
            return
        cdef Transport *t = self.s.transports[<int>slot]
        cdef int i
        while t.receivers.count:
            self.remove_receiver(self.s.receivers[t.receivers.items[0]].id)
        for i in range(self.s.downtrack_end):
            if self.s.downtracks[i] != NULL and self.s.downtracks[i].transport == slot:
                self.remove_downtrack(self.s.downtracks[i].id)
        demux_unbind_path(self.s, <int>slot)
        demux_forget_ssrcs(self.s, <int>slot)
        tcpmux_forget_transport(self.s, <int>slot)
        if t.ufrag_length and map_get(&self.s.by_ufrag, t.ufrag_key) == slot:
            map_remove(&self.s.by_ufrag, t.ufrag_key)
        for i in range(MAX_CONSENT_CHECKS):
            if t.checks[i] and map_get(&self.s.checks, t.checks[i]) == slot:
                map_remove(&self.s.checks, t.checks[i])
        free(t.receivers.items)
        prober_forget(self.s, <int>slot)
        transportcc_free(self.s, <int>slot)
        self.s.workers[t.worker].transports -= 1
        _drop_tx(t)
        free(t)
        self.s.transports[<int>slot] = NULL

    def add_receiver(self, transport_id: int, mid: str, kind: str, codec: str, payload_type: int,
                     rtx_payload_type: int, clock_rate: int, rids: list, ssrcs: list, rtx_ssrcs: list,
                     extmap: dict, red_payload_type: int = -1) -> int:
        """A published track. `red_payload_type` (audio, 0..127): the publisher sends RED (RFC 2198) carrying
        `payload_type` (Opus) under it; DownTracks without RED of their own get its primary blocks. A single-stream
        video track whose `extmap` has the Dependency Descriptor (AV1 or VP9 SVC) has its frames selected per
        DownTrack by decode target (forwarder.pyx dd_accept)."""
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
        slot = _free_slot(<void **>self.s.receivers, MAX_RECEIVERS)
        if slot < 0:
            raise RuntimeError("too many receivers")
        # The Dependency Descriptor selects layers in a single SVC stream (AV1, VP9); simulcast layers are streams.
        dd_id = extmap.get(EXT_DEPENDENCY_DESCRIPTOR, 0) if kind == "video" and num_layers == 1 else 0
        r = receiver_new(kind == "video", num_layers, 0 < dd_id < 256)
        if r == NULL:
            raise MemoryError()
        r.id = self._new_id()
        r.transport = tslot
        r.codec = codec_id(codec)
        r.payload_type = payload_type & 0x7F
        r.rtx_payload_type = rtx_payload_type & 0x7F if rtx_payload_type > 0 else -1
        if 0 <= red_payload_type < 128 and kind == "audio" and red_payload_type != payload_type:
            r.red_payload_type = red_payload_type
        r.clock_rate = clock_rate
        memcpy(r.mid, <const char *>mid_bytes, len(mid_bytes))
        r.mid_length = len(mid_bytes)
        r.simulcast = len(rids) > 0
        r.ext_mid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:mid", 0) & 0xFF
        r.ext_rid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", 0) & 0xFF
        r.ext_rrid = extmap.get("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", 0) & 0xFF
        if not r.is_video:
            r.ext_audio_level = extmap.get("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 0) & 0xFF
        r.ext_transport_cc = extmap.get(EXT_TRANSPORT_CC, 0) & 0xFF
        r.ext_dd = dd_id if 0 < dd_id < 256 else 0
        if r.ext_transport_cc and transportcc_enable_receive(self.s, tslot) < 0:
            receiver_free(r)
            raise MemoryError()
        for l, rid in enumerate(rid_bytes):
            memcpy(r.layers[l].rid, <const char *>rid, len(rid))
            r.layers[l].rid_length = len(rid)
        if list_add(&self.s.transports[tslot].receivers, slot) < 0:
            receiver_free(r)
            raise MemoryError()
        self.s.receivers[slot] = r
        self.s.receiver_end = max(self.s.receiver_end, slot + 1)
        self._receiver_slots[r.id] = slot
        # Declared SSRCs (non-simulcast offers, or simulcast with a=ssrc-group:SIM) bind without extensions.
        for l, ssrc in enumerate(ssrcs):
            r.layers[l].ssrc = ssrc
            r.layers[l].has_ssrc = True
            map_put(&self.s.streams, stream_key(tslot, ssrc), (<int64_t>slot << 8) | (l << 1))
        for l, ssrc in enumerate(rtx_ssrcs):
            r.layers[l].rtx_ssrc = ssrc
            r.layers[l].has_rtx = True
            map_put(&self.s.streams, stream_key(tslot, ssrc), (<int64_t>slot << 8) | (l << 1) | 1)
        return r.id

    def remove_receiver(self, receiver_id: int) -> None:
        slot = self._receiver_slots.pop(receiver_id, None)
        if slot is None:
            return
        cdef Receiver *r = self.s.receivers[<int>slot]
        cdef int l
        cdef Layer *layer
        while r.downtracks.count:
            self.remove_downtrack(self.s.downtracks[r.downtracks.items[0]].id)
        for l in range(MAX_LAYERS):  # unused layers have no SSRCs, so every stream this receiver mapped is covered
            layer = &r.layers[l]
            if layer.has_ssrc and map_get(&self.s.streams, stream_key(r.transport, layer.ssrc)) >> 8 == slot:
                map_remove(&self.s.streams, stream_key(r.transport, layer.ssrc))
                demux_release_ssrc(self.s, r.transport, layer.ssrc)
            if layer.has_rtx and map_get(&self.s.streams, stream_key(r.transport, layer.rtx_ssrc)) >> 8 == slot:
                map_remove(&self.s.streams, stream_key(r.transport, layer.rtx_ssrc))
                demux_release_ssrc(self.s, r.transport, layer.rtx_ssrc)
        list_discard(&self.s.transports[r.transport].receivers, slot)
        receiver_free(r)
        self.s.receivers[<int>slot] = NULL

    def add_downtrack(self, receiver_id: int, transport_id: int, ssrc: int, rtx_ssrc: int, payload_type: int,
                      rtx_payload_type: int, extmap: dict, transport_cc_id: int = 0,
                      abs_send_time_id: int = 0, red_payload_type: int = -1, extmap_allow_mixed: bool = False) -> int:
        """A subscriber's copy of a receiver's track on a transport. `extmap` renumbers the publisher's header
        extensions (its id -> the subscriber's, absent = stripped); subscriber ids over 14, and elements over 16
        bytes, need the two-byte form, so they are kept only when the subscriber negotiated a=extmap-allow-mixed
        (`extmap_allow_mixed`), else stripped. The publisher's transport-cc is never forwarded:
        with `transport_cc_id` (1..14, the subscriber's id for it) each packet carries the transport's own
        transport-wide sequence number instead, and the transport's feedback feeds its bandwidth estimate. Without
        it, `abs_send_time_id` (1..14) stamps each packet with its send time, so a client that only does REMB
        estimates the link and its REMB feeds the estimate; with both, only transport-cc is written.
        Of a receiver with RED, the subscriber gets RED as `red_payload_type` (0..127) when it has one, else the
        primary Opus blocks, lost packets recovered from the redundant ones."""
        cdef int rslot = self._slot(self._receiver_slots, receiver_id, "receiver")
        cdef int tslot = self._slot(self._transport_slots, transport_id, "transport")
        cdef int slot = _free_slot(<void **>self.s.downtracks, MAX_DOWNTRACKS)
        cdef DownTrack *d
        if slot < 0:
            raise RuntimeError("too many downtracks")
        if not (0 <= transport_cc_id < 15 and 0 <= abs_send_time_id < 15):
            raise ValueError("transport_cc_id and abs_send_time_id must be one-byte extension ids (1..14) or 0")
        if transportcc_enable_send(self.s.transports[tslot], transport_cc_id != 0,
                                   int.from_bytes(os.urandom(2), "big"), monotonic_us()) < 0:
            raise MemoryError()
        d = downtrack_new()
        if d == NULL:
            raise MemoryError()
        if list_add(&self.s.receivers[rslot].downtracks, slot) < 0:
            downtrack_free(d)
            raise MemoryError()
        self._own_downtrack(tslot, slot)
        d.id = self._new_id()
        d.receiver = rslot
        d.transport = tslot
        d.ssrc = ssrc
        d.rtx_ssrc = rtx_ssrc
        d.payload_type = payload_type & 0x7F
        d.rtx_payload_type = rtx_payload_type & 0x7F
        if self.s.receivers[rslot].red_payload_type >= 0:
            d.red_strip = not 0 <= red_payload_type < 128
            d.red_payload_type = red_payload_type & 0x7F if not d.red_strip else 0
        d.ext_mixed = extmap_allow_mixed
        for source, target in extmap.items():
            if 0 <= source < 256 and 0 <= target < 256:  # into C ints; the DownTrack checks the rest
                downtrack_map_extension(d, source, target)
        d.ext_map[self.s.receivers[rslot].ext_transport_cc] = 0
        d.ext_transport_cc = transport_cc_id
        d.ext_abs_send_time = 0 if transport_cc_id else abs_send_time_id
        d.max_layer = MAX_LAYERS - 1
        d.rtx_seq = int.from_bytes(os.urandom(2), "big")
        self.s.downtracks[slot] = d
        self.s.downtrack_end = max(self.s.downtrack_end, slot + 1)
        self._downtrack_slots[d.id] = slot
        map_put(&self.s.downtrack_ssrcs, stream_key(tslot, ssrc), slot)
        if rtx_ssrc:
            map_put(&self.s.downtrack_ssrcs, stream_key(tslot, rtx_ssrc), slot)
        workers_update_receiver(self.s, rslot)
        return d.id

    cdef _own_downtrack(self, int tslot, int slot):
        """Gives DownTrack `slot` its transport's worker. A transport's first DownTrack may move it to the least
        loaded worker (the one chosen when it was added may have DownTracks since), unless its send context exists:
        libsrtp keeps per-SSRC state there that only its worker writes."""
        cdef Transport *t = self.s.transports[tslot]
        cdef int worker
        if t.downtracks == 0 and t.tx == NULL:
            worker = workers_least_loaded(self.s)
            self.s.workers[t.worker].transports -= 1
            self.s.workers[worker].transports += 1
            t.worker = worker
        t.downtracks += 1
        self.s.workers[t.worker].downtracks += 1
        self.s.owners[slot] = 0 if t.path.kind == PATH_TCP or t.path.kind == PATH_TURN else t.worker

    def remove_downtrack(self, downtrack_id: int) -> None:
        slot = self._downtrack_slots.pop(downtrack_id, None)
        if slot is None:
            return
        cdef DownTrack *d = self.s.downtracks[<int>slot]
        cdef Transport *t = self.s.transports[d.transport]
        if t.tx != NULL:  # libsrtp made a send stream for each SSRC we protected for it
            if srtp.remove_stream(t.tx, d.ssrc) == 0:
                self.s.counters[<int>S_SRTP_STREAMS_REMOVED] += 1
            if d.rtx_ssrc and srtp.remove_stream(t.tx, d.rtx_ssrc) == 0:
                self.s.counters[<int>S_SRTP_STREAMS_REMOVED] += 1
        if map_get(&self.s.downtrack_ssrcs, stream_key(d.transport, d.ssrc)) == slot:
            map_remove(&self.s.downtrack_ssrcs, stream_key(d.transport, d.ssrc))
        if d.rtx_ssrc and map_get(&self.s.downtrack_ssrcs, stream_key(d.transport, d.rtx_ssrc)) == slot:
            map_remove(&self.s.downtrack_ssrcs, stream_key(d.transport, d.rtx_ssrc))
        list_discard(&self.s.receivers[d.receiver].downtracks, slot)
        workers_update_receiver(self.s, d.receiver)
        t.downtracks -= 1
        self.s.workers[t.worker].downtracks -= 1
        downtrack_free(d)
        self.s.downtracks[<int>slot] = NULL

    def set_target_layer(self, downtrack_id: int, layer: int, temporal: int | None = None,
                         cut: bool = False) -> None:
        """Caps the layer the Forwarder aims at (StreamAllocator hook); it still switches only at keyframes.
        `temporal` caps the temporal layer within it (0 = the base layer only, 3 = all, a DownTrack's default; None
        leaves the cap as it is): the Forwarder goes down at the next frame, up at a layer sync frame or keyframe.
        `cut`, for a step-down the link cannot wait for: the current layer stops at once instead of at the lower
        layer's keyframe (forwarder.pxd forwarder_set_cap)."""
        cdef DownTrack *d = self.s.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        forwarder_set_cap(d, layer, -1 if temporal is None else max(0, temporal), cut)

    def set_paused(self, downtrack_id: int, paused: bool) -> None:
        """Stops or resumes forwarding to a DownTrack. Video resumes at a keyframe, which is requested at once;
        the output numbering continues from the last packet sent."""
        cdef DownTrack *d = self.s.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        cdef Receiver *r = self.s.receivers[d.receiver]
        cdef int top
        if forwarder_set_paused(d, paused):
            top = forwarder_target(d, r)
            if r.is_video and top >= 0:
                d.keyframe_requests += 1
                feedback_request_keyframe(self.s, r, top, monotonic_us())
                udpmux_flush(self.s)

    def set_cname(self, cname: str) -> None:
        """The CNAME in our SDES chunks (RFC 3550 wants one per endpoint)."""
        data = cname.encode()[:31]
        memcpy(self.s.cname, <const char *>data, len(data))
        self.s.cname_length = len(data)

    def set_remb_bitrate(self, bitrate: int) -> None:
        """The bitrate announced to publishers in REMB (bits per second)."""
        self.s.remb_bitrate = max(0, bitrate)

    def request_keyframe(self, receiver_id: int) -> None:
        cdef Receiver *r = self.s.receivers[self._slot(self._receiver_slots, receiver_id, "receiver")]
        cdef int l
        cdef int64_t now = monotonic_us()
        if r.is_video:
            for l in range(r.num_layers):
                feedback_request_keyframe(self.s, r, l, now)
            udpmux_flush(self.s)

    def fileno(self) -> int:
        """The UDP socket's descriptor (-1 once closed)."""
        return self.s.fd

    @property
    def gso(self) -> bool:
        """Whether datagram runs still go out as UDP GSO sends."""
        return self.s.send.use_gso

    def stats(self) -> dict:
        """The S_* counters, every worker's added up."""
        cdef int i, w
        cdef uint64_t total
        counts = {}
        for i, name in enumerate(STAT_NAMES):
            total = self.s.counters[i]
            for w in range(1, self.s.worker_count):
                total += self.s.workers[w].counters[i]
            counts[name] = total
        return counts

    @property
    def workers(self) -> int:
        """Forwarding threads, the event loop's included."""
        return self.s.worker_count

    def worker_stats(self) -> list[dict]:
        """Per worker (0 = the event loop's thread): `transports` and `downtracks` it forwards to, `batches` it
        forwarded a share of, the `packets` it sent, `busy_seconds` spent on them, `drops` by reason (the nonzero
        WORKER_DROPS; worker 0's are the engine's own counters, which also count the loop thread's other sends), and
        for worker 0 `wait_seconds`: the loop thread waiting for the others after its own share (a worker that falls
        behind shows here)."""
        cdef Worker *w
        cdef const uint64_t *counters
        result = []
        for i in range(self.s.worker_count):
            w = self.s.workers[i]
            counters = &w.counters[0]
            if i == 0:
                counters = &self.s.counters[0]
            result.append({
                "transports": w.transports,
                "downtracks": w.downtracks,
                "batches": w.batches,
                "packets": w.packets,
                "busy_seconds": w.busy_ns / 1e9,
                "wait_seconds": w.wait_ns / 1e9,
                "drops": {name: counters[k] for k, name in enumerate(STAT_NAMES)
                          if name in WORKER_DROPS and counters[k]},
            })
        return result

    def transport_bandwidth(self, transport_id: int) -> dict | None:
        """The downlink estimate of a subscriber transport (None before it has a DownTrack): `estimate_bps`,
        `congested` (the allocator must not upgrade), the detector's `state`, `loss_fraction`, whether TWCC
        feedback drives it (`twcc`, else REMB or nothing yet), whether we number its packets for TWCC (`stamping`),
        the client's last REMB (`remb_bps`, 0 = none) and its counters (`reports`: TWCC feedback taken, `rembs`:
        REMBs taken)."""
        cdef Transport *t = self.s.transports[self._slot(self._transport_slots, transport_id, "transport")]
        cdef Bwe *b = t.bwe
        if b == NULL:
            return None
        return {
            "estimate_bps": bwe_estimate_bps(b),
            "congested": bool(bwe_congested(b, monotonic_us())),
            "state": BWE_STATES[bwe_state(b)] if 0 <= bwe_state(b) < len(BWE_STATES) else "unknown",
            "loss_fraction": bwe_loss_fraction(b),
            "twcc": bool(b.twcc_seen),
            "stamping": t.twcc_tx.sent != NULL,
            "reports": b.reports,
            "rembs": b.rembs,
            "remb_bps": int(b.remb_bps),
            "packets": b.packets,
            "lost": b.lost,
            "probes_succeeded": b.probes_succeeded,
            "probes_failed": b.probes_failed,
        }

    def probe(self, transport_id: int, target_bps: int, duration: float) -> int | None:
        """Starts a probe cluster toward a subscriber transport: its traffic is topped up with padding to
        `target_bps` for `duration` seconds, and its estimate jumps to what the link carried if that is more (an
        E_BANDWIDTH event follows). The cluster's id, or None when the transport cannot be probed (no transport-cc,
        or no video DownTrack with RTX that has started)."""
        cdef int slot = self._slot(self._transport_slots, transport_id, "transport")
        cdef int32_t cluster = prober_start(self.s, slot, target_bps, <int64_t>(duration * 1e6), monotonic_us())
        return None if cluster < 0 else cluster

    def probe_status(self, transport_id: int, cluster: int) -> tuple[str, int]:
        """("pending" | "succeeded" | "failed" | "unknown", the rate it measured in bps, or 0)."""
        cdef Transport *t = self.s.transports[self._slot(self._transport_slots, transport_id, "transport")]
        if t.bwe == NULL:
            return "unknown", 0
        status = bwe_probe_status(t.bwe, cluster, monotonic_us())
        return PROBE_STATUSES[status], bwe_probe_result_bps(t.bwe, cluster)

    def audio_levels(self, interval: float) -> dict[int, float]:
        """Mean linear audio level (0..1, 1 = 0 dBov) of every receiver that has the audio-level extension,
        over the `interval` seconds since the last call (20 ms packets expected; DTX gaps count as silence)."""
        cdef Receiver *r
        cdef int slot
        levels = {}
        for receiver_id, slot in self._receiver_slots.items():
            r = self.s.receivers[slot]
            if r.ext_audio_level:
                levels[receiver_id] = receiver_take_audio_level(r, interval * 50)
        return levels

    def receiver_stats(self, receiver_id: int) -> dict:
        cdef Receiver *r = self.s.receivers[self._slot(self._receiver_slots, receiver_id, "receiver")]
        cdef Layer *layer
        cdef int l
        cdef int64_t now = monotonic_us()
        layers = []
        for l in range(r.num_layers):
            layer = &r.layers[l]
            layers.append({
                "rid": (<char *>layer.rid)[:layer.rid_length].decode(errors="replace"),
                "ssrc": layer.ssrc if layer.has_ssrc else None,
                "rtx_ssrc": layer.rtx_ssrc if layer.has_rtx else None,
                "packets": layer.received,
                "bytes": layer.bytes,
                "temporal_bytes": [layer.temporal_bytes[t] for t in range(MAX_TEMPORAL)],  # by temporal id
                # an SVC stream's: by spatial id, then temporal id (all zero for simulcast and single layers)
                "svc_bytes": [[layer.svc_bytes[sp][t] for t in range(MAX_TEMPORAL)] for sp in range(VP9_MAX_SPATIAL)],
                "highest_sequence": layer.cycles + layer.max_seq if layer.active else None,
                "lost": max(0, <int64_t>layer.cycles + layer.max_seq - layer.base_seq + 1 - <int64_t>layer.received)
                        if layer.active else 0,
                "jitter": layer.jitter_q4 >> 4,
                "keyframes": layer.keyframes,
                "keyframe_bytes": layer.keyframe_bytes,  # the last keyframe's (RTP packets of its frame)
                "nacks_sent": layer.nacks_sent,
                "plis_sent": layer.plis_sent,
                "missing": layer.missing_count,
                "sr_age": (now - layer.sr_arrival_us) / 1e6 if layer.sr_arrival_us else None,  # seconds since its SR
            })
        return {
            "top_layer": r.top_layer,
            "downtracks": r.downtracks.count,
            "layers": layers,
        }

    def downtrack_stats(self, downtrack_id: int) -> dict:
        cdef DownTrack *d = self.s.downtracks[self._slot(self._downtrack_slots, downtrack_id, "downtrack")]
        return {
            "current_layer": d.current_layer,
            "paused": bool(d.paused),
            "target_layer": forwarder_target(d, self.s.receivers[d.receiver]),
            "packets": d.packets,
            "octets": d.octets,
            "dropped": d.dropped,
            "layer_switches": d.layer_switches,
            "current_temporal": d.current_temporal,
            "max_temporal": d.max_temporal,
            "temporal_dropped": d.temporal_dropped,
            "temporal_padding": d.temporal_padding,
            "temporal_switches": d.temporal_switches,
            "red_recovered": d.red_recovered,
            "current_spatial": d.current_spatial,  # SVC only, else -1
            "spatial_switches": d.spatial_switches,
            "nacks_received": d.nacks_received,
            "retransmissions": d.retransmissions,
            "plis_received": d.plis_received,
            "keyframe_requests": d.keyframe_requests,
            # the subscriber's last report block about the stream: RFC 3550 cumulative counts, jitter in RTP units
            "rr_blocks": d.rr_blocks,
            "rr_highest_sequence": d.rr_highest,
            "rr_lost": d.rr_lost,
            "rr_jitter": d.rr_jitter,
            "rtt": d.rr_rtt_us / 1e6 if d.rr_has_rtt else None,
        }


cdef tuple _address(const Path *p):
    """A path as the control plane names it: (host, port), and the connection's handle for an ICE-TCP path, or the
    allocation's handle (with its relayed address) for a TURN path."""
    if p.kind == PATH_TCP:
        return (*path_address(p), tcpmux_handle(p))
    if p.kind == PATH_TURN:
        return (*path_address(p), turnmux_handle(p))
    return path_address(p)


def media_socket(host: str, port: int, ipv6: bool, reuse_port: bool) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port) with large kernel buffers (dual-stack for IPv6); with
    `reuse_port`, one of a SO_REUSEPORT group (the workers' sockets)."""
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for option, forced in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
            try:
                # Past net.core.[rw]mem_max when privileged: bursts of video must not overflow the kernel queue.
                sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


cdef struct SrtpCreate:
    void *session
    const void *policy
    int result


cdef void _create_session(void *arg) noexcept nogil:
    cdef SrtpCreate *create = <SrtpCreate *>arg
    create.result = srtp.create(&create.session, create.policy)


cdef void _drop_tx(Transport *t) noexcept nogil:
    """Frees the transport's send session if the engine made it (set_srtp_policy)."""
    if t.tx_owned and t.tx != NULL:
        srtp.dealloc(t.tx)
    t.tx = NULL
    t.tx_owned = False


cdef int _free_slot(void **table, int capacity):
    cdef int i
    for i in range(capacity):
        if table[i] == NULL:
            return i
    return -1
