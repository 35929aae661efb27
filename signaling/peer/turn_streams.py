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
    """One end of the bridge: what it reads goes to `other`; it pauses `other`'s reading while it cannot write."""

    def __init__(self) -> None:
        self.transport: Any = None  # an asyncio.Transport in spirit (uvloop's are not its subclasses)
        self.other: _Side | None = None

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


class _TlsSide(_Side):
    def __init__(self, streams: TurnStreams) -> None:
        super().__init__()
        self.streams = streams

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.streams.tls_open += 1
        if self.streams.tls_open > MAX_TLS_STREAMS:
            self.streams.counters["turn_tls_refused"] += 1
            transport.close()
            return
        peer = transport.get_extra_info("peername") or ("0.0.0.0", 0)
        ours, engines = socket.socketpair()
        handle = self.streams.engine.turn_adopt(engines.detach(), peer[0], peer[1])
        if handle is None:
            ours.close()
            transport.close()
            return
        self.streams.counters["turn_tls_streams"] += 1
        self.transport.pause_reading()  # until the engine's end is wired up
        asyncio.get_running_loop().create_task(self._bridge(ours))

    async def _bridge(self, ours: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, pair = await loop.connect_accepted_socket(_Side, sock=ours)
        except OSError:
            ours.close()
            if self.transport is not None:
                self.transport.close()
            return
        pair.other, self.other = self, pair
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        else:
            pair.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.streams.tls_open -= 1
        super().connection_lost(exc)


class TurnStreams:
    """The TURN/TCP and TURN/TLS listeners of a node (either may be absent)."""

    def __init__(self, engine, counters: Counter[str]) -> None:
        self.engine = engine
        self.counters = counters
        self.tls_open = 0
        self.tcp_port = 0
        self.tls_port = 0
        self._tcp: socket.socket | None = None
        self._tls: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen_tcp(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self._tcp = _listener(host, port)
        self.tcp_port = self._tcp.getsockname()[1]
        self._loop = loop
        loop.add_reader(self._tcp.fileno(), self._accept)

    async def listen_tls(self, host: str, port: int, context: ssl.SSLContext) -> None:
        sock = _listener(host, port)
        self._tls = await asyncio.get_running_loop().create_server(
            lambda: _TlsSide(self), sock=sock, ssl=context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        self.tls_port = sock.getsockname()[1]

    def _accept(self) -> None:
        assert self._tcp is not None
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, peer = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # out of descriptors: the backlog waits for the next readiness
                self.counters["turn_tcp_accept_failed"] += 1
                log.warning("TURN/TCP accept failed: %s", error)
                return
            self.counters["turn_tcp_streams"] += 1
            self.engine.turn_adopt(conn.detach(), peer[0], peer[1])

    def close(self) -> None:
        if self._tcp is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._tcp.fileno())
            self._tcp.close()
            self._tcp = None
        if self._tls is not None:
            self._tls.close()
            self._tls = None
