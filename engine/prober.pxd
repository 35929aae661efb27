# Prober: probe clusters toward a subscriber transport, so its bandwidth estimate can find out whether the link carries
# more than is being sent (without them the estimate never rises past 1.5 x the media rate: a paused video would never
# resume, a lower layer never go back up). A cluster tops the transport's traffic up to a target rate for a short
# time with padding-only RTP packets on a video DownTrack's RTX stream (which every receiver discards, and which still
# carry the transport-wide sequence number); every packet sent meanwhile, media included, is tagged with the cluster
# in the send history, and bwe.pyx judges the cluster from the subscriber's feedback. C-level, nogil.
from libc.stdint cimport int32_t, int64_t

from engine.state cimport EngineState

cdef enum:
    PROBE_PADDING_BYTES = 255       # RTP padding is counted in one byte: a padding-only packet carries at most 255
    PROBE_MAX_PACKETS_PER_PUMP = 64  # packets one pump may send for one cluster (bounds a late tick's catch-up)
    PROBE_MIN_DURATION_US = 50000
    PROBE_MAX_DURATION_US = 2000000

# Starts a cluster on transport slot `t` at `target_bps` for `duration_us`: its id (>= 0), or -1 when the transport
# cannot be probed (no transport-cc send history, no bandwidth estimate, or no started video DownTrack with RTX).
# A cluster already running is replaced.
cdef int32_t prober_start(EngineState *s, int t, int64_t target_bps, int64_t duration_us, int64_t now) noexcept nogil
# Sends what the running clusters are due (after every batch and every tick) and ends the ones whose time is up.
cdef void prober_pump(EngineState *s, int64_t now) noexcept nogil
# The transport is going away.
cdef void prober_forget(EngineState *s, int t) noexcept nogil
