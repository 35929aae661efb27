# StreamFramer: a stream's framer (engine/tcpframer.pxd) fed from Python bytes, for what reads a stream outside the
# engine's C loop: the tests' view of how tcpmux.pyx de-frames, and the load clients' ICE and DTLS before loadgen's
# C receiver takes the stream (and this framer's state) over.
from engine.tcpframer cimport Framer


cdef class StreamFramer:
    cdef Framer *f
    cdef readonly int oversized
    cdef readonly bint invalid
