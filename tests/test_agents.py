"""LiveKit Agents against tern: stock livekit-agents workers (tests/agent_worker.py, in their own environment:
tests/agents_env.py) register on /agent and get jobs; users of the LiveKit SDK hear and talk to the agents; operators
dispatch through livekit-api's AgentDispatchService; bare protobuf workers misbehave."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import websockets
from livekit import api, rtc
from livekit.protocol import agent

from agents_env import agents_python
from clients import connect, remote, until
from conftest import API_KEY, API_SECRET, ROOT, start_server, stop_server
from media import TONE_HZ, Publisher, decoded_audio, dominant_frequency
from test_cli import tern  # noqa: F401 (the in-process CLI fixture)
from test_webhook import Receiver, webhooks  # noqa: F401 (webhooks: the fixture)

# The dev secret is short; pytest resets the filter signaling/auth.py installs for pyjwt's warning about it.
pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.filterwarnings("ignore:The HMAC key")]

WORKER = ROOT / "tests" / "agent_worker.py"
WORKER_TAG_ATTRIBUTE = "test.worker"  # agent_worker.py's
# Short enough for the tests to see a worker skipped, and an agent whose worker died leave the room, in seconds.
SERVER_ENV = {"TERN_AGENT_AVAILABILITY_TIMEOUT": "2", "TERN_SIGNAL_DEPARTURE_TIMEOUT": "2"}


@contextlib.contextmanager
def server_env() -> Iterator[None]:
    """SERVER_ENV in the environment of the servers started meanwhile."""
    saved = {name: os.environ.get(name) for name in SERVER_ENV}
    os.environ.update(SERVER_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, webhooks: Receiver):
    with server_env():
        server = start_server(tmp_path_factory.mktemp("tern"),
                              config=f"webhook:\n  api_key: {API_KEY}\n  urls: [{webhooks.url}]\n")
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def python() -> Path:
    return agents_python()


class Worker:
    """A livekit-agents worker process (agent_worker.py)."""

    def __init__(self, python: Path, server, log_dir: Path, tag: str, agent_name: str = "", load: float = 0.0) -> None:
        self.tag = tag
        self.log_path = log_dir / f"worker-{tag}.log"
        env = {**os.environ, "LIVEKIT_URL": server.url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET,
               "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0"}
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen([str(python), str(WORKER), "--tag", tag, "--agent-name", agent_name,
                                             "--load", str(load)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def registered(self, timeout: float = 30) -> None:
        await until(lambda: "registered worker" in self.log() or self.process.poll() is not None, timeout)
        assert self.process.poll() is None, self.log()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def workers(python: Path, server, tmp_path: Path):
    started: list[Worker] = []

    def start(tag: str, agent_name: str = "") -> Worker:
        worker = Worker(python, server, tmp_path, tag, agent_name)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def lkapi(server) -> api.LiveKitAPI:
    return api.LiveKitAPI(server.http, API_KEY, API_SECRET)


def agent_in(room: rtc.Room) -> rtc.RemoteParticipant | None:
    return next((p for p in room.remote_participants.values() if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT),
                None)


async def agent_joins(room: rtc.Room, timeout: float = 20) -> rtc.RemoteParticipant:
    await until(lambda: agent_in(room) is not None, timeout)
    participant = agent_in(room)
    assert participant is not None
    return participant


async def data_reply(room: rtc.Room, payload: bytes, timeout: float = 10) -> bytes:
    """The agent's answer to a ping; asked again every second, as the agent may join before it listens."""
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    room.on("data_received", lambda packet: replies.put_nowait(packet.data) if packet.topic == "pong" else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await room.local_participant.publish_data(payload, reliable=True, topic="ping")
        try:
            return await asyncio.wait_for(replies.get(), 1)
        except TimeoutError:
            continue
    raise TimeoutError("no answer from the agent")


async def test_automatic_dispatch_echoes_audio_and_data(server, workers) -> None:
    worker = workers("auto")
    await worker.registered()
    async with lkapi(server) as client:
        # One participant allowed, and the room closes a second after its last one leaves: agents change neither.
        await client.room.create_room(api.CreateRoomRequest(name="echo", max_participants=1, departure_timeout=1))
    user = await connect(server, "alice", "echo")
    publisher = Publisher(user, video=False)
    await publisher.start()
    try:
        bot = await agent_joins(user)
        assert bot.identity.startswith("agent-AJ_")
        assert bot.attributes.get("lk.agent_name") == "" and bot.attributes[WORKER_TAG_ATTRIBUTE] == "auto"
        await until(lambda: any(p.track is not None for p in bot.track_publications.values()), 20)
        track = next(p.track for p in bot.track_publications.values() if p.track is not None)
        samples = await decoded_audio(track, seconds=1.0)
        assert np.abs(samples).max() > 1000 and abs(dominant_frequency(samples) - TONE_HZ) < 10
        assert await data_reply(user, b"hello") == b"pong:hello"
    finally:
        await publisher.stop()
        await user.disconnect()
    async with lkapi(server) as client:  # the agent does not keep the room open
        for _ in range(100):
            if not (await client.room.list_rooms(api.ListRoomsRequest(names=["echo"]))).rooms:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the room stayed open with only its agent")
    counters = server.counters()
    assert counters["agent_jobs_accepted"] >= 1


async def test_explicit_dispatch_by_token_and_by_api(server, workers) -> None:
    worker = workers("named", agent_name="helper")
    await worker.registered()
    # A join token's roomConfig names the agent: the room it creates starts with that dispatch.
    token = (api.AccessToken(API_KEY, API_SECRET).with_identity("bob")
             .with_grants(api.VideoGrants(room_join=True, room="by-token"))
             .with_room_config(api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name="helper",
                                                                                  metadata="from token")])).to_jwt())
    bob = rtc.Room()
    await bob.connect(server.url, token)
    carol = await connect(server, "carol", "by-api")
    try:
        bot = await agent_joins(bob)
        assert bot.attributes["lk.agent_name"] == "helper"
        assert await data_reply(bob, b"token") == b"pong:token"
        async with lkapi(server) as client:
            [dispatch] = await client.agent_dispatch.list_dispatch("by-token")  # the token's only
            assert dispatch.agent_name == "helper" and dispatch.metadata == "from token"
            assert [job.state.status for job in dispatch.state.jobs] == [agent.JS_RUNNING]
            assert dispatch.state.jobs[0].state.participant_identity == bot.identity

            # Through AgentDispatchService: into a room already in use (no agent there: named workers get no
            # automatic jobs).
            await asyncio.sleep(0.5)
            assert agent_in(carol) is None
            created = await client.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name="helper", room="by-api", metadata="from api"))
            assert created.id.startswith("AD_")
            bot = await agent_joins(carol)
            assert await data_reply(carol, b"api") == b"pong:api"
            # The room, created by carol's join, also has the automatic dispatch (for workers without agent_name).
            listed = await client.agent_dispatch.list_dispatch("by-api")
            assert sorted(d.agent_name for d in listed) == ["", "helper"]
            [helper] = [d for d in listed if d.id == created.id]
            assert [job.state.status for job in helper.state.jobs] == [agent.JS_RUNNING]

            await client.agent_dispatch.delete_dispatch(created.id, "by-api")
            await until(lambda: agent_in(carol) is None, 10)
            assert [d.agent_name for d in await client.agent_dispatch.list_dispatch("by-api")] == [""]
    finally:
        await bob.disconnect()
        await carol.disconnect()


