"""IngressService (Twirp, through livekit-api) and WHIP on a stream key (/w/{stream_key}): an ingress made with the
API takes an aiortc WHIP publisher, which joins the ingress's room as the ingress's participant (kind INGRESS) and is
decoded by an SDK subscriber; its IngressInfo goes INACTIVE → PUBLISHING → INACTIVE with ingress_started /
ingress_ended webhooks; a second publisher on the key is refused (409); DELETE and DeleteIngress end a session.
FFmpeg's WHIP muxer set up as OBS is (server = the ingress url, Bearer token = the stream key) publishes too."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCSessionDescription
from livekit import api, rtc

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET, start_server, stop_server
from media import decoded_video, matches_card, wait_for_tracks
from test_webhook import Receiver, webhooks  # noqa: F401 (webhooks: the fixture)
from test_whip import PUBLISHER as WHIP_PUBLISHER
from test_whip import _CardTrack, _ToneTrack

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore:The HMAC key")]

ROOM = "ingress-room"
Status = api.IngressState.Status


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, webhooks: Receiver):
    server = start_server(tmp_path_factory.mktemp("tern"),
                          config=f"webhook:\n  api_key: {API_KEY}\n  urls: [{webhooks.url}]\n")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


@pytest_asyncio.fixture(loop_scope="module")
async def lkapi(server):
    client = api.LiveKitAPI(server.http, API_KEY, API_SECRET)
    yield client
    await client.aclose()


async def _whip_ingress(lkapi: api.LiveKitAPI, **fields: object) -> api.IngressInfo:
    return await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.WHIP_INPUT, name="obs", room_name=ROOM, participant_identity="streamer",
        participant_name="The Streamer", participant_metadata="live", **fields))


async def _state(lkapi: api.LiveKitAPI, ingress_id: str) -> api.IngressState:
    listed = await lkapi.ingress.list_ingress(api.ListIngressRequest(ingress_id=ingress_id))
    return listed.items[0].state


async def _publish(http: aiohttp.ClientSession, url: str, token: str = "") -> tuple[RTCPeerConnection, str]:
    """aiortc as the WHIP client: the test card and a tone, offered to `url` with `token` as Bearer token, or
    without any Authorization header."""
    pc = RTCPeerConnection()
    pc.addTrack(_CardTrack())
    pc.addTrack(_ToneTrack())
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", **({"Authorization": f"Bearer {token}"} if token else {})}
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
        assert response.status == 201, await response.text()
        location, answer = response.headers["Location"], await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, location


async def test_ingresses_are_created_listed_updated_and_deleted(server, lkapi) -> None:
    whip = await _whip_ingress(lkapi)
    assert whip.ingress_id.startswith("IN_") and len(whip.stream_key) >= 16
    assert whip.url == server.http + "/w" and whip.input_type == api.IngressInput.WHIP_INPUT
    assert (whip.room_name, whip.participant_identity, whip.participant_name) == (ROOM, "streamer", "The Streamer")
    assert whip.reusable and whip.enabled and not whip.enable_transcoding and whip.bypass_transcoding
    assert whip.state.status == Status.ENDPOINT_INACTIVE
    rtmp = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, room_name="other-room", participant_identity="rtmp"))
    assert rtmp.url == "rtmp://127.0.0.1:1935/live" and rtmp.enable_transcoding and rtmp.stream_key != whip.stream_key

    listed = await lkapi.ingress.list_ingress(api.ListIngressRequest())
    assert {whip.ingress_id, rtmp.ingress_id} <= {item.ingress_id for item in listed.items}
    listed = await lkapi.ingress.list_ingress(api.ListIngressRequest(room_name="other-room"))
    assert [item.ingress_id for item in listed.items] == [rtmp.ingress_id]
    updated = await lkapi.ingress.update_ingress(api.UpdateIngressRequest(ingress_id=rtmp.ingress_id, name="renamed"))
    assert (updated.name, updated.room_name, updated.stream_key) == ("renamed", "other-room", rtmp.stream_key)

    for request, code in [
        (api.CreateIngressRequest(input_type=api.IngressInput.URL_INPUT, url="http://x/a.mp4", room_name=ROOM,
                                  participant_identity="u"), "unimplemented"),
        (api.CreateIngressRequest(input_type=api.IngressInput.WHIP_INPUT, enable_transcoding=True,
                                  participant_identity="u"), "unimplemented"),
        (api.CreateIngressRequest(input_type=api.IngressInput.RTMP_INPUT, enable_transcoding=False,
                                  participant_identity="u"), "invalid_argument"),
        (api.CreateIngressRequest(input_type=api.IngressInput.WHIP_INPUT, room_name=ROOM), "invalid_argument"),
    ]:
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.ingress.create_ingress(request)
        assert refused.value.code == code, request

    for ingress in (whip, rtmp):
        deleted = await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=ingress.ingress_id))
        assert deleted.ingress_id == ingress.ingress_id
    assert not (await lkapi.ingress.list_ingress(api.ListIngressRequest(ingress_id=whip.ingress_id))).items
    with pytest.raises(api.TwirpError) as missing:
        await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=whip.ingress_id))
    assert missing.value.code == "not_found"

    # Only a token with ingressAdmin may use the service.
    admin = server.token("someone", ROOM, room_admin=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(server.http + "/twirp/livekit.Ingress/ListIngress", json={},
                             headers={"Authorization": f"Bearer {admin}"}) as r:
            assert r.status == 403 and (await r.json())["code"] == "permission_denied"


async def test_whip_on_a_stream_key_publishes_as_the_ingress(server, lkapi, webhooks: Receiver) -> None:
    info = await _whip_ingress(lkapi)
    subscriber = await connect(server, "fan", ROOM)
    async with aiohttp.ClientSession() as http:
        pc, location = await _publish(http, f"{info.url}/{info.stream_key}")
        try:
            assert location.startswith(f"{server.http}/w/{info.stream_key}/WH_")
            tracks = await wait_for_tracks(subscriber, 2)
            streamer = remote(subscriber, "streamer")
            assert streamer is not None and streamer.kind == rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS
            assert (streamer.name, streamer.metadata) == ("The Streamer", "live")
            assert matches_card((await decoded_video(tracks["video"], frames=10))[-1])
            state = await _state(lkapi, info.ingress_id)
            assert state.status == Status.ENDPOINT_PUBLISHING and len(state.tracks) == 2
            assert state.resource_id == location.rsplit("/", 1)[1] and state.room_id.startswith("RM_")
            await until(lambda: any(e.event == "ingress_started" and e.ingress_info.ingress_id == info.ingress_id
                                    for e in webhooks.events))

            # A second publisher on the key (here as OBS sends it: POST /w, the key as Bearer token) is refused.
            async with http.post(server.http + "/w", data="v=0\r\n", headers={
                    "Content-Type": "application/sdp", "Authorization": f"Bearer {info.stream_key}"}) as response:
                assert response.status == 409, await response.text()

            async with http.delete(location.replace(info.stream_key, "another-key")) as response:
                assert response.status == 404  # the resource is the Location given, with its stream key
            async with http.delete(location) as response:
                assert response.status == 200
            await until(lambda: remote(subscriber, "streamer") is None)
            assert (await _state(lkapi, info.ingress_id)).status == Status.ENDPOINT_INACTIVE
            await until(lambda: any(e.event == "ingress_ended" and e.ingress_info.ingress_id == info.ingress_id
                                    for e in webhooks.events))
            ended = next(e for e in webhooks.events if e.event == "ingress_ended")
            assert ended.ingress_info.state.ended_at > ended.ingress_info.state.started_at > 0
        finally:
            await pc.close()

        # The key is reusable; DeleteIngress ends the live session it finds.
        pc, location = await _publish(http, f"{info.url}/{info.stream_key}")
        try:
            await until(lambda: remote(subscriber, "streamer") is not None, timeout=15)
            await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=info.ingress_id))
            await until(lambda: remote(subscriber, "streamer") is None)
            await until(lambda: len([e for e in webhooks.events if e.event == "ingress_ended"
                                     and e.ingress_info.ingress_id == info.ingress_id]) == 2)
            async with http.delete(location) as response:
                assert response.status == 404
        finally:
            await pc.close()
            await subscriber.disconnect()
    assert not webhooks.errors


async def test_stream_key_refusals(server, lkapi) -> None:
    info = await _whip_ingress(lkapi)
    rtmp = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=api.IngressInput.RTMP_INPUT, room_name=ROOM, participant_identity="rtmp"))
    headers = {"Content-Type": "application/sdp"}
    async with aiohttp.ClientSession() as http:
        async def post(path: str, body: str = "v=0\r\n") -> tuple[int, str]:
            async with http.post(server.http + path, data=body, headers=headers) as response:
                return response.status, await response.text()

        assert (await post("/w/not-a-key"))[0] == 404
        assert (await post("/w"))[0] == 404  # no key at all
        status, reason = await post(f"/w/{rtmp.stream_key}")
        assert status == 400 and "RTMP_INPUT" in reason
        status, reason = await post(f"/w/{info.stream_key}", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF x\r\n")
        assert status == 400 and "malformed SDP" in reason
        state = await _state(lkapi, info.ingress_id)
        assert state.status == Status.ENDPOINT_ERROR and "malformed SDP" in state.error
        await lkapi.ingress.update_ingress(api.UpdateIngressRequest(ingress_id=info.ingress_id, enabled=False))
        assert (await _state(lkapi, info.ingress_id)).status == Status.ENDPOINT_INACTIVE  # an update resets ERROR
        status, reason = await post(f"/w/{info.stream_key}")
        assert status == 403 and "disabled" in reason
        async with http.options(server.http + f"/w/{info.stream_key}") as response:
            assert response.status == 204 and response.headers["Accept-Post"] == "application/sdp"
    counters = server.counters()
    for name in ("unknown_stream_key", "wrong_input_type", "malformed_sdp", "ingress_disabled", "stream_key_busy"):
        assert counters.get(f"whip_{name}", 0) >= 1, name


async def test_ingress_urls_from_config() -> None:
    from signaling.config import ConfigError, from_yaml
    config = from_yaml("ingress: {whip_base_url: 'https://media.example.org/w/',"
                       " rtmp_base_url: 'rtmp://m.example.org/live'}")
    assert (config.ingress.whip_base_url, config.ingress.rtmp_base_url) == ("https://media.example.org/w",
                                                                           "rtmp://m.example.org/live")
    with pytest.raises(ConfigError, match="ingress.whip_base_url"):
        from_yaml("ingress: {whip_base_url: media}")
    with pytest.raises(ConfigError, match="ingress.nope"):
        from_yaml("ingress: {nope: 1}")


async def test_ingress_session_states_and_events() -> None:
    """IngressSessions alone (sans I/O): the IngressState a session walks through and the events it raises."""
    from collections import Counter

    from livekit.protocol import ingress as proto, models

    from signaling.cluster.ingress import MemoryIngressStore
    from signaling.ingress.sessions import IngressSessions
    from signaling.wish import Refused

    events: list[tuple[str, proto.IngressInfo]] = []
    store = MemoryIngressStore()
    sessions = IngressSessions(store, lambda event, room, ingress_info: events.append((event, ingress_info)), Counter())
    await store.save(proto.IngressInfo(ingress_id="IN_a", stream_key="key", input_type=proto.IngressInput.WHIP_INPUT,
                                       room_name="r", participant_identity="p", enabled=True))
    info = await sessions.claim("key", proto.IngressInput.WHIP_INPUT, "WH_1")
    assert info.state.status == Status.ENDPOINT_BUFFERING and info.state.resource_id == "WH_1" and not events
    with pytest.raises(Refused) as busy:
        await sessions.claim("key", proto.IngressInput.WHIP_INPUT, "WH_2")
    assert busy.value.status == 409
    stopped = []
    assert sessions.bind("IN_a", lambda: stopped.append(True))
    sessions.publishing("IN_a", "RM_x", models.ParticipantInfo())  # joined, nothing published yet
    assert (await store.get("IN_a")).state.status == Status.ENDPOINT_BUFFERING and not events
    sessions.publishing("IN_a", "RM_x", models.ParticipantInfo(tracks=[models.TrackInfo(sid="TR_v")]))
    assert [e for e, _ in events] == ["ingress_started"] and events[0][1].state.room_id == "RM_x"
    sessions.publishing("IN_a", "RM_x", models.ParticipantInfo(tracks=[models.TrackInfo(sid="TR_v")]))
    assert len(events) == 1  # no status change, no event
    ended = sessions.stop("IN_a")
    assert stopped and [e for e, _ in events] == ["ingress_started", "ingress_ended"]
    assert ended.state.status == Status.ENDPOINT_INACTIVE
    stored = await store.get("IN_a")
    assert stored.state.status == Status.ENDPOINT_INACTIVE and not stored.state.tracks
    await sessions.claim("key", proto.IngressInput.WHIP_INPUT, "WH_3")  # reusable
    sessions.ended("IN_a", "malformed SDP")
    assert (await store.get("IN_a")).state.status == Status.ENDPOINT_ERROR and events[-1][0] == "ingress_ended"
    await store.delete(await store.get("IN_a"))
    assert await store.by_stream_key("key") is None and await store.count() == 0


async def test_ffmpeg_whip_with_obs_settings(server, lkapi) -> None:
    """FFmpeg's own WHIP muxer (PyAV) configured as OBS is: the ingress's url as the server and its stream key as
    the Bearer token (`POST /w`). The SDK subscriber sees the ingress's participant and its test card; closing the
    muxer (its DELETE) ends the session."""
    info = await _whip_ingress(lkapi)
    subscriber = await connect(server, "obs-fan", ROOM)
    publisher = subprocess.Popen([sys.executable, str(WHIP_PUBLISHER), info.url, info.stream_key],
                                 stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=WHIP_PUBLISHER.parent, text=True)
    try:
        tracks = await wait_for_tracks(subscriber, 2)
        streamer = remote(subscriber, "streamer")
        assert streamer is not None and streamer.kind == rtc.ParticipantKind.PARTICIPANT_KIND_INGRESS
        assert matches_card((await decoded_video(tracks["video"], frames=10))[-1])
        assert (await _state(lkapi, info.ingress_id)).status == Status.ENDPOINT_PUBLISHING
    finally:
        publisher.stdin.close()
        errors = await asyncio.get_running_loop().run_in_executor(None, publisher.stderr.read)
        publisher.wait(10)
    assert publisher.returncode == 0, errors[-2000:]
    await until(lambda: remote(subscriber, "streamer") is None)
    assert (await _state(lkapi, info.ingress_id)).status == Status.ENDPOINT_INACTIVE
    await subscriber.disconnect()
    await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=info.ingress_id))
