"""IPv6 and several addresses: which addresses are offered and where media listens (config), the candidates, a client
moving from IPv4 to IPv6 on a real dual-stack engine, and LiveKit's Python SDK (libwebrtc) against a server on IPv6
loopback and one bound to both loopbacks. libwebrtc does not gather loopback candidates, but it pairs its own IPv6
host candidate (this machine's global or ULA address) with the server's ::1 candidate, and the kernel delivers that
over loopback; where the machine has no IPv6 address besides ::1, the SDK tests are skipped with that reason (a
network namespace would then be needed)."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from aioice import stun

import engine
from clients import connect, until as client_until
from conftest import start_server, stop_server
from signaling import config as config_module
from signaling.config import Config, ConfigError, RtcConfig, build_config, from_yaml, parse_node_ip
from signaling.httpfront import client_address
from signaling.peer import sdp
from signaling.peer.ice import handle_binding
from signaling.peer.transport import TransportManager
from test_engine import needs_ipv6
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from signal_client import SignalClient

NO_ENV: dict[str, str] = {}
CONNECTED_FROM = re.compile(r"transport \d+ \((\w+)\) connected from \('([^']+)'")


# -- configuration: which addresses are offered, where the engine listens --------------------------------------------

@pytest.mark.parametrize("value, parsed", [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8::7", "2001:db8::7"),
    ("203.0.113.7,2001:db8::7", "203.0.113.7,2001:db8::7"),
    ("2001:DB8::7, 203.0.113.7", "203.0.113.7,2001:db8::7"),  # normalised, the IPv4 one first (the primary)
    (["2001:db8::7", "203.0.113.7"], "203.0.113.7,2001:db8::7"),  # a YAML list too
    ("", ""),  # unset, as in LiveKit
])
def test_node_ip_takes_livekits_v4_v6_form(value, parsed):
    assert parse_node_ip(value) == parsed


@pytest.mark.parametrize("value", ["203.0.113.7,203.0.113.8", "::1,2001:db8::7", "0.0.0.0", "::", "1.2.3.4,::1,::2",
                                   "host.example", [], 5])
def test_node_ip_refuses_more_than_one_per_family_and_wildcards(value):
    with pytest.raises(ConfigError, match=r"rtc\.node_ip"):
        parse_node_ip(value)


def test_yaml_and_flags_reach_the_rtc_settings():
    config = from_yaml("rtc: {use_ipv6: true, node_ip: '2001:db8::7,198.51.100.4'}")
    assert config.rtc == RtcConfig(node_ip="198.51.100.4,2001:db8::7", use_ipv6=True)
    with pytest.raises(ConfigError, match=r"rtc\.use_ipv6"):
        from_yaml("rtc: {use_ipv6: 'yes'}")
    config = build_config(dev=True, bind=["127.0.0.1", "::1"], node_ip="::1,127.0.0.1", environ=NO_ENV)
    assert config.bind_addresses == ["127.0.0.1", "::1"] and config.node_ips() == ["127.0.0.1", "::1"]
    with pytest.raises(ConfigError, match="--node-ip"):
        build_config(dev=True, node_ip="10.0.0.1,10.0.0.2", environ=NO_ENV)


@pytest.mark.parametrize("bind, node_ip, use_ipv6, host", [
    (["127.0.0.1"], "", False, "127.0.0.1"),           # one concrete address: exactly there (LiveKit's dev bind)
    (["127.0.0.1"], "", True, "127.0.0.1"),            # use_ipv6 widens wildcards only
    (["::1"], "", False, "::1"),
    (["::1"], "::1", False, "::1"),
    (["0.0.0.0"], "", False, "0.0.0.0"),                # LiveKit's default: IPv4 only
    (["0.0.0.0"], "", True, "::"),                      # rtc.use_ipv6: dual-stack
    (["::"], "", False, "::"),
    (["127.0.0.1", "::1"], "", False, "::"),            # several addresses: one wildcard socket of both families
    (["10.0.0.1", "10.0.0.2"], "", False, "0.0.0.0"),
    (["127.0.0.1"], "127.0.0.1,::1", False, "::"),      # an IPv6 node_ip needs an IPv6 socket
    (["192.0.2.1"], "203.0.113.7", False, "192.0.2.1"),  # 1:1 NAT: the node_ip is not local
])
def test_media_host(bind, node_ip, use_ipv6, host):
    assert Config(bind_addresses=bind, rtc=RtcConfig(node_ip=node_ip, use_ipv6=use_ipv6)).media_host() == host


@pytest.fixture
def routes(monkeypatch):
    """The default routes' source addresses, by IP version (None: no route of that family)."""
    table = {4: "192.0.2.55", 6: "2001:db8::55"}
    monkeypatch.setattr(config_module, "_default_route_address", lambda version: table[version])
    return table


