"""VP9 and AV1 SVC end to end: LiveKit's JS SDK in Chromium publishes its camera as VP9 `L3T3_KEY` or AV1 `L3T3`
(three spatial and three temporal layers in one stream, selected by the Dependency Descriptor); another Chromium
subscribes. Asking for LOW, it decodes the lowest spatial layer (a quarter of the width); asking for HIGH, it switches
up to the full picture; and back down, without a freeze.

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

import asyncio

from test_browser import BrowserPeer, _camera_to_viewer, _poll, _prerequisites, browsers, static_site  # noqa: F401

# Chromium's fake camera, captured at 720p and kept at that resolution (by default Chromium scales a busy encoder's
# input down, which moves every layer): libwebrtc gives VP9 three spatial layers (320, 640 and 1280 wide) only from
# 720p on (its lowest layer is at least 240 x 135).
FULL_WIDTH, FULL_HEIGHT = 1280, 720
# Chromium counts a freeze when a frame comes max(3 x the mean frame interval, interval + 150 ms) late; the whole
# run may add up to this much (so no single freeze exceeds it).
MAX_FROZEN_S = 1.0


async def test_vp9_l3t3_key_low_then_high_then_low(server, browsers: tuple[BrowserPeer, BrowserPeer]) -> None:
    await _low_then_high_then_low(server, browsers, "svc-vp9", {"videoCodec": "vp9", "scalabilityMode": "L3T3_KEY"})


async def test_av1_l3t3_low_then_high_then_low(server, browsers: tuple[BrowserPeer, BrowserPeer]) -> None:
    """AV1 full SVC (the VP9 test's is K-SVC), selected by the Dependency Descriptor (which, on keyframes, only the
    two-byte header form holds: both browsers negotiate a=extmap-allow-mixed). The subscriber gets the AV1 stream,
    not the VP8 backup the SDK adds."""
    await _low_then_high_then_low(server, browsers, "svc-av1", {"videoCodec": "av1", "scalabilityMode": "L3T3"})


async def _low_then_high_then_low(server, browsers: tuple[BrowserPeer, BrowserPeer], room: str,
                                  publish_options: dict) -> None:
    _, subscriber = browsers
    codec = f"video/{publish_options['videoCodec']}"
    before = server.counters()
    video = await _camera_to_viewer(server, browsers, room, publish_options)

    subscriber_stats = await _poll(video, lambda s: s["frameWidth"] == FULL_WIDTH, 30,
                                   "the full picture (the publisher's estimate must carry all three layers)")
    assert subscriber_stats["codec"].lower() == codec, subscriber_stats
    dropped = server.counters().get("drop_temporal_layer", 0)
    await subscriber.call("setVideoQuality", "LOW")
    low = await _poll(video, lambda s: 0 < s["frameWidth"] <= FULL_WIDTH // 4, 10,
                      "the lowest spatial layer")
    assert low["frameHeight"] == FULL_HEIGHT // 4, low
    decoded = low["framesDecoded"]
    await asyncio.sleep(1)
    steady = await video()
    assert steady["frameWidth"] == low["frameWidth"] and steady["framesDecoded"] > decoded + 10, steady
    counters = server.counters()
    assert counters.get("drop_temporal_layer", 0) > dropped, counters  # the upper spatial layers, dropped per subscriber

    await subscriber.call("setVideoQuality", "HIGH")  # up at the next keyframe, which the server asks for
    await _poll(video, lambda s: s["frameWidth"] == FULL_WIDTH, 10, "the switch up")
    await subscriber.call("setVideoQuality", "MEDIUM")
    await _poll(video, lambda s: s["frameWidth"] == FULL_WIDTH // 2, 10, "the switch down")
    await asyncio.sleep(1)
    final = await video()
    assert final["framesDecoded"] > steady["framesDecoded"] + 10, final
    assert final["codec"].lower() == codec, final
    frozen = final["totalFreezesDuration"] - subscriber_stats["totalFreezesDuration"]
    assert frozen < MAX_FROZEN_S, (final, subscriber.diagnostics(server))
    errors = await subscriber.page.evaluate("window.tern.state.errors")
    assert not errors, errors
    counters = server.counters()  # the layers were the Dependency Descriptor's (the SDK adds it for SVC codecs)
    assert counters.get("dd_packets", 0) > before.get("dd_packets", 0), counters
    assert counters.get("dd_invalid", 0) == before.get("dd_invalid", 0), counters
