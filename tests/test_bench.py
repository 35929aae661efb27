"""The benchmark harness's own parts: where it pins the server and the clients (--server-cores, --client-cores), the
load clients' handshake with a server that checks back during ICE (as Janus's libnice does), and Janus as a peer
(bench/janus_peer.py) against a real `janus` when one is installed; the ingest, cluster and svc scenarios run."""
from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys

import aiohttp
import pytest
from aioice import stun

from bench import cores, janus_peer, rounds
from signaling.clients import loadtest
from signaling.peer import sdp
from signaling.peer.dtls import Certificate, DtlsEndpoint
from signaling.peer.ice import binding_request, handle_binding, new_credentials

from conftest import ROOT


def test_the_server_gets_the_first_cpus_and_the_clients_the_rest() -> None:
    assert cores.choose(1, None, [0, 1]) == ([0], [1])
    assert cores.choose(2, 1, [0, 1, 2, 3]) == ([0, 1], [3])
    server, client = cores.choose(2, None, [0, 1])  # the server takes every CPU: the clients share them
    assert (server, client) == ([0, 1], [0, 1]) and cores.shared(server, client) == [0, 1]
    assert cores.shared(*cores.choose(1, 2, [0, 1])) == [0]
    for server_cores, client_cores in ((3, None), (0, None), (1, 0), (1, 3)):
        with pytest.raises(cores.CoreError, match="this machine lets us use 2 CPU"):
            cores.choose(server_cores, client_cores, [0, 1])


def test_rounds_judge_each_round_and_report_the_median_with_its_spread() -> None:
    """The two forwarders a cost compares are adjacent in every round, each first in half of them, the third before
    them in half and after them in half; a round with a turn that did not carry (0) is left out;
    the figures are the medians of the rounds' own ratios, with each round's beside them and a verdict per target."""
    names = ("tern", "tern-no-twcc", "c-ceiling")
    orders = [rounds.paired_order(names[:2], names[2], i) for i in range(4)]
    assert orders == [("tern", "tern-no-twcc", "c-ceiling"), ("tern-no-twcc", "tern", "c-ceiling"),
                      ("c-ceiling", "tern", "tern-no-twcc"), ("c-ceiling", "tern-no-twcc", "tern")]
    assert rounds.paired_order(names[:2], names[2], 4) == orders[0]
    measured = [{"tern": 170.0, "tern-no-twcc": 200.0, "c-ceiling": 300.0},
                {"tern": 190.0, "tern-no-twcc": 250.0, "c-ceiling": 250.0},
                {"tern": 200.0, "tern-no-twcc": 0.0, "c-ceiling": 280.0},
                {"tern": 285.0, "tern-no-twcc": 300.0, "c-ceiling": 300.0}]
    figures = rounds.compare(measured, *names)
    assert figures["rounds_whole"] == 3
    assert figures["pkt_per_cpu_s"]["tern"] == {"median": 190.0, "min": 170.0, "max": 285.0,
                                                "each": [170.0, 190.0, 285.0], "interval": None}
    cost = figures["twcc_cost"]
    assert cost["each"] == pytest.approx([0.15, 0.24, 0.05]) and cost["median"] == pytest.approx(0.15)
    assert figures["ratio_c_ceiling"]["each"] == pytest.approx([170 / 300, 0.76, 0.95])
    assert rounds.verdict(cost, 0.10, at_most=True).startswith("met in 1 of 3 rounds; ")
    assert rounds.verdict(figures["ratio_c_ceiling"], 0.5, at_most=False).startswith("met in every round; ")
    assert rounds.verdict(figures["ratio_c_ceiling_no_twcc"], 1.1, at_most=False).startswith("missed in every round")
    assert rounds.compare(measured[2:3], *names)["twcc_cost"] is None


