"""BWE: a GCC-like send-side estimate from TWCC packet results (see bwe.pxd for the API).

Three estimators, combined as GCC combines them (draft-ietf-rmcat-gcc-02 §5-6):
- delay-based: packets grouped into 5 ms send bursts; the variation of the groups' inter-arrival vs inter-departure
  time is accumulated, smoothed and fitted by a least-squares line over the last 20 groups; the slope, compared
  against an adaptive threshold, says OVERUSING / UNDERUSING / NORMAL; AIMD rate control turns that into a rate;
- loss-based: the loss fraction of each feedback interval (>= 20 packets) raises the rate below 2 % and cuts it
  above 10 %;
- acknowledged bitrate: what the receiver got, over 500 ms of its clock; decreases are anchored on it.
The estimate is the smaller of the delay-based and loss-based rates. Probe clusters measure what the link carries
above the current rate, so the estimate can jump up instead of creeping (8 %/s).

Where this differs from libwebrtc's GCC (goog_cc), on purpose:
- a loss-based cut is applied to the rate the lossy packets were *sent* at, not to the current estimate: loss reported
  for packets sent before the last cut says nothing about the rate now (libwebrtc cuts its current target, guarded
  only by the 300 ms + RTT interval, so reports lagging a burst of congestion loss can cut below capacity); and it
  goes no higher than the acknowledged rate: behind a shallow drop-tail queue the delay stays flat, and GCC's
  (1 - 0.5 x loss) alone needs seconds of 50-70 % loss to come down from a 4x overshoot;
- a probe that made the detector signal overuse is failed, not applied (LiveKit judges probes the same way);
  libwebrtc applies the measured rate and lets the following decrease correct it;
- a probe is also judged on the packets of its second half alone (libwebrtc judges a cluster as a whole): a shaper's
  token bucket passes the start of a burst at any rate, and only once it is empty does the link's own rate show;
- no ALR detection, no loss-based v2 model, no Kalman filter option, no bandwidth-limited start probes of our own:
  the allocator decides when to probe (bwe_probe_start), this module only judges probes.
"""
from libc.math cimport fabs, pow, sqrt
from libc.stdint cimport uint32_t
from libc.string cimport memset

from engine.bwe cimport (BWE_ACK_BUCKETS, BweRate, BWE_NORMAL, BWE_OVERUSING, BWE_PROBE_CLUSTERS, BWE_SEEN,
                         BWE_TREND_WINDOW, BWE_UNDERUSING, PROBE_FAILED, PROBE_PENDING, PROBE_SUCCEEDED,
                         PROBE_UNKNOWN, Bwe, BweGroup, BwePacketResult, BweProbeCluster,
                         BweProbeSpan)

# Bounds of the estimate. 30 kbit/s: libwebrtc's and mediasoup's floor (audio still fits); 100 Mbit/s: LiveKit's
# "unknown capacity", far above what a WebRTC subscriber is sent.
cdef double BWE_MIN_BPS = 30000.0
cdef double BWE_MAX_BPS = 100000000.0

# Input validation (results outside these are dropped and counted as invalid).
cdef int64_t MAX_SEQ = 1LL << 48              # unwrapped transport-wide sequence numbers are counts, far below this
cdef int64_t MAX_ARRIVAL_US = 1LL << 50       # TWCC times span 2^24 x 64 ms (~12 days) < 2^50 us: keeps deltas exact
cdef int32_t MAX_PACKET_SIZE = 65535
cdef int64_t MAX_FEEDBACK_AGE_US = 10000000   # a result for a packet sent > 10 s ago is history, not feedback

# Delay-based: grouping and the inter-group delay variation (GCC draft §5.2; libwebrtc inter_arrival_delta).
cdef int64_t GROUP_SPAN_US = 5000             # a group = packets sent within 5 ms (GCC's burst time)
cdef int64_t BURST_MAX_US = 100000            # a queued burst joins a group only within 100 ms of its first arrival
cdef int64_t ARRIVAL_JUMP_US = 3000000        # arrival vs send spacing differing by > 3 s: the remote clock jumped
cdef int32_t MAX_NEGATIVE_ARRIVALS = 3        # consecutive out-of-order groups before the detector restarts
# Trendline (libwebrtc TrendlineEstimator's defaults): smoothing of the accumulated delay, and the gain that scales
# the slope into the units of the threshold (slope x min(deltas, 60) x 4 is compared with gamma in ms).
cdef double TREND_SMOOTHING = 0.9
cdef double TREND_GAIN = 4.0
cdef int32_t TREND_MAX_DELTAS = 60
# Adaptive threshold gamma (GCC draft §5.4): starts at 12.5 ms and follows |trend| at k_up = 0.0087 above it and
# k_down = 0.039 below it, per ms (libwebrtc's trendline values; the draft's 0.01 / 0.00018, which the research digest
# quotes from pion, belong to its Kalman filter: with the trendline they keep gamma raised for seconds after a queue
# drains, and the next overuse is caught late); stays in [6, 600] ms; ignores trends more than 15 ms above it.
cdef double THRESHOLD_START_MS = 12.5
cdef double THRESHOLD_K_UP = 0.0087
cdef double THRESHOLD_K_DOWN = 0.039
cdef double THRESHOLD_MIN_MS = 6.0
cdef double THRESHOLD_MAX_MS = 600.0
cdef double THRESHOLD_MAX_JUMP_MS = 15.0
cdef double THRESHOLD_MAX_DT_MS = 100.0
cdef double OVERUSE_TIME_MS = 10.0            # overuse must persist 10 ms (and 2 groups) before it is signalled

# AIMD rate control (GCC draft §6; libwebrtc AimdRateControl).
cdef enum:
    RATE_HOLD
    RATE_INCREASE
    RATE_DECREASE
