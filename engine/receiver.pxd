# Receiver: a published track as it arrives, per layer (simulcast stream): identity (rid, SSRC, RTX SSRC), packet
# cache for NACK (packetcache.pxd), receive statistics (RFC 3550 A.3/A.8), sequence gaps to NACK, the publisher's last
# SR. C-level and nogil; the EngineState (state.pxd) owns the structs and the lookups that lead to them.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from engine.codecs.dd cimport DdStructure
from engine.rtcp cimport ReportBlock
from engine.packetcache cimport PacketCache
from engine.rtp cimport RtpHeader
from engine.table cimport IntList

cdef enum:
    MAX_LAYERS = 4
    VIDEO_CACHE = 512         # packets per layer (powers of two)
    AUDIO_CACHE = 64
    MAX_MISSING = 128         # sequence gaps tracked per layer

cdef struct Layer:
    uint8_t rid[16]
    int rid_length
    uint32_t ssrc
    uint32_t rtx_ssrc
    bint has_ssrc
    bint has_rtx
    bint active               # a packet has arrived
    int64_t last_packet_us
    uint64_t keyframes
    # the last keyframe's size: the bytes of the packets of its frame (its RTP timestamp) received so far, in any
    # order. What an upgrade to this layer sends at once (the allocator prices it).
    uint32_t keyframe_bytes
    uint32_t keyframe_ts
    bint has_keyframe
    PacketCache cache
    # receive statistics
    uint16_t max_seq
    uint32_t cycles
    uint32_t base_seq
    uint64_t received
    uint64_t bytes            # of packets with payload (padding-only probes excluded): what the layer costs
    uint64_t temporal_bytes[4]  # of those, by the temporal id they carry (MAX_TEMPORAL ids; none counted without)
    uint64_t svc_bytes[4][4]  # of those, in an SVC stream: by spatial id (VP9_MAX_SPATIAL), then temporal id
    int64_t spatial_last_us[4]  # SVC: when each spatial id last arrived (0 = never)
    uint64_t expected_prior
    uint64_t received_prior
    uint32_t last_transit
    bint transit_valid
    uint32_t jitter_q4        # jitter * 16
    # last SR from the publisher
    uint64_t sr_ntp
    uint32_t sr_rtp
    int64_t sr_arrival_us
    # sequence gaps to NACK
    uint16_t missing[128]
    uint8_t missing_tries[128]
    int64_t missing_last_us[128]
    int missing_count
    uint64_t nacks_sent
    int64_t last_pli_us
    double rebind_tokens      # SSRC changes it may still make (state.pxd SSRC_REBINDS_PER_SECOND), refilled at
    int64_t rebind_us         # rebind_us (0: never, so the bucket starts full)
    uint64_t plis_sent

cdef struct Receiver:
    int64_t id
    int transport             # EngineState slot of the publisher's transport
    bint is_video
    int codec                 # engine.codecs.describe C_* id
    uint8_t payload_type
    int rtx_payload_type      # -1 = none
    int red_payload_type      # audio: RED (RFC 2198) carrying `payload_type` in its blocks, -1 = none
    uint32_t clock_rate
    uint8_t mid[64]
    int mid_length
    int num_layers
    bint simulcast            # layers are told apart by rid
    uint8_t ext_mid
    uint8_t ext_rid
    uint8_t ext_rrid
    uint8_t ext_audio_level
    uint8_t ext_transport_cc  # the publisher's transport-cc id (its transport keeps a receive record), 0 = none
    uint8_t ext_dd            # the publisher's Dependency Descriptor id (AV1/VP9 SVC), 0 = none
    DdStructure *dd           # with ext_dd: the last template structure it sent (allocated with the Receiver)
    double level_energy       # sum of linear RFC 6464 levels (1.0 = 0 dBov) since the control plane last read it
    uint32_t level_packets    # packets that carried a level since then
    int top_layer             # highest layer with recent packets, -1 = none
    uint8_t live_layers       # bit l = layer l has recent packets
    Layer layers[4]
    IntList downtracks        # EngineState slots
    uint64_t workers          # bit w = worker w owns some of them (EngineState.owners): the workers a packet wakes

