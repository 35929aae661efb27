# ExtPacket: one received RTP packet as parsed once for everyone downstream: stream, layers, keyframe, codec descriptor.
from libc.stdint cimport int64_t, uint8_t

from engine.codecs.dd cimport DdFrame
from engine.codecs.red cimport RedDescriptor
from engine.codecs.vp8 cimport Vp8Descriptor
from engine.codecs.vp9 cimport Vp9Descriptor
from engine.receiver cimport Receiver
from engine.rtp cimport RtpHeader

cdef enum:  # ExtPacket.descriptor: which member of `desc` is valid
    DESC_NONE
    DESC_VP8
    DESC_VP9                  # with layer indices (L): an SVC stream, whose spatial/temporal ids the Forwarder selects
    DESC_RED                  # audio in RED (the Receiver's red_payload_type): Opus blocks, the primary last

cdef union CodecDescriptor:
    Vp8Descriptor vp8
    Vp9Descriptor vp9
    RedDescriptor red

cdef struct ExtPacket:
    const uint8_t *buf        # the packet (SRTP already removed), in a buffer that stays put while it is forwarded
    int length
    RtpHeader h
    int payload_offset        # payload bytes left out when it is written: a RED packet's other blocks (fanout.pyx)
    Receiver *r
    int layer                 # the Receiver layer (simulcast stream) it arrived on
    int spatial               # spatial layer id: the simulcast layer, or an SVC descriptor's (VP9 SID, DD)
    int temporal              # temporal layer id, -1 when the codec does not tell
    bint keyframe             # starts a keyframe: a switch point for the Forwarder
    int64_t arrival_us
    uint8_t descriptor        # DESC_*
    CodecDescriptor desc
    bint has_dd               # `dd` holds the packet's Dependency Descriptor (the Receiver negotiated it and it
                              # parsed): its frame's layers and dependencies, which the Forwarder selects by
    DdFrame dd


cdef inline void packet_set(ExtPacket *p, const uint8_t *buf, int length, Receiver *r, int layer,
                            int64_t now) noexcept nogil:
    """Where a packet whose header is already in p.h lives and came from; codecs/describe fills in the rest."""
    p.buf = buf
    p.length = length
    p.r = r
    p.layer = layer
    p.spatial = layer
    p.arrival_us = now
    p.has_dd = False
    p.payload_offset = 0
