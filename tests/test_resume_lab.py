"""Resume on a real network (tests/netlab.py): a LiveKit Python SDK publisher inside a namespace loses its link while a
subscriber on the host watches. A blip is resumed unseen; a client whose participant was removed meanwhile rejoins."""
from __future__ import annotations

import asyncio
import time

from livekit import api, rtc

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET

ROOM = "blip"
CUT_S = 3.0  # the link cut
MEDIA_BACK_S = 5.0  # the "media flows again within 5 s"


class FrameClock:
    """Decodes a remote video track and keeps the time of every frame."""

    def __init__(self, track: rtc.RemoteTrack) -> None:
        self.times: list[float] = []
        self._stream = rtc.VideoStream(track)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for _ in self._stream:
            self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start < t <= end)

    async def close(self) -> None:
        self._task.cancel()
        await self._stream.aclose()


def video_of(room: rtc.Room, identity: str) -> rtc.RemoteTrackPublication | None:
    participant = remote(room, identity)
    return next((p for p in participant.track_publications.values()
                 if p.kind == rtc.TrackKind.KIND_VIDEO and p.track is not None), None) if participant else None


async def participant_sids(server, identity: str) -> list[str]:
    """What RoomService lists for `identity` in the room."""
    async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as lkapi:
        listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
    return [p.sid for p in listed.participants if p.identity == identity]


class Call:
    """A watcher on the host and the lab publisher (tests/lab_publisher.py) inside the namespace, its video decoded."""

    def __init__(self, lab, server, seconds: float) -> None:
        """`seconds`: the publisher's time in the call after publishing, enough for the scenario and its checks."""
        self.lab, self.server, self.seconds = lab, server, seconds
        self.left: list[str] = []
        self.joined: list[str] = []
        self.data: list[float] = []  # when the publisher's data messages arrived

    async def __aenter__(self) -> Call:
        self.watcher = await connect(self.server, "watcher", ROOM)
        self.watcher.on("participant_disconnected", lambda p: self.left.append(p.identity))
        self.watcher.on("participant_connected", lambda p: self.joined.append(p.identity))
        self.watcher.on("data_received", lambda packet: self.data.append(time.monotonic()))
        self.run = asyncio.create_task(self.lab.run_client(
            "--url", self.server.url, "--token", self.server.token("blipper", ROOM), "--seconds", str(self.seconds),
            script="lab_publisher.py", timeout=self.seconds + 10))
        self.clock: FrameClock | None = None
        try:
            await until(lambda: video_of(self.watcher, "blipper") or self.run.done(), timeout=20)
            self.publication = video_of(self.watcher, "blipper")
            assert self.publication is not None, await self.run
            self.clock = FrameClock(self.publication.track)
            await until(lambda: len(self.clock.times) >= 30, timeout=10)
            self.joined.clear()  # from here on, what the watcher hears is the test's
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.clock is not None:
            await self.clock.close()
        self.run.cancel()
        await self.watcher.disconnect()


async def test_a_publisher_whose_link_drops_resumes_unseen(lab_server) -> None:
    """Its link down for 3 s, then (a network change) its signal connection reset: the SDK resumes; the watcher never
    sees it leave, its participant and track keep their sids, frames flow again within 5 s and keep flowing, and so
    does its data."""
    lab, server = lab_server
    async with Call(lab, server, seconds=16) as call:
        sid = (await participant_sids(server, "blipper"))[0]
        lab.set_link(False)
        await asyncio.sleep(CUT_S)
        lab.set_link(True)
        restored = time.monotonic()
        lab.drop_tcp(server.http_port)
        await until(lambda: server.counters().get("signal_resumed") == 1, timeout=MEDIA_BACK_S)
        resumed = time.monotonic()
        await asyncio.sleep(MEDIA_BACK_S)
        back = call.clock.between(restored, restored + MEDIA_BACK_S)
        after_resume = call.clock.between(resumed + 2, resumed + MEDIA_BACK_S)
        counters = server.counters()
        print(f"frames: {back} in the {MEDIA_BACK_S:.0f} s after the link came back, {after_resume} in the last "
              f"{MEDIA_BACK_S - 2:.0f} s; server: { {k: v for k, v in counters.items() if 'ice' in k or 'signal' in k} }")
        assert back >= 30 and after_resume >= 30
        assert sum(1 for t in call.data if t > resumed + 2) >= 4  # data channels survive too (one message per 0.5 s)
        assert call.left == [] and call.joined == []
        assert video_of(call.watcher, "blipper").sid == call.publication.sid
        assert await participant_sids(server, "blipper") == [sid]
        # The SDK joins over /rtc/v1: one peer connection, restarted by the client's offer.
        assert counters["signal_connections_v1"] == 3 and counters["ice_restarts"] == 1
        assert counters.get("signal_resume_refused", 0) == 0
        result = await call.run
    print(f"publisher: {result}")
    assert result["sid"] == result["sid_at_end"] == sid and result["tracks"] == result["tracks_at_end"]
    events = [name for _, name in result["events"]]
    assert "reconnected" in events and "disconnected" not in events and result["state"] == "CONN_CONNECTED"


async def test_a_client_removed_while_away_is_told_to_rejoin_and_does(lab_server) -> None:
    """While its link is down the server loses its signal connection and RoomService removes it: when it comes back,
    its resume gets leave{RECONNECT}, and the SDK joins again as a new participant with its tracks."""
    lab, server = lab_server
    async with Call(lab, server, seconds=13) as call:
        sid = (await participant_sids(server, "blipper"))[0]
        lab.set_link(False)
        lab.drop_tcp(server.http_port, server_side=True)
        await until(lambda: server.counters().get("signal_lost") == 1, timeout=5)
        assert call.left == []  # waiting for the client to resume: the watcher sees nothing yet
        async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as lkapi:
            await lkapi.room.remove_participant(api.RoomParticipantIdentity(room=ROOM, identity="blipper"))
        await until(lambda: call.left == ["blipper"], timeout=5)
        lab.set_link(True)
        lab.drop_tcp(server.http_port)
        await until(lambda: remote(call.watcher, "blipper") is not None and video_of(call.watcher, "blipper"),
                    timeout=15)
        rejoined = await participant_sids(server, "blipper")
        assert len(rejoined) == 1 and rejoined[0] != sid
        assert video_of(call.watcher, "blipper").sid != call.publication.sid
        assert server.counters()["signal_resume_refused"] == 1
        result = await call.run
    print(f"publisher: {result}")
    assert result["sid"] == sid and result["sid_at_end"] == rejoined[0] and result["state"] == "CONN_CONNECTED"
