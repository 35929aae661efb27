"""Cluster pieces without Redis: the relay's ordered, windowed links over a stand-in bus, hostile bus frames, the
placement choice and node registrations that cannot be read."""
from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import ingress

from signaling.cluster import http_relay, relay
from signaling.cluster.ingress import MemoryIngressStore
from signaling.cluster.placement import choose
from signaling.cluster.registry import NodeInfo
from signaling.cluster.relay import CLOSE, DATA, RELAY_WINDOW, START, Relay
from signaling.cluster.rpc import CallFailed


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
    nodes = [node("a", rooms=1, region="eu"), node("b", rooms=0, region="us"), node("c", rooms=5, region="eu"),
             node("d", rooms=0, region="eu", sysload=1.5), node("e", rooms=0, region="eu", state="SHUTTING_DOWN")]
    assert choose(nodes, "eu", lambda n: 0).id == "a"
    assert choose(nodes, "", lambda n: 0).id == "b"
    assert choose(nodes, "eu", lambda n: 2 if n.id == "a" else 0).id == "a"  # 3 rooms still < 5
    assert choose(nodes, "eu", lambda n: 5 if n.id == "a" else 0).id == "c"
    assert choose(nodes, "ap", lambda n: 0).id == "b"  # no node of the region: any
    assert choose([node("d", sysload=2.0, rooms=3), node("f", sysload=1.0, rooms=4)], "", lambda n: 0).id == "d"
    assert choose([node("e", state="SHUTTING_DOWN")], "", lambda n: 0) is None


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
