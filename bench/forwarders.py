"""The baseline forwarders the benchmark compares tern with, each run as its own process.

    python bench/forwarders.py {c-ceiling,pure-python} --port P --subscribers P1,P2,...

Listens on 127.0.0.1:P. Every SRTP packet (any source, any SSRC) is unprotected, rewritten for subscriber i
(SSRC 0x5000 + i, sequence number and timestamp shifted by per-subscriber offsets), protected with that
subscriber's own outbound session and sent to 127.0.0.1:Pi. SRTP is AEAD_AES_128_GCM with master key + salt
bytes(range(28)) in every direction; RTCP is ignored. Prints `ready` once listening; when stdin closes, prints one
JSON line {"user": s, "system": s, "maxrss_kib": n} (getrusage, CPU since `ready`) and exits.

- c-ceiling: bench/ceiling.c, the physical limit of per-packet forwarding (no control logic), compiled on demand
  with the system C compiler into a cache directory and driven through ctypes with pylibsrtp's libsrtp.
- pure-python: the same forwarding in plain asyncio with pylibsrtp, what a Python developer would write.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from pylibsrtp import Policy, Session

KINDS = ("c-ceiling", "pure-python")
KEY = bytes(range(28))  # AEAD_AES_128_GCM: 16-byte master key + 12-byte master salt
PROFILE = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
FIRST_SSRC = 0x5000
SOCKET_BUFFER = 8 * 1024 * 1024  # as the engine asks for
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux values
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CEILING_SOURCE = Path(__file__).resolve().with_name("ceiling.c")
CFLAGS = ["-O3", "-shared", "-fPIC"]


def srtp_session(inbound: bool) -> Session:
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
                    srtp_profile=PROFILE)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


def offsets(index: int) -> tuple[int, int]:
    """Subscriber `index`'s (sequence number, timestamp) offsets: distinct per subscriber, as an SFU's would be."""
    return (index * 7919) & 0xFFFF, (index * 104729) & 0xFFFFFFFF


def listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for option, forced in ((socket.SO_RCVBUF, SO_RCVBUFFORCE), (socket.SO_SNDBUF, SO_SNDBUFFORCE)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


class Usage:
    """CPU time since `ready` was printed: start-up, imports and the C build are not counted."""

    def __init__(self) -> None:
        self.start = resource.getrusage(resource.RUSAGE_SELF)
        print("ready", flush=True)

    def report(self) -> None:
        end = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"user": end.ru_utime - self.start.ru_utime, "system": end.ru_stime - self.start.ru_stime,
                          "maxrss_kib": end.ru_maxrss}), flush=True)


# ---- c-ceiling ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tern-bench"


def build_ceiling() -> Path:
    """Compiles bench/ceiling.c once per source and flags version; concurrent builders do not clash (atomic rename)."""
    compiler = os.environ.get("CC", "cc")
    digest = hashlib.sha256(CEILING_SOURCE.read_bytes() + " ".join([compiler, *CFLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / f"ceiling-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *CFLAGS, "-o", scratch, str(CEILING_SOURCE)], check=True)
        os.replace(scratch, target)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"c-ceiling: cannot build {CEILING_SOURCE} with {compiler} (a C compiler is needed): {e}")
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return target


class SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint32),
                ("zero", ctypes.c_uint8 * 8)]


def serve_c_ceiling(port: int, subscribers: list[int]) -> None:
    from pylibsrtp._binding import ffi, lib

    library = ctypes.CDLL(str(build_ceiling()), use_errno=True)
    run = library.ceiling_run
    run.restype = ctypes.c_int
    count = len(subscribers)
    rx = srtp_session(True)
    tx = [srtp_session(False) for _ in subscribers]  # kept alive: C holds their srtp_t pointers

    def address(name: str) -> int:
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))

    def session_pointer(session: Session) -> int:
        return int(ffi.cast("uintptr_t", session._srtp[0]))

    loopback = int.from_bytes(socket.inet_aton("127.0.0.1"), "little")  # already in network order in memory
    peers = (SockaddrIn * count)(*(SockaddrIn(socket.AF_INET, socket.htons(p), loopback) for p in subscribers))
    ssrcs = (ctypes.c_uint32 * count)(*(FIRST_SSRC + i for i in range(count)))
    seq_offsets = (ctypes.c_uint16 * count)(*(offsets(i)[0] for i in range(count)))
    ts_offsets = (ctypes.c_uint32 * count)(*(offsets(i)[1] for i in range(count)))
    tx_pointers = (ctypes.c_void_p * count)(*(session_pointer(s) for s in tx))
    counters = (ctypes.c_uint64 * 4)()
    sock = listen(port)
    usage = Usage()
    result = run(sock.fileno(), sys.stdin.fileno(), ctypes.c_void_p(address("srtp_unprotect")),
                 ctypes.c_void_p(address("srtp_protect")), ctypes.c_void_p(session_pointer(rx)), tx_pointers, peers,
                 ssrcs, seq_offsets, ts_offsets, count, counters)
    usage.report()
    sock.close()
    if result != 0:
        sys.exit(f"c-ceiling: {os.strerror(ctypes.get_errno()) or 'socket error'}")


# ---- pure-python -------------------------------------------------------------------------------------------

def serve_pure_python(port: int, subscribers: list[int]) -> None:
    """A straightforward asyncio forwarder: Python objects and a libsrtp call through cffi for every packet."""
    rx = srtp_session(True)
    outputs = [(("127.0.0.1", peer), srtp_session(False), FIRST_SSRC + index, *offsets(index))
               for index, peer in enumerate(subscribers)]
    header = struct.Struct("!HII")  # sequence number, timestamp, SSRC

    class Forwarder(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 223:
                return
            try:
                packet = rx.unprotect(data)
            except Exception:  # pylibsrtp raises plain Exception on authentication failure
                return
            seq, ts, _ = header.unpack_from(packet, 2)
            for address, tx, ssrc, seq_offset, ts_offset in outputs:
                rewritten = (packet[:2] + header.pack((seq + seq_offset) & 0xFFFF, (ts + ts_offset) & 0xFFFFFFFF, ssrc)
                             + packet[12:])
                self.transport.sendto(tx.protect(rewritten), address)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(Forwarder, sock=listen(port))
        usage = Usage()
        await loop.run_in_executor(None, sys.stdin.read)
        usage.report()

    try:
        import uvloop  # the loop tern itself runs on: the fairest plain-Python comparison
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribers", required=True, help="comma-separated UDP ports on 127.0.0.1")
    args = parser.parse_args()
    ports = [int(p) for p in args.subscribers.split(",") if p]
    (serve_c_ceiling if args.kind == "c-ceiling" else serve_pure_python)(args.port, ports)


if __name__ == "__main__":
    main()