cdef double DECREASE_FACTOR = 0.85            # beta: down to 85 % of what was acknowledged
cdef double APP_LIMITED_SHARE = 0.5           # acknowledged < half the estimate...
cdef double APP_LIMITED_DELIVERY = 0.9        # ...and >= 90 % of what was sent over the same 500 ms: app-limited
cdef double INCREASE_PER_SECOND = 1.08        # multiplicative increase far from the last congestion point
cdef double ACKED_HEADROOM = 1.5              # never increase above 1.5 x acknowledged + 10 kbit/s (app-limited)
cdef double ACKED_HEADROOM_BPS = 10000.0
cdef double ADDITIVE_PACKET_BITS = 1200 * 8.0  # near convergence: half a packet per response time...
cdef double ADDITIVE_MIN_BPS_PER_S = 4000.0   # ...but at least 4 kbit/s per second
cdef double RESPONSE_BASE_MS = 100.0          # response time = RTT + 100 ms (the feedback interval)
cdef double REDUCE_MIN_INTERVAL_MS = 10.0     # successive decreases at most once per RTT clamped to [10, 200] ms
cdef double REDUCE_MAX_INTERVAL_MS = 200.0
cdef double CAPACITY_SMOOTHING = 0.05         # link capacity at congestion points: EWMA of the acked rate
cdef double CAPACITY_VAR_MIN = 0.4            # its normalised variance is kept in [0.4, 2.5] (kbit/s)
cdef double CAPACITY_VAR_MAX = 2.5
cdef double CAPACITY_SIGMAS = 3.0             # "near the congestion point" = within 3 standard deviations
cdef double RTT_DEFAULT_MS = 200.0            # until the first feedback: a response time like libwebrtc's default
cdef double RTT_MIN_MS = 1.0
cdef double RTT_MAX_MS = 2000.0
cdef double RTT_SMOOTHING = 0.875

# Loss-based (GCC draft §6; libwebrtc SendSideBandwidthEstimation).
cdef int32_t LOSS_MIN_PACKETS = 20            # a loss fraction needs >= 20 results (libwebrtc kLimitNumPackets)
cdef double LOSS_LOW = 0.02                   # below: may increase by 5 % (+1 kbit/s) ...
cdef double LOSS_INCREASE = 1.05
cdef double LOSS_INCREASE_BPS = 1000.0
cdef int64_t LOSS_INCREASE_INTERVAL_US = 200000  # ... at most every 200 ms (pion's time threshold)
cdef double LOSS_HIGH = 0.10                  # above: rate x (1 - 0.5 x loss) ...
cdef int64_t LOSS_DECREASE_INTERVAL_US = 300000  # ... at most every 300 ms + RTT (libwebrtc kBweDecreaseInterval)

# Acknowledged bitrate: bytes received per arrival-time bucket.
cdef int64_t BWE_ACK_BUCKET_US = 50000        # 10 x 50 ms = 500 ms, libwebrtc's steady-state window
cdef int64_t ACK_MIN_SPAN_US = 100000         # a rate needs >= 100 ms of arrivals (first decisions come fast)
# A decrease takes what arrived over the newest ACK_RECENT_BUCKETS (150 ms, libwebrtc's acknowledged-rate window once
# it has started) when that is less: at congestion the bottleneck is full, so what it delivers now is its capacity,
# while the whole window still holds the rate from before a link narrowed (measured: 720p into a link narrowed to
# 600 kbit/s, the first decrease from the 500 ms window landed at 1 Mbit/s and took 360p, 1.5 s before 426 kbit/s).
cdef int ACK_RECENT_BUCKETS = 3

# Probes (libwebrtc ProbeBitrateEstimator's acceptance rules).
cdef int32_t PROBE_MIN_PACKETS = 5            # libwebrtc: >= 80 % of its 5 minimum probe packets; we want all 5
cdef double PROBE_MIN_RECEIVED = 0.8          # >= 80 % of the cluster's reported bytes arrived
cdef int64_t PROBE_MAX_INTERVAL_US = 1500000  # send or receive spread > 1.5 s: not a probe measure
cdef double PROBE_MAX_RECEIVE_RATIO = 2.0     # received "faster" than 2 x sent: timestamps are bogus
cdef double PROBE_BOTTLENECK_RATIO = 0.9      # received < 90 % of sent: the link is the bottleneck...
cdef double PROBE_BOTTLENECK_FACTOR = 0.95    # ...so settle a bit below what it delivered
cdef int64_t BWE_PROBE_TIMEOUT_US = 2000000   # a cluster not complete 2 s after it started is judged as it stands
                                              # (the allocator's longest cluster lasts 0.9 s)
# A cluster is complete once a packet of another sent > 100 ms after its last reported one is reported: media may
# interleave with a cluster, but a pacer sends a cluster's packets far closer together (LiveKit: 20 ms buckets).
cdef int64_t PROBE_COMPLETE_GAP_US = 100000
# A probe into a link that cannot carry it builds a queue (and may lose packets) for as long as it runs plus the
# queue's drain and the feedback's lag: decreases within this time of its start go no lower than the estimate it
# started from (LiveKit likewise only marks a running probe as congesting). A link that really shrank is cut after.
cdef int64_t PROBE_SETTLE_US = 1500000

# Output (events) and congestion state.
cdef double BWE_CHANGE_FRACTION = 0.05        # the estimate moved by > 5 %: worth an event
cdef int64_t BWE_CONGESTION_HOLD_US = 500000  # after a decrease, no upgrade for 500 ms (the queue drains first)
cdef double REMB_DROP = 0.9                   # a REMB below 90 % of the previous one is the client's overuse signal
                                              # (its estimator only lowers its value on overuse: to 85 % of throughput),
                                              # and one below 90 % of what we send says the link carries less
