"""Receiver state per layer: receive statistics, sequence gaps to NACK, audio level (see receiver.pxd)."""
from libc.stdint cimport int16_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from engine.packetcache cimport cache_clear, cache_free, cache_has, cache_init, cache_put

cdef enum:
    NACK_MAX_TRIES = 5

cdef int64_t NACK_INTERVAL_US = 100000      # between NACKs of the same missing packet
cdef int64_t NACK_DELAY_US = 20000          # a gap may be reordering: wait this long before the first NACK
cdef int64_t NEVER = -(1 << 40)


cdef Receiver *receiver_new(bint is_video, int num_layers, bint dd=False) noexcept nogil:
    cdef Receiver *r = <Receiver *>calloc(1, sizeof(Receiver))
    cdef Layer *layer
    cdef int l
    cdef int size = VIDEO_CACHE if is_video else AUDIO_CACHE
    if r == NULL:
        return NULL
    r.is_video = is_video
    r.num_layers = num_layers
    r.top_layer = -1
    r.red_payload_type = -1
    if dd:
        r.dd = <DdStructure *>calloc(1, sizeof(DdStructure))
        if r.dd == NULL:
            free(r)
            return NULL
    for l in range(num_layers):
        layer = &r.layers[l]
        if cache_init(&layer.cache, size) < 0:
            receiver_free(r)
            return NULL
        layer_reset(layer)
    return r


cdef void receiver_free(Receiver *r) noexcept nogil:
    cdef int l
    for l in range(MAX_LAYERS):
        cache_free(&r.layers[l].cache)
    free(r.downtracks.items)
    free(r.dd)
    free(r)


cdef int receiver_find_rid(const Receiver *r, const uint8_t *value, int length) noexcept nogil:
    cdef int l, i
    for l in range(r.num_layers):
        if r.layers[l].rid_length != length:
            continue
        for i in range(length):
            if r.layers[l].rid[i] != value[i]:
                break
        else:
            return l
    return -1


cdef void receiver_update_top(Receiver *r, int64_t now, int64_t stale_us) noexcept nogil:
    cdef int l
    r.top_layer = -1
    r.live_layers = 0
    for l in range(r.num_layers):
        if r.layers[l].active and now - r.layers[l].last_packet_us < stale_us:
            r.top_layer = l
            r.live_layers |= 1 << l


cdef void receiver_note_live(Receiver *r, int l) noexcept nogil:
    r.live_layers |= 1 << l
    if l > r.top_layer:
        r.top_layer = l


cdef int receiver_best_layer(const Receiver *r, int cap) noexcept nogil:
    cdef int l
    for l in range(min(cap, r.num_layers - 1), -1, -1):
        if r.live_layers & (1 << l):
            return l
    for l in range(cap + 1, r.num_layers):
        if r.live_layers & (1 << l):
            return l
    return -1


# 10^(-dBov/20) for every RFC 6464 level: averaging happens in the linear domain, as loudness adds up there.
cdef double LINEAR_LEVEL[128]
for _level in range(128):
    LINEAR_LEVEL[_level] = 10 ** (-_level / 20)


cdef void receiver_note_audio_level(Receiver *r, uint8_t level) noexcept nogil:
    r.level_energy += LINEAR_LEVEL[level & 0x7F]
    r.level_packets += 1


cdef double receiver_take_audio_level(Receiver *r, double expected_packets) noexcept nogil:
    cdef double level = r.level_energy / max(<double>r.level_packets, expected_packets, 1.0)
    r.level_energy = 0
    r.level_packets = 0
    return level


cdef void layer_reset(Layer *layer) noexcept nogil:
    layer.active = False
    layer.received = 0
    layer.bytes = 0
    layer.keyframe_bytes = 0
    layer.has_keyframe = False
    memset(layer.temporal_bytes, 0, sizeof(layer.temporal_bytes))
    memset(layer.svc_bytes, 0, sizeof(layer.svc_bytes))
    memset(layer.spatial_last_us, 0, sizeof(layer.spatial_last_us))
    layer.expected_prior = 0
    layer.received_prior = 0
    layer.transit_valid = False
    layer.jitter_q4 = 0
    layer.missing_count = 0
    layer.sr_arrival_us = 0
    layer.last_pli_us = NEVER
    cache_clear(&layer.cache)