async def test_two_workers_share_jobs_and_take_over(server, workers) -> None:
    first, second = workers("one", agent_name="pool"), workers("two", agent_name="pool")
    await asyncio.gather(first.registered(), second.registered())
    users = [await connect(server, "user", f"pool-{n}") for n in range(2)]
    late_user = await connect(server, "dave", "pool-late")
    try:
        async with lkapi(server) as client:
            for user in users:
                await client.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                    agent_name="pool", room=user.name))
            bots = [await agent_joins(user) for user in users]
            # Equal load: the second job goes to the worker without one.
            assert {bot.attributes[WORKER_TAG_ATTRIBUTE] for bot in bots} == {"one", "two"}

            # The worker serving the first room dies: its agent leaves, and the other worker's agent takes over.
            dead = first if bots[0].attributes[WORKER_TAG_ATTRIBUTE] == "one" else second
            survivor = "two" if dead is first else "one"
            gone = bots[0].identity
            dead.kill()
            await until(lambda: remote(users[0], gone) is None, 15)
            replacement = await agent_joins(users[0], 15)
            assert replacement.attributes[WORKER_TAG_ATTRIBUTE] == survivor
            assert await data_reply(users[0], b"again") == b"pong:again"

            # A job no worker can take waits for one: here the first worker of its agent_name.
            await client.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
                agent_name="latecomer", room="pool-late"))
            [dispatch] = [d for d in await client.agent_dispatch.list_dispatch("pool-late") if d.agent_name]
            assert [job.state.status for job in dispatch.state.jobs] == [agent.JS_PENDING]
            late = workers("late", agent_name="latecomer")
            await late.registered()
            bot = await agent_joins(late_user)
            assert bot.attributes[WORKER_TAG_ATTRIBUTE] == "late"
    finally:
        for user in [*users, late_user]:
            await user.disconnect()
    counters = server.counters()
    assert counters["agent_jobs_redispatched"] >= 1 and counters["agent_jobs_failed"] >= 1


