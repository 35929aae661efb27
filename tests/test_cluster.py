"""Cluster mode: three tern nodes on loopback sharing one (private) Redis, as LiveKit nodes do. A room lives on one
node; SDK clients connecting to any node for it are relayed there and meet; its media goes through that node only."""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import aiohttp
import pytest
import redis.asyncio
from aiortc import RTCPeerConnection
from livekit import api, rtc
from livekit.protocol import rtc as signal

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET, ROOT, Server, free_port, start_server, stop_server
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from bench.redis_server import RedisServer
from signal_client import SignalClient
from signaling.cluster.ingress import RedisIngressStore
from test_ingress import _publish
from test_rtmp import _encoder, _stop

NODES = 3


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    yield server
    server.stop()


class WebhookLog:
    """A webhook receiver shared by every node: records each event it verifies (a thread: it outlives tests' loops)."""

    def __init__(self) -> None:
        self.events: list[api.WebhookEvent] = []
        receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                events.append(receiver.receive(body, self.headers.get("Authorization", "")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, room: str) -> list[tuple[str, str]]:
        return [(event.event, event.participant.identity) for event in self.events if event.room.name == room]


@pytest.fixture(scope="module")
def webhooks():
    log = WebhookLog()
    yield log
    log.server.shutdown()


@pytest.fixture(scope="module")
def nodes(redis_server: RedisServer, webhooks: WebhookLog, tmp_path_factory: pytest.TempPathFactory):
    # Rooms close a second after their last participant leaves, so tests see their placement released. The nodes
    # share this machine's load average, each reading it at its own moment: with the default sysload limit a loaded
    # test machine near 0.9 per core would exclude some nodes and not others, and placement would not spread.
    config = (f"redis: {{address: '{redis_server.address}'}}\nroom: {{departure_timeout: 1, empty_timeout: 5}}\n"
              f"webhook: {{api_key: {API_KEY}, urls: ['{webhooks.url}']}}\nnode_selector: {{sysload_limit: 1000}}\n")
    started = [start_server(tmp_path_factory.mktemp(f"node{i}"),
                            config=config + f"ingress: {{rtmp_port: {free_port()}}}\n") for i in range(NODES)]
    ids = [node_id(node) for node in started]
    client = redis_server.client()
    deadline = time.monotonic() + 10
    while len(client.keys("tern:node:*")) < NODES:  # every node registered
        assert time.monotonic() < deadline, "nodes did not register"
        time.sleep(0.1)
    yield list(zip(started, ids))
    for node in started:
        stop_server(node)
    for node in started:
        assert "Traceback" not in node.log(), node.log()


def node_id(server: Server) -> str:
    line = next(line for line in server.log().splitlines() if "cluster node ND_" in line)
    return line.split("cluster node ")[1].split()[0]


def owner(redis_server: RedisServer, room: str) -> str | None:
    value = redis_server.client().hget("tern:room_node", room)
    return value.decode() if value is not None else None


def test_nodes_list_shows_every_live_node(nodes):
    (first, _), *_ = nodes
    result = subprocess.run(
        [sys.executable, "-m", "signaling", "nodes", "list", "--url", first.http, "--api-key", API_KEY,
         "--api-secret", API_SECRET], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "IPS", "REGION", "STATE"]
    assert {line.split()[0] for line in lines[1:]} == {node for _, node in nodes}
    assert all(line.split()[1:4] == ["127.0.0.1", "-", "SERVING"] for line in lines[1:])


async def test_clients_of_three_nodes_meet_in_one_room_and_exchange_media_and_data(nodes, redis_server):
    (a, _), (b, _), (c, _) = nodes
    alice = await connect(a, "alice", "meet")
    host = owner(redis_server, "meet")
    bob = await connect(b, "bob", "meet")
    carol = await connect(c, "carol", "meet", single_peer_connection=False)  # /rtc, two peer connections
    rooms = (alice, bob, carol)
    publisher = Publisher(alice)
    try:
        await until(lambda: all(len(room.remote_participants) == 2 for room in rooms))
        assert owner(redis_server, "meet") == host  # sticky
        before = {node: server.counters() for server, node in nodes}
        await publisher.start()
        for room in (bob, carol):
            tracks = await wait_for_tracks(room, 2)
            assert matches_card((await decoded_video(tracks["video"], frames=5))[-1])
            assert abs(dominant_frequency(await decoded_audio(tracks["audio"], 0.5)) - TONE_HZ) < 20
        received: list[tuple[str, bytes]] = []
        carol.on("data_received", lambda p: received.append((p.participant.identity, p.data)))
        await bob.local_participant.publish_data(b"from node b", reliable=True)
        await until(lambda: received == [("bob", b"from node b")])
        # The media went through the room's node only: the others forwarded nothing and received no RTP.
        for server, node in nodes:
            after = server.counters()
            forwarded = after.get("forwarded", 0) - before[node].get("forwarded", 0)
            assert (forwarded > 100) == (node == host), (node, host, forwarded)
        relayed = sum(server.counters().get("relay_connections_in", 0) for server, _ in nodes)
        assert relayed >= 2  # bob's and carol's connections, at least, reached the room through a relay
    finally:
        await publisher.stop()
        for room in rooms:
            await room.disconnect()
    await until(lambda: owner(redis_server, "meet") is None, timeout=15)  # released when the room closed


async def test_a_join_race_through_every_node_gives_the_room_one_owner(nodes, redis_server):
    token = lambda i: api.AccessToken(API_KEY, API_SECRET).with_identity(f"racer{i}").with_grants(
        api.VideoGrants(room_join=True, room="race")).to_jwt()
    joins = await asyncio.gather(*(SignalClient.join(nodes[i % NODES][0].url, token(i)) for i in range(20)))
    try:
        assert len({join.room.sid for _, join in joins}) == 1
        assert len({join.server_info.node_id for _, join in joins}) == 1
        host = owner(redis_server, "race")
        assert joins[0][1].server_info.node_id == host
        assert sum("room race (" in line and "created" in line for server, _ in nodes
                   for line in server.log().splitlines()) == 1
    finally:
        for client, _ in joins:  # dropped, not closed: each has more unread updates than the client library buffers
            client.connection.transport.abort()


async def test_leave_resume_and_token_refresh_through_the_relay(nodes, redis_server):
    (a, _), (b, _), _ = nodes
    first = await connect(a, "anchor", "relayed")  # the room now lives on a's pick
    host = owner(redis_server, "relayed")
    signal_url = next(server.url for server, node in nodes if node != host)
    token = api.AccessToken(API_KEY, API_SECRET).with_identity("walker").with_ttl(
        datetime.timedelta(seconds=4)).with_grants(api.VideoGrants(room_join=True, room="relayed"))
    client, join = await SignalClient.join(signal_url, token.to_jwt())
    try:
        assert join.server_info.node_id == host and join.participant.identity == "walker"
        refresh = await client.receive_until("refresh_token", timeout=8)  # half the token's life
        assert refresh.refresh_token
        await until(lambda: remote(first, "walker") is not None)
        # A resume naming a session that never connected media is refused through the relay, as directly.
        resumed, answer = await SignalClient.reconnect(signal_url, refresh.refresh_token, "PA_unknown")
        assert answer.WhichOneof("message") == "leave"
        await resumed.connection.close()
        await client.send(signal.SignalRequest(leave=signal.LeaveRequest()))
        await until(lambda: remote(first, "walker") is None)
    finally:
        await client.connection.close()
        await first.disconnect()


async def test_room_service_through_any_node_and_webhooks_once(nodes, redis_server, webhooks):
    """RoomService calls made to a node that does not host the room: ListRooms and ListParticipants see the room,
    a mute and a removal reach its participants; each webhook event of the room arrives once."""
    (a, _), (b, _), _ = nodes
    alice = await connect(a, "alice", "svc")
    host = owner(redis_server, "svc")
    bob = await connect(b, "bob", "svc")
    publisher = Publisher(alice, video=False)
    try:
        await publisher.start()
        await until(lambda: remote(bob, "alice") is not None and remote(bob, "alice").track_publications)
        track_sid = next(iter(remote(bob, "alice").track_publications))
        elsewhere = [server for server, node in nodes if node != host]
        for server in elsewhere:
            async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as client:
                rooms = (await client.room.list_rooms(api.ListRoomsRequest())).rooms
                assert [room.num_participants for room in rooms if room.name == "svc"] == [2]
                listed = (await client.room.list_participants(api.ListParticipantsRequest(room="svc"))).participants
                assert sorted(p.identity for p in listed) == ["alice", "bob"]
        async with api.LiveKitAPI(elsewhere[0].http, API_KEY, API_SECRET) as client:
            muted = await client.room.mute_published_track(api.MuteRoomTrackRequest(
                room="svc", identity="alice", track_sid=track_sid, muted=True))
            assert muted.track.muted and muted.track.sid == track_sid
            await until(lambda: remote(bob, "alice").track_publications[track_sid].muted)
            await client.room.remove_participant(api.RoomParticipantIdentity(room="svc", identity="bob"))
            await until(lambda: bob.connection_state == rtc.ConnectionState.CONN_DISCONNECTED)
            with pytest.raises(api.TwirpError) as missing:
                await client.room.remove_participant(api.RoomParticipantIdentity(room="svc", identity="nobody"))
            assert missing.value.code == api.TwirpErrorCode.NOT_FOUND
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()
    await until(lambda: ("room_finished", "") in webhooks.of("svc"), timeout=15)
    await asyncio.sleep(0.5)  # any duplicate would have arrived by now
    events = webhooks.of("svc")
    assert sorted(events) == sorted(set(events)), events  # each once
    assert {("room_started", ""), ("participant_joined", "alice"), ("participant_joined", "bob"),
            ("track_published", "alice"), ("participant_left", "bob"), ("participant_left", "alice"),
            ("room_finished", "")} <= set(events)


async def test_an_ingress_made_through_one_node_streams_through_any(nodes, redis_server):
    """IngressService through any node sees one ingress (in Redis); a WHIP publisher reaching a node that does not
    host the ingress's room is served by the room's node (its media goes there), ends by a DELETE reaching yet another
    node, and DeleteIngress through any node ends its next session. A WHEP viewer reaching another node, and a WHIP
    publisher with a join token (/whip/v1), too."""
    (a, _), *_ = nodes
    async with api.LiveKitAPI(a.http, API_KEY, API_SECRET) as client:
        info = await client.ingress.create_ingress(api.CreateIngressRequest(
            input_type=api.IngressInput.WHIP_INPUT, room_name="ingest", participant_identity="streamer"))
    viewer = await connect(a, "viewer", "ingest")
    host = owner(redis_server, "ingest")
    (x, y) = [server for server, node in nodes if node != host]
    pcs = []
    async with api.LiveKitAPI(x.http, API_KEY, API_SECRET) as via_x, \
            api.LiveKitAPI(y.http, API_KEY, API_SECRET) as via_y, aiohttp.ClientSession() as http:
        try:
            listed = (await via_x.ingress.list_ingress(api.ListIngressRequest(room_name="ingest"))).items
            assert [item.stream_key for item in listed] == [info.stream_key]
            await via_y.ingress.update_ingress(api.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                                        participant_name="The Streamer"))
            before = {node: server.counters().get("forwarded", 0) for server, node in nodes}
            pc, location = await _publish(http, f"{x.http}/w/{info.stream_key}")
            pcs.append(pc)
            assert location.startswith(f"{x.http}/w/{info.stream_key}/")  # the URL the client used
            tracks = await wait_for_tracks(viewer, 2)
            assert remote(viewer, "streamer").name == "The Streamer"
            assert matches_card((await decoded_video(tracks["video"], frames=5))[-1])
            forwarded = {node: server.counters().get("forwarded", 0) - before[node] for server, node in nodes}
            assert forwarded[host] > 0 and not any(n for node, n in forwarded.items() if node != host), forwarded
            listed = (await via_y.ingress.list_ingress(api.ListIngressRequest(ingress_id=info.ingress_id))).items
            assert listed[0].state.status == api.IngressState.Status.ENDPOINT_PUBLISHING
            watcher = await _watch(http, y, "viewer", "streamer")  # WHEP through a node that does not host the room
            async with http.delete(watcher) as response:
                assert response.status == 200
            async with http.delete(location.replace(x.http, y.http)) as response:  # the resource through another node
                assert response.status == 200, await response.text()
            await until(lambda: remote(viewer, "streamer") is None)
            pc, _ = await _publish(http, f"{y.http}/w/{info.stream_key}")
            pcs.append(pc)
            await until(lambda: remote(viewer, "streamer") is not None)
            await via_x.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=info.ingress_id))
            await until(lambda: remote(viewer, "streamer") is None)
            pc, location = await _publish(http, f"{y.http}/whip/v1", token=y.token("tokened", "ingest"))  # LiveKit's
            pcs.append(pc)
            await until(lambda: remote(viewer, "tokened") is not None)
            async with http.delete(location.replace(y.http, x.http)) as response:
                assert response.status == 200, await response.text()
            await until(lambda: remote(viewer, "tokened") is None)
            assert not (await via_y.ingress.list_ingress(api.ListIngressRequest(room_name="ingest"))).items
        finally:
            for pc in pcs:
                await pc.close()
            await viewer.disconnect()
    assert not redis_server.client().hlen("tern:ingress_node")


