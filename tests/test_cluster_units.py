"""Cluster pieces without Redis: the relay's ordered, windowed links over a stand-in bus, hostile bus frames, the
placement choice and node registrations that cannot be read, agent jobs offered to another node's worker."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.protocol import agent, ingress

from signaling.agents.dispatcher import AgentDispatcher
from signaling.agents.remote import WorkerSummary, decode_summaries, encode_summaries
from signaling.agents.worker import Worker
from signaling.cluster.agents import MISSES_TO_DROP, AgentRouter, pack, unpack
from signaling.cluster.memory import MemoryRoomStore

from signaling.cluster import http_relay, relay
from signaling.cluster.ingress import MemoryIngressStore
from signaling.cluster.placement import choose
from signaling.cluster.registry import NodeInfo
from signaling.cluster.relay import CLOSE, DATA, RELAY_WINDOW, START, Relay
from signaling.cluster.rpc import CallFailed, Rpc


class LoopBus:
    """Delivers a published frame to the named node's relay on the next loop turn, as pub/sub would."""

    def __init__(self, relays: dict[str, Relay]) -> None:
        self.relays = relays
        self.published = 0

    async def send(self, node_id: str, frame: bytes) -> bool:
        self.published += 1
        asyncio.get_running_loop().call_soon(self.relays[node_id].on_frame, frame)
        return True


def pair() -> tuple[relay.Link, relay.Link, Counter, LoopBus]:
    counters: Counter[str] = Counter()
    relays = {"A": Relay("A", counters), "B": Relay("B", counters)}
    bus = LoopBus(relays)
    for node in relays.values():
        node.bus = bus  # type: ignore[assignment]
    a = relays["A"]._link(b"c" * 16, "B")
    b = relays["B"]._link(b"c" * 16, "A")
    return a, b, counters, bus


async def test_frames_arrive_in_order_and_a_sender_waits_for_a_slow_receiver():
    a, b, _, _ = pair()
    sent = 0

    async def send_all() -> None:
        nonlocal sent
        for i in range(3 * RELAY_WINDOW):
            await a.send(DATA, b"%d" % i)
            sent += 1

    sender = asyncio.create_task(send_all())
    await asyncio.sleep(0.05)
    assert sent == RELAY_WINDOW  # nothing taken yet: the window is full and the sender waits
    received = [(await b.receive())[1] for _ in range(3 * RELAY_WINDOW)]
    await asyncio.wait_for(sender, 1)
    assert received == [b"%d" % i for i in range(3 * RELAY_WINDOW)]


async def test_a_lost_frame_ends_the_link_and_a_close_is_the_last_frame():
    a, b, counters, _ = pair()
    b.deliver(DATA, 1, b"one")
    b.deliver(DATA, 3, b"three")  # 2 was lost
    assert (await b.receive()) == (DATA, b"one")
    assert (await b.receive())[0] == CLOSE and b.closed and counters["relay_sequence_gaps"] == 1
    await a.send(CLOSE, b"\x03\xe8")
    await asyncio.sleep(0)
    assert b.conn_id not in a.bus.relays["B"].links  # type: ignore[attr-defined]


async def test_a_peer_ignoring_the_window_ends_the_link():
    _, b, counters, _ = pair()
    for seq in range(1, RELAY_WINDOW + 2):
        b.deliver(DATA, seq, b"x")
    assert b.closed and counters["relay_window_overruns"] == 1


