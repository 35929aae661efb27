# cython: language_level=3
"""C-speed load for benchmarks and `tern load-test`: a LoadSender and a LoadReceiver of SRTP media, on threads.

The control plane (ICE, DTLS, signaling, or fixed keys in raw mode) connects UDP sockets to their peer and creates
libsrtp sessions; it then hands the socket fds and the sessions' srtp_t pointers over. From then on every packet is
built, protected, received and checked in C with the GIL released: no Python object per packet.

- LoadSender: RTP streams paced in real time. Video is sent a frame at a time (a burst of packets, marker bit on the
  last) with a VP8 payload descriptor and a keyframe every `keyframe_frames` frames; or, for a VP9 SVC stream, a
  picture at a time: L3T3_KEY as Chromium sends it (see add_stream's `svc_packets`). Audio is one packet per period.
  The last 12 payload bytes of every packet carry "TERN" + the send time (CLOCK_REALTIME ns, big-endian), so a
  receiver on the same host measures one-way latency whatever the SFU rewrites in the header: up to the kernel's
  arrival timestamp (SO_TIMESTAMPNS), so the receiver's own queueing is not counted.
- LoadReceiver: epoll over many sockets, recvmmsg, SRTP unprotect (failures counted), per-SSRC packet counts and
  sequence gaps, and a latency histogram; on a socket told its VP9 payload type, packets per spatial and temporal
  layer (from the VP9 payload descriptor). RTCP, STUN and DTLS are counted and otherwise ignored, except the last
  STUN Binding request on each socket (the server's consent check), kept for the control plane to answer (take_stun).
  On a socket with transport-cc negotiated it records each packet's transport-wide sequence number and kernel arrival
  time and sends transport-cc feedback (engine/twcc's builder) every TWCC_FEEDBACK_INTERVAL_NS, as libwebrtc does.
- Publishers' streams on one transport may share a transport-wide sequence number they stamp (new_transport).
- ICE-TCP (RFC 6544): a socket may be a TCP stream instead, carrying RFC 4571 frames (a 2-byte length before each
  packet). The sender frames each packet (one writev per video frame), the receiver de-frames with the engine's
  framer (engine/tcpframer.pxd, one bounded buffer per socket), and every write to a stream, from either thread or
  from Python (send_framed), is whole: a short write is finished before anyone else writes (STREAM_WRITE_TIMEOUT_MS).
- TURN (RFC 8656): a UDP socket connected to a TURN server may carry everything on one channel, as ChannelData (a
  4-byte channel number + length before each packet, no padding over UDP): wrapped on the way out, unwrapped on the
  way in (anything else, e.g. the TURN server's own STUN, is counted as other).

Counters are read from Python while the threads run; they are plain 64-bit words, good enough for statistics.
The caller keeps the sockets and libsrtp sessions alive until stop() has returned.
"""
import threading

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, nanosleep, timespec

from engine cimport srtp
from engine.codecs.vp9 cimport Vp9Descriptor, parse_vp9
from engine.batchio cimport MSG_DONTWAIT, iovec, mmsghdr, msghdr, recvmmsg, sendmmsg
from engine.framer cimport StreamFramer
from engine.rtp cimport RtpHeader, find_extension, parse_rtp
from engine.tcpframer cimport FRAME_NONE, FRAME_OK, FRAME_HEADER, Framer, framer_next, framer_space, framer_wrote
from engine.twcc cimport (TWCC_MAX_FEEDBACK, TwccRecorder, twcc_recorder_add, twcc_recorder_feedback,
                          twcc_recorder_full, twcc_recorder_init)
from engine.wire cimport load16, load32, store16, store32


cdef extern from "<sys/epoll.h>" nogil:
    cdef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t send(int fd, const void *buf, size_t n, int flags)

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recvmsg(int fd, msghdr *message, int flags)
    ssize_t sendmsg(int fd, const msghdr *message, int flags)

cdef extern from *:
    """
    #include <errno.h>
    #include <poll.h>
    #include <pthread.h>
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    /* Publish a slot to the other thread only once it is fully written. */
    static inline void loadgen_publish(int *where, int value) { __atomic_store_n(where, value, __ATOMIC_RELEASE); }
    static inline int loadgen_acquire(int *where) { return __atomic_load_n(where, __ATOMIC_ACQUIRE); }
    /* The kernel's receive time (CLOCK_REALTIME ns) of a datagram read with SO_TIMESTAMPNS on, else 0. */
    static inline int64_t loadgen_arrival(struct msghdr *m) {
        struct cmsghdr *c;
        struct timespec t;
        for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                memcpy(&t, CMSG_DATA(c), sizeof t);
                return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
            }
        }
        return 0;
    }
    static inline int loadgen_stamp_arrivals(int fd) {
        int on = 1;
        return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
    }
    /* One lock for every write to a stream socket: the sender's media, the receiver's feedback and Python's STUN
       may share a socket, and a frame must not be cut by another's. Writes are short and rare enough per socket
       that one lock for all is not contended. */
    static pthread_mutex_t loadgen_stream_lock = PTHREAD_MUTEX_INITIALIZER;
    /* Writes `count` iovecs whole to a non-blocking stream socket, waiting up to timeout_ms for room each time
       the kernel takes only part; 0, or -1 when it could not (then the stream may be cut mid-frame). */
    static int loadgen_write_all(int fd, struct iovec *iov, int count, int timeout_ms) {
        struct msghdr m;
        struct pollfd p;
        ssize_t n;
        int result = 0;
        pthread_mutex_lock(&loadgen_stream_lock);
        while (count > 0) {
            memset(&m, 0, sizeof m);
            m.msg_iov = iov;
            m.msg_iovlen = count;
            n = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                p.fd = fd;
                p.events = POLLOUT;
                if ((errno != EAGAIN && errno != EWOULDBLOCK) || poll(&p, 1, timeout_ms) <= 0) {
                    result = -1;
                    break;
                }
                continue;
            }
            while (count > 0 && (size_t)n >= iov->iov_len) {
                n -= iov->iov_len;
                iov++;
                count--;
            }
            if (count > 0) {
                iov->iov_base = (char *)iov->iov_base + n;
                iov->iov_len -= n;
            }
        }
        pthread_mutex_unlock(&loadgen_stream_lock);
        return result;
    }
    """
    void loadgen_publish(int *where, int value) nogil
    int loadgen_acquire(int *where) nogil
    int64_t loadgen_arrival(msghdr *m) nogil
    int loadgen_stamp_arrivals(int fd) nogil
    int loadgen_write_all(int fd, iovec *iov, int count, int timeout_ms) nogil


