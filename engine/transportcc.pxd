# transport-cc on the engine's transports. Toward publishers: the transport-wide sequence number of every packet
# they send (video and RTX: whatever carries the extension) goes into the transport's receive record, and feedback
# (twcc.pyx) leaves at LiveKit's cadence, so their send-side estimator (libwebrtc GCC) works. Toward subscribers:
# fanout.pyx stamps each packet with the transport's next number and keeps a send history (twcc.pxd); their feedback,
# resolved against it, drives the transport's bandwidth estimate (bwe.pyx), whose changes go up to Python as
# E_BANDWIDTH events. A subscriber without transport-cc gets abs-send-time instead (downtrack.pyx) and its REMB
# drives the same estimate (a transport gets one with its first DownTrack, with or without a send history).
from libc.stdint cimport int64_t, uint8_t

from engine.rtp cimport RtpHeader
from engine.state cimport EngineState, Transport

cdef enum:
    # Feedback to a publisher leaves when this many packets are held (LiveKit's responder: > 100)...
    TWCC_FEEDBACK_PACKETS = 100
    # ...or at a frame's last packet (marker bit) once this long has passed since the last one (LiveKit: 50 ms)...
    TWCC_MARKER_INTERVAL_US = 50000
    # ...or, from the engine's timer, once this long has passed with packets held (libwebrtc's default interval;
    # LiveKit has no timer, so it stays silent below 20 packets).
    TWCC_FEEDBACK_INTERVAL_US = 100000
    # Feedback packets one send may take (a long report is split at TWCC_MAX_FEEDBACK bytes): bounds the work.
    TWCC_FEEDBACKS_PER_SEND = 8
    # A subscriber transport's estimate before any feedback or REMB (bps): what bwe_init starts from. Events only
    # follow feedback, so the allocator sees this only if it asks Engine.transport_bandwidth first. Optimistic on
    # purpose: without probe traffic the estimate grows no higher than 1.5 x what is sent (bwe.pyx ACKED_HEADROOM),
    # so a start below the best layers' cost would cap every subscriber there; a narrow link is found by its loss
    # and delay within a second or two instead (LiveKit likewise starts every track at its best layer).
    BWE_START_BPS = 10000000

# The transport now receives packets with transport-cc (a receiver negotiated it): gives it a receive record and
# stops its REMB (reports.pyx). 0, or -1 when out of memory.
cdef int transportcc_enable_receive(EngineState *s, int slot) noexcept nogil
# The transport now sends to a subscriber: gives it a bandwidth estimate, and with `stamp` a send history whose
# numbers fanout.pyx writes (`first_seq` is the first). 0, or -1 when out of memory.
cdef int transportcc_enable_send(Transport *t, bint stamp, int first_seq, int64_t now) noexcept nogil
cdef void transportcc_free(EngineState *s, int slot) noexcept nogil
# A publisher's packet, authenticated, on transport slot `t`, whose transport-cc extension id is `ext_id`.
cdef void transportcc_received(EngineState *s, int t, const uint8_t *buf, const RtpHeader *h, int ext_id,
                               int64_t now) noexcept nogil
# Every tick: feedback to publishers that held packets for TWCC_FEEDBACK_INTERVAL_US.
cdef void transportcc_tick(EngineState *s, int64_t now) noexcept nogil
# A subscriber's transport-cc feedback (the RTPFB fmt 15 packet `p`, `length` bytes) on transport slot `t`; True
# when it was the first one the transport's estimate took (call transportcc_estimate_event after the packet).
cdef bint transportcc_feedback(EngineState *s, int t, const uint8_t *p, int length, int64_t now) noexcept nogil
# A subscriber's REMB (the PSFB fmt 15 packet `p`) on transport slot `t`; True when it was the first one the
# transport's estimate took (as transportcc_feedback).
cdef bint transportcc_remb(EngineState *s, int t, const uint8_t *p, int length, int64_t now) noexcept nogil
# After a compound RTCP packet that held feedback or REMB: one E_BANDWIDTH event (at most one per datagram, as the
# event queue needs) when the estimate changed (bwe_take_change) or the first TWCC feedback or REMB (`first`)
# arrived, from which on the estimate is the client's rather than the start value.
cdef void transportcc_estimate_event(EngineState *s, int t, bint first, int64_t now) noexcept nogil
