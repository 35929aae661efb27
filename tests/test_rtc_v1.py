"""LiveKit's signal protocol v1 (`/rtc/v1`, one peer connection): the join_request parameter (bare, with hypothesis),
and the Python SDK, which tries v1 first, joining, publishing, subscribing and exchanging data over it against a real
server. The JS SDK over v1 is in test_browser.py, a resume over v1 in test_resume.py."""
from __future__ import annotations

import asyncio
import base64
import gzip
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from livekit import rtc
from livekit.protocol import models
from livekit.protocol import rtc as signal
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from clients import connect, remote, until
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from signaling.protocol.v1 import (MAX_JOIN_REQUEST_PARAM, MAX_JOIN_REQUEST_SIZE, JoinRequestError,
                                   decode_join_request)


def join_request_param(join: signal.JoinRequest, gzipped: bool = True, padded: bool = True) -> str:
    """The join_request parameter as the SDKs build it (URL-safe base64 of a WrappedJoinRequest)."""
    data = join.SerializeToString()
    wrapped = signal.WrappedJoinRequest(
        compression=signal.WrappedJoinRequest.Compression.GZIP if gzipped else signal.WrappedJoinRequest.Compression.NONE,
        join_request=gzip.compress(data) if gzipped else data)
    text = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()
    return text if padded else text.rstrip("=")


# ---------------------------------------------------------------- join_request parsing (no server)

JOIN = signal.JoinRequest(client_info=models.ClientInfo(sdk=models.ClientInfo.SDK.PYTHON, protocol=16),
                          connection_settings=signal.ConnectionSettings(auto_subscribe=True),
                          reconnect=True, participant_sid="PA_x")


@pytest.mark.parametrize("gzipped", [True, False])
@pytest.mark.parametrize("padded", [True, False])
def test_join_request_decodes_as_the_sdks_encode_it(gzipped: bool, padded: bool) -> None:
    assert decode_join_request(join_request_param(JOIN, gzipped, padded)) == JOIN


def test_a_gzip_bomb_is_refused_after_inflating_the_limit() -> None:
    bomb = signal.WrappedJoinRequest(compression=signal.WrappedJoinRequest.Compression.GZIP,
                                     join_request=gzip.compress(b"\0" * (8 * MAX_JOIN_REQUEST_SIZE)))
    param = base64.urlsafe_b64encode(bomb.SerializeToString()).decode()
    assert len(param) < MAX_JOIN_REQUEST_PARAM
    with pytest.raises(JoinRequestError, match="inflated"):
        decode_join_request(param)
    with pytest.raises(JoinRequestError, match="longer"):
        decode_join_request("A" * (MAX_JOIN_REQUEST_PARAM + 1))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda raw: base64.urlsafe_b64encode(raw).decode()),
    st.tuples(st.sampled_from([0, 1, 2, 7]), st.binary(max_size=200)).map(
        lambda c: base64.urlsafe_b64encode(signal.WrappedJoinRequest(compression=c[0], join_request=(
            gzip.compress(c[1]) if c[0] == 1 and c[1][:1] == b"\x01" else c[1])).SerializeToString()).decode()),
))
def test_garbage_is_a_join_request_error_or_a_join_request(param: str) -> None:
    try:
        assert isinstance(decode_join_request(param), signal.JoinRequest)
    except JoinRequestError:
        pass


# ---------------------------------------------------------------- against a real server

def _status(server, path: str, query: dict[str, str]) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.http}{path}?{urllib.parse.urlencode(query)}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_a_malformed_join_request_is_a_400_before_the_upgrade(server) -> None:
    token = server.token("garbage", "v1-garbage")
    before = server.counters().get("join_request_malformed", 0)
    for param in ["%%%", "AAAA", base64.urlsafe_b64encode(b"\xff" * 40).decode()]:
        with pytest.raises(InvalidStatus) as refused:
            await ws_connect(f"{server.url}/rtc/v1?join_request={urllib.parse.quote(param)}",
                             additional_headers={"Authorization": f"Bearer {token}"})
        assert refused.value.response.status_code == 400
        assert b"join_request" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(f"{server.url}/rtc/v1", additional_headers={"Authorization": f"Bearer {token}"})
    assert refused.value.response.status_code == 400
    assert server.counters()["join_request_malformed"] == before + 4
    # /rtc/v1/validate answers as the upgrade would.
    assert _status(server, "/rtc/v1/validate", {"access_token": token, "join_request": "AAAA"})[0] == 400
    assert _status(server, "/rtc/v1/validate", {"access_token": token,
                                                 "join_request": join_request_param(JOIN)}) == (200, "success")


