"""Forwarder: per-DownTrack layer selection and pausing (see forwarder.pxd)."""
from libc.stdint cimport int16_t, uint8_t, uint16_t

from engine.codecs.dd cimport DTI_NOT_PRESENT, DdFrame
from engine.codecs.vp9 cimport Vp9Descriptor

from engine.downtrack cimport (DD_DROPPED, DD_FORWARDED, DD_HISTORY, DD_UNKNOWN, SWITCH_HORIZON, DdVerdict,
                               downtrack_lose_layer)
from engine.munger cimport munger_anchor
from engine.packet cimport DESC_VP8, DESC_VP9


cdef inline bint temporal_accept(DownTrack *d, const ExtPacket *p) noexcept nogil:
    """Whether `p` is within the current temporal layer, which moves only at a frame's first packet (so a frame
    passes whole or not at all). Packets without a temporal id always pass."""
    cdef int previous = d.current_temporal
    if p.temporal < 0:
        return True
    if previous < 0:
        d.current_temporal = d.max_temporal
    elif p.descriptor == DESC_VP8 and p.desc.vp8.start_of_partition and p.desc.vp8.partition_id == 0:
        if p.keyframe or d.max_temporal < previous:
            d.current_temporal = d.max_temporal
        elif p.temporal == previous + 1 <= d.max_temporal and p.desc.vp8.layer_sync:
            # One layer at a time: later frames of layer t reference the latest frames of layers 1..t-1 as well.
            d.current_temporal = p.temporal
        if d.current_temporal != previous:
            d.temporal_switches += 1
    return p.temporal <= d.current_temporal


cdef inline bint vp9_accept(DownTrack *d, const ExtPacket *p) noexcept nogil:
    """Whether `p`, of a VP9 SVC stream, is within the current spatial and temporal layers (everything at or below
    both passes: upper spatial layers predict from lower ones). The layers move only at a frame's first packet (B):
    temporal ones at a picture's start (spatial id 0), so a picture passes with all its forwarded layers or not at
    all; spatial down at once (the first frame at or below the cap). Spatial up only at a keyframe, whose upper
    layers reference no earlier picture (P = 0): a P = 0 upper frame of a delta picture would also do for the
    decoder, but the lower layer's end of that picture has left with the marker already, and a picture that grows
    after its marker is one libwebrtc's frame buffer may drop."""
    cdef const Vp9Descriptor *v = &p.desc.vp9
    cdef int spatial = v.spatial_id, temporal = v.temporal_id, cap = d.max_layer, previous = d.current_temporal
    cdef int top
    if not v.begin_of_frame:
        pass
    elif p.keyframe or d.current_spatial < 0:
        top = cap
        if v.ss_spatial_layers and v.ss_spatial_layers - 1 < top:
            top = v.ss_spatial_layers - 1   # the layers the encoder says it sends
        if d.current_spatial >= 0 and d.current_spatial != top:
            d.spatial_switches += 1
        if previous >= 0 and previous != d.max_temporal:
            d.temporal_switches += 1
        d.current_spatial = top
        d.current_temporal = d.max_temporal
    else:
        if spatial == 0:
            if d.max_temporal < previous:
                d.current_temporal = d.max_temporal
            elif temporal == previous + 1 <= d.max_temporal and v.switching_up:
                d.current_temporal = temporal
            if d.current_temporal != previous:
                d.temporal_switches += 1
        if d.current_spatial > cap and spatial <= cap:
            d.current_spatial = cap
            d.spatial_switches += 1
    return spatial <= d.current_spatial and temporal <= d.current_temporal


cdef inline uint8_t dd_verdict(const DownTrack *d, uint16_t frame) noexcept nogil:
    cdef const DdVerdict *v = &d.dd_frames[frame & (DD_HISTORY - 1)]
    return v.state if v.frame == frame else DD_UNKNOWN


cdef inline int dd_choose(const DownTrack *d, const DdFrame *f) noexcept nogil:
    """The highest active decode target within the DownTrack's caps whose chain is intact, -1 = none."""
    cdef int dt, best = -1, layers, best_layers = -1
    for dt in range(f.decode_targets):
        layers = f.dt_layers[dt]
        if not (f.active_decode_targets >> dt) & 1 or (layers >> 4) > d.max_layer or (layers & 0x0F) > d.max_temporal:
            continue
        if f.chain_count and (d.dd_broken >> f.protected_by[dt]) & 1:
            continue
        if layers > best_layers:
            best, best_layers = dt, layers
    return best


