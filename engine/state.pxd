# EngineState: the one C state struct that the engine's nogil modules share: limits, slot tables, lookup maps, counters,
# the receive and send batches, the batch's ExtPackets and the event queue. engine.pyx owns it; modules take a pointer.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from engine.batchio cimport iovec, mmsghdr
from engine.bwe cimport Bwe, BwePacketResult
from engine.downtrack cimport DownTrack
from engine.packet cimport ExtPacket
from engine.path cimport Path, SockAddr
from engine.receiver cimport Receiver
from engine.table cimport IntList, U64Map
from engine.tcpframer cimport Framer
from engine.twcc cimport TWCC_HISTORY, TwccHistory, TwccRecorder, TwccResult

cdef enum:
    BATCH = 64                # datagrams per recvmmsg
    RECV_BUF = 2048
    SEND_SLOTS = 256          # packets per sendmmsg
    SEND_BUF = 2112           # a received datagram + WRITE_GROWTH + SRTP(C) trailer
    MAX_TRANSPORTS = 16384    # a fanout of thousands of subscribers with two transports each
    MAX_RECEIVERS = 8192
    MAX_DOWNTRACKS = 65536
    MAX_WORKERS = 64          # forwarding threads (workers.pyx): a receiver's bit mask of the workers that own
                              # some of its DownTracks is one 64-bit word
    GSO_CONTROL_WORDS = 4     # 8-byte words holding CMSG_SPACE(sizeof(uint16_t)), per GSO message