@pytest.mark.parametrize("bind, node_ip, use_ipv6, offered", [
    (["10.0.0.1", "fd00::1", "10.0.0.1"], "", False, ["10.0.0.1", "fd00::1"]),  # each bind address, once
    (["fd00::1", "fe80::1%eth0", "10.0.0.1"], "", False, ["10.0.0.1", "fd00::1"]),  # IPv4 first, no link-local
    (["fe80::1%eth0"], "", False, ["fe80::1"]),                       # unless it is all there is
    (["10.0.0.1", "::"], "", False, ["10.0.0.1"]),             # concrete ones win over the wildcard's guesses
    (["0.0.0.0"], "", False, ["192.0.2.55"]),
    (["0.0.0.0"], "", True, ["192.0.2.55", "2001:db8::55"]),   # dual-stack: the IPv6 default route's address too
    (["::"], "", False, ["192.0.2.55", "2001:db8::55"]),
    (["::"], "203.0.113.7", False, ["203.0.113.7"]),           # an explicit node_ip is all that is offered
    (["::"], "203.0.113.7,2001:db8::7", False, ["203.0.113.7", "2001:db8::7"]),
])
def test_node_ips(routes, bind, node_ip, use_ipv6, offered):
    config = Config(bind_addresses=bind, rtc=RtcConfig(node_ip=node_ip, use_ipv6=use_ipv6))
    assert config.node_ips() == offered and config.node_ip() == offered[0]


def test_node_ips_without_an_ipv6_route(routes):
    routes[6] = None
    assert Config(bind_addresses=["::"]).node_ips() == ["192.0.2.55"]
    routes[4] = None
    assert Config(bind_addresses=["::"]).node_ips() == ["127.0.0.1"]


def test_route_probe_ignores_link_local_and_the_wrong_family(monkeypatch):
    class Probe:
        answer = ""

        def __init__(self, *args): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def connect(self, address): pass
        def getsockname(self): return (self.answer, 9)

    monkeypatch.setattr(socket, "socket", Probe)
    for answer, version, expected in [("fe80::1", 6, None), ("192.0.2.9", 6, None), ("2001:db8::9", 6, "2001:db8::9"),
                                      ("192.0.2.9", 4, "192.0.2.9"), ("0.0.0.0", 4, None)]:
        Probe.answer = answer
        assert config_module._default_route_address(version) == expected, answer


# -- candidates ----------------------------------------------------------------------------------------------------

def test_each_address_is_a_udp_and_a_passive_tcp_candidate_ipv6_first():
    manager = TransportManager(None, ["198.51.100.4", "2001:db8::7"])
    assert manager.node_ip == "198.51.100.4" and manager.candidate_ips == ["2001:db8::7", "198.51.100.4"]
    local = sdp.LocalEndpoint("u", "p", "AB", [(ip, 7882) for ip in manager.candidate_ips],
                              [(ip, 7881) for ip in manager.candidate_ips])
    assert sdp.host_candidates(local) == [
        "candidate:1 1 udp 2130706431 2001:db8::7 7882 typ host",
        "candidate:2 1 udp 2130706175 198.51.100.4 7882 typ host",      # local preference 65534
        "candidate:3 1 tcp 1671430143 2001:db8::7 7881 typ host tcptype passive",
        "candidate:4 1 tcp 1671429887 198.51.100.4 7881 typ host tcptype passive",  # other-pref 8190
    ]


# -- the HTTP front's per-address limit --------------------------------------------------------------------------

