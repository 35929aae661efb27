# Fan-out: every ExtPacket of the batch to every DownTrack of its Receiver: Forwarder, Munger, write, SRTP protect,
# into the send batch. The per-packet inner loop lives in this one translation unit.
from libc.stdint cimport int64_t

from engine.downtrack cimport DownTrack, SeqMapEntry
from engine.packet cimport ExtPacket
from engine.state cimport EngineState, SendBatch

# Forwards the batch's ExtPackets to the DownTracks `worker` owns, into `b` (the caller flushes it and, once every
# worker is done, empties the packet list).
cdef void fanout_batch(EngineState *s, SendBatch *b, int worker, int64_t now) noexcept nogil
# Writes `d`'s copy of `p` as mapped by `e`, as `kind` (downtrack.pxd WRITE_*), into a send slot, protects and
# commits it into `b`. False when it was dropped (subscriber not ready, too large, protect failed; counted).
cdef bint fanout_send(EngineState *s, SendBatch *b, DownTrack *d, const ExtPacket *p, const SeqMapEntry *e, int kind,
                      int64_t now) noexcept nogil
