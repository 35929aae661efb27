"""LiveKit's JS SDK (livekit-client in headless Chromium) against tern, with a Python SDK peer in the same room.

Needs /usr/bin/chromium, `npm ci --prefix tests/browser` and Playwright for Python (driving the system Chromium;
never `playwright install`). Without them the tests skip locally; under CI (env CI set) they fail instead.
"""
from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.protocol import rtc as signal

from conftest import start_server, stop_server
from media import Publisher, decoded_audio, decoded_video, wait_for_tracks

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
LIVEKIT_BUNDLE = BROWSER_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.umd.js"
CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
    "--no-sandbox", "--headless=new", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # remote audio elements play without a click
]


def _missing_prerequisites() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not LIVEKIT_BUNDLE.exists():
        missing.append(f"{LIVEKIT_BUNDLE.relative_to(BROWSER_DIR.parent.parent)} (npm ci --prefix tests/browser)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    return missing


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    missing = _missing_prerequisites()
    if missing and os.environ.get("CI"):
        pytest.fail("browser tests must run under CI but these are missing: " + ", ".join(missing))
    if missing:
        pytest.skip("browser tests need " + ", ".join(missing))


@contextmanager
def _static_site(host: str = "127.0.0.1") -> Iterator[str]:
    """Serves tests/browser (page, script, node_modules) over HTTP on `host`; the page must not come from file://."""

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), functools.partial(QuietHandler, directory=str(BROWSER_DIR)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def static_site() -> Iterator[str]:
    with _static_site() as site:
        yield site


@dataclass
class SignalCapture:
    """What the page put on the wire to the server: WebSocket URLs, HTTP responses, decoded signal messages."""
    sockets: list[str] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)
    sent: list[signal.SignalRequest] = field(default_factory=list)
    received: list[signal.SignalResponse] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def requests(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.sent if m.WhichOneof("message") == kind]

    def responses_of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.received if m.WhichOneof("message") == kind]

    def attach(self, page: Any) -> None:
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        page.on("response", lambda response: self.responses.append((response.url, response.status)))
        page.on("websocket", self._on_websocket)

    def _on_websocket(self, socket: Any) -> None:
        self.sockets.append(socket.url)
        socket.on("framesent", lambda payload: self._decode(payload, signal.SignalRequest, self.sent))
        socket.on("framereceived", lambda payload: self._decode(payload, signal.SignalResponse, self.received))

    @staticmethod
    def _decode(payload: bytes | str, message_type: type, into: list) -> None:
        if isinstance(payload, bytes):
            into.append(message_type.FromString(payload))

    def tail(self, lines: int = 40, width: int = 300) -> str:
        return "\n".join(line[:width] for line in self.console[-lines:])


@dataclass
class BrowserPeer:
    page: Any
    capture: SignalCapture

    async def call(self, expression: str, *args: Any) -> Any:
        """Calls `window.tern.<expression>` with JSON arguments."""
        return await self.page.evaluate(f"(args) => window.tern.{expression}(...args)", list(args))

    def diagnostics(self, server) -> str:
        return f"browser console:\n{self.capture.tail()}\nserver log (end):\n{server.log()[-3000:]}"