cdef enum:  # statistics counters (indexes); engine.pyx's STAT_NAMES holds their names, in this order
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
    S_DROP_UNKNOWN_SSRC       # authenticated, but matches no layer of the transport's receivers
    S_DROP_UNADMITTED_SSRC    # neither bound nor bindable: dropped before srtp_unprotect (unauthenticated)
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
    S_NACK_STALE_LAYER        # NACKed packets of a layer the DownTrack switched away from: not resent
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
    S_DROP_STUN_MALFORMED
    S_DROP_STUN_NOT_REQUEST
    S_DROP_STUN_NO_USERNAME
    S_DROP_STUN_UNKNOWN_UFRAG
    S_DROP_STUN_RATE
    S_DROP_DTLS_RATE
    S_DROP_EVENT_BUDGET
    S_DROP_SSRC_LIMIT
    S_SRTP_STREAMS_REMOVED
    S_DROP_RTX_BUDGET
    S_RETRANSMITTED_BYTES
    S_STUN_RESPONSES          # Binding success responses to our consent checks, let up to Python
    S_DROP_STUN_UNEXPECTED_RESPONSE  # responses (or errors) whose transaction id is none of ours outstanding
    S_DROP_SSRC_REBIND_RATE   # a layer's SSRC changing faster than SSRC_REBINDS_PER_SECOND
    S_TWCC_FEEDBACK_SENT      # transport-cc feedback to publishers
    S_TWCC_LATE               # publisher packets that arrived after the feedback covering them (reported lost)
    S_TWCC_FEEDBACK_RECEIVED  # transport-cc feedback from subscribers (well-formed)
    S_TWCC_UNMATCHED          # packets a subscriber's feedback names that the send history does not hold
    S_REMB_RECEIVED           # REMB from subscribers
    S_BANDWIDTH_EVENTS        # estimate changes raised to Python
    S_PROBE_CLUSTERS          # probe clusters started toward subscribers (prober.pyx)
    S_PROBE_PACKETS           # padding-only packets those clusters sent
    S_DROP_TEMPORAL_LAYER     # packets above a DownTrack's temporal layer (the numbering closes up: no loss seen)
    S_TEMPORAL_PADDING        # of those, late ones (later packets were sent): a padding packet took their number
    S_TCP_ACCEPTED            # ICE-TCP connections accepted (tcpmux.pyx)
    S_TCP_CLAIMED             # ... whose first Binding request authenticated: they carry a transport's packets
    S_TCP_CLOSED              # ... closed normally: by the client (end of stream, reset), or with its transport
    S_TCP_CLOSED_INVALID      # closed: a frame before authentication that is no Binding request to a live ufrag
    S_TCP_CLOSED_UNAUTHENTICATED  # closed: its Binding request failed MESSAGE-INTEGRITY (Python said so)
    S_TCP_CLOSED_HALF_OPEN    # closed: not authenticated within TCP_CLAIM_TIMEOUT_US
    S_TCP_CLOSED_PENDING_LIMIT  # closed: the oldest of MAX_TCP_PENDING unauthenticated ones, for a new one
    S_TCP_CLOSED_LIMIT        # refused or closed: MAX_TCP_CONNECTIONS, or a transport's MAX_TCP_PER_TRANSPORT
    S_TCP_CLOSED_IDLE         # closed: nothing received for TCP_IDLE_TIMEOUT_US
    S_TCP_CLOSED_SLOW_READER  # closed: its send queue stayed full for TCP_SLOW_READER_US
    S_TCP_ACCEPT_FAILED       # accept() failed (out of descriptors or memory): the listener pauses until the sweep
    S_DROP_TCP_OVERSIZED      # frames longer than RECV_BUF on an authenticated connection, skipped
    S_DROP_TCP_QUEUE_FULL     # packets toward a connection whose send queue was full (a slow reader)
    S_DROP_TCP_CLOSED         # packets toward a connection that is gone
    S_TURN_CONNECTIONS        # TURN/TCP and TURN/TLS connections handed to the engine (turnmux.pyx)
    S_TURN_REQUESTS           # STUN requests on the TURN ports (Allocate, Refresh, ...), raised to Python
    S_TURN_RELAYED_IN         # ChannelData and Send indications from clients, delivered to the engine's transports
    S_TURN_RELAYED_OUT        # packets toward a TURN allocation, sent as ChannelData or Data indications
    S_DROP_TURN_MALFORMED     # neither a well-framed STUN message nor ChannelData, or a STUN response/indication
    S_DROP_TURN_NO_ALLOCATION  # ChannelData or Send from a client (5-tuple) without an allocation
    S_DROP_TURN_NO_PERMISSION  # Send to a peer without permission (anything but this node's media address), or
                              # ChannelData on an unbound channel
    S_DROP_TURN_RATE          # requests past TURN_REQUESTS_PER_SECOND
    S_DROP_TURN_GONE          # packets toward an allocation that is gone
    S_DROP_TURN_SEND_FAILED   # datagrams the TURN UDP socket refused
    S_DROP_LAYER_CUT          # packets of a layer a bandwidth step-down cut before the lower layer's keyframe
    S_RED_RECEIVED            # RED packets from publishers (well-formed)
    S_RED_RECOVERED           # Opus packets lost upstream, rebuilt from RED redundancy for subscribers without RED
    S_TURN_HELD               # TURN requests with more of the stream, or datagrams of the client in the batch, behind
                              # them, which waited (not relayed, not raised) until Python had answered the request
                              # (tcpmux_release, turnmux_resume)
    S_DD_PACKETS              # packets whose Dependency Descriptor parsed: their frames are selected by it
    S_DD_INVALID              # malformed Dependency Descriptors: such packets are forwarded as a whole, unselected
                              # (as are those whose structure has not arrived: before the first keyframe, or behind
                              # a keyframe's first packet that is late)
    S_COUNT

cdef enum:  # event kinds, queued in C and dispatched to Python after each batch
    E_STUN                    # data + path + transport id (a): a Binding request to the transport's ufrag
    E_DTLS                    # data + transport id (a)
    E_LAYER                   # receiver id (a), layer (b), SSRC (c): a layer's first packet
    E_BANDWIDTH               # transport id (a), estimate in bps (b), congested (c): a subscriber's estimate moved
    E_TURN                    # data + path: a STUN request from a TURN client (UDP on the TURN socket, or a stream)

