"""H.264 simulcast end to end: LiveKit's JS SDK in Chromium publishes its camera as H.264 (three simulcast layers,
constrained baseline, packetization mode 1); tern answers H.264 for the track (the codec its AddTrackRequest chose)
and finds keyframes at the packet with their SPS (libwebrtc sends SPS and PPS in a STAP-A before each IDR). Another
Chromium subscribes: asking for LOW it decodes the low layer, asking for HIGH it switches up at a keyframe to the
widest layer the publisher sends.

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

from test_browser import BrowserPeer, _camera_to_viewer, _poll, _prerequisites, browsers, static_site  # noqa: F401

FULL_WIDTH = 1280
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

    async def viewer_and_layers() -> tuple[dict, list[dict]]:
        return await video(), await publisher.call("outboundLayers")

    def at_the_widest_layer_sent(pair: tuple[dict, list[dict]]) -> bool:
        """Chromium's software H.264 encoder may leave the top layer off for a while on a loaded 2-core machine
        (CI once saw 640x360 as the widest for 20 s): the switch up is to the widest layer the publisher sends."""
        viewer, layers = pair
        widest = max((layer["frameWidth"] for layer in layers if layer["active"] and layer["framesPerSecond"] > 0),
                     default=FULL_WIDTH)
        return viewer["frameWidth"] > low["frameWidth"] and viewer["frameWidth"] >= widest

    high, layers = await _poll(viewer_and_layers, at_the_widest_layer_sent, 20, "the switch up to the widest layer")
    print(f"switched up to {high['frameWidth']}x{high['frameHeight']}; the publisher's layers: {layers}")
    assert high["totalFreezesDuration"] - low["totalFreezesDuration"] < MAX_FROZEN_S, high
    # The switch up at least: LOW may have been the viewer's first layer (its start at a keyframe is no switch).
    assert server.counters().get("layer_switches", 0) >= 1, server.counters()
    errors = await subscriber.page.evaluate("window.tern.state.errors")
    assert not errors, errors
