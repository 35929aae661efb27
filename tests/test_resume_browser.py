"""Resume with LiveKit's JS SDK in Chromium (tests/test_browser.py's harness): its signal connection reset, it resumes
the same session (SyncState, ICE restarts on its peer connections, two over /rtc or one over /rtc/v1) and a Python
watcher never sees it leave."""
from __future__ import annotations

import asyncio
import os
import subprocess

import pytest
from livekit import api, rtc

from clients import remote, until
from conftest import API_KEY, API_SECRET
from media import decoded_video, wait_for_tracks
from test_browser import (BrowserPeer, _assert_joined_and_subscriber_answered, _assert_joined_over_v1,  # noqa: F401
                          _connect_js, _prerequisites, _python_peer, browser, static_site)


def drop_other_processes_signal(port: int) -> int:
    """Resets every TCP connection to `port` made by another process than this one (the browser's), from its end, as a
    network change does; returns how many."""
    listed = subprocess.run(["ss", "-Htnp", "state", "established", "dport", "=", f":{port}"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    ports = [line.split()[2].rsplit(":", 1)[1] for line in listed if f"pid={os.getpid()}," not in line]
    for local in ports:
        subprocess.run(["ss", "-K", "dport", "=", f":{port}", "sport", "=", f":{local}"], capture_output=True, check=True)
    return len(ports)


@pytest.mark.parametrize("v1", [False, True], ids=["v0", "v1"])
async def test_js_resumes_after_its_signal_connection_resets(server, browser: BrowserPeer, v1: bool):
    room = f"browser-resume-{int(v1)}"
    watcher = await _python_peer(server, "py-watch", room)
    left: list[str] = []
    watcher.on("participant_disconnected", lambda p: left.append(p.identity))
    before = server.counters()
    try:
        joined = await _connect_js(browser, server, "js-blip", room, {"singlePeerConnection": v1})
        await browser.call("publishCameraAndMicrophone")
        video = (await wait_for_tracks(watcher, 2))["video"]
        track_sid = next(p.sid for p in remote(watcher, "js-blip").track_publications.values()
                         if p.kind == rtc.TrackKind.KIND_VIDEO)
        assert len(await decoded_video(video, frames=10)) == 10

        assert drop_other_processes_signal(server.http_port) >= 1
        await until(lambda: browser.capture.responses_of("reconnect"), timeout=15)
        await until(lambda: browser.capture.requests("sync_state"), timeout=5)
        # Media again on the restarted ICE sessions: frames from the browser's camera reach the watcher.
        await asyncio.sleep(2)
        assert len(await decoded_video(video, frames=20, timeout=15)) == 20
        assert left == [] and remote(watcher, "js-blip").sid == joined["participantSid"]
        assert next(p.sid for p in remote(watcher, "js-blip").track_publications.values()
                    if p.kind == rtc.TrackKind.KIND_VIDEO) == track_sid
        async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as lkapi:
            listed = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
        assert sorted(p.sid for p in listed.participants if p.identity == "js-blip") == [joined["participantSid"]]
        if v1:  # one join and one resume on /rtc/v1; the client's offer restarts ICE on its one peer connection
            _assert_joined_over_v1(browser.capture)
            assert len(browser.capture.sockets) == 2
        else:  # one join; the restart offer answered by its id
            _assert_joined_and_subscriber_answered(browser.capture)
        counters = server.counters()
        assert counters["signal_resumed"] == before.get("signal_resumed", 0) + 1, counters
        assert counters["ice_restarts"] == before.get("ice_restarts", 0) + (1 if v1 else 2), counters
        assert not await browser.page.evaluate("window.tern.state.errors")
    finally:
        await watcher.disconnect()