cdef enum:
    # Events per second one transport may raise (token buckets, burst = one second's worth). libwebrtc checks a
    # candidate pair every 50-900 ms while connecting (a LiveKit Python SDK join sent 3 in its first second): 100/s
    # leaves room for many pairs, candidates and retransmissions, and a flood with a valid ufrag costs Python at most
    # 100 parses/s.
    STUN_EVENTS_PER_SECOND = 100
    # Checks from the transport's bound address have a bucket of their own, so a flood to its ufrag from elsewhere
    # cannot starve them (the client's own consent, RFC 7675, needs our answers). Once connected, libwebrtc checks
    # the selected pair every 2.5 s and aioice every 5 s: 20/s is plenty, and these bypass the engine-wide budget.
    STUN_BOUND_EVENTS_PER_SECOND = 20
    # DTLS carries the handshake (about 10 datagrams) and then every data channel message (SCTP): 1000 datagrams/s
    # of up to ~1.2 KB is about 1.2 MB/s of data channel traffic per transport, well past LiveKit's typical use
    # (chat, RPC, small state); SCTP retransmits what is dropped past it.
    DTLS_EVENTS_PER_SECOND = 1000
    # The engine-wide budget, and how it is shared. Events of three kinds reach Python:
    #  - responses to our own consent checks (one per transaction id we registered, ConsentChecks in peer/ice.py:
    #    one per ~5 s per transport) and Binding requests from a transport's bound address (STUN_BOUND_EVENTS_PER_
    #    SECOND): bounded per transport, they bypass the budget, so no flood can make a live client lose consent;
    #  - each transport's first FAIR_EVENTS_PER_SECOND (burst FAIR_EVENT_BURST) other STUN/DTLS events: its fair
    #    share, also outside the budget, so a DTLS handshake (a flight is at most ~6 datagrams) and a modest data
    #    channel always get through;
    #  - the rest: EVENTS_PER_WINDOW per EVENT_WINDOW_US (one engine tick, 5,000 events/s), first come first served.
    # So an attacker holding N transports (two per participant, each needing a token) can make Python handle at
    # most 5,000 + N x (FAIR 50 + BOUND 20) events/s, and can never take another transport's fair share or consent.
    EVENTS_PER_WINDOW = 100
    EVENT_WINDOW_US = 20000
    FAIR_EVENTS_PER_SECOND = 50
    FAIR_EVENT_BURST = 16
    # Distinct SSRCs one transport may get libsrtp receive streams for from RTP (SSRC_ANY_INBOUND creates one per new
    # SSRC that authenticates, ~650 B and a linear lookup each). 20 simulcast video tracks with RTX use 120.
    MAX_SRTP_STREAMS = 256
    # SRTCP sender SSRCs that are no media stream of ours (a client's RR/feedback SSRC, an SR of a track already
    # removed): their libsrtp streams are kept in a ring of this size per transport, the oldest freed first.
    # A client uses one or two; media SSRCs' SR use the media stream.
    RTCP_SENDER_STREAMS = 8
    # Outstanding consent checks per transport whose Binding success response the engine lets up (the rest are
    # dropped in C): a few consent periods' worth plus a check of a new address (peer/ice.py keeps fewer).
    MAX_CONSENT_CHECKS = 8
    # SSRC changes of one layer (a publisher restarting its encoder; a mid/rid match binding a new SSRC): each frees
    # a libsrtp stream, resets the layer and raises an event to Python. A token bucket per layer: 2 per second,
    # burst 4, the rest dropped (drop_ssrc_rebind_rate). Browsers change a layer's SSRC on renegotiation only.
    SSRC_REBINDS_PER_SECOND = 2
    SSRC_REBIND_BURST = 4