async def test_rtmp_ingest_into_a_room_on_another_node_is_handed_over(nodes, redis_server):
    """An RTMP encoder reaching a node that does not host the room publishes into it: that node keeps the RTMP
    session and the ingress's claim, the room's node serves the publisher (the media goes there only); ListIngress
    through any node follows the session to its end."""
    (a, _), *_ = nodes
    viewer = await connect(a, "viewer", "rtmp-ingest")
    host = owner(redis_server, "rtmp-ingest")
    (elsewhere, holder), (third, _) = [(server, node) for server, node in nodes if node != host]
    port = next(line for line in elsewhere.log().splitlines() if "RTMP ingest on" in line).rsplit(":", 1)[1]
    client = redis_server.client()

    async with api.LiveKitAPI(third.http, API_KEY, API_SECRET) as lk:
        info = await lk.ingress.create_ingress(api.CreateIngressRequest(
            input_type=api.IngressInput.RTMP_INPUT, room_name="rtmp-ingest", participant_identity="encoder"))

        async def status() -> int:
            return (await lk.ingress.list_ingress(api.ListIngressRequest(ingress_id=info.ingress_id))).items[0] \
                .state.status

        before = {node: server.counters().get("forwarded", 0) for server, node in nodes}
        encoder = _encoder(f"rtmp://127.0.0.1:{port}/live/{info.stream_key}")
        try:
            tracks = await wait_for_tracks(viewer, 2)
            assert matches_card((await decoded_video(tracks["video"], frames=5))[-1])
            assert remote(viewer, "encoder").attributes.get("tern.ingress") == "rtmp"
            forwarded = {node: server.counters().get("forwarded", 0) - before[node] for server, node in nodes}
            assert forwarded[host] > 0 and not any(n for node, n in forwarded.items() if node != host), forwarded
            assert client.hget("tern:ingress_node", info.ingress_id) == holder.encode()
            for _ in range(50):
                if await status() == api.IngressState.Status.ENDPOINT_PUBLISHING:
                    break
                await asyncio.sleep(0.1)
            assert await status() == api.IngressState.Status.ENDPOINT_PUBLISHING
        finally:
            code, errors = await _stop(encoder)
        assert code == 0, errors[-2000:]
        await until(lambda: remote(viewer, "encoder") is None)
        await until(lambda: not client.hlen("tern:ingress_node"))
        assert await status() == api.IngressState.Status.ENDPOINT_INACTIVE
        await lk.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=info.ingress_id))
    await viewer.disconnect()


