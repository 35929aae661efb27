"""Transport-wide congestion control feedback: the codec and a publisher transport's receive record (see twcc.pxd).
The build turns bounds checks off: every read below is guarded by an explicit length comparison."""
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from engine.wire cimport load16, load32, store16, store32

cdef enum:
    RTCP_RTPFB = 205
    UNITS_PER_REFERENCE = 256  # TWCC_REFERENCE_US / TWCC_DELTA_US
    ONE_BIT_SYMBOLS = 14
    TWO_BIT_SYMBOLS = 7


cdef inline int64_t floor_div(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t q = a // b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline int run_length(const uint8_t *status, int i, int n) noexcept nogil:
    cdef int j = i + 1
    while j < n and j - i < TWCC_MAX_RUN and status[j] == status[i]:
        j += 1
    return j - i


cdef inline bint small_only(const uint8_t *status, int i, int k) noexcept nogil:
    cdef int j
    for j in range(i, i + k):
        if status[j] == TWCC_LARGE_DELTA:
            return False
    return True


cdef int twcc_build(uint8_t *out, int cap, uint32_t sender_ssrc, uint32_t media_ssrc, uint16_t base_seq,
                    uint8_t fb_count, const int64_t *arrivals, int64_t mask, int64_t start, int count,
                    int *reported) noexcept nogil:
    cdef uint8_t status[<int>TWCC_MAX_BUILD]
    cdef int32_t deltas[<int>TWCC_MAX_BUILD]
    cdef uint16_t chunks[<int>TWCC_MAX_BUILD]
    cdef int n = min(count, <int>TWCC_MAX_BUILD)
    cdef int i, j, k, run, chunk_count = 0, delta_bytes = 0, chunk_bytes, total, pos
    cdef int64_t reference = -1, previous, unit, a, d
    cdef uint16_t chunk
    if n <= 0 or cap < TWCC_HEADER + 4:
        return -1
    for i in range(n):
        a = arrivals[(start + i) & mask]
        if a >= 0:
            reference = a // TWCC_REFERENCE_US
            break
    if reference < 0:
        reference = 0
    # Statuses and deltas in whole units of absolute time, so rounding never accumulates.
    previous = reference * UNITS_PER_REFERENCE
    for i in range(n):
        a = arrivals[(start + i) & mask]
        if a < 0:
            status[i] = TWCC_NOT_RECEIVED
            continue
        unit = a // TWCC_DELTA_US
        d = unit - previous
        if 0 <= d <= 255:
            status[i] = TWCC_SMALL_DELTA
        elif -32768 <= d <= 32767:
            status[i] = TWCC_LARGE_DELTA
        else:
            n = i  # the rest goes in the next feedback, with a reference time of its own
            break
        deltas[i] = <int32_t>d
        previous = unit
    # Chunks, greedily covering the most packets each, while the packet still fits in `cap`.
    i = 0
    while i < n:
        run = run_length(status, i, n)
        k = min(<int>ONE_BIT_SYMBOLS, n - i)
        if run >= ONE_BIT_SYMBOLS or run == n - i:
            k = run
            chunk = <uint16_t>((status[i] << 13) | run)
        elif small_only(status, i, k):
            chunk = 0x8000
            for j in range(k):
                chunk |= <uint16_t>(status[i + j] << (13 - j))
        elif run >= TWO_BIT_SYMBOLS:
            k = run
            chunk = <uint16_t>((status[i] << 13) | run)
        else:
            k = min(<int>TWO_BIT_SYMBOLS, n - i)
            chunk = 0xC000
            for j in range(k):
                chunk |= <uint16_t>(status[i + j] << (2 * (6 - j)))
        chunk_bytes = 0
        for j in range(i, i + k):
            chunk_bytes += status[j]  # the status is the size of its delta: 0, 1 or 2 bytes
        total = TWCC_HEADER + 2 * (chunk_count + 1) + delta_bytes + chunk_bytes
        if (total + 3) & ~3 > cap:
            break
        chunks[chunk_count] = chunk
        chunk_count += 1
        delta_bytes += chunk_bytes
        i += k
    if i == 0:
        return -1
    n = i
    total = (TWCC_HEADER + 2 * chunk_count + delta_bytes + 3) & ~3
    out[0] = 0x80 | TWCC_FMT
    out[1] = RTCP_RTPFB
    store16(out + 2, <uint16_t>(total // 4 - 1))
    store32(out + 4, sender_ssrc)
    store32(out + 8, media_ssrc)
    store16(out + 12, base_seq)
    store16(out + 14, <uint16_t>n)
    store32(out + 16, (<uint32_t>(reference & 0xFFFFFF) << 8) | fb_count)
    pos = TWCC_HEADER
    for j in range(chunk_count):
        store16(out + pos, chunks[j])
        pos += 2
    for j in range(n):
        if status[j] == TWCC_SMALL_DELTA:
            out[pos] = <uint8_t>deltas[j]
            pos += 1
        elif status[j] == TWCC_LARGE_DELTA:
            store16(out + pos, <uint16_t><int16_t>deltas[j])
            pos += 2
    while pos < total:
        out[pos] = 0
        pos += 1
    reported[0] = n
    return total


cdef int twcc_parse(const uint8_t *pkt, int length, TwccFeedback *fb, TwccResult *results,
                    int max_results) noexcept nogil:
    cdef int total, end, pos, n = 0, stored, k, j, run
    cdef uint16_t chunk, count
    cdef uint8_t symbol
    cdef int64_t units
    if pkt == NULL or length < TWCC_HEADER or max_results < 0 or (pkt[0] >> 6) != 2:
        return -1
    if (pkt[0] & 0x1F) != TWCC_FMT or pkt[1] != RTCP_RTPFB:
        return -1
    total = (<int>load16(pkt + 2) + 1) * 4
    if total > length or total < TWCC_HEADER:
        return -1
    end = total
    if pkt[0] & 0x20:  # padding, counted by the last byte
        if pkt[total - 1] == 0 or pkt[total - 1] > total - TWCC_HEADER:
            return -1
        end = total - pkt[total - 1]
    fb.sender_ssrc = load32(pkt + 4)
    fb.media_ssrc = load32(pkt + 8)
    fb.base_seq = load16(pkt + 12)
    count = load16(pkt + 14)
    fb.status_count = count
    fb.reference_us = <int64_t>(load32(pkt + 16) >> 8) * TWCC_REFERENCE_US
    fb.fb_count = pkt[19]
    stored = min(<int>count, max_results)
    pos = TWCC_HEADER
    # Status chunks: one per 2 bytes, so the walk is bounded by the length; only `stored` symbols are written.
    while n < count:
        if end - pos < 2:
            return -1
        chunk = load16(pkt + pos)
        pos += 2
        if not (chunk & 0x8000):
            symbol = (chunk >> 13) & 3
            run = min(<int>(chunk & 0x1FFF), count - n)
            if symbol > TWCC_LARGE_DELTA:
                return -1
            for j in range(n, min(n + run, stored)):
                results[j].status = symbol
            n += run
        elif not (chunk & 0x4000):
            k = min(<int>ONE_BIT_SYMBOLS, count - n)
            for j in range(k):
                if n + j < stored:
                    results[n + j].status = (chunk >> (13 - j)) & 1
            n += k
        else:
            k = min(<int>TWO_BIT_SYMBOLS, count - n)
            for j in range(k):
                symbol = (chunk >> (2 * (6 - j))) & 3
                if symbol > TWCC_LARGE_DELTA:
                    return -1
                if n + j < stored:
                    results[n + j].status = symbol
            n += k
    # Receive deltas, in the order of the packets received.
    units = 0
    for j in range(stored):
        results[j].seq = <uint16_t>(fb.base_seq + j)
        results[j].arrival_us = 0
        if results[j].status == TWCC_SMALL_DELTA:
            if end - pos < 1:
                return -1
            units += pkt[pos]
            pos += 1
        elif results[j].status == TWCC_LARGE_DELTA:
            if end - pos < 2:
                return -1
            units += <int16_t>load16(pkt + pos)
            pos += 2
        else:
            continue
        results[j].arrival_us = fb.reference_us + units * TWCC_DELTA_US
    return stored


# ---------------------------------------------------------------- the receive record

cdef void twcc_recorder_init(TwccRecorder *rec) noexcept nogil:
    memset(rec.arrivals, 0xFF, sizeof(rec.arrivals))  # all -1
    rec.next = -1
    rec.max_seq = -1
    rec.held = 0
    rec.media_ssrc = 0
    rec.last_feedback_us = 0
    rec.fb_count = 0


cdef inline int64_t unwrap(const TwccRecorder *rec, uint16_t seq) noexcept nogil:
    if rec.next < 0:
        return (<int64_t>1 << 32) | seq  # room below for packets reordered before the first one
    return rec.max_seq + <int16_t>(<uint16_t>(seq - <uint16_t>rec.max_seq))


cdef bint twcc_recorder_full(const TwccRecorder *rec, uint16_t seq) noexcept nogil:
    return rec.next >= 0 and rec.next <= rec.max_seq and unwrap(rec, seq) - rec.next >= TWCC_RECORD


cdef int twcc_recorder_add(TwccRecorder *rec, uint16_t seq, uint32_t ssrc, int64_t now) noexcept nogil:
    cdef int64_t u = unwrap(rec, seq)
    cdef int64_t *slot
    if rec.next < 0:
        rec.next = u
        rec.max_seq = u
    elif u < rec.next:
        return TWCC_LATE
    elif u - rec.next >= TWCC_RECORD:
        # A jump past the record with nothing pending (the caller sent a feedback first): start over there.
        rec.next = u
        rec.max_seq = u
    slot = &rec.arrivals[u & (TWCC_RECORD - 1)]
    if slot[0] >= 0:
        return TWCC_DUPLICATE
    slot[0] = now
    if u > rec.max_seq:
        rec.max_seq = u
    rec.held += 1
    rec.media_ssrc = ssrc
    return TWCC_RECORDED


cdef int twcc_recorder_feedback(TwccRecorder *rec, uint8_t *out, int cap, uint32_t sender_ssrc,
                                int64_t now) noexcept nogil:
    cdef int reported = 0, n
    cdef int64_t u
    if rec.next < 0 or rec.next > rec.max_seq:
        return 0
    n = twcc_build(out, min(cap, <int>TWCC_MAX_FEEDBACK), sender_ssrc, rec.media_ssrc, <uint16_t>rec.next,
                   rec.fb_count, rec.arrivals, TWCC_RECORD - 1, rec.next, <int>(rec.max_seq - rec.next + 1),
                   &reported)
    if n < 0:
        return -1
    for u in range(rec.next, rec.next + reported):
        rec.arrivals[u & (TWCC_RECORD - 1)] = -1
    rec.next += reported
    rec.fb_count += 1
    rec.last_feedback_us = now
    if rec.next > rec.max_seq:
        rec.held = 0
    return n


# ---------------------------------------------------------------- the send history

cdef void twcc_history_init(TwccHistory *history, TwccSent *sent, uint16_t first_seq) noexcept nogil:
    history.sent = sent
    history.next_seq = first_seq
    history.first_seq = first_seq
    history.last_send_us = 0
    history.probe_cluster = -1


cdef int twcc_history_resolve(const TwccHistory *history, const TwccResult *results, int count,
                              BwePacketResult *out, uint64_t *unmatched) noexcept nogil:
    cdef int i, n = 0
    cdef int64_t last = history.next_seq - 1, u
    cdef const TwccSent *e
    for i in range(count):
        u = last - <uint16_t>(<uint16_t>last - results[i].seq)  # the latest number sent with these 16 bits
        if u < history.first_seq or last - u >= TWCC_HISTORY:
            unmatched[0] += 1
            continue
        e = &history.sent[u & (TWCC_HISTORY - 1)]
        out[n].seq = u
        out[n].send_us = history.last_send_us - <uint32_t>(<uint32_t>history.last_send_us - e.send_us)
        out[n].arrival_us = results[i].arrival_us
        out[n].size = e.size
        out[n].probe_cluster = e.probe_cluster
        out[n].received = results[i].status != TWCC_NOT_RECEIVED
        n += 1
    return n


# ---- thin Python faces, for tests (not used on the hot path) ----

def build(int base_seq, list arrivals, int fb_count=0, uint32_t sender_ssrc=1, uint32_t media_ssrc=2,
          int cap=TWCC_MAX_FEEDBACK) -> tuple:
    """A feedback for packets base_seq, base_seq + 1, ... with these arrival times (µs >= 0, None = lost):
    (bytes, packets it covers). ValueError when nothing fits or arrivals has more than TWCC_MAX_BUILD entries."""
    cdef int n = len(arrivals), reported = 0, length
    cdef int64_t *a
    cdef uint8_t *out
    if not 0 < n <= TWCC_MAX_BUILD or not TWCC_HEADER <= cap <= 65536:
        raise ValueError("1..TWCC_MAX_BUILD arrivals and a sensible cap")
    a = <int64_t *>malloc(n * sizeof(int64_t))
    out = <uint8_t *>malloc(cap)
    try:
        for i, v in enumerate(arrivals):
            if v is not None and v < 0:
                raise ValueError("arrival times are >= 0")
            a[i] = -1 if v is None else v
        length = twcc_build(out, cap, sender_ssrc, media_ssrc, <uint16_t>base_seq, <uint8_t>fb_count, a,
                            (1 << 30) - 1, 0, n, &reported)
        if length < 0:
            raise ValueError("nothing fits")
        return out[:length], reported
    finally:
        free(a)
        free(out)


def parse(bytes data, int max_results=65535) -> dict | None:
    """The feedback's fields and its packets [(seq, status, arrival µs or None)], or None when malformed."""
    cdef TwccFeedback fb
    cdef TwccResult *results = <TwccResult *>malloc(max(1, max_results) * sizeof(TwccResult))
    cdef int n
    if results == NULL:
        raise MemoryError()
    try:
        n = twcc_parse(data, len(data), &fb, results, max_results)
        if n < 0:
            return None
        return {
            "sender_ssrc": fb.sender_ssrc, "media_ssrc": fb.media_ssrc, "base_seq": fb.base_seq,
            "status_count": fb.status_count, "reference_us": fb.reference_us, "fb_count": fb.fb_count,
            "packets": [(results[i].seq, results[i].status,
                         results[i].arrival_us if results[i].status else None) for i in range(n)],
        }
    finally:
        free(results)


cdef class Recorder:
    """A TwccRecorder for tests: arrivals in, feedback packets out."""
    cdef TwccRecorder rec

    def __cinit__(self):
        twcc_recorder_init(&self.rec)

    cdef readonly int late, duplicates

    def add(self, int seq, uint32_t ssrc, int64_t now) -> list:
        """Records `seq` arriving at `now`; returns the feedbacks the record had to send first (when full)."""
        sent = self.feedback(now) if twcc_recorder_full(&self.rec, <uint16_t>seq) else []
        result = twcc_recorder_add(&self.rec, <uint16_t>seq, ssrc, now)
        self.late += result == TWCC_LATE
        self.duplicates += result == TWCC_DUPLICATE
        return sent

    def feedback(self, int64_t now, uint32_t sender_ssrc=1) -> list:
        cdef uint8_t out[<int>TWCC_MAX_FEEDBACK]
        cdef int n
        packets = []
        while True:
            n = twcc_recorder_feedback(&self.rec, out, TWCC_MAX_FEEDBACK, sender_ssrc, now)
            if n <= 0:
                return packets
            packets.append(out[:n])

    @property
    def held(self) -> int:
        return self.rec.held



cdef class History:
    """A TwccHistory for tests: packets stamped and sent, then feedback resolved against them."""
    cdef TwccHistory history

    def __cinit__(self, int first_seq=0):
        cdef TwccSent *sent = <TwccSent *>malloc(TWCC_HISTORY * sizeof(TwccSent))
        if sent == NULL:
            raise MemoryError()
        twcc_history_init(&self.history, sent, <uint16_t>first_seq)

    def __dealloc__(self):
        free(self.history.sent)

    def send(self, int size, int64_t now, int probe_cluster=-1) -> int:
        """Stamps and sends a packet of `size` RTP bytes at `now`; returns the 16-bit number it carried."""
        cdef uint16_t seq = <uint16_t>self.history.next_seq
        self.history.probe_cluster = <int16_t>probe_cluster
        twcc_history_add(&self.history, size, now)
        return seq

    def resolve(self, list results) -> tuple:
        """(seq, arrival µs or None when lost) pairs, as a feedback reports them: ([(unwrapped seq, send µs, size,
        probe cluster, received)], how many did not match a packet the history holds)."""
        cdef int n = len(results), i
        cdef uint64_t unmatched = 0
        cdef TwccResult *parsed = <TwccResult *>malloc(max(1, n) * sizeof(TwccResult))
        cdef BwePacketResult *out = <BwePacketResult *>malloc(max(1, n) * sizeof(BwePacketResult))
        try:
            if parsed == NULL or out == NULL:
                raise MemoryError()
            for i, (seq, arrival) in enumerate(results):
                parsed[i].seq = <uint16_t>seq
                parsed[i].status = TWCC_NOT_RECEIVED if arrival is None else TWCC_SMALL_DELTA
                parsed[i].arrival_us = 0 if arrival is None else arrival
            n = twcc_history_resolve(&self.history, parsed, n, out, &unmatched)
            return [(out[i].seq, out[i].send_us, out[i].size, out[i].probe_cluster, bool(out[i].received))
                    for i in range(n)], unmatched
        finally:
            free(parsed)
            free(out)