cdef enum:
    # ICE-TCP (tcpmux.pyx). Connections at once: each needs a descriptor and up to TCP_SEND_QUEUE_MAX of queue.
    MAX_TCP_CONNECTIONS = 4096
    # Connections not yet authenticated. A client that needs TCP sends its first Binding request at once; one whose
    # UDP works also connects to our TCP candidate (libwebrtc: one connection per peer connection and local
    # interface; 29 for a publisher and a subscriber on a host with many veths) and never checks it (the pair is
    # pruned), so these wait out TCP_CLAIM_TIMEOUT_US. Past this, a new one closes the oldest: a client that needs
    # TCP claims its connection within a round trip, so a flood of idle connections cannot lock it out.
    MAX_TCP_PENDING = 256
    # Authenticated connections per transport: libwebrtc opens one per candidate pair (one per local interface to our
    # one passive candidate); a client cannot hold the node's connections with one token.
    MAX_TCP_PER_TRANSPORT = 4
    # Per-connection send queue: media waits here when the kernel's socket buffer is full (TCP head-of-line
    # blocking); past it packets are dropped (counted) rather than block the engine. Grown from the initial size on
    # demand; 256 KiB is ~0.7 s of a 3 Mbit/s subscriber, beyond which queued media is too late to be worth sending.
    TCP_SEND_QUEUE_INITIAL = 16384
    TCP_SEND_QUEUE_MAX = 262144
    TCP_EPOLL_EVENTS = 64     # readiness events taken per epoll_wait

cdef enum:
    # TURN (turnmux.pyx). Allocations at once, engine-wide (signaling/peer/turn.py bounds them per participant too).
    # Each is ~200 bytes here; 4096 is as many as the ICE-TCP connections.
    MAX_TURN_ALLOCATIONS = 4096
    # STUN requests on the TURN ports raised to Python per second, engine-wide (burst: one second's worth). A client
    # makes ~5 (Binding, Allocate twice, CreatePermission, ChannelBind) per allocation, then a Refresh every few
    # minutes and a CreatePermission every 5: 500/s lets 100 clients connect at once and bounds what a flood costs.
    TURN_REQUESTS_PER_SECOND = 500
    TURN_SEND_SLOTS = 64      # datagrams per sendmmsg on the TURN UDP socket
    TURN_HEADER_MAX = 48      # a Data indication's header: 20 + XOR-PEER-ADDRESS (4 + 20 for IPv6) + DATA's 4
    TURN_SEND_BUF = SEND_BUF + TURN_HEADER_MAX + 4  # a packet of ours, wrapped and padded

cdef struct TurnAlloc:
    uint32_t serial           # its Path.conn_serial
    Path path                 # PATH_TURN, with the relayed address: the path the engine's transports see
    Path client               # the client's 5-tuple: PATH_UDP on the TURN socket, or the PATH_TCP stream
    uint64_t client_key       # its key in TurnMux.by_client
    uint8_t peer_family       # the peer (this engine's media address as the client names it): STUN family 1 or 2,
    uint16_t peer_port        # host-order port and the address bytes (4 or 16)
    uint8_t peer_ip[16]
    bint permitted            # a permission for the peer is installed (signaling/peer/turn.py expires it)
    uint16_t channel          # the channel bound to the peer, 0 = none
    uint32_t indications      # Data indications sent (their transaction ids)

cdef struct TurnMux:
    int fd                    # the TURN UDP socket, -1 = none
    TurnAlloc **allocs        # MAX_TURN_ALLOCATIONS slots, NULL = free
    int end
    uint32_t next_serial
    U64Map by_client          # path_key(client) -> allocation slot (colliding keys move on, as by_address)
    double tokens             # TURN_REQUESTS_PER_SECOND bucket
    int64_t tokens_us
    uint8_t *bufs             # TURN_SEND_SLOTS buffers of TURN_SEND_BUF bytes
    mmsghdr msgs[<int>TURN_SEND_SLOTS]
    iovec iov[<int>TURN_SEND_SLOTS]
    SockAddr addrs[<int>TURN_SEND_SLOTS]
    int count
    int received              # datagrams in the TURN socket's batch (turnmux_read)
    int held                  # the first of them waiting for Python's answer to the request before it, 0 = none