async def test_the_ingress_sessions_of_a_dead_node_are_ended(redis_server):
    """Against the real Redis: a session held by a node that is gone is set INACTIVE and released by the sweep; one
    of a live node stays."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    store = RedisIngressStore(client, SimpleNamespace(node_id="ND_live"), Counter())
    try:
        for ingress_id, holder in (("IN_dead", "ND_gone"), ("IN_live", "ND_live")):
            await store.save(api.IngressInfo(ingress_id=ingress_id, stream_key=f"key-{ingress_id}", room_name="r"))
            await client.hset("tern:ingress_state", ingress_id, api.IngressState(
                status=api.IngressState.Status.ENDPOINT_PUBLISHING).SerializeToString())
            await client.hset("tern:ingress_node", ingress_id, holder)
        await store.sweep({"ND_live"})
        dead, live = await store.get("IN_dead"), await store.get("IN_live")
        assert dead.state.status == api.IngressState.Status.ENDPOINT_INACTIVE and dead.state.error
        assert live.state.status == api.IngressState.Status.ENDPOINT_PUBLISHING
        assert await client.hgetall("tern:ingress_node") == {b"IN_live": b"ND_live"}
        for info in (dead, live):
            await store.delete(info)
        assert not await client.exists("tern:ingress", "tern:ingress_state", "tern:ingress_key", "tern:ingress_node")
    finally:
        await client.aclose()


async def _watch(http: aiohttp.ClientSession, server: Server, identity: str, publisher: str) -> str:
    """A WHEP viewer's offer of `publisher`'s tracks to `server`: its resource's URL."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with http.post(f"{server.http}/whep/v1?participant={publisher}", data=pc.localDescription.sdp, headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {server.token(identity + '-whep', 'ingest')}"}) as response:
            assert response.status == 201, await response.text()
            return response.headers["Location"]
    finally:
        await pc.close()