# -- bare protobuf workers

def worker_token(**grants: object) -> str:
    return api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(**grants)).to_jwt()


async def bare_worker(server, agent_name: str = "", token: str | None = None,
                      job_type: int = agent.JT_ROOM) -> websockets.ClientConnection:
    ws = await websockets.connect(server.url + "/agent",
                                  additional_headers={"Authorization": "Bearer " + (token or worker_token(agent=True))})
    await ws.send(agent.WorkerMessage(register=agent.RegisterWorkerRequest(
        type=job_type, agent_name=agent_name, version="bare")).SerializeToString())
    reply = agent.ServerMessage.FromString(await asyncio.wait_for(ws.recv(), 5))
    assert reply.register.worker_id.startswith("AW_") and reply.register.server_info.agent_protocol == 1
    return ws


async def receive(ws: websockets.ClientConnection, kind: str, timeout: float = 10) -> agent.ServerMessage:
    while True:
        message = agent.ServerMessage.FromString(await asyncio.wait_for(ws.recv(), timeout))
        if message.WhichOneof("message") == kind:
            return message


async def test_worker_without_agent_grant_is_refused(server) -> None:
    for token in (worker_token(room_list=True), "not a token"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(server.url + "/agent", additional_headers={"Authorization": "Bearer " + token})
        assert refused.value.response.status_code == 401


async def test_malformed_messages_close_only_that_worker(server) -> None:
    good, bad = await bare_worker(server, "sturdy"), await bare_worker(server, "sturdy")
    await bad.send(b"\xff\xff\xff not protobuf")
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(bad.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    # The other worker is still served.
    await good.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=42)).SerializeToString())
    assert (await receive(good, "pong")).pong.last_timestamp == 42
    # A message before register, on a fresh connection, is refused the same way.
    ws = await websockets.connect(server.url + "/agent",
                                  additional_headers={"Authorization": "Bearer " + worker_token(agent=True)})
    await ws.send(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=0.5)).SerializeToString())
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    # A flood of pings, and a message over the WebSocket limit: each closes only its sender.
    flooding, oversized = await bare_worker(server, "sturdy"), await bare_worker(server, "sturdy")
    ping = agent.WorkerMessage(ping=agent.WorkerPing(timestamp=1)).SerializeToString()
    for _ in range(400):
        await flooding.send(ping)
    await oversized.send(agent.WorkerMessage(update_job=agent.UpdateJobStatus(
        job_id="AJ_x", error="x" * 2 * 1024 * 1024)).SerializeToString())
    for ws, code in ((flooding, 1008), (oversized, 1009)):
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    await good.send(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=43)).SerializeToString())
    assert (await receive(good, "pong")).pong.last_timestamp == 43
    await good.close()
    counters = server.counters()
    assert counters["agent_worker_malformed"] >= 2 and counters["agent_worker_flooding"] >= 1
    assert counters["agent_worker_message_too_big"] >= 1


