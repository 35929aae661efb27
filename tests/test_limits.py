"""Hostile clients against a real server: requests that would make it hold unbounded state are refused past a
documented limit (signaling/rtc/limits.py), the server's memory stays put and a live room keeps its media.

WebSocket messages are capped (v0.MAX_SIGNAL_MESSAGE, 640 KiB), so the floods that need more ("a million sids",
"100k permission entries") are sent as many messages, each well under that cap."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
from pathlib import Path

import pytest
from livekit import api, rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from conftest import API_KEY, API_SECRET
from media import Publisher, decoded_video, matches_card, wait_for_tracks
from signal_client import SignalClient

from signaling.protocol import v0
from signaling.rtc import limits

ROOM = "limits-room"
RSS_BUDGET = 50 * 1024 * 1024  # what the whole hostile run may add to the server's resident memory
MESSAGE_BUDGET = 200 * 1024  # bytes per hostile message, under the WebSocket message cap
assert MESSAGE_BUDGET < v0.MAX_SIGNAL_MESSAGE


def rss(pid: int) -> int:
    """The process's resident set size in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def token(identity: str, room: str = ROOM, name: str | None = None, **grants: object) -> str:
    return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(name or identity) \
        .with_grants(api.VideoGrants(room_join=True, room=room, **grants)).to_jwt()


class Collector:
    """Reads everything a hostile signal client is sent, so the server never sees a slow reader here."""

    def __init__(self, client: SignalClient) -> None:
        self.client = client
        self.responses: list[signal.SignalResponse] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.client.connection:
                self.responses.append(signal.SignalResponse.FromString(message))
        except ConnectionClosed:
            pass

    def of(self, kind: str) -> list:
        return [getattr(r, kind) for r in self.responses if r.WhichOneof("message") == kind]

    async def until(self, predicate, timeout: float = 20) -> None:
        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        await self.client.connection.close()
        self.task.cancel()


def random_sids(count: int) -> list[str]:
    return [f"TR_{random.getrandbits(64):016x}"[:15] for _ in range(count)]


async def flood_sids(client: SignalClient, total: int) -> int:
    """`total` random sids in UpdateTrackSettings and as many in UpdateSubscription, in messages under the cap.
    Returns how many messages that took."""
    per_message = MESSAGE_BUDGET // 18  # 15-byte sid + protobuf framing
    messages = 0
    for start in range(0, total, per_message):
        sids = random_sids(min(per_message, total - start))
        settings = signal.SignalRequest(track_setting=signal.UpdateTrackSettings(track_sids=sids, disabled=True))
        subscription = signal.SignalRequest(subscription=signal.UpdateSubscription(track_sids=sids, subscribe=True))
        assert settings.ByteSize() <= MESSAGE_BUDGET and subscription.ByteSize() <= MESSAGE_BUDGET
        await client.send(settings)
        await client.send(subscription)
        messages += 2
    return messages


async def flood_permissions(client: SignalClient, total: int) -> int:
    """SubscriptionPermission lists adding up to `total` entries, each list as long as fits one message."""
    entry = signal.TrackPermission(participant_identity="user-000000", all_tracks=True)
    per_message = MESSAGE_BUDGET // (entry.ByteSize() + 3)
    messages = 0
    for start in range(0, total, per_message):
        count = min(per_message, total - start)
        permission = signal.SubscriptionPermission(track_permissions=[
            signal.TrackPermission(participant_identity=f"user-{start + i:06d}", all_tracks=True)
            for i in range(count)])
        assert permission.ByteSize() <= MESSAGE_BUDGET
        await client.send(signal.SignalRequest(subscription_permission=permission))
        messages += 1
    return messages


async def refused_at_join(server, jwt: str) -> str:
    """How the server refuses a join with this token before the upgrade: the HTTP status, or the connection's end."""
    try:
        async with connect(f"{server.url}/rtc?protocol=16", additional_headers={"Authorization": f"Bearer {jwt}"},
                           open_timeout=10):
            return "accepted"
    except InvalidStatus as error:
        return f"HTTP {error.response.status_code}"
    except (InvalidHandshake, ConnectionClosed, OSError) as error:
        return f"closed ({type(error).__name__})"


