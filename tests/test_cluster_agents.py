"""Agent workers across a cluster: stock livekit-agents workers (tests/agent_worker.py) connected to one tern node
serve rooms hosted on the other, whatever the dispatch (automatic, AgentDispatchService through either node); when
the workers' node dies, its jobs are failed and given to a worker of a live node."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from livekit import api, rtc
from livekit.protocol import agent

from agents_env import agents_python
from clients import connect, until
from conftest import API_KEY, API_SECRET, start_server, stop_server
from media import TONE_HZ, Publisher, decoded_audio, dominant_frequency
from test_agents import WORKER_TAG_ATTRIBUTE, Worker, server_env
from test_cluster import node_id, redis_server  # noqa: F401 (redis_server: the fixture)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore:The HMAC key")]


@pytest.fixture(scope="module")
def nodes(redis_server, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    with server_env():
        started = [start_server(tmp_path_factory.mktemp(f"node{i}"),
                                config=f"redis: {{address: '{redis_server.address}'}}\n") for i in range(2)]
    yield started
    for node in started:
        stop_server(node)
    for node in started:
        assert "Traceback" not in node.log(), node.log()


@pytest.fixture(scope="module")
def workers(nodes, tmp_path_factory: pytest.TempPathFactory):
    """On node a: an automatic worker and a "helper" one; on node b: a "helper" worker reporting itself half busy,
    so the less loaded one on a is chosen while a lives."""
    a, b = nodes
    python, logs = agents_python(), tmp_path_factory.mktemp("workers")
    started = {tag: Worker(python, server, logs, tag, agent_name, load)
               for tag, server, agent_name, load in (("auto-a", a, "", 0.0), ("helper-a", a, "helper", 0.0),
                                                     ("helper-b", b, "helper", 0.5))}
    yield started
    for worker in started.values():
        worker.stop()


def agent_of(room: rtc.Room, tag: str) -> rtc.RemoteParticipant | None:
    return next((p for p in room.remote_participants.values() if p.attributes.get(WORKER_TAG_ATTRIBUTE) == tag), None)


async def reply_from(room: rtc.Room, agent: rtc.RemoteParticipant, payload: bytes, timeout: float = 15) -> None:
    """`agent` answers a ping sent to it alone (asked again every second: it may join before it listens)."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()

    def on_data(packet: rtc.DataPacket) -> None:
        if packet.topic == "pong" and packet.participant is not None and packet.participant.identity == agent.identity:
            replies.put_nowait(packet.data)

    room.on("data_received", on_data)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await room.local_participant.publish_data(payload, reliable=True, topic="ping",
                                                      destination_identities=[agent.identity])
            try:
                assert await asyncio.wait_for(replies.get(), 1) == b"pong:" + payload
                return
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer from {agent.identity}")
    finally:
        room.off("data_received", on_data)


async def helpers_known_with_loads(server) -> bool:
    """Whether `server` knows both "helper" workers, one idle and one half busy (tern's GET /agent/workers)."""
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_list=True)).to_jwt()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http}/agent/workers", headers={"Authorization": f"Bearer {token}"}) as r:
            report = await r.json()
    loads = sorted(w["load"] for w in report["workers"] if w["agent_name"] == "helper")
    return len(loads) == 2 and loads[0] < 0.25 and loads[1] >= 0.4


async def until_async(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.25)


def jobs_of(dispatch) -> list[tuple[int, str]]:
    return [(job.state.status, job.state.worker_id) for job in dispatch.state.jobs]


async def test_workers_of_one_node_serve_a_room_of_the_other_and_survive_its_death(nodes, workers, redis_server):  # noqa: F811
    a, b = nodes
    await asyncio.gather(*(worker.registered() for worker in workers.values()))
    redis_server.client().hset("tern:room_node", "far", node_id(b))  # the room is placed on b
    user = await connect(b, "alice", "far")
    publisher = Publisher(user, video=False)
    try:
        await publisher.start()
        # Automatic dispatch: the only automatic worker is on a; its agent joins through a (relayed to b) and echoes.
        await until(lambda: agent_of(user, "auto-a") is not None, 30)
        echo = agent_of(user, "auto-a")
        await until(lambda: any(p.track is not None for p in echo.track_publications.values()), 20)
        track = next(p.track for p in echo.track_publications.values() if p.track is not None)
        assert abs(dominant_frequency(await decoded_audio(track, seconds=1.0)) - TONE_HZ) < 10
        await reply_from(user, echo, b"auto")
        assert a.counters().get("relay_connections_out", 0) >= 1
        async with api.LiveKitAPI(a.http, API_KEY, API_SECRET) as via_a, \
                api.LiveKitAPI(b.http, API_KEY, API_SECRET) as via_b:
            # Explicit dispatch through a: the helper on a (less loaded than b's) gets the job of b's room. The
            # choice reads the loads the workers reported: first b must know both, its own as half busy (the SDK
            # reports a load some seconds after registering, and a's workers reach b through Redis every 2 s).
            await until_async(lambda: helpers_known_with_loads(b), 20)
            made = await via_a.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                room="far", agent_name="helper"))
            await until(lambda: agent_of(user, "helper-a") is not None, 20)
            await reply_from(user, agent_of(user, "helper-a"), b"helper")
            [listed] = [d for d in await via_a.agent_dispatch.list_dispatch("far") if d.id == made.id]
            [(status, first_worker)] = jobs_of(listed)
            assert status == agent.JS_RUNNING and first_worker.startswith("AW_")
            # Node a dies with its workers' connections and the agents' relayed signal connections: the jobs fail,
            # and the helper's is given to the worker on b; the user, on b, is served again.
            a.process.kill()
            killed_at = time.monotonic()
            await until(lambda: agent_of(user, "helper-b") is not None, 40)
            await reply_from(user, agent_of(user, "helper-b"), b"again")
            print(f"the job's new agent answered {time.monotonic() - killed_at:.1f} s after the kill")
            [listed] = [d for d in await via_b.agent_dispatch.list_dispatch("far") if d.id == made.id]
            jobs = jobs_of(listed)
            assert jobs[0] == (agent.JS_FAILED, first_worker) and jobs[-1][0] == agent.JS_RUNNING, jobs
            assert jobs[-1][1] not in (first_worker, "")
            await until(lambda: agent_of(user, "helper-a") is None and agent_of(user, "auto-a") is None, 20)
    finally:
        await publisher.stop()
        await user.disconnect()