cdef struct TcpConn:
    int fd
    uint32_t serial           # this connection's Path.conn_serial
    int owner                 # the transport slot whose ufrag authenticated it, or -1 while pending
    Path path                 # PATH_TCP, with the peer's address
    int64_t accepted_us
    int64_t received_us       # when its last frame arrived
    int64_t full_since_us     # when its send queue first refused a packet (0: it has drained since)
    bint ready                # in TcpMux.ready: whole frames buffered
    bint dirty                # in TcpMux.dirty: queued bytes not yet offered to the kernel
    bint want_write           # the kernel refused some: EPOLLOUT is armed
    bint turn                 # a TURN/TCP or TURN/TLS stream (turnmux.pyx), not ICE-TCP
    bint turn_allocated       # ... on which an allocation was made: no longer pending
    bint held                 # in TcpMux.held: a TURN request was taken; its later frames wait for Python's answer
    uint8_t *out              # the send queue, a ring of out_capacity bytes (NULL until the first send)
    int out_capacity
    int out_head
    int out_used
    Framer framer

cdef struct TcpMux:
    int listen_fd             # -1: ICE-TCP off
    int epoll_fd              # the listener and every connection; the event loop watches this one descriptor
    bint listening            # the listener is in the epoll set (it leaves it while accept() fails)
    TcpConn **conns           # MAX_TCP_CONNECTIONS slots, NULL = free
    int end                   # one past the highest slot in use
    int count
    uint32_t next_serial
    IntList pending           # slots of connections not yet authenticated
    IntList ready             # slots with whole frames buffered that the last batch had no room for
    IntList dirty             # slots with queued bytes to write after the batch
    IntList held              # TURN streams whose later frames wait until the batch's events are dispatched
    int64_t next_sweep_us

cdef struct Transport:
    # What fanout_send reads or writes for every packet, first: these share the struct's first two cache lines (it
    # is cache-line aligned), which at hundreds of subscribers are cold at each frame's first packet to each one.
    int64_t id
    bint bound
    bint plain                # RTP/RTCP leave unencrypted, no SRTP keys needed: an in-process egress's loopback
                              # socket (as mediasoup's PlainTransport); nothing from its address is accepted
    void *tx                  # srtp_t, owned by the control plane, or by the engine when `tx_owned`
                              # (Engine.set_srtp_policy)
    # transport-cc (transportcc.pyx) toward a subscriber: the sequence numbers and send history of its downlink
    # (the history's header held here, in the first line; its ring allocated when stamping is negotiated), and the
    # downlink's estimate (allocated with its first DownTrack; also fed by the subscriber's REMB)
    TwccHistory twcc_tx
    Bwe *bwe
    uint64_t bytes_sent       # RTP bytes forwarded to it (retransmissions excluded); at the last rtx refill
    bint probing              # a probe cluster runs toward it (prober.pyx), described from `probe_cluster` on
    Path path                 # where its packets come from and go to
    uint64_t path_key         # its key in EngineState.by_address (see demux_bind_path)
    void *rx                  # srtp_t, owned by the control plane
    bint tx_owned
    TwccRecorder *twcc_rx     # transport-cc from a publisher: the arrivals of its packets between our feedbacks
    uint32_t local_ssrc       # sender SSRC of our RTCP feedback
    IntList receivers         # slots of the Receivers published on this transport
    uint8_t ufrag[64]         # our ICE ufrag for it (stun.MAX_UFRAG bytes at most): STUN to it is let through
    int ufrag_length
    uint64_t ufrag_key        # its key in EngineState.by_ufrag
    double stun_tokens        # token buckets of the events it may raise (see STUN_EVENTS_PER_SECOND): STUN from
    double stun_bound_tokens  # other addresses, STUN from its bound address, DTLS, and its fair share of the rest
    double dtls_tokens
    double fair_tokens
    int64_t events_us         # when they were last refilled
    int srtp_streams          # SSRCs in EngineState.srtp_ssrcs for it (libsrtp receive streams), <= MAX_SRTP_STREAMS
    uint32_t *srtp_ssrc_list  # the same SSRCs (MAX_SRTP_STREAMS entries, allocated on first use), to forget them all
    uint32_t rtcp_ssrcs[<int>RTCP_SENDER_STREAMS]  # RTCP-only sender SSRCs with a libsrtp stream (a ring)
    int rtcp_ssrc_count
    int rtcp_ssrc_next
    uint64_t checks[<int>MAX_CONSENT_CHECKS]  # keys in EngineState.checks of our outstanding consent checks (a ring)
    int check_next
    double rtx_tokens         # retransmission budget in bytes (feedback.pyx)
    int64_t rtx_us            # when it was last refilled
    uint64_t bytes_sent_mark
    int32_t probe_cluster     # the probe cluster running toward it (prober.pyx), when `probing`
    int64_t probe_target_bps
    int64_t probe_start_us    # where the pacing counts from: the cluster's start, then its second half's
    int64_t probe_tail_us     # its second half starts here (0 once it has)
    int64_t probe_end_us
    int64_t probe_sent_bytes  # RTP bytes stamped and sent to it since probe_start_us (media, RTX, padding)
    int64_t probe_downtrack   # id of the DownTrack whose RTX stream carries the padding
    int probe_downtrack_slot
    int tcp_connections       # ICE-TCP connections it authenticated, <= MAX_TCP_PER_TRANSPORT
    int worker                # the worker that forwards to it (workers.pyx); ICE-TCP and TURN paths use worker 0
    int downtracks            # its DownTracks (the workers' load)

