"""Benchmark harness: forwarding cost of the Cython engine against a plain-Python SFU loop, in one run.

Each forwarder runs in its own child process on a known UDP port with fixed SRTP keys (ICE and DTLS are
control-plane work and not measured). The parent plays one publisher and N subscribers over loopback,
sends a burst of SRTP packets, counts what the subscribers receive, and reads the child's CPU time.
The figure that matters is CPU microseconds per forwarded packet, and the ratio between the two.

    python bench/run.py [--packets 40000] [--subscribers 4] [--json bench/results.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from pylibsrtp import Policy, Session

ROOT = Path(__file__).resolve().parent.parent
KEY = bytes(range(28))  # AEAD_AES_128_GCM: 16-byte key + 12-byte salt
PROFILE = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
PUBLISHER_SSRC = 0x1234
PAYLOAD = bytes(1100)
OPUS_PT = 111


def session(inbound: bool) -> Session:
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
                    srtp_profile=PROFILE)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


# ---- forwarders under test (child processes) --------------------------------------------------

def serve_engine(port: int, publisher: int, subscribers: list[int]) -> None:
    import engine
    from signaling.dtls import session_pointer

    sessions = []  # the engine holds raw pointers into these

    def transport(forwarder: engine.Engine, peer_port: int) -> int:
        tid = forwarder.add_transport()
        forwarder.bind_transport(tid, "127.0.0.1", peer_port)
        rx, tx = session(True), session(False)
        sessions.append((rx, tx))
        forwarder.set_srtp(tid, session_pointer(rx), session_pointer(tx))
        return tid

    async def main() -> None:
        forwarder = engine.Engine("127.0.0.1", port, lambda event: None)
        forwarder.attach(asyncio.get_running_loop())
        receiver = forwarder.add_receiver(transport(forwarder, publisher), "0", "audio", "opus", OPUS_PT, 0, 48000,
                                          [], [PUBLISHER_SSRC], [], {})
        for index, peer in enumerate(subscribers):
            forwarder.add_downtrack(receiver, transport(forwarder, peer), 0x5000 + index, 0, OPUS_PT, 0, {})
        await _serve_until_stdin_closes()
        forwarder.close()

    import uvloop
    uvloop.run(main())


def serve_python(port: int, publisher: int, subscribers: list[int]) -> None:
    """What a straightforward asyncio forwarder does: a Python object and a libsrtp call through cffi per packet."""
    rx = session(True)
    outputs = [(("127.0.0.1", peer), session(False), 0x5000 + index) for index, peer in enumerate(subscribers)]

    class Forwarder(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.DatagramTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            if addr[1] != publisher or len(data) < 12 or not 128 <= data[0] <= 191:
                return
            try:
                packet = rx.unprotect(data)
            except Exception:
                return
            for address, tx, ssrc in outputs:
                rewritten = packet[:8] + struct.pack("!I", ssrc) + packet[12:]
                self.transport.sendto(tx.protect(rewritten), address)

    async def main() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(Forwarder, local_addr=("127.0.0.1", port))
        await _serve_until_stdin_closes()

    import uvloop
    uvloop.run(main())


async def _serve_until_stdin_closes() -> None:
    """Reports the CPU time spent between "ready" and the end of input: start-up and imports are not counted."""
    start = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    end = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"user": end.ru_utime - start.ru_utime, "system": end.ru_stime - start.ru_stime,
                      "maxrss_kib": end.ru_maxrss}), flush=True)


# ---- the harness (parent) ----------------------------------------------------------------------

def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(kind: str, packets: int, subscriber_count: int, rate: int) -> dict:
    publisher = udp_socket()
    subscribers = [udp_socket() for _ in range(subscriber_count)]
    port = free_udp_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--publisher", str(publisher.getsockname()[1]),
         "--subscriber-ports", ",".join(str(s.getsockname()[1]) for s in subscribers)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "ready", f"{kind} forwarder did not start"
    tx = session(False)
    wire = [tx.protect(struct.pack("!BBHII", 0x80, OPUS_PT, seq & 0xFFFF, seq * 960, PUBLISHER_SSRC) + PAYLOAD)
            for seq in range(packets)]
    received = 0
    started = time.perf_counter()
    interval = 1 / rate
    for index, datagram in enumerate(wire):
        publisher.sendto(datagram, ("127.0.0.1", port))
        received += _drain(subscribers)
        while time.perf_counter() < started + index * interval:
            received += _drain(subscribers)
    deadline = time.perf_counter() + 2
    while time.perf_counter() < deadline and received < packets * subscriber_count:
        received += _drain(subscribers)
        time.sleep(0.001)
    elapsed = time.perf_counter() - started
    out, _ = child.communicate("", timeout=30)
    usage = json.loads(out.strip().splitlines()[-1])
    for sock in [publisher, *subscribers]:
        sock.close()
    return {
        "forwarder": kind,
        "packets_sent": packets,
        "packets_forwarded": received,
        "delivery": received / (packets * subscriber_count),
        "cpu_seconds": usage["user"] + usage["system"],
        "cpu_us_per_forwarded_packet": (usage["user"] + usage["system"]) * 1e6 / max(received, 1),
        # User space is the forwarder's own work; system time is mostly the kernel delivering loopback datagrams.
        "user_us_per_forwarded_packet": usage["user"] * 1e6 / max(received, 1),
        "max_rss_mib": usage["maxrss_kib"] / 1024,
        "wall_seconds": elapsed,
    }


def _drain(subscribers: list[socket.socket]) -> int:
    count = 0
    for sock in subscribers:
        while True:
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=40000)
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--rate", type=int, default=10000, help="packets per second sent by the publisher")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--serve", choices=["engine", "python"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--publisher", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--subscriber-ports", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.path.insert(0, str(ROOT))
        serve = serve_engine if args.serve == "engine" else serve_python
        serve(args.port, args.publisher, [int(p) for p in args.subscriber_ports.split(",")])
        return

    results = [measure(kind, args.packets, args.subscribers, args.rate) for kind in ("python", "engine")]
    baseline, ours = results
    ratio = baseline["cpu_us_per_forwarded_packet"] / ours["cpu_us_per_forwarded_packet"]
    user_ratio = baseline["user_us_per_forwarded_packet"] / ours["user_us_per_forwarded_packet"]
    print(f"1 publisher -> {args.subscribers} subscribers, {args.packets} SRTP packets of {len(PAYLOAD)} B "
          f"at {args.rate}/s (AEAD_AES_128_GCM)")
    print(f"{'forwarder':<10} {'delivered':>9} {'CPU µs/pkt out':>15} {'user µs/pkt out':>16} {'CPU s':>7} {'max RSS MiB':>12}")
    for row in results:
        print(f"{row['forwarder']:<10} {row['delivery']:>9.1%} {row['cpu_us_per_forwarded_packet']:>15.2f} "
              f"{row['user_us_per_forwarded_packet']:>16.2f} {row['cpu_seconds']:>7.2f} {row['max_rss_mib']:>12.1f}")
    print(f"engine vs plain-Python loop: {ratio:.1f}x less CPU per forwarded packet in all, "
          f"{user_ratio:.1f}x less in user space")
    args.json.write_text(json.dumps({"results": results, "ratio_cpu_per_packet": ratio,
                                     "ratio_user_cpu_per_packet": user_ratio}, indent=2))


if __name__ == "__main__":
    main()