cdef enum:
    MAX_PACKET = 1500
    MAX_FRAME_PACKETS = 32        # also a VP9 SVC picture's, all spatial layers
    MAX_EXTENSION = 64
    TRAILER = 12              # "TERN" + 8-byte send time
    RECV_BATCH = 64
    RECV_BUF = 2048
    CONTROL_BUF = 64          # room for one SCM_TIMESTAMPNS
    MAX_EVENTS = 256
    MAX_SSRCS = 32            # distinct SSRCs counted per receiving socket
    STUN_BUF = 256            # a server's consent check (~110 bytes) kept for Python to answer (take_stun)
    BUCKET_NS = 10000         # latency histogram: 10 µs buckets ...
    BUCKETS = 20000           # ... up to 200 ms, the last bucket holds everything above
    # transport-cc feedback from a receiving socket: every 100 ms while packets are held (libwebrtc's default
    # interval; it adapts within 50-250 ms to the bitrate, which a fixed-rate load does not need).
    TWCC_FEEDBACK_INTERVAL_NS = 100000000
    TWCC_FEEDBACKS_PER_SEND = 8   # feedback packets one send may take (a long report is split): bounds the work
    TWCC_SCAN_NS = 50000000       # how often idle sockets are checked for held packets
    # A write to a stream socket the kernel took only part of waits this long for room (each time) to finish its
    # frame: the server reads far faster than this load sends, so only a server that stopped reading gets here.
    STREAM_WRITE_TIMEOUT_MS = 100
    STREAM_READS = 16             # reads of one stream socket per readiness, so one busy socket cannot hold the loop
    CHANNEL_HEADER = 4            # TURN ChannelData: channel number, length
    # VP9 L3T3_KEY: three spatial layers (the top one SVC_WIDTH x SVC_HEIGHT, each below half the size) of three
    # temporal layers in libwebrtc's pattern T0 T2 T1 T2; upper spatial layers reference the one below only in
    # keyframes. The payload descriptor is flexible mode, as Chromium writes it.
    SVC_SPATIAL = 3
    SVC_PATTERN = 4
    SVC_WIDTH = 1280
    SVC_HEIGHT = 720
    VP9_DESCRIPTOR_MAX = 5 + 1 + 4 * SVC_SPATIAL   # the longest: a keyframe's S0 with its scalability structure
    LAYER_IDS = 4                 # spatial and temporal ids a receiver counts packets of (0..3 each)

cdef const uint8_t *MAGIC = b"TERN"
# By position in the temporal pattern (T0 T2 T1 T2): the temporal id, the switching-up bit, and the one P_DIFF (the
# picture referenced: T0 the T0 before, T1 that T0, each T2 the picture just before).
cdef uint8_t SVC_TID[SVC_PATTERN]
cdef uint8_t SVC_UP[SVC_PATTERN]
cdef uint8_t SVC_PDIFF[SVC_PATTERN]
SVC_TID[:] = [0, 2, 1, 2]
SVC_UP[:] = [0, 1, 1, 0]
SVC_PDIFF[:] = [4, 1, 2, 1]
LATENCY_BUCKET_US = BUCKET_NS // 1000
LATENCY_BUCKETS = BUCKETS


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


cdef inline int64_t wall_ns() noexcept nogil:
    # Send and arrival times: kernel receive timestamps are on this clock.
    cdef timespec t
    clock_gettime(CLOCK_REALTIME, &t)
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


cdef inline void store64(uint8_t *p, uint64_t v) noexcept nogil:
    store32(p, <uint32_t>(v >> 32))
    store32(p + 4, <uint32_t>v)


cdef inline uint64_t load64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>load32(p) << 32) | load32(p + 4)


cdef int write_framed(int fd, const uint8_t *data, int length) noexcept nogil:
    """One RFC 4571 frame on stream socket `fd`, whole; 0 or -1 (see loadgen_write_all)."""
    cdef uint8_t header[FRAME_HEADER]
    cdef iovec parts[2]
    store16(header, <uint16_t>length)
    parts[0].iov_base = header
    parts[0].iov_len = FRAME_HEADER
    parts[1].iov_base = <void *>data
    parts[1].iov_len = length
    return loadgen_write_all(fd, parts, 2, STREAM_WRITE_TIMEOUT_MS)


def send_framed(int fd, bytes data) -> None:
    """Sends `data` as one RFC 4571 frame on stream socket `fd` (a STUN message from the control plane after the
    socket went to loadgen: whole, never inside another writer's frame)."""
    cdef const uint8_t *p = data
    cdef int length = len(data), result
    if length > 0xFFFF:
        raise ValueError("a frame holds at most 65535 bytes")
    with nogil:
        result = write_framed(fd, p, length)
    if result != 0:
        raise OSError(errno, "send_framed")


cdef int send_channel(int fd, uint16_t channel, const uint8_t *data, int length) noexcept nogil:
    """One ChannelData datagram on `channel` to the TURN server `fd` is connected to; 0, or -1 if not sent."""
    cdef uint8_t header[CHANNEL_HEADER]
    cdef iovec parts[2]
    cdef msghdr message
    store16(header, channel)
    store16(header + 2, <uint16_t>length)
    parts[0].iov_base = header
    parts[0].iov_len = CHANNEL_HEADER
    parts[1].iov_base = <void *>data
    parts[1].iov_len = length
    memset(&message, 0, sizeof(msghdr))
    message.msg_iov = parts
    message.msg_iovlen = 2
    return 0 if sendmsg(fd, &message, MSG_DONTWAIT) == CHANNEL_HEADER + length else -1


# ---- sender -------------------------------------------------------------------------------------------------

