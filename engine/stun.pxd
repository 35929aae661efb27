# STUN prefilter (RFC 8489 framing, RFC 8445 USERNAME): decides in C, before any Python runs, whether a datagram is a
# Binding request addressed to one of our ufrags. aioice still checks MESSAGE-INTEGRITY and builds the response.
from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    STUN_HEADER = 20
    # Attributes walked per message. libwebrtc's checks carry 6-8 (USERNAME, ICE-CONTROLLING/-CONTROLLED, PRIORITY,
    # USE-CANDIDATE, GOOG-NETWORK-INFO, MESSAGE-INTEGRITY, FINGERPRINT, sometimes GOOG-*): 24 leaves room for any
    # compliant agent while a 500-attribute message is refused after 24 steps.
    STUN_MAX_ATTRIBUTES = 24
    MAX_UFRAG = 64           # RFC 8839: ice-ufrag is 4..256 characters; ours are 16, and a local ufrag is ours

cdef enum:  # stun_check results
    STUN_OK = 0
    STUN_RESPONSE = 1        # a well-framed Binding success response: it must answer one of our consent checks
    STUN_MALFORMED = -1      # no magic cookie, length field inconsistent, attributes overrun or too many
    STUN_NOT_REQUEST = -2    # an error response, indication or another method: we only answer requests and take
                             # success responses to our consent checks
    STUN_NO_USERNAME = -3    # no USERNAME of the form ours:theirs, or no MESSAGE-INTEGRITY: cannot be authenticated

# Checks `buf` (first byte 0..3) and, when it is an authenticatable Binding request, points *ufrag at the local ufrag
# in its USERNAME (the part before ':'). Returns STUN_OK, STUN_RESPONSE or a negative reason.
cdef int stun_check(const uint8_t *buf, int length, const uint8_t **ufrag, int *ufrag_length) noexcept nogil
# The key of a ufrag in EngineState.by_ufrag (keyed by `seed`, so collisions cannot be aimed at).
cdef uint64_t ufrag_key(const uint8_t *ufrag, int length, uint64_t seed) noexcept nogil
