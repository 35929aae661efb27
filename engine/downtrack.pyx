"""DownTrack lifecycle and packet writing, media or RTX (see downtrack.pxd)."""
from libc.stdlib cimport free
from libc.stdint cimport int16_t
from libc.string cimport memcpy, memset

from engine.codecs.dd cimport DD_GROWTH, DD_MANDATORY, DdFrame, write_dd
from engine.codecs.red cimport red_renumber
from engine.codecs.vp8 cimport vp8_write_ids
from engine.memory cimport aligned_calloc
from engine.packet cimport DESC_RED, DESC_VP8
from engine.rtp cimport abs_send_time, find_extension, rewrite_header
from engine.wire cimport store16, store32


cdef DownTrack *downtrack_new() noexcept nogil:
    # Aligned: neighbouring DownTracks may belong to different workers (workers.pxd), and a DownTrack is written
    # per packet.
    cdef DownTrack *d = <DownTrack *>aligned_calloc(sizeof(DownTrack))
    if d == NULL:
        return NULL
    d.seqmap = <SeqMapEntry *>aligned_calloc(SEQMAP_SIZE * sizeof(SeqMapEntry))
    if d.seqmap == NULL:
        free(d)
        return NULL
    d.current_layer = -1
    d.max_temporal = MAX_TEMPORAL - 1
    d.current_temporal = -1
    d.current_spatial = -1
    d.dd_target = -1
    d.last_out_pid = -1
    d.last_out_tl0 = -1
    d.last_dropped_pid = -1
    return d


cdef void downtrack_free(DownTrack *d) noexcept nogil:
    free(d.seqmap)
    free(d)


cdef void downtrack_lose_layer(DownTrack *d) noexcept nogil:
    d.current_layer = -1
    d.cut = False
    d.current_temporal = -1
    d.current_spatial = -1
    d.dd_target = -1
    d.dd_overshoot = False
    memset(d.dd_frames, 0, sizeof(d.dd_frames))
    memset(d.seqmap, 0, SEQMAP_SIZE * sizeof(SeqMapEntry))  # entries name the old stream's packets


cdef void downtrack_map_extension(DownTrack *d, int source, int target) noexcept nogil:
    if 0 < source < 256 and 0 <= target < (256 if d.ext_mixed else 15):
        d.ext_map[source] = <uint8_t>target


cdef int rewrite_dd(DownTrack *d, const ExtPacket *p, uint8_t *value) noexcept nogil:
    cdef const DdFrame *f = &p.dd
    cdef const uint8_t *original = NULL
    cdef int length = 0
    cdef uint32_t mask
    cdef uint16_t number
    if p.r.ext_dd == 0 or d.ext_map[p.r.ext_dd] == 0:
        return -1
    if not p.has_dd:
        # A retransmission (its descriptor is not parsed again: that would replay its structure and mask into the
        # Receiver's) keeps its own mask, which the decoder's already narrower one outlives but for a packet that
        # carried the publisher's; its frame number follows the offset.
        if d.dd_frame_offset == 0 or not find_extension(p.buf, &p.h, p.r.ext_dd, &original, &length) \
                or length < DD_MANDATORY:
            return -1
        memcpy(value, original, length)
        number = <uint16_t>(((original[1] << 8) | original[2]) - d.dd_frame_offset)
        value[1] = <uint8_t>(number >> 8)
        value[2] = <uint8_t>(number & 0xFF)
        return length
    mask = f.active_decode_targets
    if 0 <= d.dd_target < f.decode_targets:
        mask &= f.dt_subsets[d.dd_target]
    if mask != f.active_decode_targets:
        d.dd_mask_narrowed = True
    elif f.has_structure:
        d.dd_mask_narrowed = False   # the structure resets the decoder's mask to the publisher's
    number = <uint16_t>(f.frame_number - d.dd_frame_offset)
    if <int16_t>(number - d.dd_last_frame) > 0 or d.dd_ssrc != p.h.ssrc:
        d.dd_last_frame = number
        d.dd_ssrc = p.h.ssrc
    if not d.dd_mask_narrowed and d.dd_frame_offset == 0:
        return -1
    find_extension(p.buf, &p.h, p.r.ext_dd, &original, &length)  # it parsed, so it is there
    return write_dd(original, f, number, d.dd_mask_narrowed, mask, value)