cdef struct Stream:
    int fd
    int framed                     # fd is an ICE-TCP stream: each packet goes out as an RFC 4571 frame
    uint16_t channel               # fd is connected to a TURN server: each packet goes out as ChannelData on it; or 0
    void *srtp
    uint32_t ssrc
    uint8_t payload_type
    uint8_t video
    uint16_t seq
    uint16_t picture_id
    uint32_t timestamp_step        # RTP clock ticks per frame
    int64_t start_ns
    int64_t frame_ns               # time between frames (audio: between packets)
    uint64_t frame                 # next frame to send
    int packets_per_frame
    int payload_size
    int keyframe_frames
    uint8_t extension[MAX_EXTENSION]
    int extension_length
    int level_offset               # byte of the audio level in `extension`, or -1
    int twcc_offset                # first byte of the transport-wide sequence number in `extension`, or -1
    uint16_t *transport_seq        # the next one, shared by the streams of one transport; NULL without
    uint8_t svc_packets[SVC_SPATIAL][SVC_PATTERN]  # a VP9 SVC stream's packets per layer frame (see add_stream); or 0s
    uint64_t svc_index             # pictures since the last keyframe: the position in the temporal pattern
    int keyframe_requested         # a PLI or FIR arrived: the next frame is a keyframe
    uint64_t packets
    uint64_t bytes
    uint64_t frames_late           # frames sent more than one frame period after their due time
    uint64_t errors                # protect or send failures
    uint64_t keyframe_requests


cdef class _Worker:
    """A C loop on its own thread, without the GIL, from start() until stop()."""

    cdef volatile int running
    cdef object thread
    role = "worker"  # names the thread: loadgen-<role>

    def start(self) -> None:
        if self.thread is None:
            self.running = 1
            self.thread = threading.Thread(target=self._run, name=f"loadgen-{self.role}", daemon=True)
            self.thread.start()

    def stop(self) -> None:
        self.running = 0
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _run(self) -> None:
        with nogil:
            self._loop()

    cdef void _loop(self) noexcept nogil:
        pass


