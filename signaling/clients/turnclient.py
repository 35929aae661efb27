"""The load clients' TURN client (RFC 8656 over UDP, long-term credentials from JoinResponse.ice_servers): one
allocation per media path, with a permission and a channel to the server's own media address, so that ICE, DTLS and
SRTP then travel as ChannelData (loadgen wraps and unwraps them in C). Nothing is refreshed: a relayed path lasts
until its permission expires (RELAY_SECONDS), long enough for a benchmark's runs, which is what it is for."""
from __future__ import annotations

import asyncio
import hashlib
import socket

from aioice import stun
from livekit.protocol import rtc

CHANNEL = 0x4000          # an allocation here has one peer, so one channel: the first number (RFC 8656 section 12)
UDP_TRANSPORT = 17 << 24  # REQUESTED-TRANSPORT: UDP (the protocol number in the attribute's first byte)
RETRY = 0.2               # seconds between retransmissions of a request (RFC 8489's 500 ms RTO, shortened for loopback)
ATTEMPTS = 10             # transmissions of a request before giving up
CHANNEL_HEADER = 4        # channel number, length
RELAY_SECONDS = 300       # a relayed path's life: the server's permission lifetime (RFC 8656 section 9), unrefreshed


class TurnError(Exception):
    """The TURN server could not be reached, refused us, or answered what we cannot use."""


def udp_server(ice_servers: list[rtc.ICEServer]) -> tuple[tuple[str, int], str, str] | None:
    """((host, port), username, credential) of the first `turn:` URL over UDP (IPv4) in `ice_servers`."""
    return _server(ice_servers, "turn", ("", "transport=udp"))


def tls_server(ice_servers: list[rtc.ICEServer]) -> tuple[tuple[str, int], str, str] | None:
    """The same for the first `turns:` URL (TURN over TLS, IPv4 or a name)."""
    return _server(ice_servers, "turns", ("", "transport=tcp"))


def _server(ice_servers: list[rtc.ICEServer], want: str, queries: tuple[str, ...]
            ) -> tuple[tuple[str, int], str, str] | None:
    for server in ice_servers:
        for url in server.urls:
            scheme, _, rest = url.partition(":")
            address, _, query = rest.partition("?")
            host, _, port = address.rpartition(":")
            if scheme == want and query in queries and port.isdigit() and "[" not in host:
                return (host, int(port)), server.username, server.credential
    return None


def channel_data(channel: int, data: bytes) -> bytes:
    """`data` as one ChannelData message (over UDP: no padding, RFC 8656 section 12.5; turntls pads it for TLS)."""
    return channel.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def channel_payload(channel: int, datagram: bytes) -> bytes | None:
    """What a ChannelData datagram on `channel` carries; None for anything else (the TURN server's own STUN)."""
    if len(datagram) < CHANNEL_HEADER or int.from_bytes(datagram[:2], "big") != channel:
        return None
    length = int.from_bytes(datagram[2:4], "big")
    return datagram[CHANNEL_HEADER:CHANNEL_HEADER + length] if CHANNEL_HEADER + length <= len(datagram) else None


async def open_channel(sock: socket.socket, username: str, password: str, peer: tuple[str, int]) -> int:
    """On `sock` (UDP, non-blocking, connected to the TURN server): Allocate (answering the 401 challenge),
    CreatePermission and ChannelBind for `peer`; returns the channel number."""
    loop = asyncio.get_running_loop()

    async def transact(method: stun.Method, attributes: dict, key: bytes | None = None) -> stun.Message:
        request = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        request.attributes.update(attributes)
        if key is not None:
            request.add_message_integrity(key)
        data = bytes(request)
        for _ in range(ATTEMPTS):
            sock.send(data)
            try:
                reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), RETRY)
            except asyncio.TimeoutError:
                continue
            if len(reply) >= 20 and reply[8:20] == request.transaction_id:
                answer = stun.parse_message(reply)
                if key is not None and answer.message_class == stun.Class.ERROR:
                    raise TurnError(f"TURN {method.name}: {answer.attributes.get('ERROR-CODE')}")
                return answer
        raise TurnError(f"TURN {method.name}: no answer")

    challenge = await transact(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT})
    realm, nonce = challenge.attributes.get("REALM"), challenge.attributes.get("NONCE")
    if challenge.message_class != stun.Class.ERROR or realm is None or nonce is None:
        raise TurnError("TURN Allocate: no 401 challenge with REALM and NONCE")
    key = hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()  # RFC 8489 section 9.2.2
    signed = {"USERNAME": username, "REALM": realm, "NONCE": nonce}
    await transact(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": UDP_TRANSPORT, **signed}, key)
    await transact(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer, **signed}, key)
    await transact(stun.Method.CHANNEL_BIND, {"CHANNEL-NUMBER": CHANNEL, "XOR-PEER-ADDRESS": peer, **signed}, key)
    return CHANNEL