@asynccontextmanager
async def _browser_at(site: str, executable: Path = CHROMIUM) -> AsyncIterator[BrowserPeer]:
    """Chromium (`executable`: the system one, or a wrapper that starts it elsewhere) on tests/browser's page."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            page = await chromium.new_page()
            capture = SignalCapture()
            capture.attach(page)
            await page.goto(f"{site}/index.html")
            await page.wait_for_function("window.tern !== undefined", timeout=10_000)
            peer = BrowserPeer(page, capture)
            yield peer
            await peer.call("disconnect")
        finally:
            await chromium.close()


@pytest.fixture
async def browser(static_site: str) -> AsyncIterator[BrowserPeer]:
    async with _browser_at(static_site) as peer:
        yield peer


@pytest.fixture
async def browsers(static_site: str) -> AsyncIterator[tuple[BrowserPeer, BrowserPeer]]:
    """Two Chromiums on the page (a publisher and a subscriber)."""
    async with _browser_at(static_site) as first, _browser_at(static_site) as second:
        yield first, second


async def _inbound(browser: BrowserPeer, kind: str) -> dict:
    """The inbound-rtp stats of the browser's first remote track of `kind` ("audio" or "video"), zeros before one."""
    stats = await browser.call("inboundStats")
    return next((s for s in stats if s["kind"] == kind), {
        "framesDecoded": 0, "frameWidth": 0, "frameHeight": 0, "totalSamplesReceived": 0, "totalAudioEnergy": 0,
        "concealedSamples": 0, "totalFreezesDuration": 0})


async def _poll(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value}")
        await asyncio.sleep(0.2)


async def _python_peer(server, identity: str, room: str) -> rtc.Room:
    client = rtc.Room()
    await client.connect(server.url, server.token(identity, room))
    return client


def _assert_joined_over_v1(capture: SignalCapture) -> None:
    """The JS SDK joined on /rtc/v1 at the first try: no fallback, no validate round trip, no server offer."""
    assert capture.sockets and all("/rtc/v1?" in url for url in capture.sockets), capture.sockets
    assert not [url for url, _ in capture.responses if "/validate" in url], capture.responses
    assert not capture.responses_of("offer")


def _assert_joined_and_subscriber_answered(capture: SignalCapture) -> None:
    """The JoinResponse fields the JS SDK needs; it answered each subscriber offer with the offer's id."""
    joins = capture.responses_of("join")
    assert len(joins) == 1
    join = joins[0]
    assert join.server_info.version and join.participant.sid.startswith("PA_")
    assert join.participant.permission.can_publish and join.participant.permission.can_subscribe
    server_offers = [offer.id for offer in capture.responses_of("offer")]
    client_answers = [answer.id for answer in capture.requests("answer")]
    assert server_offers and set(server_offers) <= set(client_answers), (server_offers, client_answers)


def _assert_publisher_offers_answered(capture: SignalCapture) -> None:
    """The server echoes the id of each publisher offer: JS ignores other answers and its publish times out."""
    client_offers = [offer.id for offer in capture.requests("offer")]
    server_answers = [answer.id for answer in capture.responses_of("answer")]
    assert client_offers and all(offer_id > 0 for offer_id in client_offers), client_offers
    assert set(client_offers) <= set(server_answers), (client_offers, server_answers)


MIME_TYPE_FIX = (
    "tern's TrackPublishedResponse lists codecs[].mime_type as the bare AddTrackRequest codec ('vp8'); the JS SDK "
    "splits it on '/' and publishing throws \"Cannot read properties of undefined (reading 'toLowerCase')\". Fix in "
    "signaling/room.py TrackPublication.__init__: add codecs with mime_type f'{self.kind}/{codec.codec}' unless "
    "codec.codec already contains '/', as LiveKit's server does"
)


def _bare_codec_mime_types(capture: SignalCapture) -> list[str]:
    return [codec.mime_type for published in capture.responses_of("track_published")
            for codec in published.track.codecs if "/" not in codec.mime_type]


async def _connect_js(browser: BrowserPeer, server, identity: str, room: str, options: dict | None = None) -> dict:
    try:
        return await browser.call("connect", server.url, server.token(identity, room), options or {})
    except Exception as error:
        raise AssertionError(f"JS SDK failed to connect: {error}\n{browser.diagnostics(server)}") from error


