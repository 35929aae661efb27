"""RED audio end to end: LiveKit's JS SDK in Chromium publishes a tone (RED is its default for audio); tern answers
with RED first, so Chromium sends Opus with redundancy. Another Chromium (which has RED) and a Python SDK peer
listen and get RED as it is; aiortc, which has no RED, gets Opus stripped out of it. Each hears the tone
(tests/test_red.py covers stripping with loss).

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

import asyncio

import numpy as np

from aiortc_client import AiortcSubscriber
from media import SAMPLE_RATE, TONE_HZ, decoded_audio, dominant_frequency, wait_for_tracks
from test_browser import (BrowserPeer, _connect_js, _inbound, _poll, _prerequisites, _python_peer,  # noqa: F401
                          browsers, static_site)


async def test_red_tone_reaches_red_and_plain_listeners(server, browsers: tuple[BrowserPeer, BrowserPeer]) -> None:
    """Chromium and the Python SDK negotiate RED and get it as it is; aiortc (no RED) gets Opus stripped out of it."""
    publisher, listener = browsers
    room = "red"
    python_room = await _python_peer(server, "py-listener", room)
    plain, _ = await AiortcSubscriber.join(server.url, server.token("aiortc-listener", room))
    try:
        await _connect_js(listener, server, "js-listener", room)
        await _connect_js(publisher, server, "js-tone", room)
        await publisher.call("publishTone", TONE_HZ, {})
        answer = publisher.capture.responses_of("answer")[-1].sdp
        assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1" in answer  # DTX on, as LiveKit's server answers

        tracks = await wait_for_tracks(python_room, 1)
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 5
        heard = await _poll(lambda: _inbound(listener, "audio"), lambda s: s["totalSamplesReceived"] > SAMPLE_RATE, 15,
                            "the browser listener to play a second of the tone")
        assert heard["totalAudioEnergy"] > 0 and heard["concealedSamples"] < heard["totalSamplesReceived"] * 0.05, heard
        await _poll(lambda: asyncio.sleep(0, sum(len(a) for a in plain.audio)), lambda n: n > 2 * SAMPLE_RATE, 15,
                    "aiortc to decode two seconds")
        stripped = np.concatenate(plain.audio)[-SAMPLE_RATE:]
        assert abs(dominant_frequency(stripped) - TONE_HZ) < 5

        counters = server.counters()
        assert counters["red_received"] > 50, counters  # Chromium sends RED
        assert counters["subscriptions_red"] == 2 and counters["subscriptions_red_stripped"] == 1, counters
        errors = await listener.page.evaluate("window.tern.state.errors")
        assert not errors, errors
    finally:
        await plain.close()
        await python_room.disconnect()
