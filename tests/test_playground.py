"""The development playground (signaling/playground): `GET /` in `tern --dev` is a call page. Two tabs of it in
Chromium (fake camera and microphone in one, no devices in the other) see, hear and chat with each other.

LiveKit's JS SDK is the page's one outside script, from a CDN: the tests answer its URL from tests/browser's npm copy
(the browser still checks the page's integrity hash against it), so they need no internet. Screenshots go to
tests/artifacts/ (git-ignored), for CI to keep as an artifact."""
from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import start_server, stop_server
from test_browser import BROWSER_DIR, CHROMIUM, CHROMIUM_ARGS, SignalCapture, _poll, _prerequisites  # noqa: F401

from signaling.config import Config
from signaling.playground import STATIC_DIR, _loopback_host, refusal

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
INDEX = (STATIC_DIR / "index.html").read_text()
SDK_SCRIPT = re.search(r'<script src="(https://[^"]+)"\s+integrity="([^"]+)"', INDEX)
SDK_URL, SDK_INTEGRITY = SDK_SCRIPT.group(1), SDK_SCRIPT.group(2)
# The CDN serves the npm package's files under https://cdn.jsdelivr.net/npm/livekit-client@VERSION/.
SDK_PACKAGE = re.match(r"https://cdn\.jsdelivr\.net/npm/livekit-client@([\d.]+)/(.+)", SDK_URL)
VIEWPORTS = [(1280, 720), (390, 844)]


def test_the_page_pins_the_sdk_the_tests_install():
    """Version and hash of the CDN build are those of tests/browser's npm copy, so tests run what users load."""
    pinned = json.loads((BROWSER_DIR / "package.json").read_text())["dependencies"]["livekit-client"]
    assert SDK_PACKAGE is not None and SDK_PACKAGE.group(1) == pinned, SDK_URL
    bundle = BROWSER_DIR / "node_modules" / "livekit-client" / SDK_PACKAGE.group(2)
    digest = base64.b64encode(hashlib.sha384(bundle.read_bytes()).digest()).decode()
    assert SDK_INTEGRITY == f"sha384-{digest}"


def test_the_playground_is_off_outside_development_mode_and_loopback():
    assert refusal(Config(development=True)) is None
    assert "not in development mode" in refusal(Config())
    public = Config(development=True, bind_addresses=["0.0.0.0"])
    assert "not only on loopback" in refusal(public) and "playground_allow_remote" in refusal(public)
    assert refusal(Config(development=True, bind_addresses=["0.0.0.0"], playground_allow_remote=True)) is None
    assert refusal(Config(development=True, bind_addresses=["127.0.0.1", "::1"])) is None
    for host in ["127.0.0.1:7880", "localhost:7880", "LOCALHOST", "[::1]:7880", "app.localhost", "127.1.2.3"]:
        assert _loopback_host(host), host
    for host in ["evil.example:7880", "192.0.2.1:7880", "[2001:db8::1]:7880", "", "127.0.0.1.evil.example"]:
        assert not _loopback_host(host), host


@given(st.text(max_size=80))
def test_any_host_header_is_judged_without_error(text: str):
    """Host headers are the client's: any text gets a yes or no; a name under another domain is never loopback."""
    assert isinstance(_loopback_host(text), bool)
    assert not _loopback_host(f"rebind.{text.replace(':', '')}.example")
    assert not _loopback_host(f"rebind.example:{text}")