cdef struct RecvBatch:
    uint8_t *bufs             # BATCH buffers of RECV_BUF bytes: datagrams, or frames copied out of TCP streams
    mmsghdr msgs[<int>BATCH]  # msg_len: each one's length
    iovec iov[<int>BATCH]
    Path paths[<int>BATCH]    # recvmmsg writes the source address straight into each path
    bint taken[<int>BATCH]    # handled already (a TURN request raised as an event, or dropped): demux skips it

cdef struct SendBatch:
    int fd                    # the UDP socket it leaves by: the mux socket, or a worker's (workers.pyx)
    uint64_t *counters        # where its packets are counted: EngineState.counters, or a worker's
    bint shared               # EngineState.send: the loop thread's, which may also queue into TCP and TURN paths
    uint8_t *bufs             # SEND_SLOTS buffers of SEND_BUF bytes
    mmsghdr msgs[<int>SEND_SLOTS]
    iovec iov[<int>SEND_SLOTS]
    SockAddr addrs[<int>SEND_SLOTS]
    int count
    bint use_gso              # the kernel segments UDP for us; cleared for good the first time it refuses
    mmsghdr gso_msgs[<int>SEND_SLOTS]
    int gso_first[<int>SEND_SLOTS]  # the first send slot of each GSO message
    uint64_t gso_control[<int>SEND_SLOTS * <int>GSO_CONTROL_WORDS]

cdef struct EngineState

cdef struct Worker:
    # A forwarding thread (workers.pyx): forwards the batch's packets to the DownTracks of the transports it owns,
    # with its own send batch, socket and counters. Worker 0 is the event loop's thread and uses EngineState's.
    uint64_t counters[<int>S_COUNT]
    SendBatch send
    uint32_t job              # futex words: the loop thread bumps `job` to start a share, the worker sets `done`
    uint32_t done             # to it when its share has left
    bint stop
    int index
    int64_t now               # the batch's time
    EngineState *s
    unsigned long thread      # pthread_t
    bint started
    int transports            # transports it owns, and their DownTracks (the load new ones are balanced by)
    int downtracks
    uint64_t batches          # shares it forwarded, the packets they held, and the time spent (ns)
    uint64_t packets
    uint64_t busy_ns
    uint64_t wait_ns          # worker 0 only: time the loop thread waited for the others after its own share
    void (*call)(void *) noexcept nogil  # instead of a share: run this on the worker's thread (workers_call)
    void *call_arg

