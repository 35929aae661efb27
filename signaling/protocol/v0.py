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
from ..rtc.limits import MAX_ATTRIBUTES_SIZE, MAX_METADATA_SIZE
from ..rtc.participant import Participant

log = logging.getLogger(__name__)

PING_INTERVAL = 5
PING_TIMEOUT = 15
# Largest WebSocket message read (uvicorn closes the connection with 1009 beyond it, counted here): LiveKit's
# largest request, an UpdateParticipantMetadata at its metadata and attributes limits, or an SDP at sdp.MAX_SDP_LENGTH,
# with room for the rest. LiveKit's own limit.signal_message_size_limit is 2 MiB.
MAX_SIGNAL_MESSAGE = max(MAX_METADATA_SIZE + MAX_ATTRIBUTES_SIZE, sdp.MAX_SDP_LENGTH) + 64 * 1024
# A client that does not read what it is sent is dropped once this much waits for it (its socket buffers full).
# The byte cap is four of LiveKit's largest signal messages (2 MiB); one larger message still goes when nothing else
# waits (a JoinResponse of a big room).
MAX_OUTBOX = 1000  # signal messages
MAX_OUTBOX_BYTES = 8 * 1024 * 1024
# After the session ends, how long what is queued (the leave) and the closing handshake may take.
CLOSE_TIMEOUT = 2
# Clients keep a refreshed token for reconnecting; LiveKit refreshes well before its 10-minute validity ends.
TOKEN_REFRESH_INTERVAL = 5 * 60


class SignalSession:
    """One v0 signal connection of a participant. `outbox` holds serialized responses for the connection's writer
    (`outbox_bytes` of them); None ends it."""

    def __init__(self, participant: Participant, counters: Counter[str]) -> None:
        self.participant = participant
        self.counters = counters
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.outbox_bytes = 0
        self.closed = False
        self.ended = asyncio.Event()  # set when the session closes: its connection is then ended, not read
        self._writer: asyncio.Task | None = None

    def start_writer(self, websocket: WebSocket) -> asyncio.Task:
        self._writer = asyncio.create_task(_write(websocket, self))
        return self._writer

    def start(self, resume: bool) -> None:
        """Takes over the participant's signal: a new session joins it to its room, a resumed one picks it up."""
        if resume:
            self.participant.resume(self)
        else:
            self.participant.attach(self)
            self.participant.join(PING_INTERVAL, PING_TIMEOUT)

    # -- SignalSink
    def send(self, response: rtc.SignalResponse) -> None:
        if self.closed:
            return
        data = response.SerializeToString()
        queued = self.outbox.qsize()
        if queued >= MAX_OUTBOX or (queued and self.outbox_bytes + len(data) > MAX_OUTBOX_BYTES):
            self._drop()
            return
        self.outbox_bytes += len(data)
        self.outbox.put_nowait(data)

    def _drop(self) -> None:
        """The client stopped reading: it is dropped and what waited for it freed, rather than buffered forever."""
        self.counters["signal_outbox_overflow"] += 1
        self.closed = True
        self.ended.set()
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox_bytes = 0
        if self._writer is not None:
            self._writer.cancel()  # it waits for the client's socket to drain, which it never will
        # Deferred: send() is called from the middle of other work, close() among it.
        self.participant.close_soon(models.DisconnectReason.SIGNAL_CLOSE)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)  # ends the writer after what is queued
            self.ended.set()

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

    def _on_sync_state(self, state: rtc.SyncState) -> None:
        if self.participant.sync_state(state):
            self._on_subscription(state.subscription)


async def serve(websocket: WebSocket, session: SignalSession, token_expires_at: float, resume: bool = False) -> None:
    """Runs an accepted connection: joins (or resumes), then reads requests until the client leaves, goes silent or
    the participant closes. A connection that just drops leaves the participant waiting for a resume."""
    writer = session.start_writer(websocket)
    refresher = asyncio.create_task(_refresh_tokens(session, token_expires_at))
    reader = ended = None
    why = "cancelled"
    try:
        session.start(resume)
        reader = asyncio.create_task(_read(websocket, session))
        ended = asyncio.create_task(session.ended.wait())
        done, _ = await asyncio.wait({reader, ended}, return_when=asyncio.FIRST_COMPLETED)
        # the reader's errors are the connection's
        why = reader.result() if reader in done else "the session closed (a leave, or the participant left)"
    except Exception as error:
        why = f"{type(error).__name__}: {error}"
        raise
    finally:
        for task in (refresher, reader, ended):
            if task is not None:
                task.cancel()
        log.debug("signal connection of %s ended: %s", session.participant.identity, why)
        session.participant.signal_lost(session)
        await asyncio.wait({writer}, timeout=CLOSE_TIMEOUT)
        writer.cancel()
        with contextlib.suppress(Exception):  # a client that reads nothing never completes the closing handshake
            await asyncio.wait_for(websocket.close(), CLOSE_TIMEOUT)


async def _read(websocket: WebSocket, session: SignalSession) -> str:
    """Handles the client's requests until the connection ends or the session closes; says which."""
    counters = session.counters
    while not session.closed:
        try:
            # Clients ping every ping_interval; silence for ping_timeout means the client is gone.
            message = await asyncio.wait_for(websocket.receive(), PING_TIMEOUT)
        except asyncio.TimeoutError:
            # The connection may be dead without our knowing (a network change): one whose media connected waits for
            # a resume as if it had dropped (serve ends it); the others leave now.
            counters["signal_ping_timeouts"] += 1
            if not session.participant.resumable:
                session.participant.close(models.DisconnectReason.CONNECTION_TIMEOUT)
            return f"the client was silent for {PING_TIMEOUT} s"
        if message["type"] == "websocket.disconnect":
            if message.get("code") == 1009:  # a message over MAX_SIGNAL_MESSAGE
                counters["signal_message_too_big"] += 1
            return f"the WebSocket closed (code {message.get('code')})"
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
    return "the session closed"


async def _refresh_tokens(session: SignalSession, expires_at: float) -> None:
    """Sends a fresh token before the one the client joined with expires, then every refresh interval."""
    delay = min(TOKEN_REFRESH_INTERVAL, max(1.0, (expires_at - time.time()) / 2))
    while not session.closed:
        await asyncio.sleep(delay)
        session.participant.refresh_token()
        delay = TOKEN_REFRESH_INTERVAL


async def _write(websocket: WebSocket, session: SignalSession) -> None:
    while True:
        data = await session.outbox.get()
        if data is None:
            break
        session.outbox_bytes -= len(data)
        try:
            await websocket.send_bytes(data)
        except Exception:
            break
    with contextlib.suppress(Exception):
        await websocket.close()
