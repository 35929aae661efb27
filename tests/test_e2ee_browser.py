"""End-to-end encryption through tern: LiveKit's JS SDK in Chromium encrypts each frame before packetization (its
worker, with a shared key); tern forwards what it cannot read. The layer and keyframe detection it needs stays in the
clear: VP8's payload descriptor and the first bytes of each frame (LiveKit's cryptor leaves 10 of a keyframe and 3
of a delta frame unencrypted, the frame tag with the P bit among them), and Opus's TOC byte. Another Chromium with the
key decodes video through a simulcast layer switch and plays the tone; every track is reported encrypted
(TrackInfo.encryption, from AddTrackRequest.encryption); and a Python SDK peer sees the same, without the key.

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

import functools

from livekit import rtc

from media import TONE_HZ, decoded_audio, dominant_frequency, wait_for_tracks
from test_browser import BrowserPeer, _inbound, _poll, _prerequisites, _python_peer, browsers, static_site  # noqa: F401

KEY = "a shared passphrase"
FULL_WIDTH, FULL_HEIGHT = 1280, 720


async def _connect(browser: BrowserPeer, server, identity: str, room: str, options: dict) -> None:
    try:
        await browser.call("connect", server.url, server.token(identity, room), options, KEY)
    except Exception as error:
        raise AssertionError(f"JS SDK failed to connect with E2EE: {error}\n{browser.diagnostics(server)}") from error


async def test_e2ee_video_and_audio_decode_through_a_layer_switch(server, browsers) -> None:
    publisher, subscriber = browsers
    room = "e2ee"
    python_room = await _python_peer(server, "py-without-key", room)
    try:
        await _connect(subscriber, server, "js-subscriber", room, {"adaptiveStream": False, "dynacast": True})
        await _connect(publisher, server, "js-publisher", room, {"dynacast": True})
        await publisher.call("publishCamera", {"resolution": {"width": FULL_WIDTH, "height": FULL_HEIGHT}},
                             {"degradationPreference": "maintain-resolution"})
        await publisher.call("publishTone", TONE_HZ, {})

        await _poll(lambda: _inbound(subscriber, "video"), lambda s: s["framesDecoded"] > 10, 20,
                    "the subscriber to decrypt and decode video")
        audio = await _poll(lambda: _inbound(subscriber, "audio"), lambda s: s["totalSamplesReceived"] > 48000, 15,
                            "the subscriber to play a second of audio")
        assert audio["totalAudioEnergy"] > 0, audio
        await subscriber.call("setVideoQuality", "LOW")
        low = await _poll(lambda: _inbound(subscriber, "video"), lambda s: 0 < s["frameWidth"] <= FULL_WIDTH // 4,
                          15, "the low simulcast layer")
        await subscriber.call("setVideoQuality", "HIGH")
        high = await _poll(lambda: _inbound(subscriber, "video"),
                           lambda s: s["frameWidth"] > low["frameWidth"] and s["framesDecoded"] > low["framesDecoded"],
                           15, "a higher layer")
        assert high["frameWidth"] >= FULL_WIDTH // 2, high

        encryption = await subscriber.call("remoteEncryption")
        assert sorted(encryption, key=lambda t: t["kind"]) == [{"kind": "audio", "encrypted": True},
                                                                {"kind": "video", "encrypted": True}]
        publications = [p for participant in python_room.remote_participants.values()
                        for p in participant.track_publications.values()]
        assert len(publications) == 2 and all(p.encryption_type == rtc.EncryptionType.GCM for p in publications)
        # Without the key, what arrives is ciphertext: whatever the Opus decoder makes of it, not the tone.
        tracks = await wait_for_tracks(python_room, 2)
        noise = await decoded_audio(tracks["audio"], seconds=0.5)
        assert abs(dominant_frequency(noise) - TONE_HZ) > 20
        joins = subscriber.capture.responses_of("join") + publisher.capture.responses_of("join")
        assert len(joins) == 2 and len(joins[0].sif_trailer) == 32 and joins[0].sif_trailer == joins[1].sif_trailer
        counters = server.counters()
        assert counters.get("red_received", 0) == 0  # the JS SDK sends no RED when encrypting, and tern asks none
        errors = await subscriber.page.evaluate("window.tern.state.errors")
        assert not errors, errors
    finally:
        await python_room.disconnect()


async def test_e2ee_vp9_svc_layers_come_from_the_payload_descriptor(server, browsers) -> None:
    """LiveKit's cryptor encrypts the whole VP9 frame: tern picks spatial layers from the payload descriptor alone."""
    publisher, subscriber = browsers
    room = "e2ee-vp9"
    await _connect(subscriber, server, "js-subscriber", room, {"adaptiveStream": False, "dynacast": True})
    await _connect(publisher, server, "js-publisher", room, {"dynacast": True})
    await publisher.call("publishCamera", {"resolution": {"width": FULL_WIDTH, "height": FULL_HEIGHT}},
                         {"videoCodec": "vp9", "scalabilityMode": "L3T3_KEY",
                          "degradationPreference": "maintain-resolution"})
    video = functools.partial(_inbound, subscriber, "video")
    await _poll(video, lambda s: s["framesDecoded"] > 10, 20, "the subscriber to decrypt and decode VP9")
    await subscriber.call("setVideoQuality", "LOW")
    low = await _poll(video, lambda s: 0 < s["frameWidth"] <= FULL_WIDTH // 4, 15, "the lowest spatial layer")
    await subscriber.call("setVideoQuality", "HIGH")
    await _poll(video, lambda s: s["frameWidth"] >= FULL_WIDTH // 2 and s["framesDecoded"] > low["framesDecoded"],
                20, "a higher spatial layer (the publisher's estimate must carry it)")
    errors = await subscriber.page.evaluate("window.tern.state.errors")
    assert not errors, errors
