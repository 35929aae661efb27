"""StreamFramer (see framer.pxd): a stream's RFC 4571 or TURN framer fed from Python bytes."""
from libc.stdint cimport uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from engine.state cimport RECV_BUF
from engine.tcpframer cimport (FRAME_INVALID, FRAME_NONE, FRAME_OVERSIZED, FRAMER_BUFFER, framer_init, framer_next,
                               framer_space, framer_wrote)


cdef class StreamFramer:
    """One stream's framer, fed as tcpmux.pyx feeds it: each read fills at most the space it offers, and every
    whole frame is taken before the next read. `max_frame` as the engine's (RECV_BUF) unless given; `turn`: TURN's
    framing (STUN and ChannelData lengths) rather than RFC 4571's."""

    def __cinit__(self, int max_frame=RECV_BUF, bint turn=False):
        if not 0 <= max_frame <= FRAMER_BUFFER // 4:
            raise ValueError("max_frame must fit four times in the buffer")
        self.f = <Framer *>malloc(sizeof(Framer))
        if self.f == NULL:
            raise MemoryError()
        framer_init(self.f, max_frame, turn)

    def __dealloc__(self):
        free(self.f)

    def feed(self, bytes data) -> list:
        """The frames `data` completes, in order (oversized ones are counted in `oversized`, not returned). A TURN
        stream that stops making sense sets `invalid` and takes nothing more (the engine closes the connection)."""
        cdef const uint8_t *source = data
        cdef const uint8_t *frame
        cdef uint8_t *space
        cdef int offset = 0, room, taken, length, result
        frames = []
        while not self.invalid:
            result = framer_next(self.f, &frame, &length)
            if result == FRAME_INVALID:
                self.invalid = True
            elif result == FRAME_OVERSIZED:
                self.oversized += 1
            elif result != FRAME_NONE:
                frames.append((<const char *>frame)[:length])
            elif offset == len(data):
                return frames
            else:
                room = framer_space(self.f, &space)
                taken = min(room, len(data) - offset)
                memcpy(space, source + offset, taken)
                framer_wrote(self.f, taken)
                offset += taken
        return frames

    @property
    def buffered(self) -> int:
        """Bytes held (a partial frame, or frames not yet taken)."""
        return self.f.end - self.f.start

    @property
    def footprint(self) -> int:
        """Bytes of the buffer in use, from its front: never more than FRAMER_BUFFER."""
        return self.f.end

    @property
    def moved(self) -> int:
        """Bytes compaction has moved so far."""
        return self.f.moved
