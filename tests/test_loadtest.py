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


async def test_load_clients_negotiate_transport_cc_and_send_feedback_the_server_resolves(server) -> None:
    """With transport-cc (the default) subscribers answer the server's transport-wide numbers with feedback every
    ~100 ms, which its send history resolves; publishers stamp theirs, which the server answers. Without it, none."""
    before = server.counters()
    report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=2,
                                     duration=3, audio=False, room_prefix="load-twcc")
    after = server.counters()
    assert report.failed == [] and report.received_packets > 0
    # 2 subscribers x up to 10 feedbacks a second for >= 3 s of media (fewer when a loaded machine bunches arrivals)
    assert report.twcc_feedback_sent >= 10, report
    received = after["twcc_feedback_received"] - before.get("twcc_feedback_received", 0)
    print(f"feedback sent {report.twcc_feedback_sent}, received by the server {received}, unmatched "
          f"{after.get('twcc_unmatched', 0) - before.get('twcc_unmatched', 0)}, to the publisher "
          f"{after['twcc_feedback_sent'] - before.get('twcc_feedback_sent', 0)}")
    assert received >= report.twcc_feedback_sent * 0.9, (received, report.twcc_feedback_sent)
    assert after.get("twcc_unmatched", 0) - before.get("twcc_unmatched", 0) <= 5, after
    assert after["twcc_feedback_sent"] > before.get("twcc_feedback_sent", 0)  # to the publisher

    before = after
    report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=1,
                                     duration=1, audio=False, room_prefix="load-no-twcc", transport_cc=False)
    after = server.counters()
    assert report.failed == [] and report.received_packets > 0 and report.twcc_feedback_sent == 0
    assert after["twcc_feedback_received"] == before["twcc_feedback_received"]
    assert after["twcc_feedback_sent"] == before["twcc_feedback_sent"]