async def test_agent_dispatches_through_any_node(nodes, redis_server):
    """AgentDispatchService through any node runs on the room's node: a dispatch created through one node (placing
    the room) is listed and deleted through the others."""
    clients = [api.LiveKitAPI(server.http, API_KEY, API_SECRET) for server, _ in nodes]
    try:
        made = await clients[0].agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            room="dispatched", agent_name="helper", metadata="m"))
        assert owner(redis_server, "dispatched") is not None
        for client in clients:
            listed = await client.agent_dispatch.list_dispatch("dispatched")
            assert [(d.id, d.agent_name) for d in listed] == [(made.id, "helper")]
        await clients[2].agent_dispatch.delete_dispatch(made.id, "dispatched")
        assert not await clients[1].agent_dispatch.list_dispatch("dispatched")
        await clients[1].room.delete_room(api.DeleteRoomRequest(room="dispatched"))
    finally:
        for client in clients:
            await client.aclose()
    await until(lambda: owner(redis_server, "dispatched") is None, timeout=15)


async def test_placement_spreads_new_rooms_by_load(nodes, redis_server):
    (a, _), *_ = nodes
    names = [f"spread-{i}" for i in range(6)]
    client = redis_server.client()
    loads = lambda: [json.loads(client.get(key)) for key in client.keys("tern:node:*")]
    claimed = lambda: Counter({node.decode(): int(count) for node, count in client.hgetall("tern:room_counts").items()
                               if int(count)})
    # earlier tests' rooms are gone, from the nodes' reports and from the claims placement counts
    await until(lambda: all(load["rooms"] == 0 for load in loads()) and not claimed(), timeout=15)
    async with api.LiveKitAPI(a.http, API_KEY, API_SECRET) as service:
        for name in names:
            await service.room.create_room(api.CreateRoomRequest(name=name))
        hosts = [owner(redis_server, name) for name in names]
        listed = {room.name for room in (await service.room.list_rooms(api.ListRoomsRequest(names=names))).rooms}
        counted = claimed()
        for name in names:
            await service.room.delete_room(api.DeleteRoomRequest(room=name))
    assert listed == set(names)
    per_node = Counter(hosts)
    assert set(per_node) == {node for _, node in nodes} and max(per_node.values()) - min(per_node.values()) <= 1
    assert counted == per_node
    await until(lambda: not any(owner(redis_server, name) for name in names) and not claimed())