cdef inline bint dd_accept(DownTrack *d, const ExtPacket *p) noexcept nogil:
    """Whether `p`, of a stream with the Dependency Descriptor, belongs to a frame forwarded to `d`. Decided once per
    frame (its packets follow the verdict, late ones too): a frame passes when the chosen decode target includes
    it and none of the frames it references was dropped. The target is the highest active one within the caps whose
    chain is intact, chosen again at each temporal unit: down at once, up only when the new target's chain is intact,
    i.e. from a frame that restarts it (a keyframe, after frames of it were dropped); temporal steps up once the
    frames referenced have passed. Chains that lose a frame stay broken for `d` until a frame restarts them."""
    cdef const DdFrame *f = &p.dd
    cdef DdVerdict *v = &d.dd_frames[f.frame_number & (DD_HISTORY - 1)]
    cdef int c, i, target, chosen, spatial, temporal
    cdef int ahead = <int16_t>(f.frame_number - d.dd_newest)
    cdef bint forward
    if ahead > 0:
        # The verdicts of the numbers skipped up to this frame are forgotten, so the history holds only the latest
        # DD_HISTORY numbers' (a verdict left from a frame number's previous round would otherwise stand in).
        for i in range(1, min(ahead, <int>DD_HISTORY) + 1):
            d.dd_frames[(d.dd_newest + i) & (DD_HISTORY - 1)].state = DD_UNKNOWN
        d.dd_newest = f.frame_number
    elif v.frame == f.frame_number and v.state != DD_UNKNOWN:
        return v.state == DD_FORWARDED
    if f.has_structure:  # a new structure: its chains start here (its decode targets are chosen below: a new unit)
        d.dd_broken = 0
    for c in range(f.chain_count):
        if f.chain_fdiffs[c] == 0:
            d.dd_broken &= ~(1u << c)
        elif dd_verdict(d, <uint16_t>(f.frame_number - f.chain_fdiffs[c])) == DD_DROPPED:
            d.dd_broken |= 1u << c
    target = d.dd_target
    if target >= f.decode_targets or (target >= 0 and f.chain_count and (d.dd_broken >> f.protected_by[target]) & 1):
        target = -1
    if target < 0 or f.has_structure or p.h.timestamp != d.dd_last_ts:
        # Within the caps, else (a step down to a layer whose own frames were not forwarded: K-SVC) the current
        # target while it stays decodable, until the keyframe the engine asks for (feedback.pyx) restarts the chains.
        chosen = dd_choose(d, f)
        d.dd_overshoot = chosen < 0 and target >= 0
        if chosen >= 0:
            target = chosen
    if target < 0:
        # Nothing decodable is left (every chain lost a frame): start again at a keyframe, which the engine asks for
        # while the DownTrack waits for one.
        downtrack_lose_layer(d)
        return False
    if target != d.dd_target:
        spatial, temporal = f.dt_layers[target] >> 4, f.dt_layers[target] & 0x0F
        if d.current_spatial >= 0 and spatial != d.current_spatial:
            d.spatial_switches += 1
        if d.dd_target >= 0 and temporal != d.current_temporal:
            d.temporal_switches += 1
        d.dd_target = target
        d.current_spatial = spatial
        d.current_temporal = temporal
    d.dd_last_ts = p.h.timestamp
    forward = f.dti[target] != DTI_NOT_PRESENT
    for i in range(f.fdiff_count if forward else 0):
        if dd_verdict(d, <uint16_t>(f.frame_number - f.fdiffs[i])) == DD_DROPPED:
            forward = False
    v.frame = f.frame_number
    v.state = DD_FORWARDED if forward else DD_DROPPED
    return forward


cdef inline bint layer_accept(DownTrack *d, const ExtPacket *p) noexcept nogil:
    if p.has_dd:
        return dd_accept(d, p)
    if p.descriptor == DESC_VP9:
        return vp9_accept(d, p)
    return temporal_accept(d, p)


cdef int forwarder_accept(DownTrack *d, const ExtPacket *p, int64_t now) noexcept nogil:
    cdef const Receiver *r = p.r
    cdef int previous = d.current_layer
    cdef int16_t delta
    if d.paused:
        return FORWARD_PAUSED
    if p.layer != previous:
        if r.is_video and (p.layer != forwarder_target(d, r) or not p.keyframe):
            d.dropped += 1
            return FORWARD_DROP
        d.current_layer = p.layer
        d.switch_seq = p.h.sequence
        munger_anchor(d, p, r.clock_rate, now)
        layer_accept(d, p)  # a keyframe: it passes and sets the temporal (and SVC spatial) layer
        d.cut = False
        if previous >= 0:
            d.layer_switches += 1
            return FORWARD_SWITCHED
        return FORWARD_PASS
    if d.cut:
        if forwarder_target(d, r) < previous:
            return FORWARD_CUT
        d.cut = False  # the lower layer went stale: the current one is the target again
    delta = <int16_t>(p.h.sequence - d.switch_seq)
    if delta < 0:
        d.dropped += 1  # from before the switch point: its frame was never started
        return FORWARD_DROP
    if delta > SWITCH_HORIZON:
        # Drag the switch point along so the comparison stays meaningful across sequence number wraps.
        d.switch_seq = <uint16_t>(p.h.sequence - SWITCH_HORIZON)
    if layer_accept(d, p):
        return FORWARD_PASS
    d.temporal_dropped += 1
    return FORWARD_DROP_TEMPORAL


cdef void forwarder_set_cap(DownTrack *d, int layer, int temporal, bint cut) noexcept nogil:
    cdef int shown = d.current_spatial
    d.max_layer = max(0, min(layer, MAX_LAYERS - 1))
    if temporal >= 0:
        d.max_temporal = min(temporal, MAX_TEMPORAL - 1)
    d.cut = cut and d.max_layer < d.current_layer
    if cut and d.max_layer < shown:
        # An SVC step-down for bandwidth restarts at a keyframe, even where the lower layer's own frames were
        # forwarded all along (full SVC): the link lost packets, and a temporal unit whose top frame it lost never
        # completes at the subscriber, so lower frames referencing that unit's would not decode (libwebrtc then
        # waits ~3 s before asking for a keyframe itself; seen behind 600 kbit/s). Until the keyframe the engine
        # asks for, nothing passes: the old layer's frames would fill the queue it must cross.
        downtrack_lose_layer(d)
        d.current_spatial = shown  # what the subscriber shows until then: the keyframe's layer is a switch


cdef bint forwarder_set_paused(DownTrack *d, bint paused) noexcept nogil:
    if paused == d.paused:
        return False
    d.paused = paused
    if paused:
        return False
    downtrack_lose_layer(d)
    return True
