"""H.264 simulcast end to end: LiveKit's JS SDK in Chromium publishes its camera as H.264 (three simulcast layers,
constrained baseline, packetization mode 1); tern answers H.264 for the track (the codec its AddTrackRequest chose)
and finds keyframes at the packet with their SPS (libwebrtc sends SPS and PPS in a STAP-A before each IDR). Another
Chromium subscribes: asking for LOW it decodes the low layer, asking for HIGH it switches up at a
keyframe.

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

from test_browser import BrowserPeer, _camera_to_viewer, _poll, _prerequisites, browsers, static_site  # noqa: F401

FULL_WIDTH, FULL_HEIGHT = 1280, 720
MAX_FROZEN_S = 1.0  # as tests/test_svc_browser.py


async def test_h264_simulcast_low_then_high(server, browsers: tuple[BrowserPeer, BrowserPeer]) -> None:
    publisher, subscriber = browsers
    video = await _camera_to_viewer(server, browsers, "h264", {"videoCodec": "h264"})
    answer = publisher.capture.responses_of("answer")[-1].sdp
    assert "H264/90000" in answer and "packetization-mode=1" in answer, answer
    await subscriber.call("setVideoQuality", "LOW")
    low = await _poll(video, lambda s: 0 < s["frameWidth"] <= FULL_WIDTH // 4
                      and s["framesDecoded"] > 10, 20, "the low H.264 layer")
    await subscriber.call("setVideoQuality", "HIGH")  # up at the high layer's next keyframe, which tern asks for
    high = await _poll(video, lambda s: s["frameWidth"] > FULL_WIDTH // 2, 20,
                       "the switch up (the publisher's estimate must carry the top layer)")
    assert high["frameHeight"] > FULL_HEIGHT // 2, high
    assert high["totalFreezesDuration"] - low["totalFreezesDuration"] < MAX_FROZEN_S, high
    assert server.counters().get("layer_switches", 0) >= 2, server.counters()
    errors = await subscriber.page.evaluate("window.tern.state.errors")
    assert not errors, errors
