# Reports: RTCP that describes streams. SR from publishers (kept per layer, for RR and for the SR we send on); every
# report interval RR + SDES + REMB to publishers and SR + SDES to subscribers. The bitrate REMB announces is set by
# the control plane; publishers that negotiated transport-cc get our feedback instead (transportcc.pyx), no REMB.
from libc.stdint cimport int64_t

from engine.rtcp cimport SenderInfo
from engine.state cimport EngineState

# A publisher's SR, received on transport slot `t`.
cdef void reports_sender_info(EngineState *s, int t, const SenderInfo *info, int64_t now) noexcept nogil
# Every tick: sends the reports when a report interval has passed since the last ones.
cdef void reports_tick(EngineState *s, int64_t now) noexcept nogil
