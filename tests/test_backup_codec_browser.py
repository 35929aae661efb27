"""Backup codecs (LiveKit's multi-codec simulcast) end to end: LiveKit's JS SDK in Chromium publishes the test card
in VP9 with its default VP8 backup (AddTrackRequest simulcast_codecs). The Python SDK decodes VP9 and gets it;
aiortc decodes only VP8: tern offers it both, its answer takes VP8, tern asks the publisher for the backup
(SubscribedQualityUpdate.subscribed_codecs), the SDK publishes it on an m-line of its own (an AddTrackRequest naming
the track's sid) and aiortc decodes the card from it.

Prerequisites as tests/test_browser.py (whose fixtures these are)."""
from __future__ import annotations

from aiortc_client import AiortcSubscriber
from media import decoded_video, matches_card, pixel_quadrant_colours, wait_for_tracks
from test_browser import BrowserPeer, _connect_js, _poll, _prerequisites, _python_peer, browser, static_site  # noqa: F401

WIDTH, HEIGHT = 640, 360
# The card's colours through Chromium's canvas capture and a decoder's YUV -> RGB come out more saturated (measured:
# (220, 30, 30) as (213, 0, 17), (30, 200, 30) as (33, 246, 24)): still far nearer their own quadrant's than another's.
COLOUR_TOLERANCE = 60


async def _video_codec(track) -> str:
    """The MIME type the Python SDK receives `track` in."""
    stats = await track.get_stats()
    return next((s.codec.codec.mime_type for s in stats if s.WhichOneof("stats") == "codec"
                 and s.codec.codec.mime_type.startswith("video/")), "")


async def test_a_vp8_only_subscriber_gets_the_vp8_backup_and_others_the_vp9_primary(server,
                                                                                     browser: BrowserPeer) -> None:
    room = "backup-codec"
    python_room = await _python_peer(server, "py-vp9", room)
    vp8_only, _ = await AiortcSubscriber.join(server.url, server.token("aiortc-vp8", room))
    try:
        await _connect_js(browser, server, "camera", room, {"dynacast": True})
        try:
            await browser.call("publishCard", WIDTH, HEIGHT, {"videoCodec": "vp9"})
        except Exception as error:
            raise AssertionError(f"publishing failed: {error}\n{browser.diagnostics(server)}") from error
        [request] = [r for r in browser.capture.requests("add_track") if not r.sid]
        assert [c.codec for c in request.simulcast_codecs] == ["vp9", "vp8"], request

        # aiortc: offered VP9 and VP8 in one m-line, it answers VP8; the backup is asked for and then decoded.
        async def aiortc_video() -> dict:
            frame = vp8_only.last_frame
            pixels = frame.to_ndarray(format="rgb24") if frame is not None else None
            return {"frames": len(vp8_only.frames), "card": pixels is not None and matches_card(pixels, COLOUR_TOLERANCE),
                    "size": vp8_only.frames[-1:], "colours": pixel_quadrant_colours(pixels).astype(int).tolist()
                    if pixels is not None else None,
                    "backup requested": [r.cid for r in browser.capture.requests("add_track") if r.sid]}

        try:
            await _poll(aiortc_video, lambda s: s["frames"] > 10 and s["card"], 30,
                        "aiortc to decode the card from the VP8 backup")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{vp8_only.answers[-1:]}\n{browser.diagnostics(server)}") from error
        assert "VP9" in vp8_only.offers[-1] and "VP8" in vp8_only.answers[-1] and "VP9" not in vp8_only.answers[-1]
        [backup] = [r for r in browser.capture.requests("add_track") if r.sid]
        assert [c.codec for c in backup.simulcast_codecs] == ["vp8"], backup
        asked = [c.codec for u in browser.capture.responses_of("subscribed_quality_update")
                 for c in u.subscribed_codecs if any(q.enabled for q in c.qualities)]
        assert "vp8" in asked, asked
        assert set(await browser.call("outboundVideoCodecs")) == {"video/VP9", "video/VP8"}

        # The Python SDK, which decodes VP9, still gets the primary.
        tracks = await wait_for_tracks(python_room, 1)
        frames = await decoded_video(tracks["video"], frames=10)
        assert all(matches_card(frame, COLOUR_TOLERANCE) for frame in frames), [(f.width, f.height) for f in frames]
        assert await _video_codec(tracks["video"]) == "video/VP9"
        counters = server.counters()
        assert counters.get("subscriptions_backup_codec") == 1, counters
        errors = await browser.page.evaluate("window.tern.state.errors")
        assert not errors, errors
    finally:
        await vp8_only.close()
        await python_room.disconnect()
