"""Webhooks against real HTTP receivers that verify every POST with livekit-api's WebhookReceiver."""
from __future__ import annotations

import asyncio
import collections
import re
import signal
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import models

from conftest import API_KEY, API_SECRET, free_port, start_server, stop_server
from signal_client import SignalClient
from signaling.server import GRACEFUL_SHUTDOWN_TIME, LEAVE_FLUSH_TIME
from signaling.webhook import SHUTDOWN_DRAIN_TIME, WebhookNotifier

KEY, SECRET = "hookkey", "a-webhook-secret-of-32-characters"
# Small backoff so the retry tests take a fraction of a second.
FAST = {"retry_initial": 0.02, "retry_max": 0.1}


class Receiver:
    """An HTTP webhook endpoint: verifies each POST as LiveKit's receivers do and records the events.
    A body or token that fails verification is recorded in `errors` (and answered 400)."""

    def __init__(self, key: str = KEY, secret: str = SECRET, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.status = 200  # what it answers; non-2xx makes the sender retry
        self.events: list = []
        self.requests: list[web.Request] = []
        self.errors: list[str] = []
        self._receiver = api.WebhookReceiver(api.TokenVerifier(key, secret))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def names(self) -> list[str]:
        return [event.event for event in self.events]

    async def _handle(self, request: web.Request) -> web.Response:
        if self.status != 200:
            return web.Response(status=self.status)
        body = (await request.read()).decode()
        try:
            event = self._receiver.receive(body, request.headers.get("Authorization", ""))
        except Exception as exc:  # recorded for the test to fail on, with the reason
            self.errors.append(repr(exc))
            return web.Response(status=400)
        self.events.append(event)
        self.requests.append(request)
        return web.Response()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def webhooks():
    """A webhook endpoint verifying with the test servers' own API key, for a module whose server sends to it."""
    receiver = Receiver(API_KEY, API_SECRET)
    await receiver.start()
    yield receiver
    await receiver.stop()


class HangingReceiver:
    """Accepts connections and reads requests but never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()


async def until(predicate, timeout: float = 10.0) -> None:
    """Waits for `predicate` (a liveness bound, not a timing assertion)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def notifier(urls: list[str], counters: collections.Counter[str] | None = None, **options) -> WebhookNotifier:
    return WebhookNotifier(KEY, SECRET, urls, counters if counters is not None else collections.Counter(), **options)


async def test_events_arrive_verified_and_in_order():
    receiver = Receiver()
    await receiver.start()
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([receiver.url], counters)
    hooks.start()
    room = models.Room(sid="RM_abc", name="stand-up", num_participants=1)
    participant = models.ParticipantInfo(sid="PA_abc", identity="alice", name="Alicé",
                                         state=models.ParticipantInfo.State.ACTIVE)
    track = models.TrackInfo(sid="TR_AMabc", type=models.TrackType.AUDIO, name="microphone")
    try:
        hooks.notify("room_started", room=room)
        hooks.notify("participant_joined", room=room, participant=participant)
        hooks.notify("track_published", room=room, participant=participant, track=track)
        room.name = "changed after notify"  # the event carries the state at notify time
        for n in range(20):
            hooks.notify(f"event_{n}", room=room)
        await until(lambda: len(receiver.events) == 23)
    finally:
        await hooks.close()
        await receiver.stop()
    assert not receiver.errors
    assert receiver.names() == ["room_started", "participant_joined", "track_published"] + [f"event_{n}" for n in range(20)]
    started, joined, published = receiver.events[:3]
    assert started.room.name == "stand-up" and not started.HasField("participant")
    assert joined.participant.identity == "alice" and joined.participant.name == "Alicé"
    assert joined.participant.state == models.ParticipantInfo.State.ACTIVE
    assert published.track.sid == "TR_AMabc" and published.track.type == models.TrackType.AUDIO
    assert receiver.events[3].room.name == "changed after notify"
    ids = [event.id for event in receiver.events]
    assert len(set(ids)) == len(ids) and all(i.startswith("EV_") for i in ids)
    assert all(event.created_at > 1_600_000_000 and event.num_dropped == 0 for event in receiver.events)
    request = receiver.requests[0]
    assert request.headers["Content-Type"] == "application/webhook+json"
    assert request.headers["User-Agent"] == "tern"
    assert not request.headers["Authorization"].startswith("Bearer")
    assert counters == {"webhook_sent": 23}


async def test_receiver_down_at_first_still_gets_the_events_in_order():
    receiver = Receiver()  # its port is chosen but nothing listens yet
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([receiver.url], counters, **FAST)
    hooks.start()
    try:
        for name in ("room_started", "participant_joined", "participant_left"):
            hooks.notify(name, room=models.Room(name="r"))
        await until(lambda: counters["webhook_failed_attempts"] >= 3)  # connection refused, retried
        await receiver.start()
        await until(lambda: len(receiver.events) == 3)
    finally:
        await hooks.close()
        await receiver.stop()
    assert not receiver.errors
    assert receiver.names() == ["room_started", "participant_joined", "participant_left"]
    assert counters["webhook_sent"] == 3 and counters["webhook_dropped"] == 0


async def test_hanging_receiver_does_not_hold_back_a_healthy_one():
    hanging, healthy = HangingReceiver(), Receiver()
    await hanging.start()
    await healthy.start()
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([hanging.url, healthy.url], counters)  # the default 5 s POST timeout
    hooks.start()
    try:
        for n in range(5):
            hooks.notify(f"event_{n}")  # synchronous: returns without waiting for either receiver
        await until(lambda: len(healthy.events) == 5 and hanging.connections == 1)
        assert counters["webhook_sent"] == 5
        await hooks.close(timeout=0.1)  # flush gives up on the hanging receiver
    finally:
        await hanging.stop()
        await healthy.stop()
    assert healthy.names() == [f"event_{n}" for n in range(5)]
    assert counters["webhook_dropped"] == 5  # the hanging receiver's: one in flight, four queued


async def test_full_queue_drops_counts_and_reports_num_dropped():
    receiver = Receiver()
    await receiver.start()
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([receiver.url], counters, queue_size=2)
    try:
        for n in range(5):  # not started yet: nothing drains the queue
            hooks.notify(f"event_{n}")
        assert counters["webhook_dropped"] == 3
        hooks.start()
        await until(lambda: len(receiver.events) == 2)
        hooks.notify("event_5")
        await until(lambda: len(receiver.events) == 3)
    finally:
        await hooks.close()
        await receiver.stop()
    assert receiver.names() == ["event_0", "event_1", "event_5"]
    assert [event.num_dropped for event in receiver.events] == [3, 0, 0]


async def test_failing_receiver_gets_retries_then_the_event_is_dropped():
    receiver = Receiver()
    receiver.status = 503
    await receiver.start()
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([receiver.url], counters, retry_for=0.2, **FAST)
    hooks.start()
    try:
        hooks.notify("lost")
        await until(lambda: counters["webhook_dropped"] == 1)
        assert counters["webhook_failed_attempts"] >= 3 and not receiver.events
        receiver.status = 200
        hooks.notify("after")
        await until(lambda: len(receiver.events) == 1)
    finally:
        await hooks.close()
        await receiver.stop()
    assert receiver.names() == ["after"] and receiver.events[0].num_dropped == 1


async def test_wrong_secret_is_refused_by_the_receiver():
    receiver = Receiver(secret="another-secret-of-at-least-32-chars")
    await receiver.start()
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier([receiver.url], counters, retry_for=0.05, **FAST)
    hooks.start()
    try:
        hooks.notify("room_started")
        await until(lambda: counters["webhook_dropped"] == 1)
    finally:
        await hooks.close()
        await receiver.stop()
    assert not receiver.events and "signature" in receiver.errors[0].lower()


async def test_notify_never_raises_and_close_is_safe_unstarted():
    counters: collections.Counter[str] = collections.Counter()
    hooks = notifier(["http://127.0.0.1:9/"], counters)
    hooks.notify("room_started", room="not a Room")  # a caller's bug: logged and counted
    assert counters["webhook_dropped"] == 1
    await hooks.close()
    hooks.notify("room_finished")  # after close: ignored
    assert counters["webhook_dropped"] == 1


# -- end to end: a tern server process and LiveKit's Python SDK ---------------------------------------------

@pytest.mark.filterwarnings("ignore:The HMAC key")  # the dev key's short secret
async def test_server_sends_room_participant_and_track_events(tmp_path: Path):
    """One server with two webhook URLs: one never answers, the other receives every event. A client joins,
    publishes and unpublishes audio and leaves, unhindered by the hanging receiver; then a bare signal client
    joins another room and leaves without connecting media."""
    hanging, receiver = HangingReceiver(), Receiver(API_KEY, API_SECRET)
    await hanging.start()
    await receiver.start()
    config = (f"webhook:\n  api_key: {API_KEY}\n  urls: [{hanging.url}, {receiver.url}]\n"
              "room: {departure_timeout: 1, empty_timeout: 1}\n")
    server = await asyncio.to_thread(start_server, tmp_path, config=config)
    client = rtc.Room()
    try:
        await asyncio.wait_for(client.connect(server.url, server.token("alice", "hook-room")), 20)
        source = rtc.AudioSource(48000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        publication = await client.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        await until(lambda: "track_published" in receiver.names())
        await client.local_participant.unpublish_track(publication.sid)
        await until(lambda: "track_unpublished" in receiver.names())
        await client.disconnect()
        await until(lambda: "room_finished" in receiver.names(), timeout=20)
        # A participant that signals but never connects media is reported as aborted, not as joined/left.
        signal, _ = await SignalClient.join(server.url, server.token("bob", "aborted-room"))
        await signal.connection.close()
        await until(lambda: "participant_connection_aborted" in receiver.names(), timeout=20)
        assert hanging.connections >= 1
        counters = await asyncio.to_thread(server.counters)  # exported to Prometheus
        assert counters.get("webhook_sent", 0) >= 5 and not counters.get("webhook_dropped"), counters
    finally:
        await client.disconnect()
        await asyncio.to_thread(stop_server, server)
        await hanging.stop()
        await receiver.stop()
    assert not receiver.errors and not any(event.num_dropped for event in receiver.events)
    aborted = [event for event in receiver.events if event.room.name == "aborted-room"]
    assert [event.event for event in aborted][:2] == ["room_started", "participant_connection_aborted"]
    assert aborted[1].participant.identity == "bob"
    receiver.events = [event for event in receiver.events if event.room.name == "hook-room"]
    names = receiver.names()
    assert names[0] == "room_started" and names[-1] == "room_finished", names
    expected = ["participant_joined", "track_published", "track_unpublished", "participant_left"]
    assert [name for name in names if name in expected] == expected, names
    events = {event.event: event for event in receiver.events}
    for name in expected:
        assert events[name].participant.identity == "alice", name
    assert events["track_published"].track.sid == publication.sid
    assert events["track_unpublished"].track.sid == publication.sid
    assert events["participant_joined"].participant.state == models.ParticipantInfo.State.ACTIVE
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.filterwarnings("ignore:The HMAC key")  # the dev key's short secret
async def test_sigterm_closes_rooms_and_drains_webhooks_within_a_bound(tmp_path: Path):
    """SIGTERM with a participant in a room: the answering receiver gets participant_left and room_finished; the
    one that never answers cannot hold the process past the drain time, and what it missed is counted in the log."""
    hanging, receiver = HangingReceiver(), Receiver(API_KEY, API_SECRET)
    await hanging.start()
    await receiver.start()
    config = f"webhook:\n  api_key: {API_KEY}\n  urls: [{hanging.url}, {receiver.url}]\n"
    server = await asyncio.to_thread(start_server, tmp_path, config=config)
    client = rtc.Room()
    try:
        await asyncio.wait_for(client.connect(server.url, server.token("alice", "term-room")), 20)
        await until(lambda: "participant_joined" in receiver.names())
        server.process.send_signal(signal.SIGTERM)
        bound = LEAVE_FLUSH_TIME + GRACEFUL_SHUTDOWN_TIME + SHUTDOWN_DRAIN_TIME + 3  # 3 s for the process to end
        code = await asyncio.to_thread(server.process.wait, bound)  # raises TimeoutExpired past the bound
        assert code in (0, -signal.SIGTERM)
    finally:
        await client.disconnect()
        await asyncio.to_thread(stop_server, server)
        await hanging.stop()
        await receiver.stop()
    names = receiver.names()
    assert names[-2:] == ["participant_left", "room_finished"], names
    assert receiver.events[-2].participant.disconnect_reason == models.DisconnectReason.SERVER_SHUTDOWN
    assert receiver.events[-1].room.name == "term-room" and not receiver.errors
    log = server.log()
    # The hanging receiver's copies of room_started, participant_joined, participant_left and room_finished.
    assert re.search(r"\b[1-9]\d* webhook events not delivered within 2 s of shutdown: dropped", log), log
    assert "Traceback" not in log, log
