"""Room: the participants who share media and data, its settings and lifetime, and what it tells them all."""
from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from .ids import new_id, now_ms
from .quality import mos, quality_level
from .speakers import SpeakerObserver
from .subscriptions import SubscriptionManager

if TYPE_CHECKING:
    from .participant import Participant
    from .publication import TrackPublication

log = logging.getLogger(__name__)


class Room:
    """`on_close(room)` is called once when the room closes (the store forgets it and reports room_finished)."""

    def __init__(self, name: str, empty_timeout: float, departure_timeout: float, max_participants: int,
                 metadata: str, on_close: Callable[[Room], None]) -> None:
        self.name = name
        self.sid = new_id("RM_")
        self.created_at_ms = now_ms()
        self.participants: dict[str, Participant] = {}  # by identity
        # Every participant's tracks by sid, pending or published: what requests naming a track sid may refer to.
        self.tracks: dict[str, TrackPublication] = {}
        self.empty_timeout = empty_timeout
        self.departure_timeout = departure_timeout
        self.max_participants = max_participants
        self.metadata = metadata
        self.active_recording = False  # an egress records one of its tracks (clients show a recording indicator)
        # E2EE clients pass frames ending in this through undecrypted (JoinResponse.sif_trailer, one per room as in
        # LiveKit): for any the server makes itself. tern makes none with a payload today (probes are padding only).
        self.sif_trailer = secrets.token_bytes(32)
        self.speakers = SpeakerObserver()
        # Connection quality as last announced, by participant sid: (level, hidden), so a change of either is news.
        self._qualities: dict[str, tuple[int, bool]] = {}
        self.subscriptions = SubscriptionManager(self)
        self._on_close = on_close
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = False

    def info(self) -> models.Room:
        return models.Room(
            sid=self.sid,
            name=self.name,
            empty_timeout=int(self.empty_timeout),
            departure_timeout=int(self.departure_timeout),
            max_participants=self.max_participants,
            creation_time=self.created_at_ms // 1000,
            creation_time_ms=self.created_at_ms,
            metadata=self.metadata,
            active_recording=self.active_recording,
            num_participants=sum(1 for p in self.participants.values() if not p.hidden and not p.dependent),
            num_publishers=sum(1 for p in self.participants.values() if any(t.published for t in p.publications.values())),
        )

    def others(self, participant: Participant) -> list[Participant]:
        return [p for p in self.participants.values() if p is not participant]

    @property
    def occupied(self) -> bool:
        """Whether anyone but dependent participants (agents) is in the room: they alone do not keep it open."""
        return any(not p.dependent for p in self.participants.values())

    def add(self, participant: Participant) -> None:
        if self._close_timer is not None and not participant.dependent:
            self._close_timer.cancel()
            self._close_timer = None
        self.participants[participant.identity] = participant

    def remove(self, participant: Participant) -> None:
        if self.participants.get(participant.identity) is participant:
            del self.participants[participant.identity]
        if not self.occupied:
            self.schedule_close(self.departure_timeout)

    def is_full(self, identity: str, dependent: bool = False) -> bool:
        """Whether one more participant (not one replacing `identity`) exceeds max_participants; dependent ones
        (agents) are not counted, nor limited."""
        return bool(self.max_participants) and not dependent and identity not in self.participants \
            and sum(1 for p in self.participants.values() if not p.dependent) >= self.max_participants

    def broadcast(self, response: rtc.SignalResponse) -> None:
        for participant in self.participants.values():
            participant.send(response)

    def set_metadata(self, metadata: str) -> None:
        if metadata != self.metadata:
            self.metadata = metadata
            self.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.info())))

    def set_recording(self, active: bool) -> None:
        if active != self.active_recording:
            self.active_recording = active
            self.broadcast(rtc.SignalResponse(room_update=rtc.RoomUpdate(room=self.info())))

    def broadcast_participant(self, participant: Participant) -> None:
        """Sends a participant's full, current info to everyone who may see it (and to itself)."""
        update = rtc.SignalResponse(update=rtc.ParticipantUpdate(participants=[participant.info()]))
        for other in self.participants.values():
            if other is participant or not participant.hidden:
                other.send(update)

    def announce_speakers(self, levels: dict[str, float]) -> None:
        """Each participant's audio level for the last interval (by sid); changes go to everyone."""
        speakers = self.speakers.update(levels)
        if speakers:
            self.broadcast(rtc.SignalResponse(speakers_changed=rtc.SpeakersChanged(speakers=speakers)))

    def announce_quality(self, scores: dict[str, float]) -> None:
        """Every participant's connection quality score for the last interval (by sid). Each participant hears of
        the changes about itself and the others it can see (not hidden ones); one newly in the room hears them all.
        Participants hearing the same get the same message (built once: a room's first report is n x n)."""
        infos = {sid: rtc.ConnectionQualityInfo(participant_sid=sid, quality=quality_level(score), score=mos(score))
                 for sid, score in scores.items()}
        hidden = {p.sid for p in self.participants.values() if p.hidden}
        qualities = {sid: (info.quality, sid in hidden) for sid, info in infos.items()}
        changed = {sid for sid, quality in qualities.items() if self._qualities.get(sid) != quality}
        new = set(qualities) - set(self._qualities)
        self._qualities = qualities
        if not changed:
            return
        visible = {True: [info for sid, info in infos.items() if sid not in hidden]}  # by whether all are told
        visible[False] = [info for info in visible[True] if info.participant_sid in changed]
        shared: dict[tuple[bool, bool], rtc.SignalResponse] = {}
        for participant in self.participants.values():
            told_all, knows_lost = participant.sid in new, participant.knows_lost_quality
            if participant.hidden:  # not among what the others hear: it hears of itself on its own
                own = infos.get(participant.sid)
                mine = [own] if own is not None and (told_all or participant.sid in changed) else []
                if visible[told_all] or mine:
                    participant.send(_quality_message(visible[told_all] + mine, knows_lost))
            elif visible[told_all]:
                if (told_all, knows_lost) not in shared:
                    shared[told_all, knows_lost] = _quality_message(visible[told_all], knows_lost)
                participant.send(shared[told_all, knows_lost])

    def schedule_close(self, delay: float) -> None:
        if self._close_timer is None and not self.closed:
            self._close_timer = asyncio.get_running_loop().call_later(delay, self.close_if_empty)

    def close_if_empty(self) -> None:
        self._close_timer = None
        if not self.occupied:
            self.close()

    def close(self, reason: int = models.DisconnectReason.ROOM_DELETED) -> None:
        """Closes the room; anyone still in it gets `leave` with `reason`."""
        if self.closed:
            return
        self.closed = True  # from here on, participants leaving schedule nothing
        for participant in list(self.participants.values()):
            participant.close(reason)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        log.info("room %s (%s) closed", self.name, self.sid)
        self._on_close(self)


def _quality_message(infos: list[rtc.ConnectionQualityInfo], knows_lost: bool) -> rtc.SignalResponse:
    if not knows_lost:
        infos = [rtc.ConnectionQualityInfo(participant_sid=info.participant_sid, quality=models.ConnectionQuality.POOR,
                                           score=info.score) if info.quality == models.ConnectionQuality.LOST
                 else info for info in infos]
    return rtc.SignalResponse(connection_quality=rtc.ConnectionQualityUpdate(updates=infos))
