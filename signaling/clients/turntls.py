"""TURN over TLS for the load clients: loadgen's C threads cannot speak TLS, so each relayed path gets a Unix datagram
socketpair. One end is the path's socket, which loadgen and turnclient use exactly as a UDP socket connected to a TURN
server (STUN, ChannelData without padding); the other is pumped here, in the load-client process, through an asyncio
TLS connection to the server's TURN/TLS port, adding the stream's ChannelData padding (RFC 8656 section 12.5) on the
way out and splitting the stream back into messages on the way in. The TLS and the pump cost the clients' CPU (the
benchmark pins them to the other core), not the server's, whose CPU per forwarded packet is what is measured."""
from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

STUN_HEADER = 20           # a STUN message's header; its length field counts what follows
CHANNEL_HEADER = 4         # a ChannelData message's channel number and length
PAIR_BUFFER = 4 * 1024 * 1024  # socketpair buffers: a burst of media between loadgen and the pump
FORWARD_BATCH = 64         # datagrams from loadgen per TLS write (a video frame is 5), so the loop still turns


def client_context() -> ssl.SSLContext:
    """The server's development certificate is self-signed: encrypted, not verified (a load client, not a user)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def split_stream(buffer: bytearray) -> list[bytes]:
    """Takes the whole messages off the front of a TURN stream (RFC 8656 section 12.5): STUN messages, and
    ChannelData without its padding; the rest stays in `buffer`."""
    messages = []
    while len(buffer) >= CHANNEL_HEADER:
        length = int.from_bytes(buffer[2:4], "big")
        if buffer[0] & 0xC0 == 0x40:  # ChannelData, padded to 4 bytes on a stream
            size, whole = CHANNEL_HEADER + length, CHANNEL_HEADER + ((length + 3) & ~3)
        else:
            size = whole = STUN_HEADER + length
        if len(buffer) < whole:
            break
        messages.append(bytes(buffer[:size]))
        del buffer[:whole]
    return messages


class _TlsSide(asyncio.Protocol):
    """The TLS connection's end of the pump: each message read goes to loadgen's socket as one datagram."""

    def __init__(self, pump: TurnTlsPump) -> None:
        self.pump = pump
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for message in split_stream(self.buffer):
            try:
                self.pump.ours.send(message)
            except BlockingIOError:  # loadgen has not read for a socket buffer's worth: lost, which loadgen counts
                continue
            except OSError:
                return

    def pause_writing(self) -> None:  # the TLS write buffer is full: stop taking loadgen's datagrams for now
        self.pump.reading(False)

    def resume_writing(self) -> None:
        self.pump.reading(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.close()


class TurnTlsPump:
    """A TLS connection to a TURN/TLS server and the datagram socket (`sock`) that stands for it."""

    def __init__(self) -> None:
        self.sock, self.ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for end in (self.sock, self.ours):
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                end.setsockopt(socket.SOL_SOCKET, option, PAIR_BUFFER)
            end.setblocking(False)
        self.transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def connect(self, server: tuple[str, int]) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(lambda: _TlsSide(self), server[0], server[1],
                                                         ssl=client_context(), server_hostname=server[0])
        self.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reading(True)

    def reading(self, on: bool) -> None:
        if self._loop is None or self.ours.fileno() < 0:
            return
        if on:
            self._loop.add_reader(self.ours.fileno(), self._forward)
        else:
            self._loop.remove_reader(self.ours.fileno())

    def _forward(self) -> None:
        """Datagrams from loadgen or turnclient onto the TLS stream, ChannelData padded; what one wake-up finds goes
        in one write (one TLS record, rather than one per packet)."""
        messages = []
        for _ in range(FORWARD_BATCH):
            try:
                message = self.ours.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            messages.append(message + bytes(-len(message) & 3) if message[:1] and message[0] & 0xC0 == 0x40
                            else message)
        if messages and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(messages))

    def close(self) -> None:
        """Ends the TLS connection and the pump's end of the pair (`sock` is its user's to close)."""
        self.reading(False)
        if self.transport is not None:
            self.transport.close()
        self.ours.close()
