# BWE: the send-side bandwidth estimate of one subscriber transport. Fed with the packet results of the subscriber's
# TWCC feedback (delay gradient + loss, GCC-like: draft-ietf-rmcat-gcc-02) or, for clients that only do REMB, with
# their REMB. Fixed-size state (a Transport embeds a Bwe), no allocation, no Python objects, nogil.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t

cdef enum:  # bwe_state: the delay detector's signal (or, on the REMB path, the REMB trend)
    BWE_NORMAL
    BWE_OVERUSING
    BWE_UNDERUSING

cdef enum:  # bwe_probe_status
    PROBE_UNKNOWN             # no such cluster (never started, or its slot was reused by a newer one)
    PROBE_PENDING             # started; its packets are not all reported yet
    PROBE_SUCCEEDED           # measured a rate without congestion (bwe_probe_result_bps)
    PROBE_FAILED              # too few packets arrived, the measure was bogus, or the probe congested the link

cdef enum:  # fixed sizes of the state (all per transport)
    BWE_TREND_WINDOW = 20     # delay samples in the trendline regression (libwebrtc's kDefaultTrendlineWindowSize)
    BWE_SEEN = 512            # packet results remembered to drop duplicates and correct late arrivals (power of 2)
    BWE_ACK_BUCKETS = 10      # acknowledged-bitrate buckets of BWE_ACK_BUCKET_US: a 500 ms window
    BWE_PROBE_CLUSTERS = 3    # probe clusters judged at once (one runs at a time; older ones are still reported)


# One packet of a TWCC feedback report, as the send history resolves it.
cdef struct BwePacketResult:
    int64_t seq               # transport-wide sequence number, unwrapped (the send history's 64-bit count)
    int64_t send_us           # when we sent it (our clock, the same as `now`)
    int64_t arrival_us        # when it arrived, in the remote clock (only differences are used); ignored when lost
    int32_t size              # bytes sent (RTP header + payload, as the send history counted them)
    int32_t probe_cluster     # the probe cluster running when it was sent, -1 for none (every packet sent during a
                              # cluster carries its id, media and padding alike, as libwebrtc's pacer tags them)
    bint received             # False: the report says it was lost

cdef struct BweGroup:         # packets sent within one burst (GCC's "group")
    int64_t first_send_us
    int64_t last_send_us
    int64_t first_arrival_us
    int64_t last_arrival_us
    int32_t packets

cdef struct BweProbeSpan:     # what the feedback told about the packets of (part of) a probe cluster
    int32_t reported          # packets the feedback told about (received or lost)
    int32_t received
    int32_t reported_bytes    # (a cluster lasts at most 2 s: far below 2^31 bytes)
    int32_t received_bytes
    int32_t last_send_size    # (the last one sent does not count toward the send rate: its bytes leave after it)
    int32_t first_arrival_size  # (the first one to arrive does not count toward the receive rate)
    int64_t first_send_us     # over the received packets:
    int64_t last_send_us
    int64_t first_arrival_us
    int64_t last_arrival_us

cdef struct BweProbeCluster:
    int32_t id
    int32_t status            # PROBE_*; PROBE_UNKNOWN = a free slot
    int64_t target_bps
    int64_t start_us
    int64_t tail_us           # packets sent from here on (its second half) are also judged on their own
    BweProbeSpan all
    BweProbeSpan tail         # a shaper's token bucket passes the first part of a burst at any rate: the second
                              # half shows the link's own rate
    int64_t max_send_us       # over all its reported packets
    bint complete             # a packet sent well after max_send_us was reported: judge it now
    bint overused             # the delay detector signalled overuse while it was pending
    int64_t result_bps

cdef struct BweRate:          # bytes per BWE_ACK_BUCKET_US bucket of one clock, over the last BWE_ACK_BUCKETS
    int64_t bytes[BWE_ACK_BUCKETS]
    int64_t head              # index of the newest bucket (time / BWE_ACK_BUCKET_US), -1 before the first packet
    int64_t first_us          # time of the first packet counted since the last restart
    int64_t last_us           # the newest time