async def test_a_relayed_connection_whose_link_is_gone_ends_quietly(caplog):
    """The room's node accepts a relayed connection just as the link goes (its peer's channel is gone, as while
    Redis restarts): counted as a lost link, logged without a traceback (which the logs would show as a bug)."""

    class GoneBus:
        async def send(self, node_id: str, frame: bytes) -> bool:
            return False  # nobody listens on the peer's channel

    async def app(scope: dict, receive, send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})

    counters: Counter[str] = Counter()
    node = Relay("B", counters)
    node.bus = GoneBus()  # type: ignore[assignment]
    node.app = app  # type: ignore[assignment]
    caplog.set_level("DEBUG", logger="signaling.cluster.relay")
    node.on_frame(relay._HEADER.pack(START, b"z" * 16, 1) + json.dumps(
        {"from": "A", "path": "/rtc", "query": "", "headers": []}).encode())
    await asyncio.gather(*node._tasks)
    assert counters["relay_links_lost"] == 1 and counters["relay_serve_errors"] == 0
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("frame", [
    b"",
    b"\x04short",
    relay._HEADER.pack(99, b"x" * 16, 1),
    relay._HEADER.pack(START, b"y" * 16, 1) + b"not json",
    relay._HEADER.pack(START, b"y" * 16, 1) + json.dumps({"from": "A", "path": "/twirp", "query": "",
                                                          "headers": []}).encode(),
    relay._HEADER.pack(START, b"y" * 16, 1) + json.dumps({"from": "A", "path": "/rtc", "query": 5,
                                                          "headers": []}).encode(),
    relay._HEADER.pack(START, b"y" * 16, 1) + b"{" * (relay.MAX_START_SIZE + 1),
])
async def test_hostile_bus_frames_are_dropped_and_counted(frame):
    counters: Counter[str] = Counter()
    node = Relay("B", counters)
    node.app = lambda *args: asyncio.sleep(0)  # type: ignore[assignment]
    node.on_frame(frame)
    assert not node.links and counters["relay_frames_malformed"] == 1


def node(id: str, **load) -> NodeInfo:
    return NodeInfo(id=id, ips=["127.0.0.1"], **load)


def test_placement_prefers_the_region_then_unloaded_nodes_then_fewest_rooms():
    nodes = [node("a", region="eu"), node("b", region="us"), node("c", region="eu"),
             node("d", region="eu", sysload=1.5), node("e", region="eu", state="SHUTTING_DOWN")]
    claimed = {"a": 1, "b": 0, "c": 5, "d": 0, "e": 0}
    rooms = lambda n: claimed[n.id]
    assert choose(nodes, "eu", rooms).id == "a"
    assert choose(nodes, "", rooms).id == "b"
    claimed["a"] = 3  # still fewer than c's
    assert choose(nodes, "eu", rooms).id == "a"
    claimed["a"] = 6
    assert choose(nodes, "eu", rooms).id == "c"
    assert choose(nodes, "ap", rooms).id == "b"  # no node of the region: any
    loaded = [node("d", sysload=2.0), node("f", sysload=1.0)]
    claimed.update(d=3, f=4)
    assert choose(loaded, "", rooms).id == "d"
    assert choose(loaded, "", rooms, 1.5).id == "f"
    assert choose([node("e", state="SHUTTING_DOWN")], "", rooms) is None


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"id": "x"}', b"\xff", b'{"id": "x", "ips": [], "rooms": {}}',
                                  b'{"id": 5, "ips": []}', b'{"id": "x", "ips": "1.2.3.4"}', b'{"id": "x", "ips": [],'
                                  b' "cpu_load": true}'])
def test_unreadable_registrations_are_skipped(data):
    assert NodeInfo.decode(data) is None


def test_a_registration_round_trips_and_unknown_fields_are_ignored():
    info = node("a", rooms=2, cpu_load=0.5, region="eu")
    assert NodeInfo.decode(info.encode()) == info
    assert NodeInfo.decode(b'{"id": "x", "ips": [], "future": 1}') == NodeInfo("x", [])


@given(st.binary(max_size=512))
async def test_garbage_relayed_http_requests_are_refused_as_malformed(data):
    """The room's node parses relayed WHIP/WHEP requests from the bus: anything malformed is a `malformed` call
    failure (answered to the caller), never a crash or a request served."""
    served = []

    async def app(scope, receive, send) -> None:
        served.append(scope)

    try:
        await http_relay.server(app)("request", data)
    except CallFailed as error:
        assert error.code == "malformed"
    else:
        assert served and served[0]["tern.relayed"]


