# Feedback: RTCP that repairs media. In from subscribers: PLI/FIR (passed on to the publisher) and NACK (answered with
# RTX from the packet cache, rate-limited). Out to publishers: PLI (rate-limited per layer) and NACK for their gaps.
from libc.stdint cimport int64_t, uint8_t, uint32_t

from engine.downtrack cimport DownTrack
from engine.receiver cimport Receiver
from engine.state cimport EngineState

# A subscriber's PLI or FIR for `d`: a keyframe of the layer it gets (or waits for) is requested from the publisher.
cdef void feedback_keyframe_request(EngineState *s, DownTrack *d, int64_t now) noexcept nogil
# A subscriber's generic NACK (the RTPFB packet `p`, `length` bytes) naming `media`, `d`'s SSRC or RTX SSRC.
cdef void feedback_nack(EngineState *s, DownTrack *d, uint32_t media, const uint8_t *p, int length,
                        int64_t now) noexcept nogil
# PLI to the publisher for layer `l` of `r`, at most once per PLI interval.
cdef void feedback_request_keyframe(EngineState *s, Receiver *r, int l, int64_t now) noexcept nogil
# Every tick: NACKs for the publishers' gaps that are due; keyframe requests for DownTracks not yet on their target.
cdef void feedback_tick(EngineState *s, int64_t now) noexcept nogil