async def _camera_to_viewer(server, browsers: tuple[BrowserPeer, BrowserPeer], room: str,
                            publish_options: dict) -> Callable[[], Awaitable[dict]]:
    """The first browser publishes its 1280 x 720 camera with `publish_options` (TrackPublishOptions) to the second
    (without adaptive stream, so it asks for layers only when told); returns, once the viewer decodes, the probe of
    the viewer's video stats."""
    publisher, viewer = browsers
    await _connect_js(viewer, server, "viewer", room, {"adaptiveStream": False, "dynacast": True})
    await _connect_js(publisher, server, "camera", room, {"dynacast": True})
    try:
        await publisher.call("publishCamera", {"resolution": {"width": 1280, "height": 720}},
                             {"degradationPreference": "maintain-resolution", **publish_options})
    except Exception as error:
        raise AssertionError(f"publishing failed: {error}\n{publisher.diagnostics(server)}") from error
    video = functools.partial(_inbound, viewer, "video")
    await _poll(video, lambda s: s["framesDecoded"] > 10, 20, f"the viewer to decode {publish_options}")
    return video


async def test_js_joins_over_v1_and_exchanges_media_and_data(server, browser: BrowserPeer):
    """The JS SDK's default (one peer connection, /rtc/v1): it joins at once, plays the Python peer's test card and
    tone, publishes its camera and microphone into the same peer connection, and data goes both ways."""
    room = "browser-v1"
    python_room = await _python_peer(server, "py-v1", room)
    publisher = Publisher(python_room)
    received: asyncio.Queue[rtc.DataPacket] = asyncio.Queue()
    python_room.on("data_received", received.put_nowait)
    transports = server.counters().get("transports_created", 0)
    try:
        await publisher.start()
        try:
            joined = await browser.call("connect", server.url, server.token("js-v1", room), {})
        except Exception as error:
            raise AssertionError(f"JS SDK failed to connect: {error}\n{browser.diagnostics(server)}") from error
        assert joined["serverVersion"] and joined["canPublish"] is True and "py-v1" in joined["remoteIdentities"]

        def decoded_both(stats: list[dict]) -> bool:
            video = [s for s in stats if s["kind"] == "video" and s["participant"] == "py-v1"]
            audio = [s for s in stats if s["kind"] == "audio" and s["participant"] == "py-v1"]
            return (bool(video) and video[0]["framesDecoded"] > 10
                    and bool(audio) and audio[0]["totalSamplesReceived"] > 24000)

        stats = await _poll(lambda: browser.call("inboundStats"), decoded_both, 20, "the browser to decode both tracks")
        audio = next(s for s in stats if s["kind"] == "audio")
        assert audio["totalAudioEnergy"] > 0, audio

        published = await browser.call("publishCameraAndMicrophone")
        assert {p["kind"] for p in published} == {"audio", "video"}
        _assert_publisher_offers_answered(browser.capture)
        tracks = await wait_for_tracks(python_room, 2)
        frames = await decoded_video(tracks["video"], frames=10)
        assert all(f.width >= 160 and f.height >= 90 for f in frames)

        await browser.call("publishData", "hello from js", "greetings")
        packet = await asyncio.wait_for(received.get(), 15)
        assert packet.data == b"hello from js" and packet.participant.identity == "js-v1"
        await python_room.local_participant.publish_data(b"hello from python", reliable=True, topic="greetings")
        data = await _poll(lambda: browser.page.evaluate("window.tern.state.data"), bool, 15, "data in the browser")
        assert data == [{"text": "hello from python", "participant": "py-v1", "topic": "greetings", "kind": 0}]

        _assert_joined_over_v1(browser.capture)
        assert server.counters()["transports_created"] == transports + 1  # the browser's one peer connection
        assert any(a.mid_to_track_id for a in browser.capture.responses_of("answer"))
        errors = await browser.page.evaluate("window.tern.state.errors")
        assert not errors, errors
    finally:
        await publisher.stop()
        await python_room.disconnect()