cdef struct Event:
    int kind                  # E_*
    const uint8_t *data       # E_STUN / E_DTLS: the datagram, valid until the next batch is read
    int length
    const Path *path          # E_STUN: where it came from
    int64_t a
    int64_t b
    int64_t c

cdef struct EngineState:
    int fd                    # the UDP mux socket
    bint ipv6                 # it is an AF_INET6 (dual-stack) socket: every UDP path is a sockaddr_in6
    uint64_t path_seed        # keys IPv6 path hashes (random per engine, so collisions cannot be aimed at)
    Transport **transports    # slot tables: NULL = free
    Receiver **receivers
    DownTrack **downtracks
    int transport_end         # one past the highest slot ever used, to bound scans
    IntList twcc_receivers    # slots of the transports with a TWCC receive record: the tick visits only these
    IntList probing           # slots of the transports with a probe cluster running (prober.pyx)
    int32_t next_probe_cluster
    int receiver_end
    int downtrack_end
    U64Map by_address         # path key -> transport slot
    U64Map streams            # (transport slot, SSRC) -> receiver slot << 8 | layer << 1 | is_rtx
    U64Map downtrack_ssrcs    # (transport slot, downtrack SSRC or RTX SSRC) -> downtrack slot
    U64Map by_ufrag           # stun.ufrag_key -> transport slot (the ufrag is compared in full)
    U64Map srtp_ssrcs         # (transport slot, SSRC) -> 1: SSRCs with a libsrtp receive stream on the transport
    U64Map checks             # stun.ufrag_key of a consent check's transaction id -> transport slot
    uint64_t ufrag_seed
    int64_t event_window_us   # the current EVENT_WINDOW_US window, and STUN/DTLS events raised in it
    int window_events
    uint64_t counters[<int>S_COUNT]
    RecvBatch recv
    SendBatch send
    TcpMux tcp
    TurnMux turn
    ExtPacket packets[<int>BATCH]  # the batch's RTP packets, received and waiting for the fan-out
    int packet_count
    Event events[<int>BATCH]  # one per datagram at most
    TwccResult twcc_results[<int>TWCC_HISTORY]  # scratch for one subscriber feedback: parsed, then resolved
    BwePacketResult bwe_results[<int>TWCC_HISTORY]
    int event_count
    Worker **workers          # worker_count workers, each its own aligned allocation (workers.pyx)
    int worker_count
    uint8_t *owners           # per DownTrack slot: the worker that forwards it (its transport's, or 0 for ICE-TCP
                              # and TURN paths); read by every worker during a batch, written between batches
    int64_t last_report_us
    uint64_t remb_bitrate
    char cname[32]
    int cname_length


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


cdef inline bint transport_ready(const Transport *t) noexcept nogil:
    """Packets can be sent to `t`: it has an address and SRTP keys (or is plain)."""
    return t != NULL and t.bound and (t.tx != NULL or t.plain)


cdef inline void bucket_refill(double *tokens, double rate, double burst, int64_t elapsed_us) noexcept nogil:
    """A token bucket's refill: `rate` tokens per second, at most `burst` in the bucket."""
    tokens[0] = min(burst, tokens[0] + elapsed_us * rate / 1e6)


cdef inline void queue_event(EngineState *s, int kind, const uint8_t *data, int length, const Path *path, int64_t a,
                             int64_t b, int64_t c) noexcept nogil:
    cdef Event *e
    if s.event_count < BATCH:  # one event per datagram at most, so BATCH entries always suffice
        e = &s.events[s.event_count]
        s.event_count += 1
        e.kind = kind
        e.data = data
        e.length = length
        e.path = path
        e.a = a
        e.b = b
        e.c = c