def test_turns_cost_is_the_mean_of_both_orders() -> None:
    """Cycles alternate which server takes the first turn; cycles not counted (None) are left out; the figure is the
    mean of the two orders' medians, so an advantage of either place cancels; one order alone gives no figure."""
    assert [rounds.turn_order(("tern", "tern-no-twcc"), i)[0] for i in range(4)] == ["tern", "tern-no-twcc"] * 2
    costs = [("tern", 0.03), ("tern-no-twcc", 0.12), ("tern", 0.04), ("tern-no-twcc", None), ("tern", 0.05),
             ("tern-no-twcc", 0.10), ("tern", 0.02), ("tern-no-twcc", 0.14)]
    cost = rounds.both_orders(costs)
    assert cost["by_first"] == pytest.approx({"tern": 0.035, "tern-no-twcc": 0.12})
    assert cost["median"] == pytest.approx(0.0775) and (cost["min"], cost["max"]) == (0.02, 0.14)
    assert cost["each"] == [0.03, 0.12, 0.04, 0.05, 0.10, 0.02, 0.14]
    assert rounds.verdict(cost, 0.10, at_most=True, unit="cycles").startswith("met in 5 of 7 cycles; ")
    assert rounds.verdict(cost, 0.20, at_most=True, unit="cycles").startswith("met in every cycle; ")
    assert cost["interval"] is None  # 4 and 3 cycles: too few for each order's median at 97.5 %
    # each order's interval at 97.5 % (7 values: their range), so the mean of their ends holds the mean of the medians
    seven = [("tern", 0.01 * i) for i in range(1, 8)] + [("tern-no-twcc", 0.10 + 0.01 * i) for i in range(1, 8)]
    assert rounds.both_orders(seven)["interval"] == pytest.approx([0.06, 0.12])
    assert rounds.both_orders(costs[:1]) is None
    assert rounds.both_orders([("tern", 0.03), ("tern-no-twcc", None)]) is None


def test_a_target_is_judged_only_when_the_medians_interval_lies_on_one_side() -> None:
    """The median of a few rounds moves with them: a target is met or missed only when the median's 95 % interval
    (distribution-free: order statistics) is on one side of it; two runs of eight rounds that session 34 measured
    straddle 0.10 and are not judged; under 6 values there is no such interval, from 9 on it is narrower than the
    range."""
    tight_below = rounds.spread([0.04, 0.05, 0.06, 0.05, 0.045, 0.055, 0.05, 0.065])
    assert rounds.verdict(tight_below, 0.10, at_most=True).endswith(": met")
    assert rounds.verdict(tight_below, 0.03, at_most=True).endswith(": missed")
    assert rounds.verdict(tight_below, 0.03, at_most=False).endswith(": met")
    for measured in ([0.172, 0.118, -0.026, 0.027, 0.055, 0.071, 0.143, 0.035],
                     [0.124, 0.229, 0.136, -0.078, 0.062, -0.204, 0.154, 0.225]):
        figure = rounds.spread(measured)
        low, high = figure["interval"]
        assert min(measured) <= low < 0.10 < high <= max(measured)
        assert rounds.verdict(figure, 0.10, at_most=True).endswith(": not judged")
    five = rounds.spread([0.05, 0.06, 0.04, 0.05, 0.06])
    assert five["interval"] is None
    assert rounds.verdict(five, 0.10, at_most=True) == "met in every round; too few to judge the median"
    assert rounds.median_interval([float(v) for v in range(1, 9)], 0.95) == [1.0, 8.0]
    assert rounds.median_interval([float(v) for v in range(1, 17)], 0.95) == [4.0, 13.0]  # 97.9 %; [5, 12]: 92.3 %


