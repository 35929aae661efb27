"""The load clients against a real tern server: join through /rtc, ICE, DTLS, SRTP, media both ways; over UDP,
ICE-TCP (loadgen's RFC 4571 framing) and a TURN relay (ChannelData) over UDP and over TLS; loadgen's VP9 SVC
stream as a parser reads it."""
from __future__ import annotations

import socket
import struct
import time
from itertools import groupby

from livekit.protocol import rtc
from pylibsrtp import Policy, Session

from engine.codecs.vp9 import vp9_descriptor
from engine.framer import StreamFramer
from signaling.clients import loadgen, loadtest, turnclient, turntls
from signaling.peer.dtls import session_pointer
from signaling.peer.ice import binding_request

from conftest import API_KEY, API_SECRET, free_port, start_server, stop_server


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


async def test_load_clients_over_ice_tcp_receive_authenticated_media(server) -> None:
    """--transport tcp: each media path is an ICE-TCP connection (RFC 4571 frames), nothing over UDP."""
    before = server.counters()
    report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=2,
                                     duration=2, room_prefix="load-tcp", transport="tcp")
    after = server.counters()
    assert report.failed == [] and report.received_packets > 0 and report.auth_failures == 0, report
    assert report.lost == 0 and report.twcc_feedback_sent > 0, report  # a stream loses nothing; feedback framed too
    assert after["tcp_claimed"] - before.get("tcp_claimed", 0) == 3  # the publisher's and the two subscribers'