cdef int64_t BWE_FEEDBACK_STALE_US = 1000000  # no feedback for 1 s (libwebrtc reports every 50-250 ms): stale state


cdef enum:  # Bwe.seen
    SEEN_NONE
    SEEN_LOST
    SEEN_RECEIVED


cdef inline double clamp(double v, double lo, double hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)


cdef void bwe_init(Bwe *b, int64_t start_bps, int64_t now) noexcept nogil:
    cdef int i
    memset(b, 0, sizeof(Bwe))
    b.estimate_bps = clamp(<double>start_bps, BWE_MIN_BPS, BWE_MAX_BPS)
    b.delay_rate_bps = b.estimate_bps
    b.loss_rate_bps = b.estimate_bps
    b.reported_bps = b.estimate_bps
    b.usage = BWE_NORMAL
    b.reported_usage = BWE_NORMAL
    b.last_congestion_us = now - BWE_CONGESTION_HOLD_US
    b.rate_state = RATE_INCREASE
    b.rate_update_us = now
    b.capacity_kbps = -1.0
    b.capacity_var = CAPACITY_VAR_MIN
    b.rtt_ms = -1.0
    b.last_loss_increase_us = now
    b.last_loss_decrease_us = now - LOSS_DECREASE_INTERVAL_US
    b.acked.head = -1
    b.sent.head = -1
    b.max_seq = -1
    for i in range(BWE_PROBE_CLUSTERS):
        b.probes[i].status = PROBE_UNKNOWN
        b.probes[i].id = -1
    delay_restart(b)


cdef void delay_restart(Bwe *b) noexcept nogil:
    """Forget the groups and the trend (start, or the remote clock jumped): the next groups start afresh."""
    b.group.packets = 0
    b.prev_group.packets = 0
    b.negative_arrivals = 0
    b.accumulated_delay_ms = 0.0
    b.smoothed_delay_ms = 0.0
    b.trend_count = 0
    b.trend_next = 0
    b.num_deltas = 0
    b.slope = 0.0
    b.prev_trend = 0.0
    b.threshold_ms = THRESHOLD_START_MS
    b.threshold_update_us = -1
    b.overuse_time_ms = -1.0
    b.overuse_count = 0
    b.usage = BWE_NORMAL


# ---- feedback ------------------------------------------------------------------------------------------------------

cdef void bwe_on_feedback(Bwe *b, const BwePacketResult *results, int count, int64_t now) noexcept nogil:
    cdef int i
    cdef const BwePacketResult *r
    cdef int64_t newest_send = -1
    cdef int slot, accepted = 0
    cdef bint late
    if b.reports and now - b.last_feedback_us >= BWE_FEEDBACK_STALE_US:
        delay_restart(b)      # after a silence (every video paused) the groups and trend describe another time
    b.reports += 1
    b.twcc_seen = True
    b.last_feedback_us = now
    for i in range(count):
        r = &results[i]
        b.ops += 1
        if (r.seq < 0 or r.seq >= MAX_SEQ or r.size <= 0 or r.size > MAX_PACKET_SIZE or r.send_us > now
                or r.send_us < now - MAX_FEEDBACK_AGE_US
                or (r.received and (r.arrival_us < -MAX_ARRIVAL_US or r.arrival_us > MAX_ARRIVAL_US))):
            b.invalid += 1
            continue
        slot = <int>(r.seq & (BWE_SEEN - 1))
        late = False
        if b.seen[slot] != SEEN_NONE and b.seen_seq[slot] == <uint32_t>r.seq and r.seq > b.max_seq - BWE_SEEN:
            if b.seen[slot] == SEEN_RECEIVED or not r.received:
                b.duplicates += 1
                continue
            late = True       # reported lost before, received after all (it came late, or the report was partial)
        elif r.seq <= b.max_seq - BWE_SEEN:
            b.stale += 1
            continue
        accepted += 1
        b.seen_seq[slot] = <uint32_t>r.seq
        b.seen[slot] = SEEN_RECEIVED if r.received else SEEN_LOST
        if r.seq > b.max_seq:
            b.max_seq = r.seq
        if late:
            if b.interval_lost > 0:
                b.interval_lost -= 1
            b.lost -= 1
        else:
            b.packets += 1
            loss_count(b, r)
            rate_count(b, &b.sent, r.send_us, r.size)
        probe_count(b, r, late)
        if r.received:
            if r.send_us > newest_send:
                newest_send = r.send_us
            rate_count(b, &b.acked, r.arrival_us, r.size)
            delay_packet(b, r)
    if newest_send >= 0:
        rtt_sample(b, <double>(now - newest_send) / 1000.0)
    if accepted:              # a report with nothing new (empty, all duplicates or invalid) is no evidence either way
        rate_update(b, now)
        loss_update(b, now)
    probes_judge(b, now)
    output_update(b, now)


cdef void rtt_sample(Bwe *b, double ms) noexcept nogil:
    """Round trip as feedback shows it: send -> the report about the newest packet (includes the feedback delay,
    which is also part of how fast we can react)."""
    ms = clamp(ms, RTT_MIN_MS, RTT_MAX_MS)
    b.rtt_ms = ms if b.rtt_ms < 0 else RTT_SMOOTHING * b.rtt_ms + (1.0 - RTT_SMOOTHING) * ms


cdef inline double rtt_or_default(const Bwe *b) noexcept nogil:
    return b.rtt_ms if b.rtt_ms >= 0 else RTT_DEFAULT_MS


# ---- delay-based: groups, trendline, overuse detector ----------------------------------------------------------------

