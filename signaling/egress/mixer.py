"""Audio mixing on one sample timeline (sans-I/O, numpy): each track's decoded PCM is placed at its sample position and
summed; mixed blocks leave once every track has had time to deliver its part (a fixed delay behind real time). Where
no track has samples (a participant silent, not yet joined, gone, or its packets lost) the mix is silence, so the file
keeps real time."""
from __future__ import annotations

import numpy as np

RATE = 48000
CHANNELS = 2
# A track's RTP timestamps and its arrival times may disagree by this many samples (jitter, a publisher's clock drift)
# before the track is re-anchored at its arrival: a publisher that restarted its encoder, or paused without its clock
# running on.
MAX_SKEW = RATE  # 1 s
# Samples held for mixing ahead of what was emitted: later samples (a track far in the future) are dropped.
MAX_AHEAD = 10 * RATE


class TrackTimeline:
    """Where a track's frames go on the mix's timeline: its first frame at its arrival, later ones by their RTP
    timestamps (sample-accurate; 48 kHz Opus clock = samples), re-anchored at arrival after a jump."""

    def __init__(self) -> None:
        self._anchor_timestamp: int | None = None  # unwrapped RTP timestamp of the anchor frame
        self._anchor_position = 0
        self._last_timestamp = 0
        self.reanchors = 0

    def position(self, timestamp: int, arrival_position: int) -> int:
        if self._anchor_timestamp is None:
            self._anchor(timestamp, arrival_position)
            return arrival_position
        step = (timestamp - self._last_timestamp + 0x80000000) % 0x100000000 - 0x80000000  # RTP timestamp wrap
        self._last_timestamp += step
        position = self._anchor_position + self._last_timestamp - self._anchor_timestamp
        if abs(position - arrival_position) > MAX_SKEW:
            self.reanchors += 1
            self._anchor(self._last_timestamp, arrival_position)
            return arrival_position
        return position

    def _anchor(self, timestamp: int, position: int) -> None:
        self._anchor_timestamp = self._last_timestamp = timestamp
        self._anchor_position = position


class AudioMixer:
    """Sums float PCM (channels x samples, in [-1, 1]) placed at sample positions; `pop(until)` returns the mix from
    the last emitted position up to `until` (clipped), and later samples for what was emitted are dropped
    (`late_samples`). The samples not yet emitted sit in a ring of MAX_AHEAD (allocated once: no copy per frame)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        self.channels = channels
        self.emitted = 0  # the next sample position to emit
        self._ring = np.zeros((channels, MAX_AHEAD), dtype=np.float32)  # position p at p % MAX_AHEAD
        self.late_samples = 0
        self.dropped_samples = 0  # beyond MAX_AHEAD

    def add(self, position: int, pcm: np.ndarray) -> None:
        if pcm.shape[0] != self.channels:  # mono to both sides; more channels are folded down
            pcm = np.repeat(pcm[:1], self.channels, axis=0) if pcm.shape[0] == 1 else pcm[:self.channels]
        if position < self.emitted:
            cut = min(self.emitted - position, pcm.shape[1])
            self.late_samples += cut
            pcm, position = pcm[:, cut:], position + cut
        keep = max(0, min(pcm.shape[1], self.emitted + MAX_AHEAD - position))
        self.dropped_samples += pcm.shape[1] - keep
        for start, stop, offset in _spans(position, keep):
            self._ring[:, start:stop] += pcm[:, offset:offset + stop - start]

    def pop(self, until: int) -> np.ndarray:
        count = max(0, until - self.emitted)
        out = np.zeros((self.channels, count), dtype=np.float32)
        for start, stop, offset in _spans(self.emitted, min(count, MAX_AHEAD)):
            out[:, offset:offset + stop - start] = self._ring[:, start:stop]
            self._ring[:, start:stop] = 0
        self.emitted += count
        return np.clip(out, -1.0, 1.0, out=out)


def _spans(position: int, count: int) -> list[tuple[int, int, int]]:
    """The ring's slices (start, stop, offset into the samples) holding `count` samples from `position`."""
    start = position % MAX_AHEAD
    first = min(count, MAX_AHEAD - start)
    spans = [(start, start + first, 0)] if first > 0 else []
    if count > first:
        spans.append((0, count - first, first))
    return spans