# An empty receiver (calloc'd) whose `num_layers` layers have caches, with a Dependency Descriptor structure when
# `dd`; NULL when out of memory.
cdef Receiver *receiver_new(bint is_video, int num_layers, bint dd=*) noexcept nogil
cdef void receiver_free(Receiver *r) noexcept nogil
# The layer whose rid is `value`, or -1.
cdef int receiver_find_rid(const Receiver *r, const uint8_t *value, int length) noexcept nogil
# Recomputes top_layer and live_layers: the layers that received packets within `stale_us`.
cdef void receiver_update_top(Receiver *r, int64_t now, int64_t stale_us) noexcept nogil
# Notes a packet on layer `l` (it is live from now on, until receiver_update_top finds it stale).
cdef void receiver_note_live(Receiver *r, int l) noexcept nogil
# The layer to aim at under `cap`: the highest live one <= cap, else the lowest live one above it (a subscriber
# capped below every layer that is actually sent still sees video), else -1.
cdef int receiver_best_layer(const Receiver *r, int cap) noexcept nogil
# Adds one RFC 6464 audio level (0 = loudest .. 127 = silence) to the receiver's interval energy.
cdef void receiver_note_audio_level(Receiver *r, uint8_t level) noexcept nogil
# The mean linear level over an interval in which `expected_packets` packets should have arrived (packets that
# DTX left out count as silence), then starts a new interval.
cdef double receiver_take_audio_level(Receiver *r, double expected_packets) noexcept nogil

# Forgets a layer's receive history (not its identity or cache buffers).
cdef void layer_reset(Layer *layer) noexcept nogil
# Adds a received packet's bytes to its temporal layer's count (packets without a temporal id, or padding-only, none).
cdef inline void layer_note_temporal(Layer *layer, int temporal, int length, int payload_length) noexcept nogil:
    if 0 <= temporal < 4 and payload_length > 0:
        layer.temporal_bytes[temporal] += length
# Adds a received packet to its layer's last keyframe size: a keyframe's first packet starts a new count, and every
# packet of its frame (same RTP timestamp; later ones only repair it) adds to it.
cdef inline void layer_note_keyframe(Layer *layer, uint32_t timestamp, bint keyframe, int length,
                                     int payload_length) noexcept nogil:
    if keyframe and not (layer.has_keyframe and timestamp == layer.keyframe_ts):
        layer.has_keyframe = True
        layer.keyframe_ts = timestamp
        layer.keyframe_bytes = 0
    if layer.has_keyframe and timestamp == layer.keyframe_ts and payload_length > 0:
        layer.keyframe_bytes += length
# The same for a packet of an SVC stream, by spatial and temporal id; notes that its spatial layer is live.
cdef inline void layer_note_svc(Layer *layer, int spatial, int temporal, int length, int payload_length,
                                int64_t now) noexcept nogil:
    if 0 <= spatial < 4 and 0 <= temporal < 4:
        layer.spatial_last_us[spatial] = now
        if payload_length > 0:
            layer.svc_bytes[spatial][temporal] += length
# The highest spatial id of `layer`'s SVC stream that arrived within `stale_us`, -1 = none (not SVC).
cdef inline int layer_top_spatial(const Layer *layer, int64_t now, int64_t stale_us) noexcept nogil:
    cdef int s
    for s in range(3, -1, -1):
        if layer.spatial_last_us[s] and now - layer.spatial_last_us[s] < stale_us:
            return s
    return -1
# Accounts for and caches one packet. Returns -1 for a duplicate (already received: drop it), 1 for the layer's
# first packet, else 0. `recovered` = rebuilt from RTX (no jitter sample).
cdef int layer_receive(Layer *layer, const uint8_t *buf, int length, const RtpHeader *h, uint32_t clock_rate,
                       int64_t now, bint recovered) noexcept nogil
# Fills `seqs` (room for MAX_MISSING) with the gaps due for a NACK now; gives up on a gap after a few tries.
cdef int layer_due_nacks(Layer *layer, int64_t now, uint16_t *seqs) noexcept nogil
# The layer's report block for our RR; starts a new loss interval.
cdef void layer_report_block(Layer *layer, int64_t now, ReportBlock *block) noexcept nogil