cdef void delay_packet(Bwe *b, const BwePacketResult *r) noexcept nogil:
    cdef BweGroup *g = &b.group
    if g.packets == 0:
        group_start(g, r)
        return
    if r.send_us < g.first_send_us:
        b.stale += 1          # sent before the group being filled: reordered past it, no longer usable for delay
        return
    if group_takes(g, r):
        g.packets += 1
        if r.send_us > g.last_send_us:
            g.last_send_us = r.send_us
        if r.arrival_us > g.last_arrival_us:
            g.last_arrival_us = r.arrival_us
        return
    if b.prev_group.packets > 0:
        delay_groups(b, &b.prev_group, g)
    b.prev_group = g[0]
    group_start(g, r)


cdef inline void group_start(BweGroup *g, const BwePacketResult *r) noexcept nogil:
    g.first_send_us = r.send_us
    g.last_send_us = r.send_us
    g.first_arrival_us = r.arrival_us
    g.last_arrival_us = r.arrival_us
    g.packets = 1


cdef inline bint group_takes(const BweGroup *g, const BwePacketResult *r) noexcept nogil:
    """`r` belongs to `g`: sent within its 5 ms, or a burst that queued behind it (arrived < 5 ms after its last
    packet, closer to it than it was sent: the spacing shrank in a queue, which says nothing about a trend)."""
    cdef int64_t arrival_delta, send_delta
    if r.send_us - g.first_send_us <= GROUP_SPAN_US:
        return True
    arrival_delta = r.arrival_us - g.last_arrival_us
    send_delta = r.send_us - g.last_send_us
    return (0 <= arrival_delta <= GROUP_SPAN_US and arrival_delta < send_delta
            and r.arrival_us - g.first_arrival_us < BURST_MAX_US)


cdef void delay_groups(Bwe *b, const BweGroup *prev, const BweGroup *cur) noexcept nogil:
    """One inter-group delay variation d = (arrival spacing - send spacing) of two complete groups."""
    cdef int64_t send_delta = cur.last_send_us - prev.last_send_us
    cdef int64_t arrival_delta = cur.last_arrival_us - prev.last_arrival_us
    if arrival_delta - send_delta > ARRIVAL_JUMP_US or arrival_delta - send_delta < -ARRIVAL_JUMP_US:
        delay_restart(b)
        return
    if arrival_delta < 0:
        b.negative_arrivals += 1
        if b.negative_arrivals > MAX_NEGATIVE_ARRIVALS:
            delay_restart(b)
        return
    b.negative_arrivals = 0
    trend_update(b, <double>(arrival_delta - send_delta) / 1000.0, <double>send_delta / 1000.0, cur.last_arrival_us)


cdef void trend_update(Bwe *b, double d_ms, double send_delta_ms, int64_t arrival_us) noexcept nogil:
    cdef int i
    cdef double mx = 0.0, my = 0.0, num = 0.0, den = 0.0, trend
    if b.trend_count == 0 and b.num_deltas == 0:
        b.trend_origin_us = arrival_us
    b.accumulated_delay_ms += d_ms
    b.smoothed_delay_ms = TREND_SMOOTHING * b.smoothed_delay_ms + (1.0 - TREND_SMOOTHING) * b.accumulated_delay_ms
    b.trend_x[b.trend_next] = <double>(arrival_us - b.trend_origin_us) / 1000.0
    b.trend_y[b.trend_next] = b.smoothed_delay_ms
    b.trend_next = (b.trend_next + 1) % BWE_TREND_WINDOW
    if b.trend_count < BWE_TREND_WINDOW:
        b.trend_count += 1
    if b.num_deltas < TREND_MAX_DELTAS:
        b.num_deltas += 1
    if b.trend_count == BWE_TREND_WINDOW:
        # least-squares slope of smoothed delay over arrival time: the queue's growth in ms per ms
        for i in range(BWE_TREND_WINDOW):
            mx += b.trend_x[i]
            my += b.trend_y[i]
        mx /= BWE_TREND_WINDOW
        my /= BWE_TREND_WINDOW
        for i in range(BWE_TREND_WINDOW):
            num += (b.trend_x[i] - mx) * (b.trend_y[i] - my)
            den += (b.trend_x[i] - mx) * (b.trend_x[i] - mx)
        b.ops += 2 * BWE_TREND_WINDOW
        if den > 0.0:
            b.slope = num / den
    trend = b.num_deltas * b.slope * TREND_GAIN
    detect(b, trend, send_delta_ms, arrival_us)


cdef void detect(Bwe *b, double trend, double send_delta_ms, int64_t arrival_us) noexcept nogil:
    """GCC's overuse detector: the modified trend against the adaptive threshold."""
    if b.num_deltas < 2:
        return
    if trend > b.threshold_ms:
        b.overuse_time_ms = send_delta_ms / 2.0 if b.overuse_time_ms < 0 else b.overuse_time_ms + send_delta_ms
        b.overuse_count += 1
        if b.overuse_time_ms > OVERUSE_TIME_MS and b.overuse_count > 1 and trend >= b.prev_trend:
            b.overuse_time_ms = 0.0
            b.overuse_count = 0
            if b.usage != BWE_OVERUSING:
                b.overuses += 1
            b.usage = BWE_OVERUSING
            probes_mark_overuse(b)
    elif trend < -b.threshold_ms:
        b.overuse_time_ms = -1.0
        b.overuse_count = 0
        b.usage = BWE_UNDERUSING
    else:
        b.overuse_time_ms = -1.0
        b.overuse_count = 0
        b.usage = BWE_NORMAL
    b.prev_trend = trend
    threshold_adapt(b, trend, arrival_us)