async def test_js_and_python_exchange_media(server, browser: BrowserPeer):
    room = "browser-media"
    python_room = await _python_peer(server, "py-media", room)
    publisher = Publisher(python_room)
    try:
        await publisher.start()
        # Straight to /rtc (v0): test_js_falls_back_from_v1_to_v0 covers the way there from the default /rtc/v1.
        joined = await _connect_js(browser, server, "js-media", room, {"singlePeerConnection": False})
        assert joined["serverVersion"]
        assert joined["canPublish"] is True and joined["canSubscribe"] is True
        assert "py-media" in joined["remoteIdentities"]

        # The browser decodes the Python test card and tone (inbound-rtp of each subscribed track's receiver).
        def decoded_both(stats: list[dict]) -> bool:
            video = [s for s in stats if s["kind"] == "video" and s["participant"] == "py-media"]
            audio = [s for s in stats if s["kind"] == "audio" and s["participant"] == "py-media"]
            return (bool(video) and video[0]["framesDecoded"] > 10
                    and bool(audio) and audio[0]["totalSamplesReceived"] > 24000)

        stats = await _poll(lambda: browser.call("inboundStats"), decoded_both, 20, "the browser to decode both tracks")
        video = next(s for s in stats if s["kind"] == "video")
        audio = next(s for s in stats if s["kind"] == "audio")
        assert video["frameWidth"] >= 160 and video["frameHeight"] >= 90, video
        assert audio["concealedSamples"] < audio["totalSamplesReceived"] / 2, audio  # mostly real audio, not concealment
        assert audio["totalAudioEnergy"] > 0, audio
        _assert_joined_and_subscriber_answered(browser.capture)

        try:
            published = await browser.call("publishCameraAndMicrophone")
        except Exception as error:
            diagnosis = MIME_TYPE_FIX + "\n" if _bare_codec_mime_types(browser.capture) else ""
            raise AssertionError(f"{diagnosis}JS SDK failed to publish: {error}\n{browser.diagnostics(server)}") from error
        assert {p["kind"] for p in published} == {"audio", "video"}
        assert all(p["trackSid"].startswith("TR_") for p in published), published
        _assert_publisher_offers_answered(browser.capture)
        # Chromium's send-side estimator runs on our transport-cc feedback: it probes past its 300 kbps start,
        # and no REMB from us caps it.
        await _poll(lambda: browser.call("publisherEstimate"), lambda bps: bps > 600_000, 15,
                    "Chromium's send-side estimate to rise on our TWCC feedback")
        counters = server.counters()
        assert counters["twcc_feedback_sent"] > 0 and counters["remb_sent"] == 0, counters

        # Python receives Chromium's fake camera (a moving pattern) and fake microphone (beeps).
        tracks = await wait_for_tracks(python_room, 2)
        frames = await decoded_video(tracks["video"], frames=10)
        assert all(f.width >= 160 and f.height >= 90 for f in frames), [(f.width, f.height) for f in frames]
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert np.sqrt(np.mean(samples ** 2)) > 0
        errors = await browser.page.evaluate("window.tern.state.errors")
        assert not errors, errors
    finally:
        await publisher.stop()
        await python_room.disconnect()


async def test_js_and_python_exchange_data(server, browser: BrowserPeer):
    room = "browser-data"
    python_room = await _python_peer(server, "py-data", room)
    received: asyncio.Queue[rtc.DataPacket] = asyncio.Queue()
    python_room.on("data_received", received.put_nowait)
    try:
        await _connect_js(browser, server, "js-data", room, {"singlePeerConnection": False})

        await browser.call("publishData", "hello from js", "greetings")
        packet = await asyncio.wait_for(received.get(), 15)
        assert packet.data == b"hello from js"
        assert packet.participant is not None and packet.participant.identity == "js-data"
        assert packet.topic == "greetings"

        await python_room.local_participant.publish_data(b"hello from python", reliable=True, topic="greetings")
        data = await _poll(lambda: browser.page.evaluate("window.tern.state.data"), bool, 15, "data in the browser")
        assert data == [{"text": "hello from python", "participant": "py-data", "topic": "greetings", "kind": 0}]
    finally:
        await python_room.disconnect()