async def test_a_relayed_http_request_is_served_as_it_arrived():
    """What the signal node packs (method, path, query, the relayed headers and body) is what the room's
    node's routes see; the answer's status, allowed headers and body come back."""
    seen = {}

    async def app(scope, receive, send) -> None:
        seen.update(scope=scope, body=(await receive())["body"])
        await send({"type": "http.response.start", "status": 201, "headers": [
            (b"location", b"/w/k/WH_1"), (b"x-private", b"no"), (b"content-type", b"application/sdp")]})
        await send({"type": "http.response.body", "body": b"v=0"})

    head = {"method": "POST", "path": "/w/k", "scheme": "https", "query": "a=1",
            "headers": [["host", "example.com"], ["cookie", "secret"], ["content-type", "application/sdp"]]}
    answer, body = http_relay._unpack(await http_relay.server(app)("request", http_relay._pack(head, b"offer")))
    scope = seen["scope"]
    assert (scope["method"], scope["path"], scope["query_string"], scope["scheme"]) == ("POST", "/w/k", b"a=1", "https")
    assert scope["tern.relayed"] and seen["body"] == b"offer"
    assert dict(scope["headers"]) == {b"host": b"example.com", b"content-type": b"application/sdp"}  # no cookie
    assert answer == {"status": 201, "headers": [["location", "/w/k/WH_1"], ["content-type", "application/sdp"]]}
    assert body == b"v=0"


async def test_an_ingress_definition_and_its_state_are_written_apart():
    """An UpdateIngress (the definition) must not undo the state a session wrote meanwhile, nor the reverse."""
    store = MemoryIngressStore()
    await store.save(ingress.IngressInfo(ingress_id="IN_a", stream_key="k", name="first"))
    store.save_state("IN_a", ingress.IngressState(status=ingress.IngressState.Status.ENDPOINT_PUBLISHING))
    stale = await store.get("IN_a")
    stale.name = "renamed"
    stale.state.status = ingress.IngressState.Status.ENDPOINT_INACTIVE  # read before; the session is still live
    await store.save(stale)
    stored = await store.get("IN_a")
    assert stored.name == "renamed" and stored.state.status == ingress.IngressState.Status.ENDPOINT_PUBLISHING
    store.save_state("IN_gone", ingress.IngressState())  # a session ending after DeleteIngress leaves nothing
    assert await store.count() == 1 and await store.get("IN_gone") is None


class AgentNode:
    """A node's agent dispatcher and router, its rooms in memory, its calls over a LoopBus-like stand-in."""

    def __init__(self, node_id: str, nodes: dict[str, AgentNode]) -> None:
        self.events: list[tuple[str, int]] = []  # job webhooks: (event, job status)
        self.counters: Counter[str] = Counter()
        self.store = MemoryRoomStore(300, 20, 0, self.notify)
        self.dispatcher = AgentDispatcher(self.store, {"devkey": "secret"}, self.counters, lambda *a, **k: None)
        self.dispatcher._notify = self.notify
        self.rpc = Rpc(node_id, self.counters)
        self.rpc.bus = self  # type: ignore[assignment]
        self.router = AgentRouter(None, None, self.rpc, self.dispatcher, self.counters)  # type: ignore[arg-type]
        self.nodes = nodes
        nodes[node_id] = self

    def notify(self, event: str, room=None, participant=None, job=None, **_: object) -> None:
        if job is not None:
            self.events.append((event, job.state.status))
        else:
            self.dispatcher.on_event(event, room, participant)

    async def send(self, node_id: str, frame: bytes) -> bool:
        if node_id not in self.nodes:
            return False
        asyncio.get_running_loop().call_soon(self.nodes[node_id].rpc.on_frame, frame)
        return True


async def settle(condition, turns: int = 200) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not met")


