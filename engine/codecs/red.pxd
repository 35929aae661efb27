# RED (RFC 2198) audio payloads, as libwebrtc sends Opus with redundancy (`audio/red`): parsing the block headers,
# and renumbering the payload type inside them. C-level, nogil, bounds-checked against `length`.
from libc.stdint cimport uint8_t, uint16_t

cdef enum:
    RED_RECOVER = 2           # redundant blocks kept per packet (those nearest the primary): what a subscriber
                              # without RED can recover lost packets from (libwebrtc sends 1 or 2; LiveKit uses 2)
    RED_MAX_HEADERS = 16      # block headers a packet may have; more is malformed

cdef struct RedBlock:
    uint16_t offset           # of its data, from the start of the RED payload
    uint16_t length
    uint16_t ts_offset        # how much earlier than the packet's timestamp it was captured (0 for the primary)
    uint8_t payload_type

cdef struct RedDescriptor:
    uint8_t redundant         # redundant blocks kept in `blocks`, at most RED_RECOVER, oldest first
    uint8_t distance[2]       # RED_RECOVER: for each kept block, how many packets before this one it was sent
    RedBlock blocks[2]        # RED_RECOVER
    RedBlock primary

# 0 and `d` filled for a well-formed RED payload (headers within RED_MAX_HEADERS, block lengths within the payload),
# else -1.
cdef int parse_red(const uint8_t *payload, int length, RedDescriptor *d) noexcept nogil
# Rewrites, in a copy of a RED payload that parse_red accepted, each block header's payload type `source` to
# `target` (a subscriber that numbers Opus differently from the publisher).
cdef void red_renumber(uint8_t *payload, int length, uint8_t source, uint8_t target) noexcept nogil
