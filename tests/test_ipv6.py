"""IPv6: LiveKit's Python SDK (libwebrtc) against a server on IPv6 loopback, and the candidates a dual-stack server
offers. libwebrtc does not gather loopback candidates, but it pairs its own IPv6 host candidate (this machine's
global or ULA address) with the server's ::1 candidate, and the kernel delivers that over loopback; where the machine
has no IPv6 address besides ::1, the SDK test is skipped with that reason."""
from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from clients import connect
from conftest import start_server, stop_server
from media import TONE_HZ, Publisher, decoded_audio, decoded_video, dominant_frequency, matches_card, wait_for_tracks
from signal_client import SignalClient

CONNECTED_FROM = re.compile(r"transport \d+ \((\w+)\) connected from \('([^']+)'")


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


async def test_dual_stack_server_offers_each_address_over_udp_and_tcp(tmp_path: Path):
    """HTTP on 127.0.0.1, node_ip "v4,v6" and rtc.use_ipv6: the engine listens on `::` (one dual-stack socket per
    protocol); each address is a UDP and a passive TCP candidate, IPv6 first, every priority distinct, UDP above TCP;
    the SDK connects and hears a tone whichever family its checks pick (IPv4 ones arrive IPv4-mapped)."""
    server = start_server(tmp_path, "--node-ip", "127.0.0.1,::1", config="rtc: {use_ipv6: true}")
    rooms = []
    try:
        assert "media on udp [::]" in server.log()
        client, _ = await SignalClient.join(server.url, server.token("carol", "dual"))
        candidates = _candidates((await client.receive_until("offer")).offer.sdp)
        assert [(c[2], c[4], c[5]) for c in candidates] == [
            ("udp", "::1", str(server.udp_port)), ("udp", "127.0.0.1", str(server.udp_port)),
            ("tcp", "::1", str(server.tcp_port)), ("tcp", "127.0.0.1", str(server.tcp_port))]
        priorities = [int(c[3]) for c in candidates]
        assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == 4
        await client.connection.close()

        rooms.append(publisher_room := await connect(server, "dave", "dual"))
        rooms.append(subscriber_room := await connect(server, "erin", "dual"))
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