cdef void threshold_adapt(Bwe *b, double trend, int64_t arrival_us) noexcept nogil:
    """gamma follows |trend|: quickly up (so a standing queue of another flow does not starve us), slowly down."""
    cdef double m = fabs(trend), dt_ms, k
    if b.threshold_update_us < 0 or arrival_us < b.threshold_update_us:
        b.threshold_update_us = arrival_us
    if m > b.threshold_ms + THRESHOLD_MAX_JUMP_MS:
        b.threshold_update_us = arrival_us
        return
    dt_ms = clamp(<double>(arrival_us - b.threshold_update_us) / 1000.0, 0.0, THRESHOLD_MAX_DT_MS)
    k = THRESHOLD_K_DOWN if m < b.threshold_ms else THRESHOLD_K_UP
    b.threshold_ms = clamp(b.threshold_ms + k * (m - b.threshold_ms) * dt_ms, THRESHOLD_MIN_MS, THRESHOLD_MAX_MS)
    b.threshold_update_us = arrival_us


# ---- AIMD rate control ---------------------------------------------------------------------------------------------

cdef void rate_update(Bwe *b, int64_t now) noexcept nogil:
    cdef double acked = rate_value(b, &b.acked)
    cdef double dt_s = clamp(<double>(now - b.rate_update_us) / 1e6, 0.0, 1.0)
    cdef double rate = b.delay_rate_bps, limit, response_ms, reduce_ms
    cdef bint app_limited
    if b.usage == BWE_OVERUSING:
        reduce_ms = clamp(rtt_or_default(b), REDUCE_MIN_INTERVAL_MS, REDUCE_MAX_INTERVAL_MS)
        # App-limited: far less is sent than the estimate allows, and it all arrives. The queue the detector saw
        # came from a burst (a keyframe, a probe, a bigger layer's backlog draining), not from a rate the link
        # cannot carry, and the throughput says nothing of the capacity: the estimate itself steps down. (GCC cuts
        # to 0.85 x the throughput: an SFU sending a subscriber's 150 kbit/s layer into a 600 kbit/s link would
        # then pause its video at the first delay spike.)
        app_limited = 0 < acked < APP_LIMITED_SHARE * rate and acked >= APP_LIMITED_DELIVERY * rate_value(b, &b.sent)
        if (b.rate_state != RATE_DECREASE
                or <double>(now - b.last_congestion_us) / 1000.0 >= reduce_ms
                or (not app_limited and 0 < acked < APP_LIMITED_SHARE * rate)):
            rate = probe_floor(b, DECREASE_FACTOR * (delivered_bps(b) if acked > 0 and not app_limited else rate),
                               now)
            if rate > b.delay_rate_bps:
                rate = b.delay_rate_bps   # a decrease never increases (acked can exceed the estimate briefly)
            if acked > 0 and not app_limited:
                capacity_update(b, acked / 1000.0)
            b.rate_state = RATE_DECREASE
            b.last_congestion_us = now
            b.decreases += 1
    elif b.usage == BWE_UNDERUSING:
        b.rate_state = RATE_HOLD      # the queue drains: wait, the rate that filled it is still in flight
    elif acked > 0:                   # no increase without evidence that packets get through
        if b.rate_state != RATE_INCREASE:
            b.rate_state = RATE_INCREASE
        else:
            if b.capacity_kbps > 0 and acked / 1000.0 > capacity_upper(b):
                b.capacity_kbps = -1.0    # well past the old congestion point: the path changed, search again
            if b.capacity_kbps > 0:
                response_ms = rtt_or_default(b) + RESPONSE_BASE_MS
                rate += max(ADDITIVE_MIN_BPS_PER_S, 0.5 * ADDITIVE_PACKET_BITS * 1000.0 / response_ms) * dt_s
            else:
                rate *= pow(INCREASE_PER_SECOND, dt_s)
            rate = acked_capped(rate, b.delay_rate_bps, acked)
    b.delay_rate_bps = clamp(rate, BWE_MIN_BPS, BWE_MAX_BPS)
    b.rate_update_us = now


cdef inline double acked_capped(double rate, double current, double acked) noexcept nogil:
    """An increase from `current` to `rate` goes no higher than 1.5 x acknowledged + 10 kbit/s: what an app-limited
    sender's packets got through proves no more. A rate already above that is kept (the cap does not cut)."""
    cdef double limit = ACKED_HEADROOM * acked + ACKED_HEADROOM_BPS
    return max(current, limit) if rate > limit else rate


cdef void capacity_update(Bwe *b, double kbps) noexcept nogil:
    """The acked rate at a congestion point: its running mean and normalised variance place "near convergence"."""
    cdef double err
    if b.capacity_kbps > 0 and kbps < b.capacity_kbps - CAPACITY_SIGMAS * sqrt(b.capacity_var * b.capacity_kbps):
        b.capacity_kbps = -1.0        # far below the old point: the link shrank, forget it
    if b.capacity_kbps < 0:
        b.capacity_kbps = kbps
    else:
        b.capacity_kbps = (1.0 - CAPACITY_SMOOTHING) * b.capacity_kbps + CAPACITY_SMOOTHING * kbps
    err = b.capacity_kbps - kbps
    b.capacity_var = clamp((1.0 - CAPACITY_SMOOTHING) * b.capacity_var
                           + CAPACITY_SMOOTHING * err * err / max(b.capacity_kbps, 1.0),
                           CAPACITY_VAR_MIN, CAPACITY_VAR_MAX)


cdef inline double capacity_upper(const Bwe *b) noexcept nogil:
    return b.capacity_kbps + CAPACITY_SIGMAS * sqrt(b.capacity_var * b.capacity_kbps)


# ---- loss-based ----------------------------------------------------------------------------------------------------