def test_bench_refuses_more_server_cores_than_it_may_use() -> None:
    too_many = len(os.sched_getaffinity(0)) + 1
    result = subprocess.run([sys.executable, "bench/run.py", "--server-cores", "1", str(too_many)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--server-cores {too_many}: this machine lets us use" in result.stderr


async def test_load_client_answers_the_servers_check_during_the_handshake() -> None:
    """A server that, like Janus's libnice on a nomination, sends its own check back and (stricter than libnice)
    answers ours only once its check has been answered: the client still completes ICE and DTLS."""
    loop = asyncio.get_running_loop()
    server_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server_sock.bind(("127.0.0.1", 0))
    server_sock.setblocking(False)
    ufrag, pwd = new_credentials()
    server_certificate = Certificate.generate()
    offer = sdp.parse("\r\n".join([
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", f"m=video 9 UDP/TLS/RTP/SAVPF {loadtest.VP8_PT}",
        "c=IN IP4 127.0.0.1", "a=mid:v", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {server_certificate.fingerprint}", "a=setup:actpass", "a=rtcp-mux", "a=sendonly",
        f"a=rtpmap:{loadtest.VP8_PT} VP8/90000",
        f"a=candidate:1 1 udp 2130706431 127.0.0.1 {server_sock.getsockname()[1]} typ host", ""]))
    path = loadtest.MediaPath(Certificate.generate())
    dtls = DtlsEndpoint(server_certificate, ("sha-256", path.certificate.fingerprint))
    ours: stun.Message | None = None
    answered = False

    async def serve() -> None:
        nonlocal ours, answered
        while True:
            data, client = await loop.sock_recvfrom(server_sock, 2048)
            if data[:1] == b"\x00":  # the client's check
                if not answered:
                    ours = binding_request(path.ufrag, ufrag, path.pwd, 1, controlling=False,
                                           tie_breaker=random.getrandbits(64))
                    server_sock.sendto(bytes(ours), client)
                    continue
                server_sock.sendto(handle_binding(data, client, ufrag, pwd, path.ufrag).response, client)
            elif data[:1] == b"\x01" and ours is not None and data[8:20] == ours.transaction_id:
                answered = stun.parse_message(data).message_class == stun.Class.RESPONSE
            elif 20 <= data[0] <= 63:
                for datagram in dtls.receive(data):
                    server_sock.sendto(datagram, client)

    server = asyncio.create_task(serve())
    try:
        await path.connect(offer, [], timeout=10)
        assert answered and path.srtp_keys is not None and dtls.srtp_keys is not None
    finally:
        server.cancel()
        path.close()
        server_sock.close()


JANUS_MISSING = janus_peer.missing()


@pytest.mark.skipif(JANUS_MISSING is not None, reason=f"{JANUS_MISSING}")
async def test_janus_viewers_receive_the_feed_through_its_http_api(tmp_path) -> None:
    """Janus with the generated config: viewers join through the HTTP API with the load clients and receive every
    packet of the publisher's video and audio, authenticated; an unknown mountpoint is refused with a clear error;
    stopping Janus removes its config."""
    server = janus_peer.JanusServer(tmp_path / "janus.log", sorted(os.sched_getaffinity(0))[:1])
    viewers = janus_peer.JanusViewers(server)
    try:
        viewers.feed(loadtest.MediaPlan(video=True, audio=True))
        await viewers.add(3)
        await viewers.wait_for_media(10)
        assert viewers.errors() == [] and viewers.received() == 3
        before = viewers.load_receiver.totals()
        await asyncio.sleep(1.5)
        after = viewers.load_receiver.totals()
        # 3 viewers x (150 video + 50 audio) packets a second
        assert after["packets"] - before["packets"] >= 3 * 200
        assert after["ssrcs"] == 6 and after["lost"] == 0 and after["auth_failures"] == 0

        async with aiohttp.ClientSession() as http:
            api = janus_peer.JanusApi(http, server.url)
            session = await api.session()
            handle = await api.attach(session, "janus.plugin.streaming")
            with pytest.raises(janus_peer.JanusError, match="(?i)mountpoint"):
                reply = await api.message(session, handle, {"request": "watch", "id": janus_peer.MOUNTPOINT_ID + 1})
                if reply.get("janus") == "ack":  # refused in the event that follows
                    await api.offer(session, handle)
    finally:
        await viewers.close()
        server.stop()
    assert server.process.returncode is not None and not server.folder.exists()


def test_ingest_scenario_runs(tmp_path) -> None:
    """bench/run.py --scenario ingest with one stream of each kind and short windows: WHIP and RTMP publishers reach
    PUBLISHING, recordings and a room mix become active, and the JSON has every figure and ratio."""
    out = tmp_path / "ingest.json"
    result = subprocess.run([sys.executable, "bench/run.py", "--scenario", "ingest", "--streams", "1", "--window",
                             "0.5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())["ingest"]
    assert set(figures["loads"]) == {"idle", "whip", "whip+recorded", "whip+mix", "rtmp-passthrough",
                                     "rtmp-transcode"}
    for key in ("cores_per_whip_publisher", "cores_per_recorded_track", "cores_per_mixed_audio_track",
                "cores_per_rtmp_publisher_passthrough", "cores_per_rtmp_publisher_transcode",
                "ratio_rtmp_passthrough_to_whip", "ratio_rtmp_transcode_to_passthrough",
                "ratio_recorded_track_to_whip_publisher"):
        assert key in figures
    assert "per RTMP publisher (+ H.264 re-encode)" in result.stdout


def test_the_cluster_scenario_reports_the_relay_against_one_node(tmp_path) -> None:
    """`--scenario cluster` at a tiny size: one node, then two on a private Redis with every subscriber relayed; the
    JSON has both sides and their ratios."""
    out = tmp_path / "cluster.json"
    result = subprocess.run([sys.executable, "bench/run.py", "--quick", "--scenario", "cluster", "--rooms", "2",
                             "--room-size", "3", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    figures = json.loads(out.read_text())["cluster"]
    for side in ("single", "cluster"):
        assert figures[side]["lost"] == 0 and not figures[side]["errors"], figures
        assert figures[side]["join_ms"] > 0 and figures[side]["signal_rtt_ms"] > 0
    assert figures["cluster"]["rooms_per_node"] == [1, 1]  # placement spread the two rooms
    assert figures["cluster"]["signal_rtt_relayed_ms"] > 0
    for ratio in ("join_ratio", "relay_rtt_ratio", "packets_per_cpu_second_ratio"):
        assert figures[ratio] > 0


def test_the_svc_scenario_gives_each_viewer_the_layers_it_asked_for(tmp_path) -> None:
    """`--scenario svc` with a handful of viewers and a short window: the same room as VP8 simulcast and as VP9
    L3T3_KEY SVC, each viewer receiving the layers of the quality it asked for (counted from the VP9 payload
    descriptor; from the packet rate for simulcast), nothing lost; the JSON has both figures and their ratio."""
    out = tmp_path / "svc.json"
    result = subprocess.run([sys.executable, "bench/run.py", "--scenario", "svc", "--subscribers", "8", "--window",
                             "1", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    svc = figures["svc"]
    for side in ("vp8_simulcast", "vp9_svc"):
        assert svc[side]["lost"] == 0 and not svc[side]["errors"] and svc[side]["packets_per_cpu_second"] > 0
        assert {q: g["as_asked"] for q, g in svc[side]["by_quality"].items()} == {"LOW": 2, "MEDIUM": 2, "HIGH": 4}
    layers = {q: set(g["layers_pps"]) for q, g in svc["vp9_svc"]["by_quality"].items()}
    assert layers == {"LOW": {"S0T0", "S0T1", "S0T2"}, "MEDIUM": {f"S{s}T{t}" for s in (0, 1) for t in range(3)},
                      "HIGH": {f"S{s}T{t}" for s in range(3) for t in range(3)}}
    assert svc["layers_as_asked"] and figures["ratio_svc_vp8"] == svc["ratio_svc_vp8"] > 0
    assert "ratio_svc_vp8" in result.stdout