async def test_room_counts_drifted_from_the_placements_are_mended(nodes, redis_server):
    """Placement counts rooms per node from Redis; the claims and releases keep the counts exact, and each sweep
    counts them afresh from the placements, so an edit by hand (or a node of an older version) does not skew it."""
    (a, _), *_ = nodes
    client = redis_server.client()
    alice = await connect(a, "alice", "counted")
    try:
        host = owner(redis_server, "counted")
        await until(lambda: client.hget("tern:room_counts", host) == b"1")
        client.hset("tern:room_counts", mapping={"ghost": 7, host: -3})
        await until(lambda: client.hgetall("tern:room_counts") == {host.encode(): b"1"}, timeout=15)
    finally:
        await alice.disconnect()


async def test_redis_restart_mid_call_keeps_media_flowing_and_joins_work_after(nodes, redis_server):
    (a, _), (b, _), (c, _) = nodes
    alice = await connect(a, "alice", "through-restart")
    bob = await connect(b, "bob", "through-restart")
    publisher = Publisher(alice)
    try:
        await publisher.start()
        tracks = await wait_for_tracks(bob, 2)
        redis_server.client().shutdown(save=True)  # as `systemctl restart redis-server` with Debian's snapshots
        redis_server.process.wait(10)
        frames = await decoded_video(tracks["video"], frames=20, timeout=5)  # forwarded while Redis is down
        assert matches_card(frames[-1])
        assert redis_server.process.poll() is not None
        await asyncio.to_thread(redis_server.start)
        await until(lambda: len(redis_server.client().keys("tern:node:*")) == NODES)  # all registered again
        carol = await asyncio.wait_for(connect(c, "carol", "through-restart"), 20)
        try:
            await until(lambda: remote(carol, "alice") is not None and remote(carol, "bob") is not None, timeout=20)
            assert matches_card((await decoded_video((await wait_for_tracks(carol, 2))["video"], frames=5))[-1])
        finally:
            await carol.disconnect()
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