cdef inline void loss_count(Bwe *b, const BwePacketResult *r) noexcept nogil:
    if b.interval_packets == 0 or r.send_us < b.interval_first_send_us:
        b.interval_first_send_us = r.send_us
    if b.interval_packets == 0 or r.send_us > b.interval_last_send_us:
        b.interval_last_send_us = r.send_us
    b.interval_packets += 1
    b.interval_bytes += r.size
    if not r.received:
        b.interval_lost += 1
        b.lost += 1


cdef void loss_update(Bwe *b, int64_t now) noexcept nogil:
    """At >= LOSS_MIN_PACKETS results: the interval's loss fraction moves the loss-based rate A_s."""
    cdef double loss, cut, acked, span_us
    if b.interval_packets < LOSS_MIN_PACKETS:
        b.loss_rate_bps = min(b.loss_rate_bps, b.delay_rate_bps)
        return
    loss = <double>b.interval_lost / b.interval_packets
    b.loss_fraction = loss
    if loss > LOSS_HIGH:
        if now - b.last_loss_decrease_us >= LOSS_DECREASE_INTERVAL_US + <int64_t>(rtt_or_default(b) * 1000.0):
            # GCC's cut, applied to the rate these packets were sent at: if a cut since then already went below
            # it, this loss is answered. Heavy loss also means what arrived (the acked rate) is what the path
            # carries: a full shallow queue hides from the delay detector, so the cut goes no higher than that.
            span_us = <double>(b.interval_last_send_us - b.interval_first_send_us)
            cut = (1.0 - 0.5 * loss) * (b.interval_bytes * 8e6 / span_us if span_us > 0 else b.loss_rate_bps)
            acked = delivered_bps(b)
            if 0 < acked < cut:
                cut = acked
            cut = probe_floor(b, cut, now)
            if cut < b.loss_rate_bps:
                b.loss_rate_bps = cut
                b.last_congestion_us = now
                b.decreases += 1
            b.last_loss_decrease_us = now
    elif loss < LOSS_LOW and now - b.last_loss_increase_us >= LOSS_INCREASE_INTERVAL_US:
        # capped like the delay-based increase: behind a queue too shallow for the delay detector the delay-based
        # rate may still be the optimistic start, and a video sent below the link then loses nothing, so without
        # the cap this rate would climb 5 % per 200 ms far past the link (measured in the lab: 740 -> 1,484 kbit/s
        # in 4 s behind 600 kbit/s)
        acked = rate_value(b, &b.acked)
        if acked > 0:
            b.loss_rate_bps = acked_capped(b.loss_rate_bps * LOSS_INCREASE + LOSS_INCREASE_BPS, b.loss_rate_bps,
                                           acked)
        b.last_loss_increase_us = now
    # A_s never runs ahead of the delay-based rate: the estimate is their minimum, and an A_s far above it would
    # make a later loss cut meaningless
    b.loss_rate_bps = clamp(min(b.loss_rate_bps, b.delay_rate_bps), BWE_MIN_BPS, BWE_MAX_BPS)
    b.interval_packets = 0
    b.interval_lost = 0
    b.interval_bytes = 0


# ---- acknowledged bitrate ------------------------------------------------------------------------------------------

cdef void rate_count(Bwe *b, BweRate *rate, int64_t t, int32_t size) noexcept nogil:
    cdef int64_t idx = (t + MAX_ARRIVAL_US) // BWE_ACK_BUCKET_US   # >= 0: times were validated
    cdef int64_t k
    if rate.head < 0 or idx > rate.head + BWE_ACK_BUCKETS or idx < rate.head - 2 * BWE_ACK_BUCKETS:
        # first packet, an idle gap longer than the window, or a clock that jumped back: restart
        for k in range(BWE_ACK_BUCKETS):
            rate.bytes[k] = 0
        b.ops += BWE_ACK_BUCKETS
        rate.head = idx
        rate.first_us = t
        rate.last_us = t
    elif idx <= rate.head - BWE_ACK_BUCKETS:
        b.stale += 1          # before the window (a late report of an old packet)
        return
    while rate.head < idx:
        rate.head += 1
        rate.bytes[rate.head % BWE_ACK_BUCKETS] = 0
        b.ops += 1
    rate.bytes[idx % BWE_ACK_BUCKETS] += size
    if t > rate.last_us:
        rate.last_us = t
    if t < rate.first_us:
        rate.first_us = t


cdef double rate_value(Bwe *b, const BweRate *rate, int buckets = BWE_ACK_BUCKETS) noexcept nogil:
    """Bytes over the newest `buckets` of the window (or since the restart, if shorter) as bit/s; -1 until that
    spans 100 ms."""
    cdef int64_t start, total = 0
    cdef int64_t k
    if rate.head < 0:
        return -1.0
    start = (rate.head - buckets + 1) * BWE_ACK_BUCKET_US - MAX_ARRIVAL_US
    if rate.first_us > start:
        start = rate.first_us
    if rate.last_us - start < ACK_MIN_SPAN_US:
        return -1.0
    for k in range(rate.head - buckets + 1, rate.head + 1):
        total += rate.bytes[k % BWE_ACK_BUCKETS]
    b.ops += buckets
    return total * 8e6 / <double>(rate.last_us - start)


cdef double delivered_bps(Bwe *b) noexcept nogil:
    """What the path delivers at congestion: the acked rate, or its newest ACK_RECENT_BUCKETS if less."""
    cdef double acked = rate_value(b, &b.acked)
    cdef double recent = rate_value(b, &b.acked, ACK_RECENT_BUCKETS)
    return recent if 0 < recent < acked else acked


# ---- probes --------------------------------------------------------------------------------------------------------