async def test_js_disabling_a_video_pauses_it_and_enabling_resumes_it(server, browser: BrowserPeer):
    room = "browser-disable"
    python_room = await _python_peer(server, "py-camera", room)
    publisher = Publisher(python_room, tone=False)
    try:
        await publisher.start()
        await _connect_js(browser, server, "js-viewer", room, {"singlePeerConnection": False, "adaptiveStream": False})

        async def video() -> dict:
            stats = await browser.call("inboundStats")
            return next((s for s in stats if s["kind"] == "video"), {"packetsReceived": 0, "framesDecoded": 0})

        await _poll(video, lambda s: s["framesDecoded"] > 10, 20, "the browser to decode video")
        await browser.call("setVideoEnabled", False)
        await asyncio.sleep(1)
        paused = await video()
        await asyncio.sleep(1.5)
        assert (await video())["packetsReceived"] == paused["packetsReceived"]  # the server forwards nothing
        assert server.counters().get("paused_skipped", 0) > 0

        await browser.call("setVideoEnabled", True)  # resumes from a keyframe the server asks the publisher for
        await _poll(video, lambda s: s["framesDecoded"] > paused["framesDecoded"] + 10, 15, "decoding to resume")
    finally:
        await publisher.stop()
        await python_room.disconnect()


async def test_chromium_answers_our_consent_checks(tmp_path, monkeypatch, browser: BrowserPeer):
    """Chromium (a full ICE agent) answers the server's RFC 7675 consent checks on both peer connections, so a
    participant that is there keeps its media path past the consent timeout."""
    monkeypatch.setenv("TERN_ICE_CONSENT_TIMEOUT", "7")
    server = start_server(tmp_path)
    try:
        await _connect_js(browser, server, "js-consent", "browser-consent", {"singlePeerConnection": False})
        await browser.call("publishCameraAndMicrophone")  # the publisher PC connects too
        await asyncio.sleep(11)  # past the 7 s consent timeout
        # each PC's checks come every 4-6 s (randomised), the publisher PC's from a little later: 3 renewals by now,
        # or a few seconds on (a clean-clone CI once read 2 at 11 s)
        deadline = time.monotonic() + 6
        while server.counters().get("ice_consent_renewed", 0) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        counters = server.counters()
        assert counters.get("ice_consent_expired", 0) == 0
        assert counters.get("ice_consent_renewed", 0) >= 3
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()


async def test_js_behind_a_udp_blocking_firewall_plays_over_ice_tcp(lab_server, tmp_path: Path):
    """Chromium inside a network namespace whose UDP is blocked (tests/netlab.py) joins with the JS SDK and plays a
    Python peer's test card and tone over ICE-TCP."""
    lab, server = lab_server
    lab.block_udp()
    in_lab = tmp_path / "chromium-in-lab"
    in_lab.write_text(f'#!/bin/sh\nexec ip netns exec {lab.namespace} {CHROMIUM} "$@"\n')
    in_lab.chmod(0o755)
    room = "browser-ice-tcp"
    python_room = await _python_peer(server, "py-tcp", room)
    publisher = Publisher(python_room)
    try:
        await publisher.start()
        with _static_site(lab.host_ip) as site:
            async with _browser_at(site, in_lab) as browser:
                await _connect_js(browser, server, "js-tcp", room)

                def decoded_both(stats: list[dict]) -> bool:
                    video = [s for s in stats if s["kind"] == "video"]
                    audio = [s for s in stats if s["kind"] == "audio"]
                    return (bool(video) and video[0]["framesDecoded"] > 10
                            and bool(audio) and audio[0]["totalAudioEnergy"] > 0)

                await _poll(lambda: browser.call("inboundStats"), decoded_both, 30, "the browser to play both tracks")
                pair = await browser.call("selectedPair")
                assert pair == {"local": "tcp", "remote": "tcp", "remotePort": server.tcp_port}, pair
    finally:
        await publisher.stop()
        await python_room.disconnect()