cdef void add_missing(Layer *layer, uint16_t first, int count, int64_t now) noexcept nogil:
    cdef int i
    if count > MAX_MISSING:
        # Too large a gap to repair by NACK: the subscribers' keyframe requests take over.
        layer.missing_count = 0
        return
    for i in range(count):
        if layer.missing_count == MAX_MISSING:
            return
        layer.missing[layer.missing_count] = <uint16_t>(first + i)
        layer.missing_tries[layer.missing_count] = 0
        layer.missing_last_us[layer.missing_count] = now - NACK_INTERVAL_US + NACK_DELAY_US
        layer.missing_count += 1


cdef void remove_missing_at(Layer *layer, int i) noexcept nogil:
    layer.missing_count -= 1
    layer.missing[i] = layer.missing[layer.missing_count]
    layer.missing_tries[i] = layer.missing_tries[layer.missing_count]
    layer.missing_last_us[i] = layer.missing_last_us[layer.missing_count]


cdef void update_jitter(Layer *layer, uint32_t timestamp, uint32_t clock_rate, int64_t now) noexcept nogil:
    cdef uint32_t transit = <uint32_t>(now * clock_rate // 1000000) - timestamp
    cdef int64_t d
    if layer.transit_valid:
        d = <int32_t>(transit - layer.last_transit)
        if d < 0:
            d = -d
        if d < 0x7FFFFFF:  # a timestamp jump (new source) is not jitter
            layer.jitter_q4 += <uint32_t>(d - ((layer.jitter_q4 + 8) >> 4))
    layer.last_transit = transit
    layer.transit_valid = True


cdef int layer_receive(Layer *layer, const uint8_t *buf, int length, const RtpHeader *h, uint32_t clock_rate,
                       int64_t now, bint recovered) noexcept nogil:
    cdef int16_t delta
    cdef int result = 0
    cdef int i
    if cache_has(&layer.cache, h.sequence):
        return -1
    if not layer.active:
        layer.active = True
        layer.max_seq = h.sequence
        layer.base_seq = h.sequence
        layer.cycles = 0
        result = 1
    else:
        delta = <int16_t>(h.sequence - layer.max_seq)
        if delta > 0:
            if delta > 1:
                add_missing(layer, <uint16_t>(layer.max_seq + 1), delta - 1, now)
            if h.sequence < layer.max_seq:
                layer.cycles += 65536
            layer.max_seq = h.sequence
        else:
            for i in range(layer.missing_count):
                if layer.missing[i] == h.sequence:
                    remove_missing_at(layer, i)
                    break
    if not recovered:
        update_jitter(layer, h.timestamp, clock_rate, now)
    layer.received += 1
    if h.payload_length > 0:  # padding-only packets are the publisher's bandwidth probes, not what the layer costs
        layer.bytes += length
    layer.last_packet_us = now
    cache_put(&layer.cache, buf, length, h.sequence)
    return result


cdef int layer_due_nacks(Layer *layer, int64_t now, uint16_t *seqs) noexcept nogil:
    cdef int count = 0
    cdef int i = 0
    while i < layer.missing_count:
        if now - layer.missing_last_us[i] >= NACK_INTERVAL_US:
            seqs[count] = layer.missing[i]
            count += 1
            layer.missing_last_us[i] = now
            layer.missing_tries[i] += 1
            if layer.missing_tries[i] >= NACK_MAX_TRIES:
                remove_missing_at(layer, i)  # moves an unvisited entry into i
                continue
        i += 1
    return count


cdef void layer_report_block(Layer *layer, int64_t now, ReportBlock *b) noexcept nogil:
    cdef uint64_t expected = <uint64_t>layer.cycles + layer.max_seq - layer.base_seq + 1
    cdef int64_t lost = <int64_t>expected - <int64_t>layer.received
    cdef uint64_t expected_interval = expected - layer.expected_prior
    cdef int64_t lost_interval = <int64_t>expected_interval - <int64_t>(layer.received - layer.received_prior)
    layer.expected_prior = expected
    layer.received_prior = layer.received
    b.ssrc = layer.ssrc
    b.fraction_lost = 0 if expected_interval == 0 or lost_interval <= 0 else (
        255 if lost_interval >= <int64_t>expected_interval else (lost_interval << 8) // expected_interval)
    b.cumulative_lost = <int32_t>(0x7FFFFF if lost > 0x7FFFFF else (-0x800000 if lost < -0x800000 else lost))
    b.highest_sequence = layer.cycles + layer.max_seq
    b.jitter = layer.jitter_q4 >> 4
    if layer.sr_arrival_us:
        b.last_sr = <uint32_t>(layer.sr_ntp >> 16)
        b.delay_since_last_sr = <uint32_t>((now - layer.sr_arrival_us) * 65536 // 1000000)
    else:
        b.last_sr = 0
        b.delay_since_last_sr = 0