async def test_python_sdk_publishes_subscribes_and_exchanges_data_over_one_peer_connection(server) -> None:
    room = "v1-room"
    counters = server.counters()
    v0_before, v1_before = counters.get("signal_connections_v0", 0), counters.get("signal_connections_v1", 0)
    transports_before = counters.get("transports_created", 0)
    alice = await connect(server, "alice", room)
    bob = await connect(server, "bob", room)
    publisher = Publisher(alice)
    try:
        counters = server.counters()
        # Both joined over /rtc/v1 at the first try, one transport (peer connection) each.
        assert counters["signal_connections_v1"] == v1_before + 2
        assert counters.get("signal_connections_v0", 0) == v0_before
        assert counters["transports_created"] == transports_before + 2

        await publisher.start()
        tracks = await wait_for_tracks(bob, 2)
        frames = await decoded_video(tracks["video"], frames=10)
        assert any(matches_card(frame) for frame in frames)
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 20

        # And the other way: bob publishes into the same peer connection he receives on.
        back = Publisher(bob, tone=False)
        await back.start()
        try:
            tracks = await wait_for_tracks(alice, 2)
            assert any(matches_card(frame) for frame in await decoded_video(tracks["video"], frames=5))
        finally:
            await back.stop()
        assert server.counters()["transports_created"] == transports_before + 2

        # Data both ways, reliable and lossy, on the channels the clients opened.
        to_bob: list[tuple[bytes, int]] = []
        to_alice: list[tuple[bytes, int]] = []
        bob.on("data_received", lambda p: to_bob.append((p.data, p.kind)))
        alice.on("data_received", lambda p: to_alice.append((p.data, p.kind)))
        await alice.local_participant.publish_data(b"reliable a", reliable=True)
        await alice.local_participant.publish_data(b"lossy a", reliable=False)
        await bob.local_participant.publish_data(b"reliable b", reliable=True)
        await bob.local_participant.publish_data(b"lossy b", reliable=False)
        await until(lambda: len(to_bob) == 2 and len(to_alice) == 2)
        assert to_bob == [(b"reliable a", rtc.DataPacketKind.KIND_RELIABLE), (b"lossy a", rtc.DataPacketKind.KIND_LOSSY)]
        assert to_alice == [(b"reliable b", rtc.DataPacketKind.KIND_RELIABLE), (b"lossy b", rtc.DataPacketKind.KIND_LOSSY)]

        @bob.local_participant.register_rpc_method("add")
        async def add(data: rtc.RpcInvocationData) -> str:
            return str(sum(int(x) for x in data.payload.split()))

        @alice.local_participant.register_rpc_method("shout")
        async def shout(data: rtc.RpcInvocationData) -> str:
            return data.payload.upper()

        assert await alice.local_participant.perform_rpc(destination_identity="bob", method="add", payload="2 3") == "5"
        assert await bob.local_participant.perform_rpc(destination_identity="alice", method="shout", payload="hi") == "HI"
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()
    log = server.log()
    assert "404" not in log and " ERROR " not in log and "WARNING" not in log, log[-3000:]


async def test_unsubscribing_and_resubscribing_reuses_the_clients_m_lines(server) -> None:
    """A subscription ends (the m-line goes inactive in the next answer) and comes back (placed again, in a free
    recvonly m-line): the subscriber sees the track go and return, and decodes it again."""
    room = "v1-resubscribe"
    alice = await connect(server, "alice", room)
    bob = await connect(server, "bob", room)
    publisher = Publisher(alice, tone=False)
    try:
        await publisher.start()
        tracks = await wait_for_tracks(bob, 2)
        video = next(p for p in remote(bob, "alice").track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO)
        for _ in range(2):
            video.set_subscribed(False)
            await until(lambda: video.track is None)
            video.set_subscribed(True)
            await until(lambda: video.track is not None)
            assert any(matches_card(frame) for frame in await decoded_video(video.track, frames=5))
        assert tracks["audio"] is not None
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()
