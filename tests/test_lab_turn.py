"""TURN end to end: behind a firewall that blocks UDP and TCP to the ICE-TCP port (a network namespace of
tests/netlab.py), clients reach tern only through its embedded TURN server.

TURN/TCP: a LiveKit Python SDK publisher and subscriber both inside the namespace; the subscriber decodes the
publisher's video and hears its tone, and every connected peer connection's selected pair is a relay over TCP.
TURN/TLS: libwebrtc (inside the SDK) checks a TURN server's certificate against its own built-in roots and offers no
way to trust another, so no SDK can use a test certificate; an aiortc subscriber inside the namespace (aioice's TURN
client, trusting the test's certificate through SSL_CERT_FILE) decodes the video an SDK publisher on the host sends,
over TURN/TLS through Python's TLS termination."""
from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import free_port, start_server, stop_server
from media import TONE_HZ
from signaling.peer.turn_streams import dev_certificate

ROOM = "turn"
PUBLISH_S = 20      # the publisher stays while the subscriber joins and watches
WATCH_S = 7


@pytest.fixture
def lab():
    from netlab import NetLab, lab_unavailable
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with NetLab() as lab:
        yield lab


def firewall(lab, server) -> None:
    """UDP and TCP to the ICE-TCP port are refused from inside the namespace."""
    lab.block_udp()
    lab.block_tcp(server.tcp_port)
    connect = f"import socket; socket.create_connection(('{lab.host_ip}', {server.tcp_port}), 3)"
    blocked = lab.ns("python3", "-c", connect, check=False)
    assert blocked.returncode != 0, blocked


def turn_counters(server) -> dict[str, float]:
    counters = server.counters()
    print("server:", {name: value for name, value in counters.items()
                      if ("turn" in name or "consent" in name) and value})
    return counters


async def test_sdk_clients_behind_a_firewall_exchange_media_over_turn_tcp(lab, tmp_path) -> None:
    turn_port = free_port()
    server = start_server(tmp_path, host=lab.host_ip, config=f"turn: {{enabled: true, udp_port: "
                          f"{free_port(socket.SOCK_DGRAM)}, tls_port: 0, tcp_port: {turn_port}}}")
    try:
        firewall(lab, server)
        publisher = asyncio.create_task(lab.run_client(
            "--url", server.url, "--token", server.token("alice", ROOM), "--publish", "--pairs", "--seconds",
            str(PUBLISH_S), timeout=PUBLISH_S))
        await asyncio.sleep(1)
        subscriber = await lab.run_client("--url", server.url, "--token", server.token("bob", ROOM), "--audio",
                                          "--pairs", "--seconds", str(WATCH_S), timeout=WATCH_S)
        published = await publisher
        print("subscriber:", {key: subscriber.get(key) for key in ("frames", "fps", "resolution", "audio_hz", "pairs")})
        print("publisher:", published)
        counters = turn_counters(server)
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
    assert subscriber["connected"] and published["connected"], (subscriber, published)
    assert subscriber["frames"] >= WATCH_S * 10, subscriber  # the test card at 30 fps, decoded
    assert subscriber["audio_hz"] is not None and abs(subscriber["audio_hz"] - TONE_HZ) < 5, subscriber
    # Each client's connected peer connections (one over /rtc/v1, two over /rtc) are relayed.
    assert subscriber["pairs"] and published["pairs"], (subscriber, published)
    for pairs in (subscriber["pairs"], published["pairs"]):
        for pair in pairs.values():
            # A relay candidate reaching the TURN server over TCP, paired with the server's UDP media port.
            assert pair == {"local": "udp", "remote": "udp", "remote_port": server.udp_port, "relay": "tcp"}, pairs
    assert counters["turn_allocations"] >= 2 and counters["turn_tcp_streams"] >= 2
    assert counters["turn_relayed_in"] > 1000 and counters["turn_relayed_out"] > 300
    assert counters.get("turn_forbidden_peer", 0) == 0
    # Not even a client's first ChannelData or Send indication, in the same TCP read as its ChannelBind or
    # CreatePermission: the stream's frames behind a request wait until Python has installed it (turn_held).
    assert counters.get("drop_turn_no_permission", 0) == 0, counters
    # Our consent checks reach the clients through the relay and their answers come back the same way.
    assert counters["ice_consent_renewed"] >= 2 and counters.get("ice_consent_expired", 0) == 0


async def test_a_subscriber_behind_a_firewall_decodes_video_over_turn_tls(lab, tmp_path, monkeypatch) -> None:
    cert, key = dev_certificate(lab.host_ip)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # the lab clients trust it
    server = start_server(tmp_path, host=lab.host_ip, config=(
        f"turn: {{enabled: true, udp_port: {free_port(socket.SOCK_DGRAM)}, tls_port: {free_port()},"
        f" cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}}}"))
    try:
        firewall(lab, server)
        publisher = asyncio.create_task(lab.run_client(
            "--url", server.url, "--token", server.token("alice", ROOM), "--publish", "--seconds", str(PUBLISH_S),
            timeout=PUBLISH_S, inside=False))
        await asyncio.sleep(1)
        subscriber = await lab.run_client("--url", server.url, "--token", server.token("bob", ROOM),
                                          "--seconds", str(WATCH_S), "--turn", "turns:", timeout=WATCH_S + 10,
                                          script="lab_relay_subscriber.py")
        published = await publisher
        print("subscriber:", subscriber)
        counters = turn_counters(server)
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
    assert published["connected"] and subscriber["connected"], (subscriber, published)
    assert subscriber["selected"] == ["relay"], subscriber
    assert subscriber["frames"] >= WATCH_S * 5, subscriber  # decoded by aiortc (software, slower than libwebrtc)
    assert counters["turn_tls_streams"] >= 1 and counters["turn_relayed_out"] > 300
