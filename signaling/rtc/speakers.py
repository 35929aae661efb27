"""Active speakers: from the engine's per-receiver audio levels to LiveKit's `speakers_changed`."""
from __future__ import annotations

from livekit.protocol import models

# LiveKit's defaults: a participant speaks above 35 dBov, levels are observed every 400 ms.
ACTIVE_LEVEL = 10 ** (-35 / 20)
INTERVAL = 0.4


class SpeakerObserver:
    """One room's speakers; `update` says who changed, so only changes go on the wire."""

    def __init__(self) -> None:
        self._speaking: list[str] = []  # sids, loudest first

    def update(self, levels: dict[str, float]) -> list[models.SpeakerInfo]:
        """Takes every participant's level for the last interval; returns the speakers to announce, loudest first
        (the current speakers with their levels, then those who stopped), or [] when nothing changed."""
        speaking = sorted((sid for sid, level in levels.items() if level >= ACTIVE_LEVEL), key=lambda sid: -levels[sid])
        if speaking == self._speaking:
            return []
        stopped = [sid for sid in self._speaking if sid not in speaking]
        self._speaking = speaking
        return [models.SpeakerInfo(sid=sid, level=min(1.0, levels[sid]), active=True) for sid in speaking] + [
            models.SpeakerInfo(sid=sid, level=0.0, active=False) for sid in stopped
        ]
