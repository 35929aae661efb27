"""A userspace UDP relay that loses a share of one address's packets: the lab's kernel has no `netem` (and no `tc`
action that drops at random), so a lossy link is a relay the server offers as its media address (`--node-ip`).

Each client address gets its own socket toward the server, so the server sees one peer per client as it would
without the relay. Datagrams from `lossy_source` to the server are dropped at random with probability `loss`
(seeded: a run is repeatable); everything else passes. It runs in a thread of its own, so an event loop busy
decoding does not add jitter to the link."""
from __future__ import annotations

import random
import selectors
import socket
import threading

MAX_CLIENTS = 32  # client addresses relayed; datagrams from more are dropped (a test has a handful)
POLL_S = 0.05     # how often the thread looks at its stop flag


def is_rtp(datagram: bytes) -> bool:
    """An RTP (not RTCP, STUN or DTLS) packet: version 2 and a payload type outside RTCP's 72..95 (RFC 5761)."""
    return len(datagram) >= 12 and datagram[0] >> 6 == 2 and not 72 <= datagram[1] & 0x7F <= 95


class LossyRelay:
    """Relays UDP from `listen` to `target` and back; loses `loss` of `lossy_source`'s datagrams toward `target`.
    `dropped_rtp` / `sent_rtp` count the lossy source's RTP packets lost and passed. Use as a context manager."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], lossy_source: str, loss: float,
                 seed: int = 16) -> None:
        self.target = target
        self.lossy_source = lossy_source
        self.loss = loss
        self.random = random.Random(seed)
        self.dropped_rtp = self.sent_rtp = 0
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(listen)
        self.upstream: dict[tuple[str, int], socket.socket] = {}  # client address -> its socket toward the target
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.front, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lossy-relay", daemon=True)

    def __enter__(self) -> LossyRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in (self.front, *self.upstream.values()):
            sock.close()
        self.selector.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(POLL_S):
                client = key.data
                try:
                    datagram, source = key.fileobj.recvfrom(65536)
                    if client is None:
                        self._from_client(datagram, source)
                    else:
                        self.front.sendto(datagram, client)
                except OSError:  # an ICMP error from a closed peer: that datagram is gone, the link goes on
                    continue

    def _from_client(self, datagram: bytes, client: tuple[str, int]) -> None:
        if client[0] == self.lossy_source:
            rtp = is_rtp(datagram)
            if self.random.random() < self.loss:
                self.dropped_rtp += rtp
                return
            self.sent_rtp += rtp
        upstream = self.upstream.get(client)
        if upstream is None:
            if len(self.upstream) >= MAX_CLIENTS:
                return
            upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            upstream.bind((self.target[0], 0))
            self.upstream[client] = upstream
            self.selector.register(upstream, selectors.EVENT_READ, client)
        upstream.sendto(datagram, self.target)
