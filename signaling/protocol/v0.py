"""LiveKit's signal protocol v0 (`/rtc`, two peer connections): SignalRequests in, calls on the Participant;
the participant's SignalResponses out, through one ordered, bounded queue (the participant's signal sink)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from google.protobuf.message import DecodeError
from livekit.protocol import models, rtc
from starlette.websockets import WebSocket

from ..peer import sdp
from ..rtc.ids import now_ms
from ..rtc.participant import MAX_ATTRIBUTES_SIZE, MAX_METADATA_SIZE, Participant

log = logging.getLogger(__name__)

PING_INTERVAL = 5
PING_TIMEOUT = 15
# Largest WebSocket message read (uvicorn closes the connection with 1009 beyond it, counted here): LiveKit's
# largest request, an UpdateParticipantMetadata at its metadata and attributes limits, or an SDP at sdp.MAX_SDP_LENGTH,
# with room for the rest. LiveKit's own limit.signal_message_size_limit is 2 MiB.
MAX_SIGNAL_MESSAGE = max(MAX_METADATA_SIZE + MAX_ATTRIBUTES_SIZE, sdp.MAX_SDP_LENGTH) + 64 * 1024
MAX_OUTBOX = 1000  # signal messages queued for a client before it counts as gone
# Clients keep a refreshed token for reconnecting; LiveKit refreshes well before its 10-minute validity ends.
TOKEN_REFRESH_INTERVAL = 5 * 60


class SignalSession:
    """One v0 signal connection of a participant. `outbox` is drained by the connection's writer; None ends it."""

    def __init__(self, participant: Participant, counters: Counter[str]) -> None:
        self.participant = participant
        self.counters = counters
        self.outbox: asyncio.Queue[rtc.SignalResponse | None] = asyncio.Queue()
        self.closed = False
        participant.attach(self)

    def join(self) -> None:
        self.participant.join(PING_INTERVAL, PING_TIMEOUT)

    # -- SignalSink
    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        if self.outbox.qsize() >= MAX_OUTBOX:  # the client stopped reading: drop it rather than buffer forever
            self.counters["signal_outbox_overflow"] += 1
            # Deferred: send() is called from the middle of other work, close() among it.
            self.participant.close_soon(models.DisconnectReason.SIGNAL_CLOSE)
            return
        self.outbox.put_nowait(response)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)  # ends the writer after what is queued

    # -- requests
    def handle(self, request: rtc.SignalRequest) -> None:
        if self.closed:  # e.g. frames still arriving from a session evicted by a rejoin
            return
        kind = request.WhichOneof("message")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            self.counters[f"signal_ignored_{kind}"] += 1
            return
        handler(getattr(request, kind))

    def _on_ping(self, timestamp: int) -> None:
        self.send(rtc.SignalResponse(pong=now_ms()))

    def _on_ping_req(self, ping: rtc.Ping) -> None:
        self.send(rtc.SignalResponse(pong_resp=rtc.Pong(last_ping_timestamp=ping.timestamp, timestamp=now_ms())))

    def _on_trickle(self, trickle: rtc.TrickleRequest) -> None:
        # ICE-lite: the server never checks the client's candidates; its binding requests tell us its address.
        self.counters["trickle_received"] += 1

    def _on_leave(self, leave: rtc.LeaveRequest) -> None:
        self.participant.close(models.DisconnectReason.CLIENT_INITIATED, notify=False)

    def _on_add_track(self, request: rtc.AddTrackRequest) -> None:
        self.participant.add_track(request)

    def _on_offer(self, offer: rtc.SessionDescription) -> None:
        self.participant.handle_offer(offer)

    def _on_answer(self, answer: rtc.SessionDescription) -> None:
        self.participant.handle_answer(answer)

    def _on_mute(self, request: rtc.MuteTrackRequest) -> None:
        publication = self.participant.find_publication(request.sid)
        if publication is not None:
            self.participant.set_muted(publication, request.muted)

    def _on_update_metadata(self, request: rtc.UpdateParticipantMetadata) -> None:
        self.participant.update_own_metadata(request)

    def _on_subscription(self, request: rtc.UpdateSubscription) -> None:
        sids = set(request.track_sids)
        for participant_tracks in request.participant_tracks:
            sids.update(participant_tracks.track_sids)
        self.participant.update_subscriptions(sids, request.subscribe)

    def _on_track_setting(self, settings: rtc.UpdateTrackSettings) -> None:
        self.participant.update_track_settings(settings)

    def _on_subscription_permission(self, permission: rtc.SubscriptionPermission) -> None:
        self.participant.set_subscription_permission(permission)


async def serve(websocket: WebSocket, session: SignalSession, token_expires_at: float) -> None:
    """Runs an accepted connection: joins, then reads requests until the client leaves, goes silent or the
    participant closes; the participant leaves with the connection (no resume yet)."""
    writer = asyncio.create_task(_write(websocket, session))
    refresher = asyncio.create_task(_refresh_tokens(session, token_expires_at))
    try:
        session.join()
        await _read(websocket, session)
    finally:
        refresher.cancel()
        session.participant.close(models.DisconnectReason.SIGNAL_CLOSE, notify=False)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(writer, 2)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _read(websocket: WebSocket, session: SignalSession) -> None:
    counters = session.counters
    while not session.closed:
        try:
            # Clients ping every ping_interval; silence for ping_timeout means the client is gone.
            message = await asyncio.wait_for(websocket.receive(), PING_TIMEOUT)
        except asyncio.TimeoutError:
            counters["signal_ping_timeouts"] += 1
            session.participant.close(models.DisconnectReason.CONNECTION_TIMEOUT)
            return
        if message["type"] == "websocket.disconnect":
            if message.get("code") == 1009:  # a message over MAX_SIGNAL_MESSAGE
                counters["signal_message_too_big"] += 1
            return
        data = message.get("bytes")
        if data is None:
            counters["signal_text_frames"] += 1
            continue
        try:
            request = rtc.SignalRequest.FromString(data)
        except DecodeError:
            counters["signal_malformed"] += 1
            continue
        try:
            session.handle(request)
        except Exception:  # a bug handling one request must not take down the session or the server
            counters["signal_handler_errors"] += 1
            log.exception("error handling %s from %s", request.WhichOneof("message"), session.participant.identity)


async def _refresh_tokens(session: SignalSession, expires_at: float) -> None:
    """Sends a fresh token before the one the client joined with expires, then every refresh interval."""
    delay = min(TOKEN_REFRESH_INTERVAL, max(1.0, (expires_at - time.time()) / 2))
    while not session.closed:
        await asyncio.sleep(delay)
        session.participant.refresh_token()
        delay = TOKEN_REFRESH_INTERVAL


async def _write(websocket: WebSocket, session: SignalSession) -> None:
    while True:
        response = await session.outbox.get()
        if response is None:
            break
        try:
            await websocket.send_bytes(response.SerializeToString())
        except Exception:
            break
    with contextlib.suppress(Exception):
        await websocket.close()
