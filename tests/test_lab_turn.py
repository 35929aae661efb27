"""TURN end to end: behind a firewall that blocks UDP and TCP to the ICE-TCP port (a network namespace of
tests/netlab.py), a LiveKit Python SDK publisher and subscriber both inside it reach tern only through its embedded
TURN server, over TLS (the server's development certificate) or plain TCP: the subscriber decodes the publisher's
video and hears its tone, and every connected peer connection's selected pair is a relay candidate."""
from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import free_port, start_server, stop_server
from media import TONE_HZ

ROOM = "turn"
PUBLISH_S = 20      # the publisher stays while the subscriber joins and watches
WATCH_S = 7


@pytest.fixture(params=["tls", "tcp"])
def turn_lab(request, tmp_path):
    """A lab and a server on its host end with TURN on: TURN/UDP and either TURN/TLS or TURN/TCP."""
    from netlab import NetLab, lab_unavailable
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    relay = request.param
    port = free_port()
    turn = (f"turn: {{enabled: true, udp_port: {free_port(socket.SOCK_DGRAM)}, "
            f"tls_port: {port if relay == 'tls' else 0}, tcp_port: {port if relay == 'tcp' else 0}}}")
    with NetLab() as lab:
        server = start_server(tmp_path, host=lab.host_ip, config=turn)
        try:
            yield lab, server, relay, port
        finally:
            stop_server(server)
        assert "Traceback" not in server.log(), server.log()


async def test_clients_behind_a_firewall_exchange_media_through_turn(turn_lab) -> None:
    lab, server, relay, port = turn_lab
    lab.block_udp()
    lab.block_tcp(server.tcp_port)
    blocked = lab.ns("python3", "-c", f"import socket; socket.create_connection(('{lab.host_ip}', {server.tcp_port}), 3)",
                     check=False)
    assert blocked.returncode != 0, blocked  # ICE-TCP is out of reach too
    publisher = asyncio.create_task(lab.run_client(
        "--url", server.url, "--token", server.token("alice", ROOM), "--publish", "--pairs", "--seconds", str(PUBLISH_S),
        timeout=PUBLISH_S))
    await asyncio.sleep(1)
    subscriber = await lab.run_client("--url", server.url, "--token", server.token("bob", ROOM), "--audio",
                                      "--pairs", "--seconds", str(WATCH_S), timeout=WATCH_S)
    published = await publisher
    print("subscriber:", {key: subscriber.get(key) for key in ("frames", "fps", "resolution", "audio_hz", "pairs")})
    print("publisher:", published)
    counters = server.counters()
    print("server:", {name: value for name, value in counters.items() if "turn" in name})
    assert subscriber["connected"] and published["connected"], (subscriber, published)
    assert subscriber["frames"] >= WATCH_S * 10, subscriber  # the test card at 30 fps, decoded
    assert subscriber["audio_hz"] is not None and abs(subscriber["audio_hz"] - TONE_HZ) < 5, subscriber
    assert "subscriber" in subscriber["pairs"] and "publisher" in published["pairs"], (subscriber, published)
    for pairs in (subscriber["pairs"], published["pairs"]):
        for pair in pairs.values():
            # Relayed to the server's UDP media port, reaching the relay over `relay`.
            assert pair == {"local": "udp", "remote": "udp", "remote_port": server.udp_port, "relay": relay}, pairs
    assert counters["turn_allocations"] >= 3
    assert counters["turn_relayed_in"] > 1000 and counters["turn_relayed_out"] > 1000
    assert counters.get("turn_forbidden_peer", 0) == 0
