# Workers: forwarding on K threads. The event loop's thread is worker 0: it reads, unprotects and demultiplexes a
# batch as always (demux.pyx), then wakes the workers that own DownTracks of the batch's Receivers, forwards its own
# share and waits for theirs (fork-join). Between batches only the loop thread runs, so the control plane changes
# state without locks. Each worker forwards only its transports' DownTracks (EngineState.owners), with its own
# send batch, UDP socket (SO_REUSEPORT, same port) and counters: SRTP send contexts are never used by two threads
# at once.
from libc.stdint cimport int64_t

from engine.state cimport EngineState, Transport

# Starts `count` workers (1..MAX_WORKERS); fds[w] is worker w's send socket (fds[0], the mux socket, is unused).
# 0, or -1 when out of memory or a thread cannot start (then nothing is left allocated or running).
cdef int workers_start(EngineState *s, int count, const int *fds) noexcept nogil
# Stops and joins the threads (no batch may be running); their counters stay readable until workers_free.
cdef void workers_stop(EngineState *s) noexcept nogil
# Stops them and frees the workers.
cdef void workers_free(EngineState *s) noexcept nogil
# Forwards the batch's packets on every worker that owns some of their DownTracks, and empties the packet list.
cdef void workers_fanout(EngineState *s, int64_t now) noexcept nogil
# The worker a new transport, or one about to get its first DownTrack, is given: the one with the fewest DownTracks,
# then the fewest transports.
cdef int workers_least_loaded(EngineState *s) noexcept nogil
# Recomputes the owner of `t`'s DownTracks (its worker, or 0 when its path is ICE-TCP or TURN, which only the loop
# thread writes) and the worker masks of their Receivers. Call after t.worker or t.path changed.
cdef void workers_reown(EngineState *s, int t) noexcept nogil
# Runs `call(arg)` on worker `worker`'s thread (the loop thread's for worker 0) and waits for it: memory a worker
# writes per packet is best allocated by its own thread (its allocator arena, away from other workers' lines).
cdef void workers_call(EngineState *s, int worker, void (*call)(void *) noexcept nogil, void *arg) noexcept nogil
# Recomputes a Receiver's mask of workers owning its DownTracks (after one was added or removed).
cdef void workers_update_receiver(EngineState *s, int r) noexcept nogil
