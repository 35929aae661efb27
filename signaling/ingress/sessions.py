"""Live ingress sessions and their IngressState. A publisher on a stream key moves its ingress ENDPOINT_INACTIVE →
ENDPOINT_BUFFERING (its offer is taken) → ENDPOINT_PUBLISHING (its media arrived) → ENDPOINT_INACTIVE (it ended), or
ENDPOINT_ERROR when it could not start. As in LiveKit, a status change to PUBLISHING is the webhook
`ingress_started`, one to INACTIVE, ERROR or COMPLETE is `ingress_ended`."""
from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable

from livekit.protocol import ingress, models

from ..cluster.ingress import IngressStore
from ..wish import Refused

log = logging.getLogger(__name__)

Status = ingress.IngressState.Status
_ENDED = (Status.ENDPOINT_INACTIVE, Status.ENDPOINT_ERROR, Status.ENDPOINT_COMPLETE)
# Notify(event, room=, ingress_info=): the node's webhook and event sink (LiveKit sends the room by name only).
Notify = Callable[..., None]


class IngressSessions:
    """This node's live ingress sessions. A session's IngressInfo is the one its claim read (a live session keeps
    what it started with); its state goes to the store as it changes."""

    def __init__(self, store: IngressStore, notify: Notify, counters: Counter[str]) -> None:
        self.store = store
        self._notify = notify
        self._counters = counters
        self._stops: dict[str, Callable[[], None]] = {}  # live ingress id -> how to end its session
        self._live: dict[str, ingress.IngressInfo] = {}  # live ingress id -> its info as the session runs it
        self._relays: dict[str, str] = {}  # stream key -> secret of the RTMP connection relaying to it over WHIP

    async def claim(self, stream_key: str, input_type: int, resource_id: str) -> ingress.IngressInfo:
        """The ingress a new publisher's stream key names, now BUFFERING with `resource_id`. Refused: 404 for an
        unknown key, 403 when disabled, 400 for another input type or no room, 409 while another publisher holds
        it, here or on another node (LiveKit's own check is absent: its second session's participant would replace
        the first's)."""
        info = await self.store.by_stream_key(stream_key) if stream_key else None
        if info is None:
            raise Refused(404, "no ingress has this stream key", "unknown_stream_key")
        if not info.enabled:
            raise Refused(403, "ingress is disabled", "ingress_disabled")
        if info.input_type != input_type:
            raise Refused(400, f"this stream key is for {ingress.IngressInput.Name(info.input_type)}",
                          "wrong_input_type")
        if not info.room_name:
            raise Refused(400, "ingress has no room_name (set one with UpdateIngress)", "ingress_without_room")
        busy = Refused(409, "a publisher is already streaming on this stream key", "stream_key_busy")
        if info.ingress_id in self._stops:
            raise busy
        self._stops[info.ingress_id] = _nothing
        try:
            taken = await self.store.take(info.ingress_id)
        except BaseException:
            self._stops.pop(info.ingress_id, None)
            raise
        if not taken:
            self._stops.pop(info.ingress_id, None)
            raise busy
        self._live[info.ingress_id] = info
        now = time.time_ns()
        info.state.CopyFrom(ingress.IngressState(status=Status.ENDPOINT_BUFFERING, resource_id=resource_id,
                                                 started_at=now, updated_at=now))
        self._update(info, Status.ENDPOINT_INACTIVE)
        return info

    def bind(self, ingress_id: str, stop: Callable[[], None]) -> bool:
        """The claimed ingress's session is up: `stop` ends it (DeleteIngress). False if the ingress was deleted while
        the session was being set up (the caller ends it)."""
        if ingress_id not in self._stops:
            return False
        self._stops[ingress_id] = stop
        return True

    def publishing(self, ingress_id: str, room_sid: str, participant: models.ParticipantInfo) -> None:
        """The publisher's tracks (as the room sees them) changed: PUBLISHING from its first one on."""
        info = self._live.get(ingress_id)
        if info is None:
            return
        previous = info.state.status
        if participant.tracks:
            info.state.status = Status.ENDPOINT_PUBLISHING
        info.state.room_id = room_sid
        del info.state.tracks[:]
        info.state.tracks.extend(participant.tracks)
        info.state.updated_at = time.time_ns()
        self._update(info, previous)

    def ended(self, ingress_id: str, error: str = "") -> None:
        """The session is over: INACTIVE, or ERROR with `error` when it could not start."""
        self._stops.pop(ingress_id, None)
        info = self._live.pop(ingress_id, None)
        if info is None:
            return
        previous = info.state.status
        now = time.time_ns()
        info.state.status = Status.ENDPOINT_ERROR if error else Status.ENDPOINT_INACTIVE
        info.state.error = error
        info.state.ended_at = now
        info.state.updated_at = now
        del info.state.tracks[:]
        self._update(info, previous)
        self.store.release(ingress_id)

    def stop(self, ingress_id: str, error: str = "") -> ingress.IngressInfo | None:
        """Ends the ingress's live session if it runs here: INACTIVE, or ERROR with `error`; its info as it ended.
        The state is set before the session's participant is closed, so its own end (`ended` without an error) does
        not overwrite the reason."""
        stop, info = self._stops.get(ingress_id), self._live.get(ingress_id)
        if stop is None:
            return None
        self.ended(ingress_id, error)
        stop()
        return info

    def relay(self, stream_key: str) -> str:
        """A secret for the RTMP listener's worker to publish on the RTMP ingress it claimed, over WHIP."""
        secret = self._relays[stream_key] = secrets.token_urlsafe(24)
        return secret

    async def relayed_claim(self, stream_key: str) -> ingress.IngressInfo:
        """The RTMP ingress the listener claimed for the worker now publishing over WHIP (its state stays BUFFERING
        until the media arrives). Refused with 404 when that RTMP session has ended meanwhile."""
        info = await self.store.by_stream_key(stream_key)
        live = self._live.get(info.ingress_id) if info is not None else None
        if live is None:
            raise Refused(404, "the RTMP session has ended", "unknown_stream_key")
        return live

    def unrelay(self, stream_key: str) -> None:
        self._relays.pop(stream_key, None)

    def relayed(self, stream_key: str, secret: str) -> bool:
        """Whether a WHIP request on `stream_key` is the RTMP worker's (it holds the connection's secret)."""
        expected = self._relays.get(stream_key)
        return expected is not None and hmac.compare_digest(expected, secret)

    async def live(self, ingress_id: str) -> bool:
        """Whether the ingress has a live session, here or on another node."""
        if ingress_id in self._stops:
            return True
        info = await self.store.get(ingress_id)
        return info is not None and info.state.status in (Status.ENDPOINT_BUFFERING, Status.ENDPOINT_PUBLISHING)

    def _update(self, info: ingress.IngressInfo, previous: int) -> None:
        self.store.save_state(info.ingress_id, info.state)
        status = info.state.status
        if status == previous:
            return
        log.info("ingress %s: %s", info.ingress_id, Status.Name(status))
        if status == Status.ENDPOINT_PUBLISHING:
            self._counters["ingress_started"] += 1
            self._notify("ingress_started", room=models.Room(name=info.room_name), ingress_info=info)
        elif status in _ENDED:
            self._counters["ingress_ended"] += 1
            self._notify("ingress_ended", room=models.Room(name=info.room_name), ingress_info=info)


def _nothing() -> None:
    """The stop of a session still being set up: DeleteIngress meanwhile only forgets the claim."""
