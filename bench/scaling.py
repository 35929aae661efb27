"""In-process scaling of the engine's forwarding workers: one publisher's video to N subscribers, on 1, 2, ... workers.

    python bench/scaling.py                          # 1000 subscribers, workers 1 and 2
    python bench/scaling.py --subscribers 500 --workers 1 2 4 --batches 400
    python bench/scaling.py --subscribers 500 --workers 1 --transport-cc   # every packet stamped, a send history each

No server process, no load clients: this process is the publisher (it protects and sends bursts of RTP to the
engine's port) and drives the engine directly (Engine._on_readable, as the event loop does when the socket is
readable). The subscribers are transports bound to loopback ports nobody listens on, so the kernel takes each
datagram through the whole send path and drops it at the end. So on a small machine the figures are the engine's
alone, where bench/run.py's --server-cores runs share the cores with the load clients.

Per worker count: the wall time of a batch (read, unprotect, fan-out on every worker, send), the CPU time of this
process per forwarded packet (every thread's, the publisher's few sends included), forwarded packets per CPU-second,
and the efficiency per core against the first count: (pkt/CPU-s) / (pkt/CPU-s with the first count).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):  # PYTHONPATH=/other/checkout measures that one's engine
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pylibsrtp import Policy, Session  # noqa: E402
from pylibsrtp._binding import ffi  # noqa: E402

import engine  # noqa: E402

VP8_PT, SSRC, DOWN_SSRC = 96, 0x1001, 0xA001
PACKETS_PER_BATCH = 6  # one video frame's packets, read by one recvmmsg
PAYLOAD = 1000


def pointer(session: Session) -> int:
    return int(ffi.cast("uintptr_t", session._srtp[0]))


def vp8_packet(seq: int, keyframe: bool) -> bytes:
    descriptor = bytes([0x90, 0x80, 0x80 | (seq >> 8 & 0x7F), seq & 0xFF])
    frame = b"\x00\x00\x00\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"\x01\x00\x00"
    payload = descriptor + frame + bytes(PAYLOAD - len(descriptor) - len(frame))
    return struct.pack("!BBHII", 0x80, 0x80 | VP8_PT, seq & 0xFFFF, seq // PACKETS_PER_BATCH * 3000 & 0xFFFFFFFF,
                       SSRC) + payload


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_stats(eng: engine.Engine) -> list[dict]:
    """Per worker figures, or none from an engine without workers."""
    return eng.worker_stats() if hasattr(eng, "worker_stats") else []


def add_publisher(eng: engine.Engine, keep: list) -> tuple[socket.socket, Session, int]:
    """This process as the engine's publisher of one VP8 track: its socket, its outbound SRTP session and the
    Receiver. The SRTP sessions go into `keep` (they must live as long as the engine uses them)."""
    publisher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    publisher.bind(("127.0.0.1", 0))
    key = os.urandom(30)
    rx, tx = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)), Session(
        Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    keep += [rx, tx]
    pub = eng.add_transport()
    eng.bind_transport(pub, "127.0.0.1", publisher.getsockname()[1])
    eng.set_srtp(pub, pointer(rx), 0)
    return publisher, tx, eng.add_receiver(pub, "0", "video", "vp8", VP8_PT, 0, 90000, [], [SSRC], [], {})


def measure(workers: int, subscribers: int, batches: int, transport_cc: bool = False) -> dict:
    # One worker is the engine's default: an engine without worker threads is measured the same way (an A/B).
    options = {"workers": workers} if workers != 1 else {}
    eng = engine.Engine("127.0.0.1", 0, lambda event: None, **options)
    keep = []  # the SRTP sessions live as long as the engine uses them
    publisher, tx, receiver = add_publisher(eng, keep)
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(subscribers)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))  # distinct free ports, closed again below: nobody listens there
    ports = [sink.getsockname()[1] for sink in sinks]
    for sink in sinks:
        sink.close()
    for port in ports:
        down = Session(Policy(key=os.urandom(30), ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        keep.append(down)
        transport = eng.add_transport()
        eng.add_downtrack(receiver, transport, DOWN_SSRC, 0, 100, 0, {}, transport_cc_id=3 if transport_cc else 0)
        eng.bind_transport(transport, "127.0.0.1", port)
        eng.set_srtp(transport, 0, pointer(down))
    walls = []
    seq = 0
    forwarded = eng.stats()["forwarded"]
    cpu = cpu_seconds()
    for batch in range(batches + 20):  # the first 20 warm up: keyframe, libsrtp's per-SSRC streams, caches
        if batch == 20:
            forwarded, cpu, walls = eng.stats()["forwarded"], cpu_seconds(), []
        for _ in range(PACKETS_PER_BATCH):
            publisher.sendto(tx.protect(vp8_packet(seq, keyframe=seq == 0)), ("127.0.0.1", eng.port))
            seq += 1
        start = time.perf_counter()
        eng._on_readable()
        walls.append(time.perf_counter() - start)
    cpu = cpu_seconds() - cpu
    forwarded = eng.stats()["forwarded"] - forwarded
    stats = worker_stats(eng)
    eng.close()
    publisher.close()
    walls.sort()
    return {
        "workers": workers,
        "subscribers": subscribers,
        "forwarded": forwarded,
        "expected": batches * PACKETS_PER_BATCH * subscribers,
        "batch_ms": round(statistics.mean(walls) * 1e3, 3),
        "batch_p99_ms": round(walls[int(len(walls) * 0.99) - 1] * 1e3, 3),
        "cpu_us_per_packet": round(cpu / forwarded * 1e6, 3) if forwarded else None,
        "pkt_per_cpu_s": round(forwarded / cpu) if cpu else None,
        "worker_busy_s": [round(w["busy_seconds"], 3) for w in stats],
        "worker_packets": [w["packets"] for w in stats],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--transport-cc", action="store_true",
                        help="the subscribers negotiated transport-cc: each packet is stamped and kept in a send history")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = [measure(workers, args.subscribers, args.batches, args.transport_cc) for workers in args.workers]
    base = rows[0]["pkt_per_cpu_s"]
    print(f"{'workers':>7} {'batch ms':>9} {'p99 ms':>8} {'µs/pkt':>7} {'pkt/CPU-s':>10} {'efficiency':>10}  "
          f"busy s per worker")
    for row in rows:
        row["efficiency"] = round(row["pkt_per_cpu_s"] / base, 3) if base and row["pkt_per_cpu_s"] else None
        print(f"{row['workers']:>7} {row['batch_ms']:>9} {row['batch_p99_ms']:>8} {row['cpu_us_per_packet']:>7} "
              f"{row['pkt_per_cpu_s']:>10} {row['efficiency']:>10}  {row['worker_busy_s']}")
        if row["forwarded"] != row["expected"]:
            print(f"  forwarded {row['forwarded']} of {row['expected']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