cdef class LoadSender(_Worker):
    """Paced SRTP streams on connected UDP sockets; streams may be added while it runs."""

    role = "sender"

    cdef Stream *streams
    cdef int capacity
    cdef int count
    cdef uint16_t *transport_seqs  # by transport index (new_transport)
    cdef int transports
    cdef uint8_t buffers[MAX_FRAME_PACKETS][MAX_PACKET + srtp.SRTP_TRAILER]
    cdef iovec iovecs[MAX_FRAME_PACKETS]
    cdef mmsghdr messages[MAX_FRAME_PACKETS]
    cdef uint8_t frame_headers[MAX_FRAME_PACKETS][CHANNEL_HEADER]  # RFC 4571 (2 bytes) or ChannelData (4) headers
    cdef iovec stream_iovecs[2 * MAX_FRAME_PACKETS]  # header, packet, header, packet ...: a frame in one writev

    def start(self) -> None:
        """Starts sending; after a stop() the streams resume their pace from now instead of sending the frames they
        missed meanwhile in one burst."""
        cdef int i
        cdef int64_t now = now_ns()
        if self.thread is None:
            for i in range(self.count):
                self.streams[i].start_ns = now - <int64_t>self.streams[i].frame * self.streams[i].frame_ns
        _Worker.start(self)

    def __cinit__(self, int capacity=4096):
        self.streams = <Stream *>calloc(capacity, sizeof(Stream))
        self.transport_seqs = <uint16_t *>calloc(capacity, sizeof(uint16_t))
        if self.streams == NULL or self.transport_seqs == NULL:
            raise MemoryError()
        self.capacity = capacity

    def __dealloc__(self):
        free(self.streams)
        free(self.transport_seqs)

    def new_transport(self) -> int:
        """A transport-wide sequence number for the streams of one transport to share (add_stream's
        `transport`)."""
        if self.transports >= self.capacity:
            raise RuntimeError("sender is full")
        self.transports += 1
        return self.transports - 1

    def add_stream(self, int fd, uintptr_t srtp_session, uint32_t ssrc, int payload_type, bint video, *,
                   int packets_per_frame, double frames_per_second, int payload_size, int clock_rate,
                   int keyframe_frames=0, bytes extension=b"", int level_offset=-1, int twcc_offset=-1,
                   int transport=-1, bint framed=False, int channel=0, bytes svc_packets=b"") -> int:
        """Starts sending one stream now. `extension` is a whole RTP header extension block (with its 0xBEDE
        header) or b""; `level_offset` the byte in it holding an RFC 6464 audio level, which then varies;
        `twcc_offset` the first of 2 bytes in it where each packet gets transport `transport`'s next transport-wide
        sequence number. `framed`: `fd` is an ICE-TCP stream (RFC 4571 frames); `channel`: `fd` is connected to a
        TURN server and packets go as ChannelData on this channel.
        `svc_packets` (video): a VP9 L3T3_KEY stream instead of VP8 (`packets_per_frame` is then ignored): for
        each spatial layer, lowest first, the packets of its frame in a keyframe, a T0, a T1 and a T2 picture (12
        bytes). Each picture's layer frames go in one burst at one timestamp, the marker on the top layer's last
        packet; the keyframe's S0 carries the scalability structure."""
        if self.count >= self.capacity:
            raise RuntimeError("sender is full")
        if svc_packets and (not video or len(svc_packets) != SVC_SPATIAL * SVC_PATTERN or min(svc_packets) < 1
                            or any(sum(svc_packets[i::SVC_PATTERN]) > MAX_FRAME_PACKETS for i in range(SVC_PATTERN))):
            raise ValueError(f"svc_packets: {SVC_SPATIAL}x{SVC_PATTERN} counts of 1 or more, at most "
                             f"{MAX_FRAME_PACKETS} a picture")
        if not 0 < packets_per_frame <= MAX_FRAME_PACKETS or not 12 + TRAILER + 8 <= payload_size <= 1300 or (
                svc_packets and payload_size < TRAILER + VP9_DESCRIPTOR_MAX + 150 + 100):
            raise ValueError("packets_per_frame or payload_size out of range")
        if len(extension) > MAX_EXTENSION or len(extension) % 4 or not -1 <= level_offset < len(extension):
            raise ValueError("bad header extension block")
        if twcc_offset != -1 and not (0 <= twcc_offset <= len(extension) - 2 and 0 <= transport < self.transports):
            raise ValueError("bad transport-cc offset or transport")
        if channel and (framed or not 0x4000 <= channel <= 0x7FFF):
            raise ValueError("bad TURN channel (0x4000-0x7FFF, over UDP)")
        cdef Stream *s = &self.streams[self.count]
        memset(s, 0, sizeof(Stream))
        s.fd = fd
        s.framed = framed
        s.channel = <uint16_t>channel
        s.srtp = <void *>srtp_session
        s.ssrc = ssrc
        s.payload_type = payload_type
        s.video = video
        s.seq = <uint16_t>((ssrc * <uint32_t>2654435761) >> 16)
        s.picture_id = <uint16_t>(ssrc & 0x7FFF)
        s.timestamp_step = <uint32_t>(clock_rate / frames_per_second)
        s.frame_ns = <int64_t>(1e9 / frames_per_second)
        s.start_ns = now_ns()
        s.packets_per_frame = packets_per_frame
        s.payload_size = payload_size
        s.keyframe_frames = keyframe_frames
        memcpy(s.extension, <const uint8_t *>extension, len(extension))
        s.extension_length = len(extension)
        s.level_offset = level_offset
        s.twcc_offset = twcc_offset
        s.transport_seq = &self.transport_seqs[transport] if twcc_offset >= 0 else NULL
        if svc_packets:
            memcpy(s.svc_packets, <const uint8_t *>svc_packets, SVC_SPATIAL * SVC_PATTERN)
        loadgen_publish(&self.count, self.count + 1)
        return self.count - 1

    def stats(self) -> dict:
        cdef uint64_t packets = 0, size = 0, late = 0, errors = 0, requests = 0
        cdef int i
        for i in range(self.count):
            requests += self.streams[i].keyframe_requests
            packets += self.streams[i].packets
            size += self.streams[i].bytes
            late += self.streams[i].frames_late
            errors += self.streams[i].errors
        return {"streams": self.count, "packets": packets, "bytes": size, "frames_late": late, "errors": errors,
                "keyframe_requests": requests}


    cdef void request_keyframe(self, uint32_t ssrc) noexcept nogil:
        cdef int i
        for i in range(loadgen_acquire(&self.count)):
            if self.streams[i].ssrc == ssrc:
                self.streams[i].keyframe_requested = 1
                self.streams[i].keyframe_requests += 1

    cdef void _loop(self) noexcept nogil:
        cdef int i, count
        cdef int64_t now, due, next_due
        cdef Stream *s
        cdef timespec pause
        while self.running:
            now = now_ns()
            next_due = now + 1000000
            count = loadgen_acquire(&self.count)
            for i in range(count):
                s = &self.streams[i]
                due = s.start_ns + <int64_t>s.frame * s.frame_ns
                while due <= now:
                    if now - due > s.frame_ns:
                        s.frames_late += 1
                    self._send_frame(s, now)
                    due = s.start_ns + <int64_t>s.frame * s.frame_ns
                if due < next_due:
                    next_due = due
            due = next_due - now_ns()
            if due > 0:
                pause.tv_sec = 0
                pause.tv_nsec = due
                nanosleep(&pause, NULL)

    cdef void _send_frame(self, Stream *s, int64_t now) noexcept nogil:
        cdef int i, length, sent = 0
        cdef uint8_t vp8[5]
        cdef bint keyframe = s.video and (s.keyframe_requested or (
            s.keyframe_frames > 0 and s.frame % <uint64_t>s.keyframe_frames == 0))
        s.keyframe_requested = 0
        cdef uint32_t timestamp = <uint32_t>(s.ssrc + s.frame * s.timestamp_step)
        if s.level_offset >= 0:  # a talker whose level drifts between loud and quiet (0 dBov .. -127)
            s.extension[s.level_offset] = 0x80 | <uint8_t>(20 + (s.frame // 25) % 40)
        if s.svc_packets[0][0]:
            sent = self._vp9_picture(s, keyframe, timestamp)
        else:
            # VP8 descriptor: X, S on the first packet, 15-bit picture id; then the frame tag
            vp8[1] = 0x80
            vp8[2] = 0x80 | <uint8_t>(s.picture_id >> 8)
            vp8[3] = <uint8_t>s.picture_id
            vp8[4] = 0x10 if keyframe else 0x11  # show_frame; bit 0 is the inverse keyframe flag
            for i in range(s.packets_per_frame):
                vp8[0] = 0x90 if i == 0 else 0x80
                sent = self._packet(s, sent, timestamp, i == s.packets_per_frame - 1,
                                    s.video and i == s.packets_per_frame - 1, vp8 if s.video else NULL,
                                    5 if i == 0 else 4)
        s.frame += 1
        s.picture_id = (s.picture_id + 1) & 0x7FFF
        if s.framed:
            self._write_frames(s, sent)
            return
        if s.channel:
            self._wrap_channel(s, sent)
        i = 0
        while i < sent:
            length = sendmmsg(s.fd, &self.messages[i], sent - i, 0)
            if length < 0:
                if errno == EINTR:
                    continue
                s.errors += sent - i  # e.g. ECONNREFUSED before the peer listens: counted, not fatal
                break
            i += length
            s.packets += length

    cdef int _packet(self, Stream *s, int sent, uint32_t timestamp, bint last_of_frame, bint marker,
                     const uint8_t *descriptor, int descriptor_length) noexcept nogil:
        """Builds and protects the stream's next packet in slot `sent` (its payload: `descriptor`, filler, the
        trailer) and sets up its message; returns `sent` + 1, or `sent` when it could not be protected."""
        cdef uint8_t *p = self.buffers[sent]
        cdef int header, size, length
        p[0] = 0x90 if s.extension_length else 0x80
        p[1] = s.payload_type | (0x80 if marker else 0)
        store16(p + 2, s.seq)
        store32(p + 4, timestamp)
        store32(p + 8, s.ssrc)
        s.seq += 1
        memcpy(p + 12, s.extension, s.extension_length)
        if s.transport_seq != NULL:
            store16(p + 12 + s.twcc_offset, s.transport_seq[0])
            s.transport_seq[0] += 1
        header = 12 + s.extension_length
        # Frame sizes vary as an encoder's do; a packetizer cuts a frame into equal packets and a shorter last
        # one (so a subscriber's packets of a frame can leave in one GSO send).
        size = s.payload_size
        if s.video and s.payload_size > 400:
            size -= <int>((s.frame * 37) % 100)
            if last_of_frame:
                size -= 150
        length = header + size
        memset(p + header, 0x5A, size - TRAILER)
        if descriptor != NULL:
            memcpy(p + header, descriptor, descriptor_length)
        memcpy(p + length - TRAILER, MAGIC, 4)
        store64(p + length - 8, <uint64_t>wall_ns())
        if srtp.protect(s.srtp, p, &length) != 0:
            s.errors += 1
            return sent
        self.iovecs[sent].iov_base = p
        self.iovecs[sent].iov_len = length
        memset(&self.messages[sent], 0, sizeof(mmsghdr))
        self.messages[sent].msg_hdr.msg_iov = &self.iovecs[sent]
        self.messages[sent].msg_hdr.msg_iovlen = 1
        s.bytes += length
        return sent + 1

    cdef int _vp9_picture(self, Stream *s, bint keyframe, uint32_t timestamp) noexcept nogil:
        """A VP9 L3T3_KEY picture's packets (see add_stream), each with its flexible-mode payload descriptor
        (RFC 9628 4.2): |I|P|L|F|B|E|V|Z|, the 15-bit picture id, |TID|U|SID|D|, a P_DIFF when P, the scalability
        structure (N_S, Y: the layers' resolutions; no picture group in flexible mode) on the keyframe's first
        packet. Returns the packets ready."""
        cdef uint8_t d[VP9_DESCRIPTOR_MAX]
        cdef int sid, i, n, count, layer, sent = 0
        cdef int position
        if keyframe:
            s.svc_index = 0
        position = <int>(s.svc_index % SVC_PATTERN)
        s.svc_index += 1
        for sid in range(SVC_SPATIAL):
            count = s.svc_packets[sid][0 if keyframe else 1 + SVC_TID[position]]
            for i in range(count):
                # P: a delta frame references its own layer's earlier picture; D: a keyframe's upper layer the
                # layer below; Z: no upper layer of this picture references it (every delta frame, the top layer).
                d[0] = (0x80 | 0x20 | 0x10 | (0x08 if i == 0 else 0) | (0x04 if i == count - 1 else 0)
                        | (0 if keyframe else 0x40) | (0x02 if keyframe and sid == 0 and i == 0 else 0)
                        | (0x01 if not keyframe or sid == SVC_SPATIAL - 1 else 0))
                d[1] = 0x80 | <uint8_t>(s.picture_id >> 8)
                d[2] = <uint8_t>s.picture_id
                d[3] = (SVC_TID[position] << 5 | SVC_UP[position] << 4 | sid << 1
                        | (1 if keyframe and sid > 0 else 0))
                n = 4
                if not keyframe:
                    d[n] = SVC_PDIFF[position] << 1  # N = 0: the only reference
                    n += 1
                elif sid == 0 and i == 0:
                    d[n] = (SVC_SPATIAL - 1) << 5 | 0x10  # N_S, Y
                    n += 1
                    for layer in range(SVC_SPATIAL):
                        store16(d + n, SVC_WIDTH >> (SVC_SPATIAL - 1 - layer))
                        store16(d + n + 2, SVC_HEIGHT >> (SVC_SPATIAL - 1 - layer))
                        n += 4
                sent = self._packet(s, sent, timestamp, i == count - 1, sid == SVC_SPATIAL - 1 and i == count - 1,
                                    d, n)
        return sent

    cdef void _wrap_channel(self, Stream *s, int sent) noexcept nogil:
        """Each of the `sent` messages becomes a ChannelData message: its header, then the packet."""
        cdef int i
        for i in range(sent):
            store16(self.frame_headers[i], s.channel)
            store16(self.frame_headers[i] + 2, <uint16_t>self.iovecs[i].iov_len)
            self.stream_iovecs[2 * i].iov_base = self.frame_headers[i]
            self.stream_iovecs[2 * i].iov_len = CHANNEL_HEADER
            self.stream_iovecs[2 * i + 1] = self.iovecs[i]
            self.messages[i].msg_hdr.msg_iov = &self.stream_iovecs[2 * i]
            self.messages[i].msg_hdr.msg_iovlen = 2

    cdef void _write_frames(self, Stream *s, int sent) noexcept nogil:
        """The `sent` protected packets in self.iovecs as RFC 4571 frames, in one write."""
        cdef int i
        for i in range(sent):
            store16(self.frame_headers[i], <uint16_t>self.iovecs[i].iov_len)
            self.stream_iovecs[2 * i].iov_base = self.frame_headers[i]
            self.stream_iovecs[2 * i].iov_len = FRAME_HEADER
            self.stream_iovecs[2 * i + 1] = self.iovecs[i]
        if loadgen_write_all(s.fd, self.stream_iovecs, 2 * sent, STREAM_WRITE_TIMEOUT_MS) == 0:
            s.packets += sent
        else:
            s.errors += sent


# ---- receiver -----------------------------------------------------------------------------------------------

cdef struct SsrcCount:
    uint32_t ssrc
    uint16_t last_seq
    uint64_t packets
    uint64_t lost


cdef struct Slot:
    int fd
    void *srtp
    Framer *framer               # an ICE-TCP stream's de-framer (RFC 4571), NULL for a UDP socket
    int closed                   # the stream ended (the server closed it, or it failed): no longer watched
    uint16_t channel             # TURN: what arrives is ChannelData on this channel (0: plain datagrams)
    int answers_keyframe_requests  # a publisher's socket: PLI and FIR go to the LoadReceiver's LoadSender
    int64_t first_media_ns       # 0 until the first authenticated RTP packet
    uint64_t packets             # authenticated RTP
    uint64_t bytes
    uint64_t lost                # sequence gaps, summed over SSRCs
    uint64_t reordered           # late or duplicate sequence numbers
    uint64_t auth_failures
    uint64_t rtcp
    uint64_t other               # STUN, DTLS, anything else
    uint64_t untimed             # RTP without our trailer (not from a LoadSender)
    int ssrc_count
    SsrcCount ssrcs[MAX_SSRCS]
    int stun_length              # 0, or a Binding request waiting in `stun` (published by the thread, taken by Python)
    uint8_t stun[STUN_BUF]
    # transport-cc: the extension id the answer accepted (0: not negotiated), the receive record, and the outbound
    # SRTCP session its feedback is protected with (used by this thread only)
    int twcc_ext_id
    TwccRecorder *twcc
    void *srtcp_tx
    uint32_t local_ssrc          # the feedback's sender SSRC
    uint64_t twcc_feedback_sent
    uint64_t twcc_errors         # protect or send failures, or a feedback that could not be built
    int vp9_payload_type         # packets of this payload type are counted by layer (see layers); -1: none
    uint64_t layers[LAYER_IDS][LAYER_IDS]  # VP9 packets by spatial, then temporal id


cdef class LoadReceiver(_Worker):
    """Counts and checks the SRTP arriving on many sockets; sockets may be added while it runs."""

    role = "receiver"

    cdef Slot *slots
    cdef int capacity
    cdef int count
    cdef int epoll_fd
    cdef LoadSender sender
    cdef uint64_t *histogram
    cdef int64_t last_scan_ns
    cdef uint8_t feedback[TWCC_MAX_FEEDBACK + srtp.SRTCP_TRAILER]
    cdef uint8_t buffers[RECV_BATCH][RECV_BUF]
    cdef uint8_t controls[RECV_BATCH][CONTROL_BUF]
    cdef iovec iovecs[RECV_BATCH]
    cdef mmsghdr messages[RECV_BATCH]

    def __cinit__(self, int capacity=4096, LoadSender sender=None):
        self.sender = sender
        self.slots = <Slot *>calloc(capacity, sizeof(Slot))
        self.histogram = <uint64_t *>calloc(BUCKETS, sizeof(uint64_t))
        self.epoll_fd = epoll_create1(EPOLL_CLOEXEC)
        if self.slots == NULL or self.histogram == NULL or self.epoll_fd < 0:
            raise MemoryError()
        self.capacity = capacity

    def __dealloc__(self):
        cdef int i
        if self.epoll_fd >= 0:
            close(self.epoll_fd)
        for i in range(self.count):
            free(self.slots[i].twcc)
            free(self.slots[i].framer)
        free(self.slots)
        free(self.histogram)

    def add_socket(self, int fd, uintptr_t srtp_session, bint publisher=False, *, int transport_cc_id=0,
                   uintptr_t srtcp_session=0, uint32_t local_ssrc=1, StreamFramer stream=None,
                   int channel=0, int vp9_payload_type=-1) -> int:
        """Starts receiving on `fd` (non-blocking, connected) with the inbound libsrtp session; returns its index.
        With `stream`, `fd` is an ICE-TCP stream, de-framed from where `stream` (which read it so far) left off;
        with `channel`, `fd` is connected to a TURN server and ChannelData on that channel is unwrapped (and
        feedback wrapped).
        On a `publisher` socket, keyframe requests (PLI, FIR) make the LoadSender's stream of that SSRC send one.
        With `transport_cc_id` (1..14, the answer's extmap id), arrivals are recorded and transport-cc feedback
        from `local_ssrc` leaves through the outbound session `srtcp_session`, which only this thread may use.
        With `vp9_payload_type`, packets of that payload type are counted by the spatial and temporal ids of their
        VP9 payload descriptor (socket_stats' `layers`)."""
        if publisher and self.sender is None:
            raise ValueError("a publisher socket needs the LoadReceiver to have a LoadSender")
        if self.count >= self.capacity:
            raise RuntimeError("receiver is full")
        if transport_cc_id and not (1 <= transport_cc_id <= 14 and srtcp_session):
            raise ValueError("transport-cc needs a one-byte extension id and an outbound SRTCP session")
        cdef int index = self.count
        cdef Slot *slot = &self.slots[index]
        cdef epoll_event event
        memset(slot, 0, sizeof(Slot))
        slot.fd = fd
        slot.srtp = <void *>srtp_session
        slot.answers_keyframe_requests = publisher
        slot.channel = <uint16_t>channel
        slot.vp9_payload_type = vp9_payload_type
        if stream is not None:
            slot.framer = <Framer *>malloc(sizeof(Framer))
            if slot.framer == NULL:
                raise MemoryError()
            memcpy(slot.framer, stream.f, sizeof(Framer))
        if transport_cc_id:
            slot.twcc = <TwccRecorder *>calloc(1, sizeof(TwccRecorder))
            if slot.twcc == NULL:
                raise MemoryError()
            twcc_recorder_init(slot.twcc)
            slot.twcc_ext_id = transport_cc_id
            slot.srtcp_tx = <void *>srtcp_session
            slot.local_ssrc = local_ssrc
        loadgen_publish(&self.count, index + 1)
        event.events = EPOLLIN
        event.data.u64 = index
        loadgen_stamp_arrivals(fd)  # without it, latency falls back to the time the thread read the packet
        if epoll_ctl(self.epoll_fd, EPOLL_CTL_ADD, fd, &event) != 0:
            raise OSError(errno, "epoll_ctl")
        return index

    def socket_stats(self, int index) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(index)
        cdef Slot *s = &self.slots[index]
        return {"first_media_ns": s.first_media_ns, "closed": bool(s.closed), "packets": s.packets, "bytes": s.bytes,
                "lost": s.lost, "reordered": s.reordered, "auth_failures": s.auth_failures, "rtcp": s.rtcp,
                "other": s.other, "untimed": s.untimed, "twcc_feedback_sent": s.twcc_feedback_sent,
                "twcc_errors": s.twcc_errors,
                "ssrcs": {s.ssrcs[i].ssrc: s.ssrcs[i].packets for i in range(s.ssrc_count)},
                "layers": {(sid, tid): s.layers[sid][tid] for sid in range(LAYER_IDS) for tid in range(LAYER_IDS)
                           if s.layers[sid][tid]}}

    def take_stun(self, int index) -> bytes | None:
        """The Binding request that arrived on socket `index` since the last call (requests arriving while one waits
        are dropped: the sender retries), or None."""
        if not 0 <= index < self.count:
            raise IndexError(index)
        cdef Slot *s = &self.slots[index]
        cdef int length = loadgen_acquire(&s.stun_length)
        if length == 0:
            return None
        data = (<char *>s.stun)[:length]
        loadgen_publish(&s.stun_length, 0)
        return data

    def totals(self) -> dict:
        cdef dict out = dict.fromkeys(("packets", "bytes", "lost", "reordered", "auth_failures", "rtcp", "other",
                                       "untimed", "twcc_feedback_sent", "twcc_errors", "ssrcs"), 0)
        cdef Slot *s
        cdef int i
        for i in range(self.count):
            s = &self.slots[i]
            out["packets"] += s.packets
            out["bytes"] += s.bytes
            out["lost"] += s.lost
            out["reordered"] += s.reordered
            out["auth_failures"] += s.auth_failures
            out["rtcp"] += s.rtcp
            out["other"] += s.other
            out["untimed"] += s.untimed
            out["twcc_feedback_sent"] += s.twcc_feedback_sent
            out["twcc_errors"] += s.twcc_errors
            out["ssrcs"] += s.ssrc_count
        out["sockets"] = self.count
        return out

    def latency_snapshot(self) -> bytes:
        """The latency histogram so far (BUCKETS native uint64 counts of LATENCY_BUCKET_US each); diff two
        snapshots with latency_percentiles to measure a window."""
        return (<char *>self.histogram)[:BUCKETS * sizeof(uint64_t)]


    cdef void _loop(self) noexcept nogil:
        cdef epoll_event events[MAX_EVENTS]
        cdef int ready, i
        cdef int64_t now
        while self.running:
            ready = epoll_wait(self.epoll_fd, events, MAX_EVENTS, TWCC_SCAN_NS // 1000000)
            for i in range(ready):
                self._drain(&self.slots[events[i].data.u64])
            now = now_ns()
            if now - self.last_scan_ns >= TWCC_SCAN_NS:  # sockets that went quiet with packets held
                self.last_scan_ns = now
                for i in range(loadgen_acquire(&self.count)):
                    self._feedback_due(&self.slots[i], now)

    cdef inline void _feedback_due(self, Slot *slot, int64_t now) noexcept nogil:
        if slot.twcc != NULL and slot.twcc.held > 0 and now // 1000 - slot.twcc.last_feedback_us >= \
                TWCC_FEEDBACK_INTERVAL_NS // 1000:
            self._send_feedback(slot, now)

    cdef void _send_feedback(self, Slot *slot, int64_t now) noexcept nogil:
        """Everything the record holds, as transport-cc feedback (SRTCP), as libwebrtc's receiver does."""
        cdef int i, length
        for i in range(TWCC_FEEDBACKS_PER_SEND):
            length = twcc_recorder_feedback(slot.twcc, self.feedback, TWCC_MAX_FEEDBACK, slot.local_ssrc, now // 1000)
            if length == 0:
                return
            if length < 0 or srtp.protect_rtcp(slot.srtcp_tx, self.feedback, &length) != 0 or (
                    write_framed(slot.fd, self.feedback, length) != 0 if slot.framer != NULL
                    else send_channel(slot.fd, slot.channel, self.feedback, length) != 0 if slot.channel
                    else send(slot.fd, self.feedback, length, MSG_DONTWAIT) != length):
                slot.twcc_errors += 1
                return
            slot.twcc_feedback_sent += 1

    cdef void _drain(self, Slot *slot) noexcept nogil:
        cdef int n, i
        cdef int64_t now, wall, arrival
        if slot.framer != NULL:
            self._drain_stream(slot)
            return
        while True:
            for i in range(RECV_BATCH):  # the kernel rewrites msg_controllen: reset every time
                self.iovecs[i].iov_base = self.buffers[i]
                self.iovecs[i].iov_len = RECV_BUF
                memset(&self.messages[i], 0, sizeof(mmsghdr))
                self.messages[i].msg_hdr.msg_iov = &self.iovecs[i]
                self.messages[i].msg_hdr.msg_iovlen = 1
                self.messages[i].msg_hdr.msg_control = self.controls[i]
                self.messages[i].msg_hdr.msg_controllen = CONTROL_BUF
            n = recvmmsg(slot.fd, self.messages, RECV_BATCH, MSG_DONTWAIT, NULL)
            if n <= 0:
                if n < 0 and errno == EINTR:
                    continue
                return
            now = now_ns()
            wall = wall_ns()
            for i in range(n):
                arrival = loadgen_arrival(&self.messages[i].msg_hdr)
                self._packet(slot, self.buffers[i], <int>self.messages[i].msg_len, now, arrival if arrival else wall)
            self._feedback_due(slot, now)
            if n < RECV_BATCH:
                return

    cdef void _drain_stream(self, Slot *slot) noexcept nogil:
        """Reads an ICE-TCP stream into its framer and takes each whole frame as a datagram; frames left from
        Python's handshake first. Frames of one read share its arrival time."""
        cdef uint8_t *space
        cdef int reads
        cdef ssize_t n
        cdef int64_t now = now_ns(), arrival
        self._take_frames(slot, now, wall_ns())
        for reads in range(STREAM_READS):
            self.iovecs[0].iov_len = framer_space(slot.framer, &space)
            self.iovecs[0].iov_base = space
            memset(&self.messages[0], 0, sizeof(mmsghdr))
            self.messages[0].msg_hdr.msg_iov = &self.iovecs[0]
            self.messages[0].msg_hdr.msg_iovlen = 1
            self.messages[0].msg_hdr.msg_control = self.controls[0]
            self.messages[0].msg_hdr.msg_controllen = CONTROL_BUF
            n = recvmsg(slot.fd, &self.messages[0].msg_hdr, MSG_DONTWAIT)
            if n < 0 and errno == EINTR:
                continue
            if n == 0 or (n < 0 and errno != EAGAIN):  # ended (EWOULDBLOCK is EAGAIN on Linux): stop watching it
                slot.closed = 1
                epoll_ctl(self.epoll_fd, EPOLL_CTL_DEL, slot.fd, NULL)
                break
            if n < 0:
                break
            framer_wrote(slot.framer, <int>n)
            now = now_ns()
            arrival = loadgen_arrival(&self.messages[0].msg_hdr)
            self._take_frames(slot, now, arrival if arrival else wall_ns())
        self._feedback_due(slot, now)

    cdef inline void _take_frames(self, Slot *slot, int64_t now, int64_t arrival) noexcept nogil:
        cdef const uint8_t *frame
        cdef int length, result
        while True:
            result = framer_next(slot.framer, &frame, &length)
            if result == FRAME_NONE:
                return
            if result == FRAME_OK:  # handled in place, as a datagram in a receive buffer is
                self._packet(slot, <uint8_t *>frame, length, now, arrival)
            else:  # longer than RECV_BUF: skipped by the framer
                slot.other += 1

    cdef void _packet(self, Slot *slot, uint8_t *p, int length, int64_t now, int64_t arrival) noexcept nogil:
        cdef int i, padding
        cdef uint16_t seq, expected, gap
        cdef uint32_t ssrc
        cdef int64_t latency
        cdef SsrcCount *c = NULL
        if slot.channel:  # ChannelData in; anything else is the TURN server's own (a refresh answer)
            if length < CHANNEL_HEADER or load16(p) != slot.channel or CHANNEL_HEADER + load16(p + 2) > length:
                slot.other += 1
                return
            length = load16(p + 2)
            p += CHANNEL_HEADER
        if length < 12 or p[0] >> 6 != 2:
            slot.other += 1
            if 20 <= length <= STUN_BUF and p[0] == 0 and p[1] == 1 and loadgen_acquire(&slot.stun_length) == 0:
                memcpy(slot.stun, p, length)
                loadgen_publish(&slot.stun_length, length)
            return
        if 192 <= p[1] <= 223:  # RTCP (RFC 5761 demultiplexing)
            slot.rtcp += 1
            if slot.answers_keyframe_requests:
                self._keyframe_requests(slot, p, length)
            return
        if srtp.unprotect(slot.srtp, p, &length) != 0:
            slot.auth_failures += 1
            return
        if slot.first_media_ns == 0:
            slot.first_media_ns = now
        if slot.twcc != NULL:
            self._record_arrival(slot, p, length, now, arrival)
        slot.packets += 1
        slot.bytes += length
        if (p[1] & 0x7F) == slot.vp9_payload_type:
            self._count_layer(slot, p, length)
        seq = load16(p + 2)
        ssrc = load32(p + 8)
        for i in range(slot.ssrc_count):
            if slot.ssrcs[i].ssrc == ssrc:
                c = &slot.ssrcs[i]
                break
        if c == NULL:
            if slot.ssrc_count < MAX_SSRCS:
                c = &slot.ssrcs[slot.ssrc_count]
                c.ssrc = ssrc
                c.last_seq = seq
                c.packets = 1
                slot.ssrc_count += 1
        else:
            c.packets += 1
            expected = c.last_seq + 1
            gap = seq - expected
            if gap == 0:
                c.last_seq = seq
            elif gap < 0x8000:
                c.lost += gap
                slot.lost += gap
                c.last_seq = seq
            else:
                slot.reordered += 1
        padding = p[length - 1] if p[0] & 0x20 else 0
        length -= padding
        if length >= 12 + TRAILER and memcmp(p + length - TRAILER, MAGIC, 4) == 0:
            latency = (arrival - <int64_t>load64(p + length - 8)) // BUCKET_NS
            if latency < 0:
                latency = 0
            self.histogram[latency if latency < BUCKETS else BUCKETS - 1] += 1
        else:
            slot.untimed += 1


    cdef void _count_layer(self, Slot *slot, const uint8_t *p, int length) noexcept nogil:
        cdef RtpHeader h
        cdef Vp9Descriptor d
        if parse_rtp(p, length, &h) == 0 and parse_vp9(p + h.header_length, h.payload_length, &d) == 0 and \
                d.spatial_id < LAYER_IDS and d.temporal_id < LAYER_IDS:
            slot.layers[d.spatial_id][d.temporal_id] += 1

    cdef void _record_arrival(self, Slot *slot, const uint8_t *p, int length, int64_t now,
                              int64_t arrival) noexcept nogil:
        """Notes the transport-wide sequence number of an authenticated packet at its arrival time (the kernel's,
        CLOCK_REALTIME µs: only differences between arrivals matter; the feedback times are CLOCK_MONOTONIC)."""
        cdef RtpHeader h
        cdef const uint8_t *value
        cdef int value_length
        cdef uint16_t seq
        if parse_rtp(p, length, &h) != 0 or not find_extension(p, &h, slot.twcc_ext_id, &value, &value_length) \
                or value_length < 2:
            return
        seq = load16(value)
        if twcc_recorder_full(slot.twcc, seq):
            self._send_feedback(slot, now)
        twcc_recorder_add(slot.twcc, seq, h.ssrc, arrival // 1000)

    cdef void _keyframe_requests(self, Slot *slot, uint8_t *p, int length) noexcept nogil:
        cdef int offset = 0, size
        if srtp.unprotect_rtcp(slot.srtp, p, &length) != 0:
            slot.auth_failures += 1
            return
        while length - offset >= 12:
            size = (load16(p + offset + 2) + 1) * 4
            if size > length - offset:
                return
            if p[offset + 1] == 206 and (p[offset] & 0x1F) == 1:  # PLI: media source SSRC
                self.sender.request_keyframe(load32(p + offset + 8))
            elif p[offset + 1] == 206 and (p[offset] & 0x1F) == 4 and size >= 20:  # FIR: SSRC in the FCI
                self.sender.request_keyframe(load32(p + offset + 12))
            offset += size


def latency_percentiles(bytes before, bytes after, percentiles) -> list:
    """Latency in ms at each percentile (0-100) of the packets counted between two latency_snapshot()s;
    None for each when none were."""
    cdef const uint64_t *a = <const uint64_t *><const char *>after
    cdef const uint64_t *b = <const uint64_t *><const char *>before if before else NULL
    cdef uint64_t total = 0, seen = 0
    cdef int i
    if len(after) != BUCKETS * sizeof(uint64_t) or (before and len(before) != len(after)):
        raise ValueError("not latency snapshots")
    counts = [a[i] - (b[i] if b != NULL else 0) for i in range(BUCKETS)]
    total = sum(counts)
    if total == 0:
        return [None for _ in percentiles]
    out = []
    for percentile in percentiles:
        target = total * percentile / 100.0
        seen = 0
        for i in range(BUCKETS):
            seen += counts[i]
            if seen >= target and seen > 0:
                out.append((i + 1) * BUCKET_NS / 1e6)  # the bucket's upper edge
                break
    return out
