"""The receiver's view of the peer's TSNs (RFC 9260 section 6.2): the cumulative TSN and the blocks received
above it, kept as sorted intervals so that receiving a chunk, building a SACK and a FORWARD-TSN cost what
changed, not what is held. Only TSNs within `window` of the cumulative TSN are accepted; the association
drops the rest (the peer sends them again once the gap closes)."""
from __future__ import annotations

from bisect import bisect_right

_M32 = 0xFFFFFFFF


class ReceivedTsns:
    """TSNs are unwrapped into ever-growing integers internally, so intervals never straddle the 32-bit wrap."""

    def __init__(self, cumulative: int, window: int) -> None:
        if not 0 < window <= 0xFFFF:
            raise ValueError("window must fit a SACK gap offset")
        self.window = window
        self._cum = cumulative & _M32   # unwrapped cumulative TSN; its low 32 bits are the wire value
        self._starts: list[int] = []    # disjoint, non-adjacent intervals above _cum + 1, inclusive
        self._ends: list[int] = []

    @property
    def cumulative(self) -> int:
        return self._cum & _M32

    @property
    def blocks(self) -> int:
        """Gap blocks held: at most window / 2."""
        return len(self._starts)

    def offset(self, tsn: int) -> int:
        """How far `tsn` is above the cumulative TSN in serial arithmetic; 0 or >= 2**31 is at or below it."""
        return (tsn - self._cum) & _M32

    def __contains__(self, tsn: int) -> bool:
        """Received already: at or below the cumulative TSN, or in a gap block."""
        offset = self.offset(tsn)
        if offset == 0 or offset >= 0x80000000:
            return True
        u = self._cum + offset
        i = bisect_right(self._starts, u) - 1
        return i >= 0 and self._ends[i] >= u

    def add(self, tsn: int) -> None:
        """Records a new TSN within the window (the caller checked both)."""
        u = self._cum + self.offset(tsn)
        starts, ends = self._starts, self._ends
        i = bisect_right(starts, u)
        left = i > 0 and ends[i - 1] + 1 == u
        right = i < len(starts) and starts[i] == u + 1
        if left and right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
        elif left:
            ends[i - 1] = u
        elif right:
            starts[i] = u
        else:
            starts.insert(i, u)
            ends.insert(i, u)
        self._absorb_first()

    def forward(self, tsn: int) -> None:
        """Moves the cumulative TSN up to `tsn` (FORWARD-TSN), dropping the blocks it passes."""
        offset = self.offset(tsn)
        if offset == 0 or offset >= 0x80000000:
            return
        u = self._cum + offset
        passed = bisect_right(self._ends, u)
        del self._starts[:passed], self._ends[:passed]
        self._cum = u
        if self._starts and self._starts[0] <= u:   # a block straddling the new point
            self._starts[0] = u + 1
        self._absorb_first()

    def gap_blocks(self, limit: int) -> list[tuple[int, int]]:
        """The first `limit` blocks as SACK gap offsets from the cumulative TSN."""
        cum = self._cum
        return [(self._starts[i] - cum, self._ends[i] - cum) for i in range(min(limit, len(self._starts)))]

    def _absorb_first(self) -> None:
        if self._starts and self._starts[0] == self._cum + 1:
            self._cum = self._ends[0]
            del self._starts[0], self._ends[0]