async def test_silent_worker_does_not_block_the_job(server, webhooks: Receiver) -> None:
    # Three bare workers of one agent_name, offered the job in turn (equal load, in registration order): the first
    # never answers, the second declines, the third takes it once the first's availability timeout has passed.
    silent = await bare_worker(server, "quiet")
    declining = await bare_worker(server, "quiet")
    answering = await bare_worker(server, "quiet")
    async with lkapi(server) as client:
        started = time.monotonic()
        await client.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(agent_name="quiet", room="quiet"))
        offered = await receive(silent, "availability")
        declined = await receive(declining, "availability")
        await declining.send(agent.WorkerMessage(availability=agent.AvailabilityResponse(
            job_id=declined.availability.job.id, available=False)).SerializeToString())
        request = await receive(answering, "availability")
        assert request.availability.job.id == offered.availability.job.id == declined.availability.job.id
        await answering.send(agent.WorkerMessage(availability=agent.AvailabilityResponse(
            job_id=request.availability.job.id, available=True)).SerializeToString())
        assignment = (await receive(answering, "assignment")).assignment
        assert time.monotonic() - started < 8
        claims = api.TokenVerifier(API_KEY, API_SECRET).verify(assignment.token)
        assert claims.identity == f"agent-{assignment.job.id}" and claims.kind == "agent"
        assert claims.video.room == "quiet" and claims.video.agent and claims.attributes["lk.agent_name"] == "quiet"
        [dispatch] = await client.agent_dispatch.list_dispatch("quiet")
        assert dispatch.state.jobs[0].state.worker_id == assignment.job.state.worker_id
        await client.room.delete_room(api.DeleteRoomRequest(room="quiet"))
    assert (await receive(answering, "termination")).termination.job_id == assignment.job.id
    # Webhooks: the job started (accepted by the worker) and ended (its room was deleted).
    await until(lambda: any(e.event == "agent_job_ended" and e.job.id == assignment.job.id for e in webhooks.events))
    started = next(e for e in webhooks.events if e.event == "agent_job_started" and e.job.id == assignment.job.id)
    assert started.job.state.status == agent.JS_RUNNING and started.room.name == "quiet"
    for ws in (silent, declining, answering):
        await ws.close()


async def test_participant_jobs_are_for_participants_only(server) -> None:
    """A room created with a named agent (CreateRoom.agents): a worker for participant jobs is offered one per
    participant who joins, none for an agent joining; agents do not count as participants."""
    per_user = await bare_worker(server, "per-user", job_type=agent.JT_PARTICIPANT)
    async with lkapi(server) as client:
        await client.room.create_room(api.CreateRoomRequest(
            name="people", agents=[api.RoomAgentDispatch(agent_name="per-user")]))
        user = await connect(server, "erin", "people")
        bot = rtc.Room()
        try:
            offer = (await receive(per_user, "availability")).availability
            assert offer.job.type == agent.JT_PARTICIPANT and offer.job.participant.identity == "erin"
            await per_user.send(agent.WorkerMessage(availability=agent.AvailabilityResponse(
                job_id=offer.job.id, available=False)).SerializeToString())
            token = (api.AccessToken(API_KEY, API_SECRET).with_identity("self-made-agent").with_kind("agent")
                     .with_grants(api.VideoGrants(room_join=True, room="people", agent=True)).to_jwt())
            await bot.connect(server.url, token)
            await until(lambda: remote(user, "self-made-agent") is not None)
            assert remote(user, "self-made-agent").kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
            with pytest.raises(TimeoutError):
                await receive(per_user, "availability", timeout=1.5)
            [room] = (await client.room.list_rooms(api.ListRoomsRequest(names=["people"]))).rooms
            assert room.num_participants == 1
        finally:
            await bot.disconnect()
            await user.disconnect()
            await per_user.close()


async def test_cli_lists_workers_and_drives_dispatches(server, tern) -> None:
    async def ok(*argv: str) -> str:
        run = await tern(*argv)
        assert run.code == 0 and not run.err, run.err
        return run.out

    worker = await bare_worker(server, "cli-agent")
    assert "cli-agent" in await ok("agents", "list")
    assert ("tern_agent_workers", {"agent_name": "cli-agent", "job_type": "JT_ROOM"}, 1.0) in server.metrics()
    created = json.loads(await ok("dispatch", "create", "cli-room", "--agent-name", "cli-agent", "--json"))
    offered = await receive(worker, "availability")
    assert offered.availability.job.dispatch_id == created["id"]
    listing = await ok("dispatch", "list", "cli-room")
    assert created["id"] in listing and "JT_ROOM" in listing
    assert "deleted dispatch" in await ok("dispatch", "delete", "cli-room", created["id"])
    assert "no dispatches" in await ok("dispatch", "list", "cli-room")
    await worker.close()
