"""In-process cost of transport-cc feedback from subscribers: CPU per feedback the engine takes in (SRTCP unprotect,
RTCP walk, send-history lookup, estimator), at N subscribers whose state is cold between their feedbacks.

    python bench/feedback.py --subscribers 500 --rounds 200
    PYTHONPATH=/other/checkout python bench/feedback.py     # that checkout's engine (an A/B)

Like bench/scaling.py this process is the publisher and drives the engine directly; each subscriber here is a real
socket, so after every frame it forwards, each subscriber answers with one feedback for that frame's packets. Only
the engine's handling of the feedbacks (Engine._on_readable on them) is timed: building, protecting and sending them
and the forwarding are not.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pylibsrtp import Policy, Session  # noqa: E402

import engine  # noqa: E402
from engine import twcc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scaling import DOWN_SSRC, PACKETS_PER_BATCH, add_publisher, pointer, vp8_packet  # noqa: E402

TWCC_ID = 3
CHUNK = 100  # feedbacks sent before the engine reads them (the engine socket's buffer holds a few hundred)


def twcc_seq(packet: bytes) -> int:
    """The transport-wide number in an unprotected RTP packet's one-byte header extension TWCC_ID."""
    count = packet[0] & 0x0F
    pos = 12 + 4 * count
    length = int.from_bytes(packet[pos + 2:pos + 4], "big") * 4
    pos, end = pos + 4, pos + 4 + length
    while pos < end:
        if packet[pos] == 0:
            pos += 1
            continue
        ext_id, size = packet[pos] >> 4, (packet[pos] & 0x0F) + 1
        if ext_id == TWCC_ID:
            return int.from_bytes(packet[pos + 1:pos + 3], "big")
        pos += 1 + size
    raise ValueError("no transport-cc extension")


def measure(subscribers: int, rounds: int) -> dict:
    eng = engine.Engine("127.0.0.1", 0, lambda event: None)
    keep = []  # the SRTP sessions live as long as the engine uses them
    publisher, tx, receiver = add_publisher(eng, keep)
    subs = []
    for _ in range(subscribers):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        down_key, up_key = os.urandom(28), os.urandom(28)  # subscribers negotiate AEAD_AES_128_GCM (signaling/peer/dtls.py)
        engine_tx, client_rx, engine_rx, client_tx = (
            Session(Policy(key=k, ssrc_type=kind, srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM))
            for k, kind in ((down_key, Policy.SSRC_ANY_OUTBOUND), (down_key, Policy.SSRC_ANY_INBOUND),
                            (up_key, Policy.SSRC_ANY_INBOUND), (up_key, Policy.SSRC_ANY_OUTBOUND)))
        keep += [engine_tx, engine_rx]
        transport = eng.add_transport()
        eng.add_downtrack(receiver, transport, DOWN_SSRC, 0, 100, 0, {}, transport_cc_id=TWCC_ID)
        eng.bind_transport(transport, "127.0.0.1", sock.getsockname()[1])
        eng.set_srtp(transport, pointer(engine_rx), pointer(engine_tx))
        subs.append([sock, client_rx, client_tx, None])  # the next transport-wide number it will get
    seq = 0

    def frame() -> None:
        nonlocal seq
        for _ in range(PACKETS_PER_BATCH):
            publisher.sendto(tx.protect(vp8_packet(seq, keyframe=seq == 0)), ("127.0.0.1", eng.port))
            seq += 1
        eng._on_readable()

    for _ in range(20):  # warm up: keyframe, libsrtp's streams
        frame()
    for sub in subs:  # the number each transport stamped last, from what reached its socket
        last = None
        while True:
            try:
                last = twcc_seq(sub[1].unprotect(sub[0].recv(2048)))
            except BlockingIOError:
                break
        sub[3] = (last + 1) & 0xFFFF
    cpu, feedbacks, walls = 0.0, 0, []
    for r in range(rounds):
        frame()
        arrivals = [r * 33_000 + i * 1_000 for i in range(PACKETS_PER_BATCH)]
        packets = []
        for sock, _, client_tx, base in subs:
            data, _ = twcc.build(base, arrivals, fb_count=r & 0xFF, sender_ssrc=0xB001, media_ssrc=DOWN_SSRC)
            packets.append((sock, client_tx.protect_rtcp(data)))
        for sub in subs:
            sub[3] = (sub[3] + PACKETS_PER_BATCH) & 0xFFFF
            while True:  # drop what the engine forwarded (it stays cold: nothing here reads it)
                try:
                    sub[0].recv(2048)
                except BlockingIOError:
                    break
        for i in range(0, len(packets), CHUNK):
            for sock, data in packets[i:i + CHUNK]:
                sock.sendto(data, ("127.0.0.1", eng.port))
            start, wall = time.process_time(), time.perf_counter()
            eng._on_readable()
            cpu += time.process_time() - start
            walls.append(time.perf_counter() - wall)
        feedbacks += len(packets)
    stats = eng.stats()
    eng.close()
    publisher.close()
    for sub in subs:
        sub[0].close()
    return {
        "subscribers": subscribers,
        "feedbacks": feedbacks,
        "received": stats.get("twcc_feedback_received"),
        "unmatched": stats.get("twcc_unmatched"),
        "cpu_us_per_feedback": round(cpu / feedbacks * 1e6, 3),
        "wall_us_per_feedback": round(sum(walls) / feedbacks * 1e6, 3),
        "wall_median_chunk_ms": round(statistics.median(walls) * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    print(measure(args.subscribers, args.rounds))


if __name__ == "__main__":
    main()
