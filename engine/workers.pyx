"""Workers: the fork-join of each batch's fan-out over K threads (see workers.pxd)."""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from engine.downtrack cimport DownTrack
from engine.fanout cimport fanout_batch
from engine.memory cimport aligned_calloc
from engine.path cimport PATH_TCP, PATH_TURN
from engine.receiver cimport Receiver
from engine.state cimport MAX_WORKERS, S_PACKETS_OUT, SEND_BUF, SEND_SLOTS, Worker
from engine.udpmux cimport send_batch_flush, send_batch_init

cdef extern from *:
    """
    #include <linux/futex.h>
    #include <pthread.h>
    #include <stdio.h>
    #include <sys/syscall.h>
    #include <unistd.h>

    static inline uint32_t tern_load(const uint32_t *word) {
        return __atomic_load_n(word, __ATOMIC_ACQUIRE);
    }
    static inline void tern_store(uint32_t *word, uint32_t value) {
        __atomic_store_n(word, value, __ATOMIC_RELEASE);
    }
    /* Sleeps while *word == expected (returns at once otherwise, or on a spurious wake: callers loop). */
    static inline void tern_futex_wait(uint32_t *word, uint32_t expected) {
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
    }
    static inline void tern_futex_wake(uint32_t *word) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    static inline void tern_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #endif
    }
    static inline int tern_thread_start(unsigned long *id, void *(*main)(void *), void *arg, int index) {
        pthread_t thread;
        char name[16];
        int r = pthread_create(&thread, NULL, main, arg);
        if (r == 0) {
            snprintf(name, sizeof name, "tern-fwd-%d", index & 63);
            pthread_setname_np(thread, name);  /* what top -H and perf show */
            *id = (unsigned long)thread;
        }
        return r;
    }
    static inline void tern_thread_join(unsigned long id) {
        pthread_join((pthread_t)id, NULL);
    }
    """
    uint32_t tern_load(const uint32_t *word) nogil
    void tern_store(uint32_t *word, uint32_t value) nogil
    void tern_futex_wait(uint32_t *word, uint32_t expected) nogil
    void tern_futex_wake(uint32_t *word) nogil
    void tern_cpu_relax() nogil
    int tern_thread_start(unsigned long *id, void *(*main)(void *) noexcept nogil, void *arg, int index) nogil
    void tern_thread_join(unsigned long id) nogil

cdef enum:
    # Spins of the loop thread waiting for a worker's share before it sleeps: a share of a big fan-out takes
    # hundreds of microseconds, a futex sleep and wake a few; spinning only covers the short ones.
    JOIN_SPINS = 256


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef void *worker_main(void *arg) noexcept nogil:
    cdef Worker *w = <Worker *>arg
    cdef uint32_t seen = 0
    cdef uint64_t start, sent
    while True:
        while tern_load(&w.job) == seen:
            tern_futex_wait(&w.job, seen)
        seen = tern_load(&w.job)
        if w.stop:
            return NULL
        if w.call != NULL:
            w.call(w.call_arg)
            w.call = NULL
            tern_store(&w.done, seen)
            tern_futex_wake(&w.done)
            continue
        start = now_ns()
        sent = w.counters[<int>S_PACKETS_OUT]
        fanout_batch(w.s, &w.send, w.index, w.now)
        send_batch_flush(&w.send)
        w.batches += 1
        w.packets += w.counters[<int>S_PACKETS_OUT] - sent
        w.busy_ns += now_ns() - start
        tern_store(&w.done, seen)
        tern_futex_wake(&w.done)


cdef int workers_start(EngineState *s, int count, const int *fds) noexcept nogil:
    cdef Worker *w
    cdef int i
    s.workers = <Worker **>aligned_calloc(MAX_WORKERS * sizeof(Worker *))
    if s.workers == NULL:
        return -1
    for i in range(count):
        w = <Worker *>aligned_calloc(sizeof(Worker))
        if w == NULL:
            workers_free(s)
            return -1
        s.workers[i] = w
        s.worker_count = i + 1
        w.index = i
        w.s = s
        if i == 0:
            continue  # the loop thread: EngineState's send batch and counters
        w.send.bufs = <uint8_t *>aligned_calloc(SEND_SLOTS * SEND_BUF)
        if w.send.bufs == NULL:
            workers_free(s)
            return -1
        w.send.fd = fds[i]
        w.send.counters = w.counters
        w.send.use_gso = s.send.use_gso
        send_batch_init(&w.send)
        if tern_thread_start(&w.thread, worker_main, w, i) != 0:
            workers_free(s)
            return -1
        w.started = True
    return 0