cdef void bwe_probe_start(Bwe *b, int32_t cluster_id, int64_t target_bps, int64_t duration_us,
                          int64_t now) noexcept nogil:
    cdef int i, slot = 0
    cdef BweProbeCluster *c
    if cluster_id < 0:
        return
    for i in range(BWE_PROBE_CLUSTERS):   # the same id again, else a free slot, else the oldest
        if b.probes[i].id == cluster_id:
            slot = i
            break
        if b.probes[i].status == PROBE_UNKNOWN and b.probes[slot].status != PROBE_UNKNOWN:
            slot = i
        elif (b.probes[slot].status != PROBE_UNKNOWN and b.probes[i].status != PROBE_UNKNOWN
              and b.probes[i].start_us < b.probes[slot].start_us):
            slot = i
    c = &b.probes[slot]
    memset(c, 0, sizeof(BweProbeCluster))
    c.id = cluster_id
    c.status = PROBE_PENDING
    c.target_bps = <int64_t>clamp(<double>target_bps, BWE_MIN_BPS, BWE_MAX_BPS)
    c.start_us = now
    c.tail_us = now + max(0, duration_us) // 2
    b.probe_floor_bps = b.estimate_bps
    b.probe_start_us = now


cdef inline double probe_floor(const Bwe *b, double rate, int64_t now) noexcept nogil:
    if b.probe_floor_bps > rate and 0 <= now - b.probe_start_us < PROBE_SETTLE_US:
        return b.probe_floor_bps
    return rate


cdef BweProbeCluster *probe_find(const Bwe *b, int32_t cluster_id) noexcept nogil:
    cdef int i
    for i in range(BWE_PROBE_CLUSTERS):
        if b.probes[i].id == cluster_id and b.probes[i].status != PROBE_UNKNOWN:
            return <BweProbeCluster *>&b.probes[i]
    return NULL


cdef void probe_count(Bwe *b, const BwePacketResult *r, bint late) noexcept nogil:
    cdef BweProbeCluster *c
    cdef int i
    for i in range(BWE_PROBE_CLUSTERS):
        c = &b.probes[i]
        if (c.status == PROBE_PENDING and r.probe_cluster != c.id and c.all.reported > 0
                and r.send_us > c.max_send_us + PROBE_COMPLETE_GAP_US):
            c.complete = True
    b.ops += BWE_PROBE_CLUSTERS
    if r.probe_cluster < 0:
        return
    c = probe_find(b, r.probe_cluster)
    if c == NULL or c.status != PROBE_PENDING or c.complete or r.send_us < c.start_us:
        return
    span_count(&c.all, r, late)
    if r.send_us >= c.tail_us:
        span_count(&c.tail, r, late)
    if not late and r.send_us > c.max_send_us:
        c.max_send_us = r.send_us


cdef void span_count(BweProbeSpan *p, const BwePacketResult *r, bint late) noexcept nogil:
    if not late:
        p.reported += 1
        p.reported_bytes += r.size
    if not r.received:
        return
    if p.received == 0 or r.send_us < p.first_send_us:
        p.first_send_us = r.send_us
    if p.received == 0 or r.send_us >= p.last_send_us:
        p.last_send_us = r.send_us
        p.last_send_size = r.size
    if p.received == 0 or r.arrival_us < p.first_arrival_us:
        p.first_arrival_us = r.arrival_us
        p.first_arrival_size = r.size
    if p.received == 0 or r.arrival_us > p.last_arrival_us:
        p.last_arrival_us = r.arrival_us
    p.received += 1
    p.received_bytes += r.size


cdef void probes_mark_overuse(Bwe *b) noexcept nogil:
    cdef int i
    for i in range(BWE_PROBE_CLUSTERS):
        if b.probes[i].status == PROBE_PENDING:
            b.probes[i].overused = True


cdef void probes_judge(Bwe *b, int64_t now) noexcept nogil:
    """Judge every pending cluster that is complete (a later packet was reported) or timed out."""
    cdef int i
    cdef BweProbeCluster *c
    cdef double rate
    for i in range(BWE_PROBE_CLUSTERS):
        c = &b.probes[i]
        if c.status != PROBE_PENDING or (not c.complete and now - c.start_us < BWE_PROBE_TIMEOUT_US):
            continue
        rate = probe_rate(&c.all, c.target_bps)
        if rate > 0 and c.tail.reported >= PROBE_MIN_PACKETS:  # a shaper's bucket may have carried the first half
            rate = min(rate, probe_rate(&c.tail, c.target_bps))
        if rate <= 0 or c.overused or b.usage == BWE_OVERUSING:
            c.status = PROBE_FAILED
            b.probes_failed += 1
            continue
        c.status = PROBE_SUCCEEDED
        c.result_bps = <int64_t>rate
        b.probes_succeeded += 1
        if b.loss_fraction <= LOSS_HIGH:
            # the link carried this rate without a queue building: both rates start there (a delay-based rate
            # above it stays: when only loss cut the estimate, it may be the start value, and the loss-based rate
            # under it rises no higher than 1.5 x acknowledged without a probe), and the delay-based searches for a
            # new congestion point multiplicatively (the old one no longer applies)
            if rate > b.delay_rate_bps:
                b.delay_rate_bps = clamp(rate, BWE_MIN_BPS, BWE_MAX_BPS)
                b.capacity_kbps = -1.0
                b.rate_update_us = now
            if rate > b.loss_rate_bps:
                b.loss_rate_bps = min(rate, b.delay_rate_bps)


