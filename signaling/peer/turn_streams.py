"""TURN over TCP and TLS: listeners that hand each client's stream to the engine (Engine.turn_adopt), where it is
framed, bounded and swept like an ICE-TCP connection (engine/tcpmux.pyx) and its TURN messages sorted out in C
(engine/turnmux.pyx); requests come back up as EV_TURN events.

TURN/TCP: the accepted socket itself goes to the engine, so it costs what ICE-TCP costs.
TURN/TLS: Python terminates TLS (asyncio's ssl) and bridges the plaintext to the engine over a socketpair. Per TLS
record that is one decryption (or encryption) in OpenSSL, two extra copies (into and out of the socketpair) and one
Python callback each way, so a relayed client over TLS costs the event loop a callback per packet, unlike every
other path; fine for the clients whose networks allow nothing else, and the reason TURN/UDP and ICE-TCP come first in
their ICE priorities. Each side pauses reading while the other's write buffer is past PUMP_HIGH_WATER, so a client
that does not read fills the engine's bounded queue, which drops (counted), never Python's memory.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

MAX_TLS_STREAMS = 1024          # TLS connections at once (a socketpair and buffers each); more are refused, counted
TLS_HANDSHAKE_TIMEOUT_S = 5.0   # a half-open TLS connection (no finished handshake) is dropped after this
PUMP_HIGH_WATER = 256 * 1024    # bytes buffered toward one side before the other side's reading pauses
ACCEPTS_PER_WAKE = 16           # TURN/TCP accepts per readiness, so a connection flood cannot hold the loop
LISTEN_BACKLOG = 128
DEV_CERTIFICATE_DAYS = 30


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def dev_certificate(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `name` (a DNS name or an IP address) and its key, PEM, made now: development
    mode's TURN/TLS identity. With the `cryptography` package tern already depends on (DTLS), not the openssl
    command line."""
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alternative = x509.DNSName(name)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=DEV_CERTIFICATE_DAYS))
            .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def dev_tls_context(name: str) -> ssl.SSLContext:
    cert_pem, key_pem = dev_certificate(name)
    with tempfile.TemporaryDirectory() as directory:  # ssl loads chains from files only
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(cert_path, "wb") as out:
            out.write(cert_pem)
        with open(key_path, "wb") as out:
            out.write(key_pem)
        return tls_context(cert_path, key_path)


def _listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Side(asyncio.Protocol):
    """One end of the bridge: what it reads goes to `other`; it pauses `other`'s reading while it cannot write, and
    closes it when it goes (then calls `on_lost`)."""

    def __init__(self, other: _Side | None = None, on_lost: Callable[[], None] | None = None) -> None:
        self.transport: Any = None  # an asyncio.Transport in spirit (uvloop's are not its subclasses)
        self.other = other
        self.on_lost = on_lost

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=PUMP_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.write(data)

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()
        if self.on_lost is not None:
            self.on_lost()


class TurnStreams:
    """The TURN/TCP and TURN/TLS listeners of a node (either may be absent)."""

    def __init__(self, engine, counters: Counter[str]) -> None:
        self.engine = engine
        self.counters = counters
        self.tls_open = 0  # TLS connections accepted and not yet gone (handshaking ones too)
        self.tcp_port = 0
        self.tls_port = 0
        self._tcp: socket.socket | None = None
        self._tls: socket.socket | None = None
        self._context: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    def listen_tcp(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self._tcp = _listener(host, port)
        self.tcp_port = self._tcp.getsockname()[1]
        self._loop = loop
        loop.add_reader(self._tcp.fileno(), self._accept, self._tcp, self._adopt)

    def listen_tls(self, loop: asyncio.AbstractEventLoop, host: str, port: int, context: ssl.SSLContext) -> None:
        self._tls = _listener(host, port)
        self.tls_port = self._tls.getsockname()[1]
        self._context = context
        self._loop = loop
        loop.add_reader(self._tls.fileno(), self._accept, self._tls, self._start_tls)

    def _accept(self, listener: socket.socket, take: Callable[[socket.socket, tuple], None]) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors: the backlog waits for the next readiness
                self.counters["turn_accept_failed"] += 1
                log.warning("TURN accept failed: %s", error)
                return
            take(conn, peer)

    def _adopt(self, conn: socket.socket, peer: tuple) -> None:
        """TURN/TCP: the socket itself is the engine's."""
        self.counters["turn_tcp_streams"] += 1
        self.engine.turn_adopt(conn.detach(), peer[0], peer[1])

    def _start_tls(self, conn: socket.socket, peer: tuple) -> None:
        if self.tls_open >= MAX_TLS_STREAMS:
            self.counters["turn_tls_refused"] += 1
            conn.close()
            return
        self.tls_open += 1
        assert self._loop is not None
        task = self._loop.create_task(self._serve_tls(conn, peer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_tls(self, conn: socket.socket, peer: tuple) -> None:
        """The engine's end first (a socketpair), so its half-open timeout also bounds the handshake; then TLS,
        whose plaintext flows both ways between the two."""
        assert self._loop is not None
        loop = self._loop
        ours, engines = socket.socketpair()
        tls_lost = False

        def lost() -> None:
            nonlocal tls_lost
            if not tls_lost:
                tls_lost = True
                self.tls_open -= 1

        try:
            if self.engine.turn_adopt(engines.detach(), peer[0], peer[1]) is None:
                raise ConnectionError("the engine refused the stream")
            _, pair = await loop.connect_accepted_socket(_Side, sock=ours)
        except (OSError, ConnectionError):
            ours.close()
            conn.close()
            lost()
            return

        def bridged() -> _Side:
            pair.other = _Side(pair, lost)
            return pair.other

        try:
            await loop.connect_accepted_socket(bridged, sock=conn, ssl=self._context,
                                               ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError):  # a half-open one timed out too
            self.counters["turn_tls_handshake_failed"] += 1
            pair.transport.close()
            conn.close()
            lost()
            return
        self.counters["turn_tls_streams"] += 1

    def close(self) -> None:
        for listener in (self._tcp, self._tls):
            if listener is not None:
                if self._loop is not None:
                    self._loop.remove_reader(listener.fileno())
                listener.close()
        self._tcp = self._tls = None
        for task in self._tasks:
            task.cancel()