cdef int downtrack_write(DownTrack *d, const ExtPacket *p, const SeqMapEntry *e, int kind,
                         uint16_t transport_seq, int64_t now, uint8_t *out) noexcept nogil:
    cdef uint8_t own[4]       # our element's value, big-endian: transport-cc in 2 bytes, abs-send-time in 3
    cdef uint8_t dd[255 + DD_GROWTH]
    cdef int own_id = 0, own_size = 0, header, dd_size = -1
    cdef uint8_t *payload
    if d.ext_transport_cc:
        store16(own, transport_seq)
        own_id, own_size = d.ext_transport_cc, 2
    elif d.ext_abs_send_time:
        store32(own, abs_send_time(now) << 8)
        own_id, own_size = d.ext_abs_send_time, 3
    if kind != WRITE_PADDING:   # a padding packet's descriptor is not read (it has no payload)
        dd_size = rewrite_dd(d, p, dd)
    header = rewrite_header(p.buf, &p.h, d.ext_map, d.ext_mixed, own_id, own, own_size,
                            p.r.ext_dd if dd_size > 0 else 0, dd, dd_size, out)
    store32(out + 4, e.out_ts)
    if kind == WRITE_PADDING:
        # RFC 3550 padding: one byte, counting itself. Receivers take it as a packet without payload (libwebrtc
        # marks its number received), so the number is not NACKed or counted lost. No marker: it ends no frame.
        out[0] |= 0x20
        out[1] = d.payload_type
        store16(out + 2, e.out_seq)
        store32(out + 8, d.ssrc)
        out[header] = 1
        return header + 1
    if kind == WRITE_RTX:
        out[1] = (out[1] & 0x80) | d.rtx_payload_type
        store16(out + 2, d.rtx_seq)
        d.rtx_seq += 1
        store32(out + 8, d.rtx_ssrc)
        store16(out + header, e.out_seq)  # RFC 4588: the original sequence number leads the payload
        payload = out + header + 2
    else:
        out[1] = (out[1] & 0x80) | (d.red_payload_type if p.descriptor == DESC_RED else d.payload_type)
        store16(out + 2, e.out_seq)
        store32(out + 8, d.ssrc)
        payload = out + header
    memcpy(payload, p.buf + p.h.header_length + p.payload_offset, p.h.payload_length)
    if p.descriptor == DESC_VP8:
        vp8_write_ids(payload, &p.desc.vp8, e.out_pid, e.out_tl0)
    elif p.descriptor == DESC_RED:
        if d.payload_type != p.r.payload_type:
            red_renumber(payload, p.h.payload_length, p.r.payload_type, d.payload_type)
    elif e.marker:
        out[1] |= 0x80
    return <int>(payload - out) + p.h.payload_length


cdef int downtrack_write_padding(DownTrack *d, uint16_t transport_seq, uint8_t padding, uint8_t *out) noexcept nogil:
    cdef int w = 12
    out[0] = 0xA0  # version 2, padding
    out[1] = d.rtx_payload_type
    store16(out + 2, d.rtx_seq)
    d.rtx_seq += 1
    store32(out + 4, d.last_out_ts)
    store32(out + 8, d.rtx_ssrc)
    if 0 < d.ext_transport_cc <= 14:
        out[0] |= 0x10
        out[12] = 0xBE
        out[13] = 0xDE
        store16(out + 14, 1)  # one 32-bit word of elements
        out[16] = <uint8_t>((d.ext_transport_cc << 4) | 1)
        store16(out + 17, transport_seq)
        out[19] = 0
        w = 20
    memset(out + w, 0, padding - 1)
    out[w + padding - 1] = padding  # RFC 3550 5.1: the last padding octet counts the padding, itself included
    return w + padding