async def test_a_forgetful_redis_is_refilled_by_the_nodes(nodes, redis_server):
    """Redis restarted empty (no persistence): every node registers again and re-claims and relists its rooms."""
    (a, _), *_ = nodes
    alice = await connect(a, "alice", "refill")
    host = owner(redis_server, "refill")
    try:
        redis_server.client().flushall()
        await until(lambda: owner(redis_server, "refill") == host, timeout=10)
        await until(lambda: len(redis_server.client().keys("tern:node:*")) == NODES, timeout=10)
        assert redis_server.client().hexists("tern:rooms", "refill")
        assert redis_server.client().hget("tern:room_counts", host) == b"1"  # counted again with its claim
    finally:
        await alice.disconnect()


async def test_kill_9_of_the_rooms_node_moves_its_clients_to_a_live_node(nodes, redis_server):
    """Last (it kills a node). Clients relayed to the room's node through the others are back in the room on a live
    node, by the SDK's own reconnects, within NODE_TTL_S + 2 relay checks + the SDK's retries; Redis keeps nothing
    naming the dead node."""
    (a, _), *_ = nodes
    async with api.LiveKitAPI(a.http, API_KEY, API_SECRET) as client:
        await client.room.create_room(api.CreateRoomRequest(name="phoenix"))
    host = owner(redis_server, "phoenix")
    doomed = next(server for server, node in nodes if node == host)
    survivors = [server for server, node in nodes if node != host]
    alice = await connect(survivors[0], "alice", "phoenix")
    bob = await connect(survivors[1], "bob", "phoenix")
    received: list[bytes] = []
    alice.on("data_received", lambda packet: received.append(packet.data))
    try:
        await until(lambda: remote(alice, "bob") is not None and remote(bob, "alice") is not None)
        doomed.process.kill()
        killed_at = time.monotonic()

        async def delivered() -> None:  # bob's data reaches alice: both are in one working room again
            while not received:
                if bob.connection_state == rtc.ConnectionState.CONN_CONNECTED and remote(bob, "alice") is not None:
                    with contextlib.suppress(Exception):
                        await bob.local_participant.publish_data(b"still here", reliable=True)
                await asyncio.sleep(0.5)

        await asyncio.wait_for(delivered(), 45)
        new_host = owner(redis_server, "phoenix")
        assert new_host not in (None, host)
        print(f"clients back in the room on {new_host} {time.monotonic() - killed_at:.1f} s after the kill")
        client = redis_server.client()
        await until(lambda: host.encode() not in client.hvals("tern:room_node")
                    and not client.exists(f"tern:node:{host}") and host.encode() not in client.smembers("tern:nodes")
                    and not client.hexists("tern:room_counts", host), timeout=15)
    finally:
        await alice.disconnect()
        await bob.disconnect()