def test_http_per_address_limit_counts_an_ipv6_client_by_its_64():
    assert client_address("2001:db8:1:2:3:4:5:6") == client_address("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_address("2001:db8:1:3::1") != client_address("2001:db8:1:2::1")
    assert client_address("::ffff:192.0.2.1") == client_address("192.0.2.1") == "192.0.2.1"  # on a dual-stack socket
    assert client_address("fe80::1%eth0") == "fe80::/64"
    assert client_address("/run/tern.sock") == "/run/tern.sock"


# -- a real dual-stack engine under the control plane ---------------------------------------------------------------

CLIENT_UFRAG, CLIENT_PWD = "clientufrag", "clientpassword0123456789"


def _check(transport, nominate: bool) -> bytes:
    """The client's (full agent's) Binding request to the server."""
    attributes = {"USERNAME": f"{transport.ice_ufrag}:{CLIENT_UFRAG}", "PRIORITY": 1, "ICE-CONTROLLING": 1}
    if nominate:
        attributes["USE-CANDIDATE"] = None
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes=attributes)
    message.add_message_integrity(transport.ice_pwd.encode())
    return bytes(message)


async def _receive(sock: socket.socket, count: int) -> list[stun.Message]:
    loop = asyncio.get_running_loop()
    return [stun.parse_message(await asyncio.wait_for(loop.sock_recv(sock, 2048), 2)) for _ in range(count)]


async def _answer(sock: socket.socket, check: stun.Message, transport, server: tuple) -> None:
    """What the client answers to the server's check (signed with the client's password)."""
    result = handle_binding(bytes(check), server, CLIENT_UFRAG, CLIENT_PWD, transport.ice_ufrag)
    assert result is not None and result.authenticated
    await asyncio.get_running_loop().sock_sendto(sock, result.response, server)


@needs_ipv6
async def test_a_client_moves_from_ipv4_to_ipv6_and_keeps_consent_there():
    """A network change from IPv4 to IPv6 on one dual-stack engine: the IPv4 check selects its (plainly named)
    address, the IPv6 nomination is checked from the server before media moves, and consent renews over IPv6."""
    manager: TransportManager | None = None
    eng = engine.Engine("::", 0, lambda event: manager.on_event(event))
    manager = TransportManager(eng, ["127.0.0.1", "::1"])
    eng.attach(asyncio.get_running_loop())
    transport = manager.create("publisher")
    transport.set_remote(CLIENT_UFRAG, None, CLIENT_PWD)
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for sock, host in ((v4, "127.0.0.1"), (v6, "::1")):
            sock.bind((host, 0))
            sock.setblocking(False)
        loop = asyncio.get_running_loop()

        await loop.sock_sendto(v4, _check(transport, nominate=True), ("127.0.0.1", eng.port))
        [response] = await _receive(v4, 1)
        assert response.message_class == stun.Class.RESPONSE
        assert response.attributes["XOR-MAPPED-ADDRESS"] == v4.getsockname()  # not ::ffff:127.0.0.1
        assert transport.address == v4.getsockname()

        await loop.sock_sendto(v6, _check(transport, nominate=True), ("::1", eng.port))
        messages = await _receive(v6, 2)
        [check] = [m for m in messages if m.message_class == stun.Class.REQUEST]
        [response] = [m for m in messages if m.message_class == stun.Class.RESPONSE]
        v6_address = v6.getsockname()[:2]
        assert response.attributes["XOR-MAPPED-ADDRESS"] == v6_address
        assert transport.address == v4.getsockname()  # until the server's own check is answered
        await _answer(v6, check, transport, ("::1", eng.port))
        await client_until(lambda: transport.address == v6_address, 2)
        assert eng.transport_at(*v6_address) == transport.id and eng.transport_at(*v4.getsockname()) is None

        transport._next_check_at = 0  # a consent check is due
        transport._on_consent_timer()
        [consent] = await _receive(v6, 1)
        await _answer(v6, consent, transport, ("::1", eng.port))
        await client_until(lambda: manager.counters["ice_consent_renewed"] == 1, 2)
        assert manager.counters["ice_address_switched"] == 1 and manager.counters["stun_malformed"] == 0
    finally:
        transport.close()
        eng.close()
        v4.close()
        v6.close()


# -- real clients --------------------------------------------------------------------------------------------------

