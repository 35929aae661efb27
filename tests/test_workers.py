"""Forwarding on several worker threads (engine/workers.pxd), against real UDP sockets and SRTP as in test_engine.

A room's subscribers are spread over the workers; each must get every packet, in order, numbered as with one worker,
across a simulcast switch, with NACKs answered, while the control plane adds, pauses and removes DownTracks between
batches. The port stays one process's.
"""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from pylibsrtp import Policy

import engine
from signaling.peer.dtls import policy_pointer
from test_engine import (DOWN_RTX_SSRC, DOWN_SSRC, F_SSRC, PUB_EXTMAP, Q_SSRC, SUB_MID_ID, SUB_RTX_PT, SUB_VP8_PT,
                         VP8_PT, VP8_RTX_PT, Peer, nack, picture_id, pointer, video)


async def room(workers: int, subscribers: int, rids: list[str]):
    """An engine with one simulcast (or single-layer) VP8 publisher and `subscribers` subscribers of it."""
    eng = engine.Engine("127.0.0.1", 0, lambda event: None, workers=workers)
    eng.attach(asyncio.get_running_loop())
    publisher = Peer(eng)
    peers = [Peer(eng) for _ in range(subscribers)]
    receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, rids, [], [],
                                PUB_EXTMAP)
    downtracks = [eng.add_downtrack(receiver, peer.transport, DOWN_SSRC, DOWN_RTX_SSRC, SUB_VP8_PT, SUB_RTX_PT,
                                    {1: SUB_MID_ID}) for peer in peers]
    return eng, publisher, peers, receiver, downtracks


def close(eng: engine.Engine, *peers: Peer) -> None:
    eng.close()
    for peer in peers:
        peer.close()


async def collect_all(peers: list[Peer]) -> list[list]:
    await asyncio.gather(*(peer.collect() for peer in peers))
    return [peer.take_rtp() for peer in peers]


async def simulcast_session(workers: int) -> list[list[tuple[int, int, bytes]]]:
    """q, then a switch to f at its keyframe, as test_engine's seamless switch; what each subscriber got."""
    eng, publisher, peers, _, _ = await room(workers, 6, ["q", "h", "f"])
    try:
        got = [[] for _ in peers]
        steps = [[video(seq, Q_SSRC, b"q", 1000 + seq, keyframe=seq == 100, tl0=seq & 0xFF)
                  for seq in range(100, 110)],
                 [video(5000, F_SSRC, b"f", 7000, keyframe=False, tl0=50),
                  video(110, Q_SSRC, b"q", 1110, keyframe=False, tl0=110)],
                 [video(5001, F_SSRC, b"f", 7001, keyframe=True, tl0=51),
                  video(111, Q_SSRC, b"q", 1111, keyframe=False, tl0=111)]
                 + [video(5000 + i, F_SSRC, b"f", 7000 + i, keyframe=False, tl0=50 + i) for i in range(2, 10)]]
        for packets in steps:
            for packet in packets:
                publisher.send_rtp(packet)
            for index, packets_in in enumerate(await collect_all(peers)):
                got[index] += [(p.seq, picture_id(p.payload), p.payload[4:5]) for p in packets_in]
            await publisher.collect()
        assert eng.stats()["layer_switches"] == len(peers)
        return got
    finally:
        close(eng, publisher, *peers)


async def test_subscribers_on_two_workers_get_what_one_worker_sends() -> None:
    one, two = await simulcast_session(1), await simulcast_session(2)
    expected = [(seq, 1000 + seq, bytes([seq])) for seq in range(100, 120)]  # contiguous across the switch
    assert one == [expected] * 6
    assert two == one


async def test_a_big_room_is_split_over_the_workers() -> None:
    eng, publisher, peers, _, _ = await room(2, 40, [])
    try:
        assert eng.workers == 2
        got = [[] for _ in peers]
        for first in range(0, 300, 50):  # a few batches each round; read before the clients' socket buffers fill
            for seq in range(first, first + 50):
                publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 0))
            for index, packets in enumerate(await collect_all(peers)):
                got[index] += [p.seq for p in packets]
        assert got == [list(range(300))] * len(peers)
        workers = eng.worker_stats()
        assert [w["downtracks"] for w in workers] == [20, 20]
        assert all(w["packets"] > 0 and w["batches"] > 0 for w in workers)
        assert sum(w["packets"] for w in workers) == eng.stats()["forwarded"] == 40 * 300
        assert all(w["drops"] == {} for w in workers)
    finally:
        close(eng, publisher, *peers)


async def test_nacks_are_answered_for_subscribers_of_every_worker() -> None:
    eng, publisher, peers, _, downtracks = await room(2, 4, [])
    try:
        for seq in range(200, 205):
            publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 200))
        sent = [{p.seq: p for p in packets} for packets in await collect_all(peers)]
        for peer in peers:
            peer.send_rtcp(nack(0x55, DOWN_SSRC, 201, blp=0b10))  # 201 and 203
        for index, rtx in enumerate(await collect_all(peers)):
            assert [(p.ssrc, p.pt) for p in rtx] == [(DOWN_RTX_SSRC, SUB_RTX_PT)] * 2
            assert [struct.unpack_from("!H", p.payload)[0] for p in rtx] == [201, 203]
            assert [p.payload[2:] for p in rtx] == [sent[index][201].payload, sent[index][203].payload]
        assert [eng.downtrack_stats(d)["retransmissions"] for d in downtracks] == [2] * 4
        assert {w["downtracks"] for w in eng.worker_stats()} == {2}
    finally:
        close(eng, publisher, *peers)