async def test_a_job_runs_on_a_worker_of_another_node_and_fails_when_it_goes():
    """Room on A, worker on B: A offers B's worker the job, assigns it with A's token, hears its end through B; the
    worker's disconnection fails A's next job at once; a worker missing from reads is dropped."""
    nodes: dict[str, AgentNode] = {}
    a, b = AgentNode("A", nodes), AgentNode("B", nodes)
    sent: list[agent.ServerMessage] = []
    worker = Worker("devkey", agent.RegisterWorkerRequest(), sent.append, b.dispatcher, b.counters)
    b.dispatcher.register(worker)
    a.router.update({worker.id: ("B", WorkerSummary.of(worker))})
    [remote] = a.dispatcher.remote.values()
    assert remote.node_id == "B" and remote.available

    def answer_offer() -> None:
        offer = sent[-1].availability.job
        worker.handle(agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id=offer.id, available=True)))

    a.store.create("far")  # room_started: the automatic job, offered to the only worker: B's
    await settle(lambda: sent and sent[-1].HasField("availability"))
    answer_offer()
    await settle(lambda: sent[-1].HasField("assignment"))
    job = sent[-1].assignment.job
    assert job.room.name == "far" and sent[-1].assignment.token and job.state.worker_id == worker.id
    assert a.events == [("agent_job_started", agent.JS_RUNNING)] and b.events == []  # webhooks from the room's node
    worker.handle(agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id=job.id, status=agent.JS_SUCCESS)))
    await settle(lambda: len(a.events) == 2)
    assert a.events[-1] == ("agent_job_ended", agent.JS_SUCCESS) and not worker.jobs and not remote.jobs
    a.store.create("second")
    await settle(lambda: sent[-1].HasField("availability") and sent[-1].availability.job.room.name == "second")
    answer_offer()
    await settle(lambda: sent[-1].HasField("assignment"))
    b.dispatcher.unregister(worker)  # its connection ended: A fails the job now and forgets the worker
    await settle(lambda: a.events[-1] == ("agent_job_ended", agent.JS_FAILED))
    assert not a.dispatcher.remote
    # Read again while listed: kept; then missing from MISSES_TO_DROP reads: dropped.
    summary = lambda worker_id: replace(WorkerSummary.of(worker), id=worker_id)  # noqa: E731
    a.router.update({"AW_x": ("B", summary("AW_x"))})
    for _ in range(MISSES_TO_DROP - 1):
        a.router.update({})
    assert "AW_x" in a.dispatcher.remote
    a.router.update({})
    assert not a.dispatcher.remote
    # An offer to a worker its node no longer has, or to a node that is gone, is answered by nothing.
    a.router.update({"AW_y": ("B", summary("AW_y")), "AW_z": ("C", summary("AW_z"))})
    for remote in list(a.dispatcher.remote.values()):
        assert await remote.request_availability(agent.Job(id="AJ_q"), 1) is None


@settings(deadline=None)  # a loaded machine's pause is not a failure
@given(st.binary(max_size=64) | st.builds(lambda items: json.dumps(items).encode(), st.lists(
    st.dictionaries(st.sampled_from(list(WorkerSummary.__dataclass_fields__) + ["x"]),
                    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)), max_size=3)))
def test_unreadable_worker_summaries_are_skipped(data):
    for summary in decode_summaries(data):
        assert isinstance(summary.id, str) and isinstance(summary.load, float | int) and summary.type in (0, 1, 2)


def test_worker_summaries_round_trip():
    worker = Worker("devkey", agent.RegisterWorkerRequest(agent_name="helper", type=agent.JT_PUBLISHER), print, None,
                    Counter())  # type: ignore[arg-type]
    [summary] = decode_summaries(encode_summaries([worker]))
    assert summary == WorkerSummary.of(worker)


@settings(deadline=None)
@given(st.binary(max_size=32), st.integers(0, 3))
def test_garbage_agent_calls_are_refused_as_malformed(data, count):
    try:
        ids, body = unpack(data, count)
    except CallFailed as error:
        assert error.code == "malformed"
    else:
        assert len(ids) == count and pack(*ids, body=body) == data