def _ipv6_unavailable() -> str | None:
    if not socket.has_ipv6:
        return "Python has no IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.connect(("2001:db8::1", 9))  # a route to a non-loopback IPv6 address: one libwebrtc can gather
            source = ipaddress.ip_address(probe.getsockname()[0])
    except OSError as error:
        return f"no IPv6 besides loopback ({error}): libwebrtc would have no IPv6 candidate to pair with ::1"
    return None if not source.is_loopback else "no IPv6 address besides ::1"


@pytest.fixture(scope="module")
def server_v6(tmp_path_factory: pytest.TempPathFactory):
    reason = _ipv6_unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = start_server(tmp_path_factory.mktemp("tern6"), host="::1")  # --bind ::1 --node-ip ::1
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


async def test_sdk_publishes_and_subscribes_over_ipv6_loopback(server_v6):
    room = "ipv6-room"
    publisher_room = await connect(server_v6, "alice6", room)
    publisher = Publisher(publisher_room)
    subscriber_room = await connect(server_v6, "bob6", room)
    try:
        await publisher.start()
        tracks = await wait_for_tracks(subscriber_room, 2)
        frames = await decoded_video(tracks["video"], frames=20)
        assert any(matches_card(f) for f in frames[-10:]), "decoded frames do not show the test card"
        samples = await decoded_audio(tracks["audio"], seconds=1.0)
        assert abs(dominant_frequency(samples) - TONE_HZ) < 5
        assert np.sqrt(np.mean(samples ** 2)) > 1000
    finally:
        await publisher.stop()
        await publisher_room.disconnect()
        await subscriber_room.disconnect()
    # Every peer connection's media path (the address the server bound the transport to) is IPv6.
    sources = CONNECTED_FROM.findall(server_v6.log())
    assert sources and all(ipaddress.ip_address(host.partition("%")[0]).version == 6 for _, host in sources), sources
    assert server_v6.counters().get("stun_malformed", 0) == 0


def _candidates(sdp: str) -> list[list[str]]:
    """The first media section's candidates as fields (foundation, component, protocol, priority, address, port...)."""
    first_section = sdp.split("\r\nm=")[1]
    return [line.removeprefix("a=candidate:").split() for line in first_section.splitlines()
            if line.startswith("a=candidate:")]


async def test_several_bind_addresses_are_each_offered_and_served(tmp_path: Path):
    """--bind 127.0.0.1 --bind ::1: HTTP answers on both; the engine listens on `::` (one dual-stack socket per
    protocol); each address is a UDP and a passive TCP candidate, IPv6 first, every priority distinct, UDP above TCP;
    SDK clients joining over either family hear each other's tone (IPv4 checks arrive IPv4-mapped)."""
    if (reason := _ipv6_unavailable()) is not None:
        pytest.skip(reason)
    server = start_server(tmp_path, "--bind", "127.0.0.1", "--bind", "::1")
    server_v6 = dataclasses.replace(server, host="::1")
    rooms = []
    try:
        assert "media on udp [::]" in server.log() and "candidates advertise ::1, 127.0.0.1" in server.log()
        client, _ = await SignalClient.join(server_v6.url, server.token("carol", "dual"))
        candidates = _candidates((await client.receive_until("offer")).offer.sdp)
        assert [(c[2], c[4], c[5]) for c in candidates] == [
            ("udp", "::1", str(server.udp_port)), ("udp", "127.0.0.1", str(server.udp_port)),
            ("tcp", "::1", str(server.tcp_port)), ("tcp", "127.0.0.1", str(server.tcp_port))]
        priorities = [int(c[3]) for c in candidates]
        assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 4
        await client.connection.close()

        rooms.append(publisher_room := await connect(server, "dave", "dual"))
        rooms.append(subscriber_room := await connect(server_v6, "erin", "dual"))
        publisher = Publisher(publisher_room, video=False)
        await publisher.start()
        try:
            tracks = await wait_for_tracks(subscriber_room, 1)
            samples = await decoded_audio(tracks["audio"], seconds=0.5)
            assert abs(dominant_frequency(samples) - TONE_HZ) < 5
        finally:
            await publisher.stop()
    finally:
        for room in rooms:
            await room.disconnect()
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
