# Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01, RTCP RTPFB fmt 15):
# building one from arrival times and parsing one into per-packet results; and the receive record a publisher
# transport keeps between feedbacks. C-level, nogil, no allocation, bounded by the input's length.
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine.bwe cimport BwePacketResult

cdef enum:
    TWCC_FMT = 15
    TWCC_HEADER = 20          # RTCP header, sender + media SSRC, base seq, status count, reference time, fb count
    TWCC_DELTA_US = 250       # receive delta unit
    TWCC_REFERENCE_US = 64000  # reference time unit (24 bits)
    TWCC_MAX_RUN = 8191       # a run-length chunk's 13-bit count
    # Bytes of one feedback we build: below a 1280-byte path MTU with IP/UDP/SRTCP overhead, like libwebrtc's
    # (which stops at its max packet size); a longer report is split over several feedbacks.
    TWCC_MAX_FEEDBACK = 1200
    # Packets one feedback may cover when we build it (the receive record holds fewer; a stack array of statuses).
    TWCC_MAX_BUILD = 2048
    # Arrivals a publisher transport remembers between feedbacks (a power of two). We report at least every
    # TWCC_FEEDBACK_INTERVAL_US and after TWCC_FEEDBACK_PACKETS, so this only fills on a gap of ~1000 numbers.
    TWCC_RECORD = 1024

cdef enum:  # twcc_recorder_add
    TWCC_RECORDED
    TWCC_LATE                 # arrived after the feedback that covered it (reported lost; not reported again)
    TWCC_DUPLICATE

cdef enum:  # packet status symbols
    TWCC_NOT_RECEIVED
    TWCC_SMALL_DELTA          # received, delta 0..255 units (1 byte)
    TWCC_LARGE_DELTA          # received, delta a signed 16-bit count of units (2 bytes)

cdef struct TwccResult:
    uint16_t seq
    uint8_t status            # TWCC_*
    int64_t arrival_us        # reference time + the deltas so far (the remote clock); 0 when not received

cdef struct TwccFeedback:
    uint32_t sender_ssrc
    uint32_t media_ssrc
    uint16_t base_seq
    uint16_t status_count     # packets the report covers (results beyond max_results are not returned)
    int64_t reference_us      # 24-bit reference time x 64 ms
    uint8_t fb_count

# Builds one feedback into `out` (`cap` bytes) for up to `count` packets numbered from `base_seq`, whose arrival
# (our clock, µs >= 0; < 0 = not received) is arrivals[(start + i) & mask]. Run-length or status vector chunks,
# whichever covers more; stops before a packet that would overflow `cap` or whose delta needs more than 16 bits.
# Returns the length and sets *reported (>= 1), or -1 when nothing fits.
cdef int twcc_build(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, uint16_t base_seq,
                    uint8_t fb_count, const int64_t *arrivals, int64_t mask, int64_t start, int count,
                    int *reported) noexcept nogil
# Parses the RTPFB fmt 15 packet at `pkt` (`length` bytes available) into `fb` and up to `max_results` results, in
# sequence order. Returns the number of results, or -1 when the packet is malformed (then `results` is garbage).
cdef int twcc_parse(const uint8_t *pkt, int length, TwccFeedback *fb, TwccResult *results,
                    int max_results) noexcept nogil


# A publisher transport's receive record: arrivals by transport-wide sequence number (unwrapped), since the last
# feedback. Allocated when the first receiver negotiating transport-cc is added to the transport.
cdef struct TwccRecorder:
    int64_t arrivals[<int>TWCC_RECORD]  # by unwrapped seq & (TWCC_RECORD - 1); -1 = not received
    int64_t next              # first unwrapped sequence number not reported yet; -1 before the first packet
    int64_t max_seq           # highest unwrapped sequence number received
    int held                  # packets recorded since the last feedback
    uint32_t media_ssrc       # the SSRC of the last packet recorded (the feedback's media SSRC, as libwebrtc does)
    int64_t last_feedback_us
    uint8_t fb_count