def test_loadgen_frames_media_on_a_tcp_stream_and_takes_over_a_partly_read_one() -> None:
    """The C sender's RFC 4571 frames reach the C receiver whole, which carries on from a StreamFramer that Python
    read the stream's start with (a frame cut in two by the hand-over), and send_framed's frames keep the step."""
    listener = socket.create_server(("127.0.0.1", 0))
    sending = socket.create_connection(listener.getsockname())
    receiving, _ = listener.accept()
    listener.close()
    for sock in (sending, receiving):
        sock.setblocking(False)
    request, consent = (bytes(binding_request("server", "client", "p" * 22, 1, controlling=True, tie_breaker=7,
                                                nominate=nominate))
                        for nominate in (True, False))
    stream = b"".join(len(m).to_bytes(2, "big") + m for m in (request, consent))
    cut = len(request) + 2 + 30
    sending.sendall(stream[:cut])
    framer = StreamFramer()
    time.sleep(0.1)
    assert framer.feed(receiving.recv(65536)) == [request]  # what Python's handshake reads, one frame and a part

    key = bytes(range(28))
    rx, tx = (Session(Policy(key=key, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
              for kind in (Policy.SSRC_ANY_INBOUND, Policy.SSRC_ANY_OUTBOUND))
    load_sender, load_receiver = loadgen.LoadSender(4), loadgen.LoadReceiver(4)
    index = load_receiver.add_socket(receiving.fileno(), session_pointer(rx), stream=framer)
    load_receiver.start()
    try:
        sending.sendall(stream[cut:])
        load_sender.add_stream(sending.fileno(), session_pointer(tx), 0x1234, loadtest.VP8_PT, True,
                               packets_per_frame=loadtest.VIDEO_PACKETS_PER_FRAME, frames_per_second=30,
                               payload_size=loadtest.VIDEO_PAYLOAD, clock_rate=90000, framed=True)
        load_sender.start()
        for _ in range(5):
            time.sleep(0.2)
            loadgen.send_framed(sending.fileno(), consent)  # between the sender thread's frames, never inside one
        load_sender.stop()
        time.sleep(0.2)
    finally:
        load_receiver.stop()
    stats, sent = load_receiver.socket_stats(index), load_sender.stats()
    assert sent["packets"] > 100 and sent["errors"] == 0, sent
    assert stats["packets"] == sent["packets"] and stats["lost"] == 0 and stats["auth_failures"] == 0, stats
    assert stats["other"] == 6 and load_receiver.take_stun(index) == consent  # the cut frame and five more, whole
    assert not stats["closed"]
    sending.close()
    receiving.close()


def test_loadgen_sends_vp9_l3t3_key_pictures_as_chromium_does() -> None:
    """A VP9 SVC stream (svc_packets): each picture is S0, S1, S2 frames of SVC_PACKETS' sizes at one timestamp,
    flexible-mode descriptors with one picture id, B/E around each layer frame, the marker on the last packet; a
    keyframe without inter-picture references, its upper layers predicted from the layer below, the scalability
    structure (three layers up to 1280x720) on its first packet; delta pictures in the pattern T0 T2 T1 T2, each
    layer referencing its own earlier picture (P_DIFF). The receiver counts a VP9 payload type's packets by layer."""
    key = bytes(range(28))
    svc = bytes(n for layer in loadtest.SVC_PACKETS for n in layer)
    load_sender, load_receiver = loadgen.LoadSender(4), loadgen.LoadReceiver(4)
    pairs = [(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
             for _ in range(2)]
    for sending, receiving in pairs:
        receiving.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, loadtest.SOCKET_BUFFER)
        receiving.bind(("127.0.0.1", 0))
        receiving.setblocking(False)
        sending.connect(receiving.getsockname())
        receiving.connect(sending.getsockname())
    rx = [Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
          for _ in pairs]
    tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
    index = load_receiver.add_socket(pairs[1][1].fileno(), session_pointer(rx[1]), vp9_payload_type=loadtest.VP9_PT)
    load_receiver.start()
    try:
        for ssrc, (sending, _) in zip((0x1000, 0x2000), pairs):
            load_sender.add_stream(sending.fileno(), session_pointer(tx), ssrc, loadtest.VP9_PT, True,
                                   packets_per_frame=1, frames_per_second=30, payload_size=loadtest.VIDEO_PAYLOAD,
                                   clock_rate=90000, keyframe_frames=6, svc_packets=svc)
        load_sender.start()
        time.sleep(0.5)
        load_sender.stop()
        time.sleep(0.1)
    finally:
        load_receiver.stop()
    packets = []
    while True:
        try:
            packets.append(rx[0].unprotect(pairs[0][1].recv(2048)))
        except BlockingIOError:
            break
    pictures = [list(group) for _, group in groupby(packets, key=lambda p: struct.unpack_from("!I", p, 4)[0])]
    assert len(pictures) >= 12
    for picture in pictures:
        parsed = [vp9_descriptor(p[12:]) for p in picture]
        first = parsed[0]
        keyframe = not first["inter_picture"]
        assert all(d["flexible"] and d["layered"] and d["picture_id"] == first["picture_id"] for d in parsed)
        assert all(d["temporal_id"] == first["temporal_id"] for d in parsed)
        assert [bool(p[1] & 0x80) for p in picture] == [False] * (len(picture) - 1) + [True]
        layers = [list(frame) for _, frame in groupby(parsed, key=lambda d: d["spatial_id"])]
        assert [frame[0]["spatial_id"] for frame in layers] == [0, 1, 2]
        column = 0 if keyframe else 1 + first["temporal_id"]
        assert [len(frame) for frame in layers] == [counts[column] for counts in loadtest.SVC_PACKETS]
        for frame in layers:
            assert [(d["begin_of_frame"], d["end_of_frame"]) for d in frame] == \
                [(i == 0, i == len(frame) - 1) for i in range(len(frame))]
            assert all(d["inter_layer"] == (keyframe and d["spatial_id"] > 0) for d in frame)
        assert [d["has_ss"] for d in parsed] == [keyframe] + [False] * (len(parsed) - 1)
        if keyframe:
            assert (first["ss_spatial_layers"], first["ss_width"], first["ss_height"]) == (3, 1280, 720)
            assert first["is_keyframe"] and first["temporal_id"] == 0
        else:
            assert all(d["inter_picture"] and d["size"] == 5 for d in parsed)  # one P_DIFF each
    ids = [vp9_descriptor(picture[0][12:])["picture_id"] for picture in pictures]
    assert ids == [(ids[0] + i) & 0x7FFF for i in range(len(ids))]
    after_key = [[vp9_descriptor(p[0][12:])["temporal_id"] for p in pictures[i:i + 6]]
                 for i, p in enumerate(pictures) if not vp9_descriptor(p[0][12:])["inter_picture"]]
    assert any(tids == [0, 2, 1, 2, 0, 2] for tids in after_key)
    stats = load_receiver.socket_stats(index)
    assert set(stats["layers"]) == {(s, t) for s in range(3) for t in range(3)}
    assert sum(stats["layers"].values()) == stats["packets"] > 0 and stats["auth_failures"] == 0
    for sending, receiving in pairs:
        sending.close()
        receiving.close()


async def test_load_clients_over_a_turn_relay_receive_authenticated_media(tmp_path) -> None:
    """--transport turn: each media path relays through the server's TURN/UDP port on a channel (ChannelData)."""
    server = start_server(tmp_path, config=f"turn: {{enabled: true, udp_port: {free_port(socket.SOCK_DGRAM)}, "
                                           "tls_port: 0}")
    try:
        report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=2,
                                         duration=2, room_prefix="load-turn", transport="turn")
        counters = server.counters()
    finally:
        stop_server(server)
    assert report.failed == [] and report.received_packets > 0 and report.auth_failures == 0, report
    assert report.twcc_feedback_sent > 0, report  # feedback relayed too
    assert counters["turn_allocations"] == 3  # the publisher's and the two subscribers'


async def test_load_clients_over_turn_tls_receive_authenticated_media(tmp_path) -> None:
    """--transport turn-tls: each media path allocates over TLS to the server's TURN/TLS port (its development
    certificate) and relays on a channel, ChannelData padded on the stream; a stream loses nothing."""
    server = start_server(tmp_path, config=f"turn: {{enabled: true, udp_port: 0, tls_port: {free_port()}}}")
    try:
        report = await loadtest.run_load(server.url, API_KEY, API_SECRET, rooms=1, publishers=1, subscribers=2,
                                         duration=2, room_prefix="load-turn-tls", transport="turn-tls")
        counters = server.counters()
    finally:
        stop_server(server)
    assert report.failed == [] and report.received_packets > 0 and report.auth_failures == 0, report
    assert report.lost == 0 and report.twcc_feedback_sent > 0, report
    assert counters["turn_tls_streams"] == 3 and counters["turn_allocations"] == 3  # one per peer connection


def test_turn_stream_splits_into_stun_and_unpadded_channel_data() -> None:
    stun_message = b"\x01\x01\x00\x04" + bytes(16) + b"abcd"
    padded = turnclient.channel_data(turnclient.CHANNEL, b"media") + bytes(3)  # 5 bytes of payload, 3 of padding
    buffer = bytearray(stun_message + padded + padded[:6])
    assert turntls.split_stream(buffer) == [stun_message, turnclient.channel_data(turnclient.CHANNEL, b"media")]
    assert buffer == padded[:6]  # a message cut short waits for the rest


def test_turn_client_finds_the_udp_url_and_unwraps_only_its_channel() -> None:
    servers = [rtc.ICEServer(urls=["turns:example.org:5349?transport=tcp", "turn:127.0.0.1:3478?transport=udp"],
                             username="1:PA_x", credential="pw")]
    assert turnclient.udp_server(servers) == (("127.0.0.1", 3478), "1:PA_x", "pw")
    assert turnclient.udp_server([rtc.ICEServer(urls=["turn:[::1]:3478"])]) is None  # the load clients are IPv4
    assert turnclient.tls_server(servers) == (("example.org", 5349), "1:PA_x", "pw")
    wrapped = turnclient.channel_data(turnclient.CHANNEL, b"media")
    assert turnclient.channel_payload(turnclient.CHANNEL, wrapped) == b"media"
    assert turnclient.channel_payload(turnclient.CHANNEL + 1, wrapped) is None  # another channel
    assert turnclient.channel_payload(turnclient.CHANNEL, wrapped[:-1]) is None  # cut short
    assert turnclient.channel_payload(turnclient.CHANNEL, b"\x01\x01\x00\x00" + bytes(16)) is None  # the server's STUN