cdef void workers_stop(EngineState *s) noexcept nogil:
    cdef Worker *w
    cdef int i
    for i in range(s.worker_count):
        w = s.workers[i]
        if w != NULL and w.started:
            w.stop = True
            tern_store(&w.job, w.job + 1)
            tern_futex_wake(&w.job)
            tern_thread_join(w.thread)
            w.started = False


cdef void workers_free(EngineState *s) noexcept nogil:
    cdef int i
    if s.workers == NULL:
        return
    workers_stop(s)
    for i in range(s.worker_count):
        if s.workers[i] != NULL:
            free(s.workers[i].send.bufs)
            free(s.workers[i])
    free(s.workers)
    s.workers = NULL
    s.worker_count = 0


cdef void workers_call(EngineState *s, int worker, void (*call)(void *) noexcept nogil, void *arg) noexcept nogil:
    cdef Worker *w = s.workers[worker]
    cdef uint32_t job, done
    if worker == 0 or not w.started:
        call(arg)
        return
    w.call = call
    w.call_arg = arg
    job = w.job + 1
    tern_store(&w.job, job)
    tern_futex_wake(&w.job)
    while True:
        done = tern_load(&w.done)
        if done == job:
            return
        tern_futex_wait(&w.done, done)


cdef void workers_fanout(EngineState *s, int64_t now) noexcept nogil:
    cdef uint64_t wake = 0, start, sent
    cdef Worker *w
    cdef Worker *main = s.workers[0]
    cdef int i, spins
    cdef uint32_t job, done
    for i in range(s.packet_count):
        wake |= s.packets[i].r.workers
    for i in range(1, s.worker_count):
        if wake >> i & 1:
            w = s.workers[i]
            w.now = now
            tern_store(&w.job, w.job + 1)  # release: the batch's packets and state are visible to it
            tern_futex_wake(&w.job)
    start = now_ns()
    sent = s.counters[<int>S_PACKETS_OUT]
    if wake & 1:
        fanout_batch(s, &s.send, 0, now)
    main.batches += 1
    main.packets += s.counters[<int>S_PACKETS_OUT] - sent
    main.busy_ns += now_ns() - start
    start = now_ns()
    for i in range(1, s.worker_count):
        if wake >> i & 1:
            w = s.workers[i]
            job = w.job
            spins = 0
            while True:
                done = tern_load(&w.done)  # acquire: what it wrote is visible from here on
                if done == job:
                    break
                if spins < JOIN_SPINS:
                    spins += 1
                    tern_cpu_relax()
                else:
                    tern_futex_wait(&w.done, done)
    if wake >> 1:
        main.wait_ns += now_ns() - start
    s.packet_count = 0


cdef int workers_least_loaded(EngineState *s) noexcept nogil:
    cdef int i, best = 0
    cdef Worker *w
    cdef Worker *b
    for i in range(1, s.worker_count):
        w = s.workers[i]
        b = s.workers[best]
        if w.downtracks < b.downtracks or (w.downtracks == b.downtracks and w.transports < b.transports):
            best = i
    return best


cdef void workers_reown(EngineState *s, int t) noexcept nogil:
    cdef Transport *tr = s.transports[t]
    cdef int owner = 0 if tr.path.kind == PATH_TCP or tr.path.kind == PATH_TURN else tr.worker
    cdef int i
    cdef DownTrack *d
    if tr.downtracks == 0:  # binding a new transport's address (the common case) scans nothing
        return
    for i in range(s.downtrack_end):
        d = s.downtracks[i]
        if d != NULL and d.transport == t and s.owners[i] != owner:
            s.owners[i] = owner
            workers_update_receiver(s, d.receiver)


cdef void workers_update_receiver(EngineState *s, int r) noexcept nogil:
    cdef Receiver *rec = s.receivers[r]
    cdef uint64_t mask = 0
    cdef int k
    for k in range(rec.downtracks.count):
        mask |= (<uint64_t>1) << s.owners[rec.downtracks.items[k]]
    rec.workers = mask