cdef double probe_rate(const BweProbeSpan *c, int64_t target_bps) noexcept nogil:
    """min(send rate, receive rate) over the received packets of a cluster's span; <= 0 when the measure is not
    valid."""
    cdef int64_t send_span = c.last_send_us - c.first_send_us
    cdef int64_t receive_span = c.last_arrival_us - c.first_arrival_us
    cdef double send_bps, receive_bps
    if c.received < PROBE_MIN_PACKETS or c.received_bytes < PROBE_MIN_RECEIVED * c.reported_bytes:
        return -1.0
    if not (0 < send_span <= PROBE_MAX_INTERVAL_US and 0 < receive_span <= PROBE_MAX_INTERVAL_US):
        return -1.0
    send_bps = (c.received_bytes - c.last_send_size) * 8e6 / <double>send_span
    receive_bps = (c.received_bytes - c.first_arrival_size) * 8e6 / <double>receive_span
    if receive_bps > PROBE_MAX_RECEIVE_RATIO * send_bps:
        return -1.0
    if receive_bps < PROBE_BOTTLENECK_RATIO * send_bps:
        return min(PROBE_BOTTLENECK_FACTOR * receive_bps, <double>target_bps)
    # no more than asked for: a pacer that bunched the cluster proves the link carried it, not a higher rate
    return min(send_bps, receive_bps, <double>target_bps)


cdef int bwe_probe_status(const Bwe *b, int32_t cluster_id, int64_t now) noexcept nogil:
    cdef BweProbeCluster *c = probe_find(b, cluster_id)
    if c == NULL:
        return PROBE_UNKNOWN
    if c.status == PROBE_PENDING and now - c.start_us > BWE_PROBE_TIMEOUT_US:
        return PROBE_FAILED
    return c.status


cdef bint bwe_probe_overused(const Bwe *b, int32_t cluster_id) noexcept nogil:
    cdef BweProbeCluster *c = probe_find(b, cluster_id)
    return c != NULL and (c.overused or c.status == PROBE_FAILED
                          or (c.all.reported >= PROBE_MIN_PACKETS * 2
                              and c.all.received < PROBE_MIN_RECEIVED * c.all.reported))


cdef int64_t bwe_probe_result_bps(const Bwe *b, int32_t cluster_id) noexcept nogil:
    cdef BweProbeCluster *c = probe_find(b, cluster_id)
    return c.result_bps if c != NULL and c.status == PROBE_SUCCEEDED else 0


# ---- REMB, outputs -------------------------------------------------------------------------------------------------

cdef void bwe_on_remb(Bwe *b, int64_t bps, int64_t now) noexcept nogil:
    """The client ran its own (receive-side GCC) estimate. Its value starts at the throughput it measured and only
    grows from there (to 1.5 x throughput at most) until it detects overuse, so it is no ceiling by itself: at
    first it is just what we happened to send. Congestion is a fall from its previous value (its overuse signal),
    or a value below what we send that does not rise: its estimator sees no delay growth once a drop-tail queue is
    full and loss does not enter it, so behind a narrow link it settles at 1.5 x what gets through, under what we
    send; while we merely send more than it measured (a publisher ramping up) it rises each time. Congestion sets
    the estimate to the REMB; otherwise a REMB above the estimate raises it (to 1.5 x what we send at most). So the
    estimate stays at the start value, as on the TWCC path, until the link is seen to be congested."""
    cdef double rate, sent
    if b.twcc_seen:
        b.remb_ignored += 1
        return
    if bps <= 0:
        b.invalid += 1
        return
    b.rembs += 1
    rate = clamp(<double>bps, BWE_MIN_BPS, BWE_MAX_BPS)
    b.last_feedback_us = now
    sent = rate_value(b, &b.sent)
    if ((b.remb_bps > 0 and rate < REMB_DROP * b.remb_bps)
            or (rate < REMB_DROP * sent and (b.remb_bps == 0 or rate <= b.remb_bps))):
        b.usage = BWE_OVERUSING
        b.last_congestion_us = now
        b.decreases += 1
        b.delay_rate_bps = rate  # below the estimate: it never falls under the last REMB otherwise
    else:
        b.usage = BWE_NORMAL
        # A REMB says what the client thinks, not what got through: above what we send it is raised no higher than
        # the TWCC path's acknowledged headroom allows (aiortc's estimator jumps to many times its throughput when
        # its rate counter restarts after a gap).
        b.delay_rate_bps = max(b.delay_rate_bps,
                               rate if sent < 0 else min(rate, ACKED_HEADROOM * sent + ACKED_HEADROOM_BPS))
    b.remb_bps = rate
    b.loss_rate_bps = b.delay_rate_bps
    output_update(b, now)


cdef void bwe_on_sent(Bwe *b, int32_t payload_bytes, int64_t now) noexcept nogil:
    if payload_bytes > 0:
        rate_count(b, &b.sent, now, payload_bytes)


cdef void output_update(Bwe *b, int64_t now) noexcept nogil:
    b.estimate_bps = clamp(min(b.delay_rate_bps, b.loss_rate_bps), BWE_MIN_BPS, BWE_MAX_BPS)
    if (fabs(b.estimate_bps - b.reported_bps) > BWE_CHANGE_FRACTION * b.reported_bps
            or b.usage != b.reported_usage):
        b.changed = True
        b.reported_bps = b.estimate_bps
        b.reported_usage = b.usage


cdef bint bwe_congested(const Bwe *b, int64_t now) noexcept nogil:
    return (((b.usage != BWE_NORMAL or b.loss_fraction > LOSS_HIGH) and now - b.last_feedback_us < BWE_FEEDBACK_STALE_US)
            or (now - b.last_congestion_us < BWE_CONGESTION_HOLD_US and now >= b.last_congestion_us))


cdef bint bwe_take_change(Bwe *b) noexcept nogil:
    cdef bint changed = b.changed
    b.changed = False
    return changed
