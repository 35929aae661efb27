"""A set of TSNs as a cumulative TSN and the blocks above it (RFC 9260 section 6.2), kept as sorted intervals so
that adding TSNs, building a SACK and moving the cumulative TSN cost what changed, not what is held.

The receiver keeps the peer's TSNs in one: only TSNs within `window` of the cumulative TSN are accepted, the
association drops the rest (the peer sends them again once the gap closes). The sender keeps in another what the
peer acknowledged (cumulative and gap-acked), so a SACK costs the TSNs it newly acknowledges."""
from __future__ import annotations

from bisect import bisect_left, bisect_right

M32 = 0xFFFFFFFF  # TSNs are 32-bit serial numbers (RFC 1982)


class ReceivedTsns:
    """TSNs are unwrapped into ever-growing integers internally, so intervals never straddle the 32-bit wrap."""

    def __init__(self, cumulative: int, window: int) -> None:
        if not 0 < window <= 0xFFFF:
            raise ValueError("window must fit a SACK gap offset")
        self.window = window
        self._cum = cumulative & M32   # unwrapped cumulative TSN; its low 32 bits are the wire value
        self._starts: list[int] = []    # disjoint, non-adjacent intervals above _cum + 1, inclusive
        self._ends: list[int] = []

    @property
    def cumulative(self) -> int:
        return self._cum & M32

    @property
    def blocks(self) -> int:
        """Gap blocks held: at most window / 2."""
        return len(self._starts)

    def offset(self, tsn: int) -> int:
        """How far `tsn` is above the cumulative TSN in serial arithmetic; 0 or >= 2**31 is at or below it."""
        return (tsn - self._cum) & M32

    def __contains__(self, tsn: int) -> bool:
        """Received already: at or below the cumulative TSN, or in a gap block."""
        offset = self.offset(tsn)
        if offset == 0 or offset >= 0x80000000:
            return True
        u = self._cum + offset
        i = bisect_right(self._starts, u) - 1
        return i >= 0 and self._ends[i] >= u

    def unwrap(self, tsn: int) -> int:
        """`tsn` as the ever-growing integer it stands for, taken as at most 2**31 - 1 away from the cumulative TSN."""
        offset = self.offset(tsn)
        return self._cum + (offset if offset < 0x80000000 else offset - 0x100000000)

    def add(self, tsn: int) -> None:
        """Records a new TSN within the window (the caller checked both)."""
        self.add_range(tsn, tsn)

    def add_range(self, first: int, last: int) -> list[tuple[int, int]]:
        """Records TSNs `first` through `last` (the caller keeps them near the cumulative TSN; those at or below
        it are ignored) and returns the runs not recorded before, as (first TSN, count)."""
        lo, hi = max(self.unwrap(first), self._cum + 1), self.unwrap(last)
        if hi < lo:
            return []
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, lo - 1)    # intervals from i to j overlap or touch [lo, hi]
        j = bisect_right(starts, hi + 1)
        new: list[tuple[int, int]] = []
        position = lo
        for k in range(i, j):
            if starts[k] > position:
                new.append((position & M32, starts[k] - position))
            position = max(position, ends[k] + 1)
        if position <= hi:
            new.append((position & M32, hi + 1 - position))
        if i < j:
            lo, hi = min(lo, starts[i]), max(hi, ends[j - 1])
        starts[i:j] = [lo]
        ends[i:j] = [hi]
        self._absorb_first()
        return new

    def missing(self, below: int, limit: int) -> list[int]:
        """The first `limit` TSNs not recorded, from the cumulative TSN up to `below` (exclusive)."""
        end = self.unwrap(below)
        out: list[int] = []
        u, k = self._cum + 1, 0
        while u < end and len(out) < limit:
            if k < len(self._starts) and self._starts[k] <= u:
                u = self._ends[k] + 1
                k += 1
                continue
            stop = min(end, self._starts[k]) if k < len(self._starts) else end
            count = min(stop - u, limit - len(out))
            out.extend(t & M32 for t in range(u, u + count))
            u += count
        return out

    def forward(self, tsn: int) -> bool:
        """Moves the cumulative TSN up to `tsn` (FORWARD-TSN), dropping the blocks it passes; False if `tsn` is not
        above it."""
        offset = self.offset(tsn)
        if offset == 0 or offset >= 0x80000000:
            return False
        u = self._cum + offset
        passed = bisect_right(self._ends, u)
        del self._starts[:passed], self._ends[:passed]
        self._cum = u
        if self._starts and self._starts[0] <= u:   # a block straddling the new point
            self._starts[0] = u + 1
        self._absorb_first()
        return True

    def gap_blocks(self, limit: int) -> list[tuple[int, int]]:
        """The first `limit` blocks as SACK gap offsets from the cumulative TSN."""
        cum = self._cum
        return [(self._starts[i] - cum, self._ends[i] - cum) for i in range(min(limit, len(self._starts)))]

    def _absorb_first(self) -> None:
        if self._starts and self._starts[0] == self._cum + 1:
            self._cum = self._ends[0]
            del self._starts[0], self._ends[0]