async def test_hostile_requests_are_refused_and_the_room_keeps_its_media(server):
    publisher_room = rtc.Room()
    await publisher_room.connect(server.url, server.token("victim-pub", ROOM))
    publisher = Publisher(publisher_room)
    subscriber_room = rtc.Room()
    await subscriber_room.connect(server.url, server.token("victim-sub", ROOM))
    hostile: Collector | None = None
    try:
        await publisher.start()
        tracks = await wait_for_tracks(subscriber_room, 2)
        assert any(matches_card(f) for f in await decoded_video(tracks["video"], frames=10))
        baseline = rss(server.process.pid)
        before = server.counters()

        client, _ = await SignalClient.join(server.url, token("hostile", can_update_own_metadata=True))
        hostile = Collector(client)

        # 5,000 AddTrack requests: LiveKit's 20 pending, the rest LIMIT_EXCEEDED.
        for index in range(5000):
            await client.send(signal.SignalRequest(add_track=signal.AddTrackRequest(
                cid=f"cid-{index}", name="t", type=models.TrackType.AUDIO, source=models.TrackSource.MICROPHONE)))
        await hostile.until(lambda: len(hostile.of("track_published")) + len(hostile.of("request_response")) >= 5000)
        refusals = [r.reason for r in hostile.of("request_response")]
        assert len(hostile.of("track_published")) == limits.MAX_PENDING_TRACKS
        assert refusals == [signal.RequestResponse.Reason.LIMIT_EXCEEDED] * (5000 - limits.MAX_PENDING_TRACKS)

        # A million random sids in each of UpdateTrackSettings and UpdateSubscription, then 100,000 subscription
        # permission entries (as lists of the largest length that fits one message, each past the limit).
        await flood_sids(client, 1_000_000)
        permission_messages = await flood_permissions(client, 100_000)
        # The server has handled everything once it answers a ping sent after it.
        await client.send(signal.SignalRequest(ping_req=signal.Ping(timestamp=42)))
        await hostile.until(lambda: any(p.last_ping_timestamp == 42 for p in hostile.of("pong_resp")), timeout=60)
        after = server.counters()
        assert after["unknown_track_sids"] - before.get("unknown_track_sids", 0) == 2_000_000
        assert after["subscription_permission_limit_exceeded"] \
            - before.get("subscription_permission_limit_exceeded", 0) == permission_messages

        # A name past 256 bytes, and one of 5 MiB, in the participant's own update: refused, never shown.
        answered = len(hostile.of("request_response"))
        await client.send(signal.SignalRequest(update_metadata=signal.UpdateParticipantMetadata(
            name="n" * 300, request_id=7)))
        await hostile.until(lambda: len(hostile.of("request_response")) > answered)
        last = hostile.of("request_response")[-1]
        assert (last.request_id, last.reason) == (7, signal.RequestResponse.Reason.LIMIT_EXCEEDED)
        huge = signal.SignalRequest(update_metadata=signal.UpdateParticipantMetadata(
            name="n" * (5 * 1024 * 1024), request_id=8))
        with contextlib.suppress(ConnectionClosed):
            await client.send(huge)  # past the WebSocket message cap: the connection is closed (1009)
        await hostile.until(lambda: hostile.task.done())
        assert server.counters()["signal_message_too_big"] == before.get("signal_message_too_big", 0) + 1
        names = {p.identity: p.name for p in subscriber_room.remote_participants.values()}
        assert names.get("hostile", "hostile") == "hostile"

        # Join tokens past the limits: a 5 MiB name does not get through; a 300-byte one gets LiveKit's 400.
        assert await refused_at_join(server, token("big-name", name="n" * (5 * 1024 * 1024))) != "accepted"
        assert await refused_at_join(server, token("long-name", name="n" * 300)) == "HTTP 400"
        assert await refused_at_join(server, token("i" * 300)) == "HTTP 400"

        growth = rss(server.process.pid) - baseline
        assert growth < RSS_BUDGET, f"server RSS grew {growth / 2**20:.1f} MiB"

        # The room's media went on, and a newcomer still subscribes and decodes it.
        assert any(matches_card(f) for f in (await decoded_video(tracks["video"], frames=30))[-10:])
        late_room = rtc.Room()
        await late_room.connect(server.url, server.token("late", ROOM))
        try:
            late_tracks = await wait_for_tracks(late_room, 2)
            assert any(matches_card(f) for f in await decoded_video(late_tracks["video"], frames=10))
        finally:
            await late_room.disconnect()
    finally:
        if hostile is not None:
            await hostile.close()
        await publisher.stop()
        await publisher_room.disconnect()
        await subscriber_room.disconnect()


async def test_a_client_that_stops_reading_is_dropped(server):
    """It keeps sending metadata updates (each answered by a large ParticipantUpdate) but reads nothing: once its
    socket buffers and its outbox are full, the server drops it instead of queueing more."""
    before = server.counters()
    baseline = rss(server.process.pid)
    client, _ = await SignalClient.join(server.url, token("sloth", room="slow-room", can_update_own_metadata=True))
    client.connection.recv_messages.resume = lambda: None  # websockets would resume reading on its own
    client.connection.transport.pause_reading()  # the kernel's buffers fill, then the server's
    updates = 400
    metadata_size = 128 * 1024  # random, so that permessage-deflate does not shrink it

    async def send_updates() -> None:  # 50 MiB of updates to a client that reads none of them
        for index in range(updates):
            await client.send(signal.SignalRequest(update_metadata=signal.UpdateParticipantMetadata(
                metadata=base64.b64encode(os.urandom(metadata_size * 3 // 4)).decode(), request_id=index + 1)))

    async def dropped() -> None:
        while server.counters().get("signal_outbox_overflow", 0) <= before.get("signal_outbox_overflow", 0):
            await asyncio.sleep(0.1)

    # Once dropped, the server stops reading too, so the sender may block: it is stopped then.
    sender = asyncio.create_task(send_updates())
    await asyncio.wait_for(dropped(), 30)
    sender.cancel()
    async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as service:  # it has left the room
        listed = await service.room.list_participants(api.ListParticipantsRequest(room="slow-room"))
    assert [p.identity for p in listed.participants] == []
    growth = rss(server.process.pid) - baseline
    assert growth < RSS_BUDGET, f"server RSS grew {growth / 2**20:.1f} MiB"
    # Reading again, the client gets what was already on its way (not the 800 answers), then the connection ends.
    client.connection.recv_messages.resume = client.connection.transport.resume_reading
    client.connection.transport.resume_reading()
    received = 0
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(client.connection.recv(), 10)
            received += 1
    assert received < updates
