# Reports: RTCP that describes streams. SR from publishers (kept per layer, for RR and for the SR we send on); every
# report interval RR + SDES + REMB to publishers and SR + SDES to subscribers. The bitrate REMB announces is set by
# the control plane; publishers that negotiated transport-cc get our feedback instead (transportcc.pyx), no REMB.
from libc.stdint cimport int64_t, uint8_t

from engine.rtcp cimport SenderInfo
from engine.state cimport EngineState

# A publisher's SR, received on transport slot `t`.
cdef void reports_sender_info(EngineState *s, int t, const SenderInfo *info, int64_t now) noexcept nogil
# The report blocks of a subscriber's SR or RR (`count` of them at `pkt`), received on transport slot `t`: each one
# about a DownTrack's media SSRC is kept on the DownTrack (loss, jitter, round trip) for connection quality.
cdef void reports_receiver_blocks(EngineState *s, int t, const uint8_t *pkt, int length, int count,
                                  int64_t now) noexcept nogil
# Every tick: sends the reports when a report interval has passed since the last ones.
cdef void reports_tick(EngineState *s, int64_t now) noexcept nogil