cdef struct Bwe:
    # outputs
    double estimate_bps       # min(delay-based, loss-based), clamped to [BWE_MIN_BPS, BWE_MAX_BPS]
    int32_t usage             # BWE_* of the last feedback (or REMB)
    double loss_fraction      # of the last completed loss interval
    bint changed              # the estimate moved > BWE_CHANGE_FRACTION or the state changed since bwe_take_change
    double reported_bps
    int32_t reported_usage
    int64_t last_congestion_us  # last decrease (delay, loss or REMB), for bwe_congested
    bint twcc_seen            # TWCC feedback arrived: REMB is ignored from then on
    int64_t last_feedback_us  # when the last feedback (or REMB) arrived
    double remb_bps           # the client's last REMB, 0 before the first
    # delay-based: inter-group delay variation -> trendline -> overuse detector
    BweGroup group            # the group being filled
    BweGroup prev_group       # the last complete group
    int32_t negative_arrivals  # consecutive groups that arrived before the previous one (reordering or a clock jump)
    double accumulated_delay_ms
    double smoothed_delay_ms
    double trend_x[BWE_TREND_WINDOW]  # arrival time (ms since trend_origin_us) of each smoothed sample
    double trend_y[BWE_TREND_WINDOW]
    int32_t trend_count       # samples in the window (up to BWE_TREND_WINDOW)
    int32_t trend_next        # ring position of the next sample
    int64_t trend_origin_us
    int32_t num_deltas
    double slope
    double prev_trend
    double threshold_ms       # GCC's adaptive threshold gamma
    int64_t threshold_update_us  # remote clock of the last threshold adaptation, -1 before the first
    double overuse_time_ms    # how long the trend has been above the threshold, -1 when it is not
    int32_t overuse_count
    # AIMD rate control
    double delay_rate_bps
    int32_t rate_state        # hold / increase / decrease (private to bwe.pyx)
    int64_t rate_update_us
    double capacity_kbps      # link capacity at the congestion points (acked rate at decreases), -1 unknown
    double capacity_var       # its variance, normalised by the mean
    double rtt_ms             # smoothed feedback round trip (send -> feedback arrival), -1 unknown
    # loss-based
    double loss_rate_bps      # GCC's sender-side estimate A_s
    int32_t interval_packets
    int32_t interval_lost
    int64_t interval_bytes
    int64_t interval_first_send_us
    int64_t interval_last_send_us
    int64_t last_loss_increase_us
    int64_t last_loss_decrease_us
    # acknowledged bitrate (remote clock buckets), and the rate sent (our clock): of the packets TWCC feedback reported,
    # or, on the REMB path, of the packets stamped with abs-send-time (bwe_on_sent)
    BweRate acked
    BweRate sent
    # packet results seen (duplicates, late arrivals of packets reported lost)
    uint32_t seen_seq[BWE_SEEN]   # low 32 bits: enough, the window is 512 numbers below max_seq
    uint8_t seen[BWE_SEEN]        # SEEN_* (private to bwe.pyx)
    int64_t max_seq
    BweProbeCluster probes[BWE_PROBE_CLUSTERS]
    double probe_floor_bps    # the estimate when the last probe started: decreases stay above it while it settles
    int64_t probe_start_us
    # counters
    int64_t reports
    int64_t packets           # distinct packet results accepted
    int64_t lost
    int64_t duplicates
    int64_t stale             # older than the seen window, or arriving out of send order for the delay detector
    int64_t invalid           # results with impossible fields (dropped)
    int64_t overuses
    int64_t decreases
    int64_t rembs             # REMBs taken (the estimate of a client without transport-cc)
    int64_t remb_ignored
    int64_t probes_succeeded
    int64_t probes_failed
    int64_t ops               # work units (loop iterations): per-packet cost stays O(1); tests read it


# Resets `b` to a start estimate (clamped to [BWE_MIN_BPS, BWE_MAX_BPS]).
cdef void bwe_init(Bwe *b, int64_t start_bps, int64_t now) noexcept nogil
# One TWCC feedback report: `count` results in sequence order (they may repeat or reorder across reports).
cdef void bwe_on_feedback(Bwe *b, const BwePacketResult *results, int count, int64_t now) noexcept nogil
# A REMB from a client without transport-cc (ignored once TWCC feedback has been seen): one that falls from the
# previous one, or stays below what we send (bwe_on_sent) without rising, is congestion and sets the estimate;
# otherwise it only raises the estimate.
cdef void bwe_on_remb(Bwe *b, int64_t bps, int64_t now) noexcept nogil
# A packet sent with abs-send-time (`payload_bytes`: what the client's estimator counts, payload and padding): the
# sent bitrate its REMB is compared with.
cdef void bwe_on_sent(Bwe *b, int32_t payload_bytes, int64_t now) noexcept nogil
# A probe cluster `cluster_id` (>= 0) starts now, paced at `target_bps` for `duration_us` (libwebrtc: >= 5 packets,
# >= 15 ms; judged over at most 1.5 s); every packet sent until it ends carries the id in the send history. It is
# judged on all its packets and on those of its second half alone (the lower rate counts). The estimate jumps to the
# measured rate when the probe succeeds without congestion.
cdef void bwe_probe_start(Bwe *b, int32_t cluster_id, int64_t target_bps, int64_t duration_us,
                          int64_t now) noexcept nogil
# PROBE_* of a cluster; a pending one past BWE_PROBE_TIMEOUT_US reads as failed.
cdef int bwe_probe_status(const Bwe *b, int32_t cluster_id, int64_t now) noexcept nogil
# True once a cluster made the delay detector signal overuse or lost more than it may (it will fail): its sender
# should stop.
cdef bint bwe_probe_overused(const Bwe *b, int32_t cluster_id) noexcept nogil
# The rate a succeeded probe measured (bps), 0 otherwise.
cdef int64_t bwe_probe_result_bps(const Bwe *b, int32_t cluster_id) noexcept nogil
# True while the allocator must not upgrade: the detector is not NORMAL, the last loss interval was high, or the
# estimate decreased within BWE_CONGESTION_HOLD_US. The first two only while feedback keeps coming (within
# BWE_FEEDBACK_STALE_US): when nothing is sent (every video paused) the last verdict goes stale, and a probe may ask.
cdef bint bwe_congested(const Bwe *b, int64_t now) noexcept nogil
# True once after the estimate moved by more than BWE_CHANGE_FRACTION or the state changed: raise an event then.
cdef bint bwe_take_change(Bwe *b) noexcept nogil


cdef inline int64_t bwe_estimate_bps(const Bwe *b) noexcept nogil:
    return <int64_t>b.estimate_bps


cdef inline int bwe_state(const Bwe *b) noexcept nogil:
    return b.usage


cdef inline double bwe_loss_fraction(const Bwe *b) noexcept nogil:
    return b.loss_fraction