cdef void twcc_recorder_init(TwccRecorder *rec) noexcept nogil
# Whether recording `seq` needs a feedback first: it is too far past the unreported ones for the record.
cdef bint twcc_recorder_full(const TwccRecorder *rec, uint16_t seq) noexcept nogil
# Notes the arrival of `seq` (call twcc_recorder_full first): TWCC_RECORDED, TWCC_LATE or TWCC_DUPLICATE.
cdef int twcc_recorder_add(TwccRecorder *rec, uint16_t seq, uint32_t ssrc, int64_t now) noexcept nogil
# Builds the next feedback of what the record holds into `out` and forgets what it covered; the length, 0 when
# nothing is pending, -1 when `cap` is too small. Call again while it returns > 0 (a long report takes several).
cdef int twcc_recorder_feedback(TwccRecorder *rec, uint8_t *out, int cap, uint32_t sender_ssrc,
                                int64_t now) noexcept nogil


cdef enum:
    # Packets a subscriber transport remembers after sending them (a power of two), to resolve its feedback:
    # libwebrtc reports every 50-250 ms, so 1024 covers ~0.7 s at 1,500 packets/s (~15 Mbit/s of video), 4 s of a
    # 720p simulcast top layer. 8 KiB per subscriber transport (the fan-out writes one entry per packet: kept small).
    TWCC_HISTORY = 1024
    TWCC_MAX_PROBE_CLUSTER = 32767  # probe cluster ids the history can tag (the prober wraps them)

cdef struct TwccSent:         # 8 bytes: at hundreds of subscribers each history is cold at a frame's first packet,
                              # and every 8 entries cost one cache miss rather than every 4
    uint32_t send_us          # the send time's low 32 bits (µs), resolved against the history's last_send_us
    uint16_t size             # RTP bytes (before SRTP)
    int16_t probe_cluster     # the probe cluster running when it was sent, -1 for none

# A subscriber transport's transport-wide sequence numbers and send history: this header, which the Transport holds
# in its first cache line (every packet sent reads it: allocated apart, it cost a second cache miss at each frame's
# first packet to each subscriber), and the ring it points to, allocated when stamping is negotiated (NULL: the
# transport's packets are not numbered). The entry of unwrapped number u is sent[u & (TWCC_HISTORY - 1)] while
# first_seq <= u < next_seq and next_seq - u <= TWCC_HISTORY: the ring holds the last TWCC_HISTORY numbers stamped,
# so no entry needs to say which number it is.
cdef struct TwccHistory:      # 40 bytes
    int64_t next_seq          # unwrapped number of the next packet stamped
    int64_t first_seq         # the first number stamped (entries below it were never written)
    int64_t last_send_us      # when the newest stamped packet left: entries' send times are taken as less than
                              # 2^32 µs (71 min) before it (an older one, which only a client reporting a packet
                              # over an hour late asks about, resolves that much too recent: its own estimate)
    int16_t probe_cluster     # tags every packet sent while it is >= 0 (the prober's hook; bwe.pxd's contract)
    TwccSent *sent            # the ring: TWCC_HISTORY entries (the caller allocates and frees it)

# Starts a history numbering from `first_seq` over the ring `sent` (TWCC_HISTORY entries).
cdef void twcc_history_init(TwccHistory *history, TwccSent *sent, uint16_t first_seq) noexcept nogil
# Resolves parsed feedback `results` against the history into `out` (in the same order), skipping the packets it
# no longer (or never) held; returns how many it wrote and adds the skipped ones to *unmatched.
cdef int twcc_history_resolve(const TwccHistory *history, const TwccResult *results, int count,
                              BwePacketResult *out, uint64_t *unmatched) noexcept nogil


cdef inline void twcc_history_add(TwccHistory *history, int32_t size, int64_t now) noexcept nogil:
    """Notes that the packet stamped with next_seq left (`size` RTP bytes) and moves on to the next number (inline:
    it runs per forwarded packet)."""
    cdef TwccSent *e = &history.sent[history.next_seq & (TWCC_HISTORY - 1)]
    e.send_us = <uint32_t>now
    e.size = <uint16_t>size
    e.probe_cluster = history.probe_cluster
    history.last_send_us = now
    history.next_seq += 1
