"""ICE-TCP end to end: behind a firewall that blocks UDP (a network namespace of tests/netlab.py whose UDP is
unreachable), a LiveKit Python SDK publisher and subscriber both inside it connect to tern, and the subscriber decodes
the publisher's video and hears its tone, over ICE-TCP: both clients' selected candidate pairs are TCP."""
from __future__ import annotations

import asyncio

from media import TONE_HZ

ROOM = "ice-tcp"
PUBLISH_S = 22      # the publisher stays while the subscriber joins and watches
WATCH_S = 8


async def test_clients_behind_a_udp_blocking_firewall_exchange_media_over_ice_tcp(lab_server) -> None:
    lab, server = lab_server
    lab.block_udp()
    # The firewall works: UDP from inside the namespace to the server's media port does not leave.
    probe = lab.ns("python3", "-c", f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                   f".sendto(b'x', ('{lab.host_ip}', {server.udp_port}))", check=False)
    assert probe.returncode != 0 and "OSError" in probe.stderr, probe
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
    print("server:", {name: value for name, value in counters.items() if name.startswith(("tcp_", "drop_tcp"))})
    assert subscriber["connected"] and published["connected"], (subscriber, published)
    assert subscriber["frames"] >= WATCH_S * 10, subscriber  # the test card at 30 fps, decoded
    assert subscriber["audio_hz"] is not None and abs(subscriber["audio_hz"] - TONE_HZ) < 5, subscriber
    # Every peer connection that connected (one over /rtc/v1; over /rtc, the subscribing client's publisher PC has
    # nothing to carry) went over TCP to the server's ICE-TCP port.
    assert subscriber["pairs"] and published["pairs"], (subscriber, published)
    for pairs in (subscriber["pairs"], published["pairs"]):
        for pair in pairs.values():
            assert pair == {"local": "tcp", "remote": "tcp", "remote_port": server.tcp_port}, pairs
    # (drop_tcp_closed may count media forwarded to a leaving client while its connection closes)
    assert counters["tcp_claimed"] >= 2  # a peer connection each
    assert counters.get("tcp_closed_invalid", 0) == counters.get("tcp_closed_unauthenticated", 0) == 0
