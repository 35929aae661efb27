"""The load clients against a real tern server: join through /rtc, ICE, DTLS, SRTP, media both ways."""
from __future__ import annotations

from signaling.clients import loadtest

from conftest import API_KEY, API_SECRET


async def test_load_clients_receive_authenticated_media(server) -> None:
    report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=2,
                                     duration=3, room_prefix="load-api")
    assert report.failed == []
    assert report.received_packets > 0
    assert report.auth_failures == 0
    assert len(report.join_ms) == 2


def test_load_test_command_prints_a_summary(server, capsys) -> None:
    code = loadtest.main(["--url", server.url, "--api-key", API_KEY, "--api-secret", API_SECRET,
                          "--publishers", "1", "--subscribers", "1", "--duration", "2", "--simulcast",
                          "--room-prefix", "load-cli"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "received" in out and "join time" in out