def _get(url: str, **headers: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_token_endpoint_refuses_outside_development_mode_and_on_a_public_bind(server, tmp_path):
    """Outside dev mode and on a non-loopback bind, `/` stays the health check and the token endpoint says why it
    is off; in dev mode on loopback it refuses a request naming another host (DNS rebinding)."""
    status, body = _get(f"{server.http}/playground/token?room=r&name=n", Host="evil.example")
    assert status == 403 and "only requests to localhost" in json.loads(body)["error"]
    status, body = _get(f"{server.http}/playground/token?room=r&name=Ada")
    assert status == 200 and json.loads(body)["name"] == "Ada"
    assert _get(f"{server.http}/", Accept="text/html")[1].startswith("<!doctype html>")
    assert _get(f"{server.http}/") == (200, "OK")  # health checks ask for no HTML

    for mode, extra, words in [(dict(dev=False), (), "not in development mode"),
                               (dict(), ("--bind", "0.0.0.0"), "not only on loopback")]:
        (tmp_path / words).mkdir()
        other = start_server(tmp_path / words, *extra, **mode)
        try:
            assert _get(f"{other.http}/", Accept="text/html") == (200, "OK")
            status, body = _get(f"{other.http}/playground/token?room=r&name=n")
            assert status == 403 and words in json.loads(body)["error"], body
            assert _get(f"{other.http}/playground/app.js")[0] == 404
        finally:
            stop_server(other)


@asynccontextmanager
async def _chromium() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _offline_context(browser: Any, width: int = 1280, height: int = 720) -> Any:
    """A browser context whose requests for the SDK's CDN are answered from the npm copy (CI has no internet)."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    package = (BROWSER_DIR / "node_modules" / "livekit-client").resolve()
    prefix = SDK_URL[: SDK_URL.index(SDK_PACKAGE.group(2))]

    async def from_npm(route: Any) -> None:
        path = package / route.request.url.removeprefix(prefix).split("?")[0]
        if not path.is_file() or package not in path.resolve().parents:
            await route.fulfill(status=404, body="not in the npm copy")
            return
        await route.fulfill(status=200, body=path.read_bytes(), content_type="text/javascript",
                            headers={"Access-Control-Allow-Origin": "*"})  # the page loads it crossorigin

    await context.route(prefix + "**", from_npm)
    return context


@asynccontextmanager
async def _tab(context: Any, server, no_devices: bool = False) -> AsyncIterator[Any]:
    page = await context.new_page()
    capture = SignalCapture()
    capture.attach(page)
    if no_devices:  # as on a machine without camera or microphone
        await page.add_init_script(
            "navigator.mediaDevices.getUserMedia = () =>"
            " Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));")
    await page.goto(f"{server.http}/")
    try:
        await page.wait_for_selector("body[data-ready=true]", timeout=10_000)
    except Exception as error:
        raise AssertionError(f"the page did not start:\n{capture.tail()}") from error
    page.capture = capture
    try:
        yield page
    finally:
        await page.close()


async def _join(page: Any, room: str, name: str) -> None:
    await page.fill("#room-input", room)
    await page.fill("#name-input", name)
    await page.click("#join-button")
    try:
        await page.wait_for_selector(f'.tile[data-local=true][data-name="{name}"][data-mic=on][data-camera=on]',
                                     timeout=20_000)
    except Exception as error:
        lobby = await page.text_content("#lobby-error")
        raise AssertionError(f"{name} did not join: {lobby!r}\n{page.capture.tail()}") from error


def _tile(name: str) -> str:
    return f'.tile[data-local=false][data-name="{name}"]'


async def _tile_state(page: Any, name: str) -> dict | None:
    """What a viewer sees of a remote participant's camera tile, or None when there is no tile."""
    return await page.evaluate("""(selector) => {
        const tile = document.querySelector(selector);
        if (!tile) return null;
        const video = tile.querySelector("video");
        return {...tile.dataset, width: video.videoWidth, frames: video.getVideoPlaybackQuality().totalVideoFrames,
                avatar: getComputedStyle(tile.querySelector(".avatar")).display !== "none",
                stats: tile.querySelector(".stats").innerText};
    }""", _tile(name) + "[data-source=camera]")


async def _sees_video_of(page: Any, name: str) -> None:
    """`page` decodes `name`'s video: it has a size and its frame count keeps advancing."""
    first = await _poll(lambda: _tile_state(page, name), lambda s: s is not None and s["width"] > 0, 20,
                        f"video of {name}")
    await _poll(lambda: _tile_state(page, name), lambda s: s["frames"] >= first["frames"] + 10, 10,
                f"frames of {name} to advance")


async def _layout_problems(page: Any) -> list[str]:
    """Visible controls, tiles and panels that leave the viewport sideways, or a page that scrolls."""
    return await page.evaluate("""() => {
        const problems = [];
        const doc = document.documentElement;
        if (doc.scrollWidth > innerWidth) problems.push(`page is ${doc.scrollWidth}px wide`);
        if (doc.scrollHeight > innerHeight) problems.push(`page is ${doc.scrollHeight}px high`);
        for (const el of document.querySelectorAll("button, input, .tile, .bar, .controls, .chat, .card")) {
            const r = el.getBoundingClientRect();
            if (r.width === 0 || el.closest("[hidden]")) continue;
            const name = el.id || el.className;
            if (r.left < -0.5 || r.right > innerWidth + 0.5) problems.push(`${name} spans x ${r.left}..${r.right}`);
            if (!el.closest(".tiles") && (r.top < -0.5 || r.bottom > innerHeight + 0.5))
                problems.push(`${name} spans y ${r.top}..${r.bottom}`);
        }
        return problems;
    }""")


async def test_two_tabs_see_hear_and_chat_with_each_other(server):
    room = "two-tabs"
    async with _chromium() as browser:
        context = await _offline_context(browser)
        async with _tab(context, server) as ada, _tab(context, server, no_devices=True) as bob:
            await _join(ada, room, "Ada")
            await _join(bob, room, "Bob")
            await bob.wait_for_function("document.querySelector('#call-notice').textContent !== ''")
            assert await bob.text_content("#call-notice") == ("Microphone: none found, sending a tone."
                                                              " Camera: none found, sending a test pattern.")

            # Each decodes the other's video: Chromium's fake camera, and Bob's generated test pattern.
            await _sees_video_of(bob, "Ada")
            await _sees_video_of(ada, "Bob")
            # Ada's fake microphone beeps, Bob's tone too: each is highlighted while it sounds.
            await bob.wait_for_selector(_tile("Ada") + "[data-speaking=true]", timeout=15_000)
            await ada.wait_for_selector(_tile("Bob") + "[data-speaking=true]", timeout=15_000)
            # The stats line of each remote track, and the connection quality the server reports.
            state = await _poll(lambda: _tile_state(bob, "Ada"),
                                lambda s: "RTT" in s["stats"] and re.search(r"video [1-9]\d* kbps", s["stats"])
                                and s["quality"] in ("excellent", "good"), 15, "stats and quality of Ada")
            assert re.search(r"\d+×\d+", state["stats"]) and "layer" in state["stats"], state
            assert re.search(r"audio \d+ kbps", state["stats"]), state

            ARTIFACTS.mkdir(exist_ok=True)
            for width, height in VIEWPORTS:
                await bob.set_viewport_size({"width": width, "height": height})
                await bob.wait_for_timeout(300)  # a frame at the new size
                await bob.screenshot(path=str(ARTIFACTS / f"playground-{width}x{height}.png"))
                assert not await _layout_problems(bob), (width, height)
            await bob.set_viewport_size({"width": 1280, "height": 720})

            await ada.fill("#chat-input", "hello from Ada")
            await ada.press("#chat-input", "Enter")
            await bob.wait_for_selector('#chat-log li:has-text("hello from Ada"):has-text("Ada")', timeout=10_000)

            await ada.click("#screen-button")  # Chromium's fake UI picks the (headless) screen
            screen = _tile("Ada") + "[data-source=screen]"
            await bob.wait_for_function("(s) => document.querySelector(s)?.querySelector('video').videoWidth > 0",
                                        arg=screen, timeout=15_000)
            assert await ada.text_content("#screen-button") == "Stop sharing"
            await ada.click("#screen-button")
            await bob.wait_for_selector(screen, state="detached", timeout=10_000)

            await ada.click("#mic-button")
            await ada.click("#camera-button")
            await bob.wait_for_selector(_tile("Ada") + "[data-mic=muted][data-camera=off]", timeout=10_000)
            assert (await _tile_state(bob, "Ada"))["avatar"]
            assert await ada.text_content("#mic-button") == "Unmute"

            await ada.click("#leave-button")
            await bob.wait_for_selector(_tile("Ada"), state="detached", timeout=10_000)
            await ada.wait_for_selector("#join-form", state="visible", timeout=5_000)
            assert await bob.text_content("#participant-count") == "1 participant"
            errors = [line for line in ada.capture.console + bob.capture.console if line.startswith("pageerror")]
            assert not errors, errors


async def test_the_page_says_when_the_server_is_gone_or_refuses(tmp_path):
    """A refused token and an unreachable server are reported in words a newcomer can act on."""
    (tmp_path / "dev").mkdir()
    (tmp_path / "plain").mkdir()
    server = start_server(tmp_path / "dev")
    async with _chromium() as browser:
        context = await _offline_context(browser, *VIEWPORTS[1])
        async with _tab(context, server) as page:
            assert not await _layout_problems(page)
            await page.fill("#room-input", "é" * 200)  # within the field's 256 characters, not 256 bytes
            await page.click("#join-button")
            error = page.locator("#lobby-error")
            await error.wait_for(state="visible")
            assert await error.text_content() == ("The server refused a token: the room name is longer than 256"
                                                  " bytes.")

            stop_server(server)
            await page.fill("#room-input", "gone")
            await page.click("#join-button")
            await page.wait_for_function("document.querySelector('#lobby-error').textContent.includes('reach')")
            assert await error.text_content() == (f"Cannot reach the tern server at {server.http}. Is it still"
                                                  " running? Start it with `tern --dev`.")

            # The same port, now outside development mode: the page is still open, the token is refused.
            plain = start_server(tmp_path / "plain", dev=False, http_port=server.http_port)
            try:
                await page.click("#join-button")
                await page.wait_for_function("document.querySelector('#lobby-error').textContent.includes('refused')")
                assert "not in development mode" in await error.text_content()
                assert await page.is_visible("#join-form") and not await page.is_visible("#call")
            finally:
                stop_server(plain)
