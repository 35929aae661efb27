"""Open-addressing (linear probing) hash map with backward-shift deletion, so no tombstones accumulate; IntList."""
from libc.stdlib cimport calloc, free, realloc


cdef inline uint32_t _slot(uint64_t key, uint32_t mask) noexcept nogil:
    # mixed first: SSRCs and addresses are not uniformly distributed in their low bits (map_prefetch does the same)
    return <uint32_t>(mix64(key) & mask)


cdef int map_init(U64Map *m, uint32_t capacity) noexcept nogil:
    cdef uint32_t c = 16
    while c < capacity:
        c <<= 1
    m.keys = <uint64_t *>calloc(c, sizeof(uint64_t))
    m.values = <int64_t *>calloc(c, sizeof(int64_t))
    m.used = <uint8_t *>calloc(c, sizeof(uint8_t))
    m.capacity = c
    m.count = 0
    if m.keys == NULL or m.values == NULL or m.used == NULL:
        map_free(m)
        return -1
    return 0


cdef void map_free(U64Map *m) noexcept nogil:
    free(m.keys)
    free(m.values)
    free(m.used)
    m.keys = NULL
    m.values = NULL
    m.used = NULL
    m.capacity = 0
    m.count = 0


cdef int64_t map_get(const U64Map *m, uint64_t key) noexcept nogil:
    if m.capacity == 0:
        return -1
    cdef uint32_t mask = m.capacity - 1
    cdef uint32_t i = _slot(key, mask)
    while m.used[i]:
        if m.keys[i] == key:
            return m.values[i]
        i = (i + 1) & mask
    return -1


cdef int _grow(U64Map *m) noexcept nogil:
    cdef U64Map bigger
    cdef uint32_t i
    if map_init(&bigger, m.capacity * 2) < 0:
        return -1
    for i in range(m.capacity):
        if m.used[i]:
            map_put(&bigger, m.keys[i], m.values[i])
    map_free(m)
    m[0] = bigger
    return 0


cdef int map_put(U64Map *m, uint64_t key, int64_t value) noexcept nogil:
    if (m.count + 1) * 2 > m.capacity and _grow(m) < 0:
        return -1
    cdef uint32_t mask = m.capacity - 1
    cdef uint32_t i = _slot(key, mask)
    while m.used[i]:
        if m.keys[i] == key:
            m.values[i] = value
            return 0
        i = (i + 1) & mask
    m.used[i] = 1
    m.keys[i] = key
    m.values[i] = value
    m.count += 1
    return 0


cdef void map_remove(U64Map *m, uint64_t key) noexcept nogil:
    if m.capacity == 0:
        return
    cdef uint32_t mask = m.capacity - 1
    cdef uint32_t i = _slot(key, mask)
    cdef uint32_t j, home
    while m.used[i]:
        if m.keys[i] == key:
            break
        i = (i + 1) & mask
    else:
        return
    # Backward shift: pull later entries of the probe run into the hole unless that would move them before their home.
    j = i
    while True:
        j = (j + 1) & mask
        if not m.used[j]:
            break
        home = _slot(m.keys[j], mask)
        if ((j - home) & mask) >= ((j - i) & mask):
            m.keys[i] = m.keys[j]
            m.values[i] = m.values[j]
            i = j
    m.used[i] = 0
    m.count -= 1


cdef int list_add(IntList *l, int value) noexcept nogil:
    cdef int *grown
    if l.count == l.capacity:
        grown = <int *>realloc(l.items, (l.capacity * 2 + 4) * sizeof(int))
        if grown == NULL:
            return -1
        l.items = grown
        l.capacity = l.capacity * 2 + 4
    l.items[l.count] = value
    l.count += 1
    return 0


cdef void list_discard(IntList *l, int value) noexcept nogil:
    cdef int i
    for i in range(l.count):
        if l.items[i] == value:
            l.count -= 1
            l.items[i] = l.items[l.count]
            return
