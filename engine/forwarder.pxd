# Forwarder: decides, per DownTrack, which packets pass: the target layer, switches only at its keyframes, pausing;
# within it, temporal layers up to the DownTrack's temporal cap (VP8's TID). Simulcast streams are Receiver layers
# (ExtPacket.layer); SVC selection is here too: VP9's from its payload descriptor, and AV1's or VP9's by the
# Dependency Descriptor (per frame: the decode target within the caps whose chain is intact). C-level, nogil.
from libc.stdint cimport int64_t

from engine.downtrack cimport MAX_TEMPORAL, DownTrack
from engine.packet cimport ExtPacket
from engine.receiver cimport MAX_LAYERS, Receiver, receiver_best_layer

cdef enum:  # forwarder_accept verdicts
    FORWARD_DROP
    FORWARD_PASS
    FORWARD_SWITCHED          # passes, and the current layer just changed to another one
    FORWARD_PAUSED            # the DownTrack is paused: nothing passes, nothing changes
    FORWARD_DROP_TEMPORAL     # above the temporal (or SVC spatial) layer: the Munger's to drop (munger_drop)
    FORWARD_CUT               # the current layer, cut by a bandwidth step-down (DownTrack.cut)

# The verdict on `p` for `d`. Video switches only to the target layer and only at a keyframe; audio passes
# everything. A switch re-anchors the Munger so the output continues from the last packet sent. Packets with a
# temporal id pass up to the current temporal layer, which moves to the cap at keyframes, down to it at any frame
# start, and up one layer towards it at a frame of the next layer with the layer sync bit (RFC 7741: it references
# only the base layer). A VP9 SVC stream (one Receiver layer) has its spatial layers selected the same way, capped
# by max_layer: down at once, up at a keyframe (forwarder.pyx vp9_accept); a stream with the Dependency Descriptor
# by decode target, frame by frame (forwarder.pyx dd_accept).
cdef int forwarder_accept(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil
# Caps `d`'s layer at `layer` and, when `temporal` >= 0, its temporal layer (the StreamAllocator's hook). `cut`, for
# a step-down the link cannot wait for: a simulcast layer above the cap stops at once rather than at the lower
# layer's keyframe (DownTrack.cut); so does an SVC stream's spatial layer above the cap, and the DownTrack waits for
# the keyframe the engine asks for (the lower layer restarts there).
cdef void forwarder_set_cap(DownTrack *d, int layer, int temporal, bint cut) noexcept nogil
# Pauses or resumes `d`; True when it resumes: it then waits for a keyframe (which the caller should request) and
# continues the output numbering from the last packet sent.
cdef bint forwarder_set_paused(DownTrack *d, bint paused) noexcept nogil


cdef inline int forwarder_target(const DownTrack *d, const Receiver *r) noexcept nogil:
    """The layer `d` aims at: the best live layer of `r` under the DownTrack's cap (-1 = none)."""
    return receiver_best_layer(r, d.max_layer)