async def test_control_changes_between_batches_while_media_flows() -> None:
    """DownTracks removed, added, paused and capped while the publisher streams: every batch runs on both workers,
    each change lands between two of them. The subscribers left untouched get every packet in order."""
    eng, publisher, peers, receiver, downtracks = await room(2, 12, [])
    extra = [Peer(eng) for _ in range(6)]
    try:
        stop = asyncio.Event()

        async def stream() -> None:
            seq = 0
            while not stop.is_set():
                for _ in range(8):
                    publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq % 30 == 0))
                    seq += 1
                await asyncio.sleep(0.002)

        task = asyncio.create_task(stream())
        for round_ in range(30):
            await asyncio.sleep(0.003)
            peer = extra[round_ % len(extra)]
            added = eng.add_downtrack(receiver, peer.transport, DOWN_SSRC, DOWN_RTX_SSRC, SUB_VP8_PT, SUB_RTX_PT, {})
            eng.set_paused(downtracks[6 + round_ % 6], round_ % 2 == 0)
            eng.set_target_layer(downtracks[6 + round_ % 6], 0, temporal=round_ % 4)
            await asyncio.sleep(0.003)
            eng.remove_downtrack(added)
        stop.set()
        await task
        got = await collect_all(peers[:6])
        for packets in got:
            seqs = [p.seq for p in packets]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) > 100
        assert sum(w["downtracks"] for w in eng.worker_stats()) == 12
    finally:
        close(eng, publisher, *peers, *extra)


async def test_send_sessions_made_on_their_workers_thread() -> None:
    """set_srtp_policy: the engine makes each subscriber's send session on the thread of the worker that forwards to
    it (and frees it with the transport); media and retransmissions are protected with it."""
    eng, publisher, peers, _, downtracks = await room(2, 4, [])
    try:
        for peer in peers:
            policy = Policy(key=peer.down_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
            policy.allow_repeat_tx = True
            eng.set_srtp_policy(peer.transport, pointer(peer.engine_rx), policy_pointer(policy))
        for seq in range(10):
            publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 0))
        assert [[p.seq for p in packets] for packets in await collect_all(peers)] == [list(range(10))] * 4
        for peer in peers:
            peer.send_rtcp(nack(0x55, DOWN_SSRC, 3))
        assert [[p.ssrc for p in packets] for packets in await collect_all(peers)] == [[DOWN_RTX_SSRC]] * 4
        eng.remove_transport(peers[0].transport)  # frees its session
        publisher.send_rtp(video(10, Q_SSRC, None, 10, keyframe=False))
        assert [[p.seq for p in packets] for packets in await collect_all(peers[1:])] == [[10]] * 3
        with pytest.raises(RuntimeError):
            eng.set_srtp_policy(peers[1].transport, 0, policy_pointer(Policy()))  # no key
    finally:
        close(eng, publisher, *peers)


def test_the_port_stays_one_engines() -> None:
    first = engine.Engine("127.0.0.1", 0, lambda event: None, workers=2)
    try:
        for workers in (1, 2):
            with pytest.raises(OSError):
                engine.Engine("127.0.0.1", first.port, lambda event: None, workers=workers)
    finally:
        first.close()
    single = engine.Engine("127.0.0.1", 0, lambda event: None)
    try:
        with pytest.raises(OSError):
            engine.Engine("127.0.0.1", single.port, lambda event: None, workers=2)
    finally:
        single.close()
    with pytest.raises(ValueError):
        engine.Engine("127.0.0.1", 0, lambda event: None, workers=0)


async def test_received_datagrams_reach_the_loop_threads_socket() -> None:
    """The workers' sockets share the port, but the cBPF program steers every datagram to the engine's own: media
    from many source ports (which SO_REUSEPORT would otherwise hash over the group) is all received."""
    eng, publisher, peers, _, _ = await room(4, 1, [])
    sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        for index, sock in enumerate(sources):
            sock.sendto(b"\x00" * (index + 1), ("127.0.0.1", eng.port))  # garbage: counted, whoever sends it
        await asyncio.sleep(0.05)
        assert eng.stats()["packets_in"] == 16
    finally:
        for sock in sources:
            sock.close()
        close(eng, publisher, *peers)


async def test_a_subscriber_moving_to_ice_tcp_is_forwarded_by_the_loop_thread() -> None:
    """Its DownTrack was worker 1's and its send session made on worker 1's thread; once its path is an ICE-TCP
    connection (which only the loop thread writes), the loop thread forwards to it with that session."""
    from test_ice_tcp import TcpPeer
    events: list[tuple] = []
    eng = engine.Engine("127.0.0.1", 0, events.append, workers=2, tcp_port=0)
    eng.attach(asyncio.get_running_loop())
    publisher = Peer(eng)
    subscriber = TcpPeer(eng, events)
    try:
        receiver = eng.add_receiver(publisher.transport, "1", "video", "vp8", VP8_PT, VP8_RTX_PT, 90000, [], [], [],
                                    PUB_EXTMAP)
        eng.add_downtrack(receiver, subscriber.transport, DOWN_SSRC, DOWN_RTX_SSRC, SUB_VP8_PT, SUB_RTX_PT,
                          {1: SUB_MID_ID})
        policy = Policy(key=subscriber.down_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND)
        eng.set_srtp_policy(subscriber.transport, pointer(subscriber.engine_rx), policy_pointer(policy))
        assert [w["downtracks"] for w in eng.worker_stats()] == [0, 1]
        await subscriber.claim()
        for seq in range(10):
            publisher.send_rtp(video(seq, Q_SSRC, None, seq, keyframe=seq == 0))
        await subscriber.collect(0.2)
        assert [p.seq for p in subscriber.take_rtp()] == list(range(10))
        assert eng.stats()["drop_subscriber_not_ready"] == 0
    finally:
        close(eng, publisher, subscriber)
