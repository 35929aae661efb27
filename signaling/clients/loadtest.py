"""Load clients that do what a browser does, and `tern load-test` on top of them.

Each client joins through `/rtc` with a token (LiveKit v0, dual peer connection), answers the server's subscriber
offers (renegotiations included), publishes with AddTrack + an offer on the publisher PC, keeps the signal alive
with pings, and completes ICE (a nominating STUN Binding request to the server's host candidate), DTLS (as the
client, `a=setup:active`) and SRTP per peer connection. The connected sockets and their libsrtp sessions then go to
signaling/clients/loadgen.pyx, whose C threads send and check every packet, so the clients are never the bottleneck.

    tern load-test --url ws://127.0.0.1:7880 --api-key devkey --api-secret secret \
        --rooms 1 --publishers 1 --subscribers 10 --duration 30s

Media: video is VP8-shaped (30 fps × 5 packets of ~1,100-1,200 bytes = 150 pps, keyframe every 2 s; with
--simulcast three rids q/h/f), or with MediaPlan(codec="vp9") a VP9 L3T3_KEY SVC stream as Chromium sends a 720p
camera (SVC_PACKETS: ~240 pps, ~2 Mbps), audio Opus-shaped (50 pps of ~100 bytes with the RFC 6464 audio level).
A subscriber may ask for a quality (UpdateTrackSettings) of the video it is offered, as a viewer of a small tile.
transport-cc is negotiated both ways as libwebrtc does (--no-transport-cc leaves it out of offers and answers):
publishers stamp transport-wide sequence numbers on video, subscribers send transport-cc feedback every ~100 ms.
The client is ICE-controlling; once loadgen reads a socket, the server's consent checks (RFC 7675) it keeps are
answered from here every _STUN_POLL seconds.
With --transport tcp every peer connection uses ICE-TCP instead (RFC 6544: a TCP connection to the server's passive
candidate carrying STUN, DTLS and SRTP as RFC 4571 frames), as a client behind a UDP-blocking firewall does; with
--transport turn it relays through the server's TURN/UDP port from its JoinResponse.ice_servers (an allocation and
a channel to the server's media address per peer connection, everything after as ChannelData: turnclient.py); with
--transport turn-tls the same over a TLS connection to its TURN/TLS port, pumped in this process (turntls.py).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from aioice import stun
from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from engine.framer import StreamFramer
from ..auth import create_token
from ..durations import parse_duration
from ..peer import sdp
from ..peer.dtls import Certificate, DtlsEndpoint, SrtpKeys, session_pointer, srtp_sessions
from ..peer.ice import StunError, binding_request, handle_binding, new_credentials
from . import loadgen, turnclient, turntls

__all__ = ["LoadError", "LoadReport", "LoadClients", "MediaPlan", "run_load", "main"]

VP8_PT, VP9_PT, OPUS_PT = 96, 98, 111
VIDEO_FPS, VIDEO_PACKETS_PER_FRAME, VIDEO_PAYLOAD = 30, 5, 1200
KEYFRAME_FRAMES = 60                     # every 2 s at 30 fps
AUDIO_PPS, AUDIO_PAYLOAD = 50, 100
EXT_IDS = {sdp.EXT_MID: 1, sdp.EXT_RID: 2, sdp.EXT_AUDIO_LEVEL: 3, sdp.EXT_TRANSPORT_CC: 4}
# (rid, quality, packets per frame, width, height): simulcast layers, lowest first, as LiveKit clients send them.
SIMULCAST_LAYERS = (("q", models.VideoQuality.LOW, 1, 320, 180), ("h", models.VideoQuality.MEDIUM, 2, 640, 360),
                    ("f", models.VideoQuality.HIGH, VIDEO_PACKETS_PER_FRAME, 1280, 720))
# VP9 L3T3_KEY at 30 fps, as libwebrtc sends a 1280x720 camera at ~2 Mbps: per spatial layer (320x180, 640x360,
# 1280x720), the packets of its frame in a keyframe, a T0, a T1 and a T2 picture (temporal pattern T0 T2 T1 T2): on
# average S0 30 pps (~0.25 Mbps), S0+S1 ~98 pps (~0.8 Mbps), all ~240 pps (~2 Mbps).
SVC_PACKETS = ((3, 1, 1, 1), (6, 3, 2, 2), (12, 6, 5, 4))
SVC_LAYERS = ((models.VideoQuality.LOW, 320, 180), (models.VideoQuality.MEDIUM, 640, 360),
              (models.VideoQuality.HIGH, 1280, 720))
CONNECT_TIMEOUT = 15.0
SOCKET_BUFFER = 4 * 1024 * 1024
_STUN_RETRY = 0.1
_CONSENT_INTERVAL = 5.0  # seconds between our consent checks (RFC 7675, aioice's interval)
_STUN_POLL = 0.5  # seconds between looks for a server check loadgen kept (the server wants an answer within 30 s)
# how media paths reach the server: UDP host candidate, ICE-TCP, TURN/UDP relay, TURN relay over TLS
TRANSPORTS = ("udp", "tcp", "turn", "turn-tls")
_STREAM_READ = 65536  # bytes read from an ICE-TCP stream at a time during ICE and DTLS


class LoadError(Exception):
    """A load client could not join, publish or connect its media."""


# ---- one peer connection's media path ------------------------------------------------------------------------

class MediaPath:
    """A UDP socket (a TCP one for ICE-TCP; with "turn", UDP to the TURN server; with "turn-tls", a datagram socket
    that turntls pumps through TLS to the TURN server), ICE credentials and a DTLS
    certificate; connect() runs ICE + DTLS against the server's candidate and leaves libsrtp sessions for loadgen."""

    def __init__(self, certificate: Certificate, transport: str = "udp") -> None:
        self.certificate = certificate
        self.ufrag, self.pwd = new_credentials()
        self.tcp = tcp = transport == "tcp"
        self.turn = transport in ("turn", "turn-tls")
        self.channel = 0  # TURN: the channel to the server's media address, once open
        self.pump = turntls.TurnTlsPump() if transport == "turn-tls" else None
        self.sock = self.pump.sock if self.pump else socket.socket(socket.AF_INET,
                                                                   socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        self._server: tuple[str, int] | None = None  # the address the server's consent checks come from, once known
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        if tcp:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # media, not bulk data
        elif not self.pump:
            self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        # RFC 4571 de-framing of what we read before loadgen does; it goes to loadgen with the socket
        self.framer = StreamFramer() if tcp else None
        self._frames: list[bytes] = []  # read, not yet taken
        self.sessions: tuple | None = None  # (rx, tx) pylibsrtp sessions, alive as long as the path
        self.srtp_keys: SrtpKeys | None = None
        self._consent: asyncio.Task | None = None
        self._section: sdp.MediaSection | None = None  # the server's, with its ICE credentials

    def close(self) -> None:
        if self._consent is not None:
            self._consent.cancel()
        if self.pump is not None:
            self.pump.close()
        self.sock.close()

    async def connect(self, remote: sdp.SessionDescription, ice_servers: list[rtc.ICEServer],
                      timeout: float = CONNECT_TIMEOUT) -> None:
        section = next((s for s in remote.sections if s.ice_ufrag and s.ice_pwd and s.fingerprint), None)
        protocol = "tcp" if self.tcp else "udp"
        address = _host_candidate(remote, protocol)
        if section is None or address is None:
            raise LoadError(f"the server's SDP has no ICE credentials, fingerprint or IPv4 {protocol} candidate")
        self._section = section
        try:
            if self.tcp:
                await asyncio.wait_for(asyncio.get_running_loop().sock_connect(self.sock, address), timeout)
            elif self.turn:
                await asyncio.wait_for(self._open_relay(address, ice_servers), timeout)
                protocol = "turn-tls" if self.pump else "turn"
            else:
                self.sock.connect(address)
            await asyncio.wait_for(self._handshake(section), timeout)
        except asyncio.TimeoutError:
            raise LoadError(f"ICE/DTLS with {address[0]}:{address[1]} ({protocol}) timed out") from None
        except (OSError, turnclient.TurnError) as error:
            raise LoadError(f"cannot connect to {address[0]}:{address[1]} ({protocol}): {error}") from None

    async def _open_relay(self, peer: tuple[str, int], ice_servers: list[rtc.ICEServer]) -> None:
        server = (turnclient.tls_server if self.pump else turnclient.udp_server)(ice_servers)
        if server is None:
            raise turnclient.TurnError(f"the JoinResponse names no TURN/{'TLS' if self.pump else 'UDP'} server")
        address, username, password = server
        if self.pump:
            await self.pump.connect(address)
        else:
            self.sock.connect(address)
        self._server = address
        self.channel = await turnclient.open_channel(self.sock, username, password, peer)

    def hand_over(self, receiver: loadgen.LoadReceiver, publisher: bool = False, transport_cc_id: int = 0,
                  vp9_payload_type: int = -1) -> int:
        """Gives the connected socket to loadgen's reader (see LoadReceiver.add_socket) and keeps consent both
        ways from here; returns the socket's index in `receiver`. With `transport_cc_id`, the reader sends
        transport-cc feedback with our outbound session (a subscriber's, which nothing else uses); with
        `vp9_payload_type`, it counts that payload type's packets by VP9 layer."""
        assert self._section is not None and self.sessions is not None
        rx, tx = self.pointers()
        # ICE-TCP: loadgen carries on from our framer's bytes; whole frames the handshake read past (media sent
        # right after DTLS) are not counted, as loadgen counts from the first packet it sees.
        index = receiver.add_socket(self.sock.fileno(), rx, publisher=publisher, transport_cc_id=transport_cc_id,
                                    srtcp_session=tx if transport_cc_id else 0,
                                    local_ssrc=random.getrandbits(32) or 1, stream=self.framer, channel=self.channel,
                                    vp9_payload_type=vp9_payload_type)
        self._consent = asyncio.get_running_loop().create_task(self._keep_consent(self._section, receiver, index))
        return index

    def binding_request(self, nominate: bool) -> bytes:
        """A fresh, signed Binding request to the server (after connect)."""
        assert self._section is not None
        return bytes(self._binding_request(self._section, nominate))

    def _binding_request(self, section: sdp.MediaSection, nominate: bool) -> stun.Message:
        return binding_request(section.ice_ufrag, self.ufrag, section.ice_pwd, 2130706431, controlling=True,
                               tie_breaker=random.getrandbits(64), nominate=nominate)

    async def _keep_consent(self, section: sdp.MediaSection, receiver: loadgen.LoadReceiver, index: int) -> None:
        """Answers the server's consent checks and sends ours (their responses reach loadgen's reader, which counts
        them as non-RTP)."""
        server = self._server or self.sock.getpeername()
        next_check = time.monotonic() + _CONSENT_INTERVAL
        while True:
            await asyncio.sleep(_STUN_POLL)
            try:
                request = receiver.take_stun(index)
                result = handle_binding(request, server, self.ufrag, self.pwd, section.ice_ufrag) if request else None
                if result is not None:
                    self._send_now(result.response)
                if time.monotonic() >= next_check:
                    next_check += _CONSENT_INTERVAL
                    self._send_now(bytes(self._binding_request(section, nominate=False)))
            except StunError:
                continue
            except OSError:  # closed or unreachable: the session ends anyway
                return

    def _send_now(self, data: bytes) -> None:
        """A STUN message while loadgen owns the socket (its threads write to it too: a frame goes out whole)."""
        if self.tcp:
            loadgen.send_framed(self.sock.fileno(), data)
        else:
            self.sock.send(turnclient.channel_data(self.channel, data) if self.channel else data)

    async def _send(self, data: bytes) -> None:
        """A datagram during the handshake (on ICE-TCP: one RFC 4571 frame; relayed: ChannelData)."""
        if self.tcp:
            await asyncio.get_running_loop().sock_sendall(self.sock, len(data).to_bytes(2, "big") + data)
        else:
            self._send_now(data)

    async def _receive(self) -> bytes:
        """The next datagram (on ICE-TCP: the next frame) during the handshake."""
        loop = asyncio.get_running_loop()
        while self.channel:  # relayed: what the channel carries (the TURN server's own STUN is not for us now)
            payload = turnclient.channel_payload(self.channel, await loop.sock_recv(self.sock, 2048))
            if payload is not None:
                return payload
        if not self.tcp:
            return await loop.sock_recv(self.sock, 2048)
        assert self.framer is not None
        while not self._frames:
            data = await loop.sock_recv(self.sock, _STREAM_READ)
            if not data:
                raise LoadError("the server closed the ICE-TCP connection")
            self._frames += self.framer.feed(data)
        return self._frames.pop(0)

    async def _handshake(self, section: sdp.MediaSection) -> None:
        request = self._binding_request(section, nominate=True)
        while True:  # until the server answers our nomination
            await self._send(bytes(request))
            try:
                data = await asyncio.wait_for(self._receive(), _STUN_RETRY)
            except asyncio.TimeoutError:
                continue
            except ConnectionRefusedError:
                await asyncio.sleep(_STUN_RETRY)
                continue
            if data[:1] == b"\x00":
                await self._answer_check(data, section)
            elif data[:1] in (b"\x01",) and data[8:20] == request.transaction_id:
                if stun.parse_message(data).message_class == stun.Class.RESPONSE:
                    break
                raise LoadError("the server refused our STUN credentials")
        dtls = DtlsEndpoint(self.certificate, section.fingerprint, client=True)
        for datagram in dtls.start():
            await self._send(datagram)
        while dtls.srtp_keys is None:
            if dtls.failed:
                raise LoadError(f"DTLS: {dtls.failed}")
            wait = dtls.timeout()
            try:
                data = await asyncio.wait_for(self._receive(), wait if wait else 1.0)
            except asyncio.TimeoutError:
                replies = dtls.handle_timeout()
            else:
                replies = dtls.receive(data) if data and 20 <= data[0] <= 63 else []
                if data[:1] == b"\x00":
                    await self._answer_check(data, section)
            for datagram in replies:
                await self._send(datagram)
        self.srtp_keys = dtls.srtp_keys  # for a second sender beside loadgen's thread (libsrtp sessions are not shared)
        self.sessions = srtp_sessions(dtls.srtp_keys)

    async def _answer_check(self, data: bytes, section: sdp.MediaSection) -> None:
        """Answers the server's connectivity check during the handshake: an ICE-lite server never sends one, but
        some (Janus's libnice) send a triggered check on our nomination and fail the pair when it goes unanswered."""
        try:
            result = handle_binding(data, self._server or self.sock.getpeername(), self.ufrag, self.pwd,
                                    section.ice_ufrag)
        except StunError:
            return
        if result is not None:
            await self._send(result.response)

    def pointers(self) -> tuple[int, int]:
        assert self.sessions is not None
        return session_pointer(self.sessions[0]), session_pointer(self.sessions[1])


def _host_candidate(description: sdp.SessionDescription, protocol: str) -> tuple[str, int] | None:
    """The server's first IPv4 candidate of `protocol` ("udp", or "tcp": a passive one, which we connect to)."""
    for section in description.sections:
        for candidate in section.candidates:
            fields = candidate.split()
            # foundation component transport priority address port typ type [tcptype passive] ...
            if len(fields) >= 8 and fields[2].lower() == protocol and fields[1] == "1" and "." in fields[4] and (
                    protocol == "udp" or "passive" in fields[8:]):
                return fields[4], int(fields[5])
    return None


# ---- SDP, client side ----------------------------------------------------------------------------------------

def _session_lines(mids: list[str]) -> list[str]:
    lines = ["v=0", f"o=- {random.getrandbits(62)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    return lines + (["a=group:BUNDLE " + " ".join(mids)] if mids else []) + ["a=msid-semantic: WMS"]


def _transport_lines(path: MediaPath, setup: str, mid: str) -> list[str]:
    return ["c=IN IP4 0.0.0.0", f"a=mid:{mid}", f"a=ice-ufrag:{path.ufrag}", f"a=ice-pwd:{path.pwd}",
            f"a=fingerprint:sha-256 {path.certificate.fingerprint}", f"a=setup:{setup}", "a=rtcp-mux"]


def build_subscriber_answer(offer: sdp.SessionDescription, path: MediaPath, transport_cc: bool = True) -> str:
    """Receive every offered track as offered (without transport-cc, nor the abs-send-time the server would write
    instead, unless `transport_cc`); decline the data channel (the load never uses it)."""
    body: list[str] = []
    mids: list[str] = []
    for section in offer.sections:
        if section.kind not in ("audio", "video") or not section.codecs or section.port == 0:
            body += [f"m={section.kind} 0 {section.protocol} {section.formats[0]}", "c=IN IP4 0.0.0.0",
                     f"a=mid:{section.mid}"]
            continue
        mids.append(section.mid)
        body.append(sdp.rtp_mline(section.kind, section.protocol, section.codecs))
        body += _transport_lines(path, "active", section.mid)
        body.append("a=recvonly" if section.direction in ("sendonly", "sendrecv") else "a=inactive")
        body += sdp.extmap_lines({uri: ext_id for uri, ext_id in section.extmap.items()
                                  if transport_cc or uri not in (sdp.EXT_TRANSPORT_CC, sdp.EXT_ABS_SEND_TIME)})
        for codec in section.codecs:
            body += sdp.codec_lines(codec, [fb for fb in codec.rtcp_fb if transport_cc or fb != "transport-cc"])
    return "\r\n".join(_session_lines(mids) + body) + "\r\n"


@dataclass
class OutgoingTrack:
    """One track the publisher sends: its cid (msid track id), its streams (ssrc, rid or None), its codec."""
    kind: str
    cid: str
    streams: list[tuple[int, str | None]]
    codec: str = "vp8"   # video: "vp8", or "vp9" (L3T3_KEY SVC on one stream)


def build_publisher_offer(tracks: list[OutgoingTrack], path: MediaPath, transport_cc: bool = True) -> str:
    body: list[str] = []
    mids = [str(index) for index in range(len(tracks))]
    for mid, track in zip(mids, tracks):
        if track.kind == "video":
            feedback = ["nack", "nack pli", "ccm fir", "goog-remb"] + (["transport-cc"] if transport_cc else [])
            codec = (sdp.Codec(VP9_PT, "VP9", 90000, fmtp="profile-id=0", rtcp_fb=feedback) if track.codec == "vp9"
                     else sdp.Codec(VP8_PT, "VP8", 90000, rtcp_fb=feedback))
            extensions = [sdp.EXT_MID, sdp.EXT_RID] + ([sdp.EXT_TRANSPORT_CC] if transport_cc else [])
        else:
            codec = sdp.Codec(OPUS_PT, "opus", 48000, 2, fmtp="minptime=10;useinbandfec=1", rtcp_fb=["nack"])
            extensions = [sdp.EXT_MID, sdp.EXT_AUDIO_LEVEL]
        body.append(sdp.rtp_mline(track.kind, "UDP/TLS/RTP/SAVPF", [codec]))
        body += _transport_lines(path, "actpass", mid)
        body += sdp.extmap_lines({uri: EXT_IDS[uri] for uri in extensions})
        body += ["a=sendonly", f"a=msid:- {track.cid}"] + sdp.codec_lines(codec, codec.rtcp_fb)
        rids = [rid for _, rid in track.streams if rid]
        if rids:
            body += [f"a=rid:{rid} send" for rid in rids] + ["a=simulcast:send " + ";".join(rids)]
        else:
            ssrc = track.streams[0][0]
            body += [f"a=ssrc:{ssrc} cname:{path.ufrag}", f"a=ssrc:{ssrc} msid:- {track.cid}"]
    return "\r\n".join(_session_lines(mids) + body) + "\r\n"


def extension_block(elements: list[tuple[int, bytes]]) -> tuple[bytes, int]:
    """An RFC 8285 one-byte header extension block, and the offset of the last element's first data byte."""
    data = bytearray()
    last = -1
    for ext_id, value in elements:
        data.append((ext_id << 4) | (len(value) - 1))
        last = 4 + len(data)
        data += value
    data += bytes(-len(data) % 4)
    return b"\xbe\xde" + (len(data) // 4).to_bytes(2, "big") + bytes(data), last


# ---- one participant ------------------------------------------------------------------------------------------

@dataclass
class MediaPlan:
    video: bool = True
    audio: bool = False
    simulcast: bool = False   # VP8 in three rids
    codec: str = "vp8"        # "vp9": one VP9 L3T3_KEY stream (SVC_PACKETS) instead


class LoadParticipant:
    """A signal connection plus its two media paths."""

    def __init__(self, clients: LoadClients, identity: str, room: str, publish: MediaPlan | None,
                 subscribe: bool, hidden: bool, quality: int | None = None) -> None:
        self.clients = clients
        self.quality = quality  # a models.VideoQuality asked for each video track offered (UpdateTrackSettings)
        self._qualified: set[str] = set()  # the track sids it was asked for
        self.identity = identity
        self.room = room
        self.publish = publish
        self.subscribe = subscribe
        self.hidden = hidden
        self.ws: ClientConnection | None = None
        self.ice_servers: list[rtc.ICEServer] = []  # the JoinResponse's (TURN)
        self.subscriber_path: MediaPath | None = None
        self.publisher_path: MediaPath | None = None
        self.load_receiver_index: int | None = None
        self.token_ns = 0
        self.error: str | None = None
        self._tasks: list[asyncio.Task] = []
        self._published: dict[str, asyncio.Future] = {}
        self._answer: asyncio.Future | None = None
        self._subscriber_connect: asyncio.Task | None = None

    async def join(self) -> None:
        token = create_token(self.clients.api_key, self.clients.api_secret, self.identity, self.room,
                             can_publish=self.publish is not None, can_subscribe=self.subscribe, hidden=self.hidden)
        self.token_ns = time.monotonic_ns()
        url = f"{self.clients.url.rstrip('/')}/rtc?protocol=16&auto_subscribe={int(self.subscribe)}&sdk=python"
        try:
            self.ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                    open_timeout=CONNECT_TIMEOUT, max_size=None)
            first = rtc.SignalResponse.FromString(await asyncio.wait_for(self.ws.recv(), CONNECT_TIMEOUT))
        except (OSError, WebSocketException, asyncio.TimeoutError) as error:
            raise LoadError(f"{self.identity}: cannot join: {error or type(error).__name__}") from None
        if first.WhichOneof("message") != "join":
            raise LoadError(f"{self.identity}: expected a join response, got {first.WhichOneof('message')}")
        interval = first.join.ping_interval or 5
        self.ice_servers = list(first.join.ice_servers)
        await self._ask_quality(first.join.other_participants)
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._ping(interval))]
        if self.publish is not None:
            await self._publish(self.publish)

    async def _send(self, request: rtc.SignalRequest) -> None:
        assert self.ws is not None
        await self.ws.send(request.SerializeToString())

    async def _ask_quality(self, participants: Iterable[models.ParticipantInfo]) -> None:
        """Asks for self.quality of the video tracks of `participants` (ParticipantInfo) not asked for yet."""
        if self.quality is None:
            return
        sids = [track.sid for participant in participants for track in participant.tracks
                if track.type == models.TrackType.VIDEO and track.sid not in self._qualified]
        if sids:
            self._qualified.update(sids)
            await self._send(rtc.SignalRequest(track_setting=rtc.UpdateTrackSettings(track_sids=sids,
                                                                                     quality=self.quality)))

    async def _ping(self, interval: int) -> None:
        try:
            while True:
                now = int(time.time() * 1000)
                await self._send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=now)))
                await self._send(rtc.SignalRequest(ping=now))
                await asyncio.sleep(interval)
        except WebSocketException:
            pass

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                response = rtc.SignalResponse.FromString(message)
                kind = response.WhichOneof("message")
                if kind == "offer":
                    await self._on_offer(response.offer)
                elif kind == "answer" and self._answer is not None and not self._answer.done():
                    self._answer.set_result(response.answer)
                elif kind == "update":
                    await self._ask_quality(response.update.participants)
                elif kind == "track_published":
                    future = self._published.get(response.track_published.cid)
                    if future is not None and not future.done():
                        future.set_result(response.track_published.track)
                elif kind == "leave":
                    self.error = f"the server sent leave (reason {response.leave.reason})"
                    return
        except WebSocketException:
            pass
        except Exception as error:  # a malformed message must end this client, not the run
            self.error = f"signal: {error}"

    async def _on_offer(self, offer: rtc.SessionDescription) -> None:
        try:
            description = sdp.parse(offer.sdp)
        except sdp.SdpError as error:
            self.error = f"unusable subscriber offer: {error}"
            return
        if self.subscriber_path is None:
            self.subscriber_path = MediaPath(self.clients.certificate, self.clients.transport)
        answer = build_subscriber_answer(description, self.subscriber_path, self.clients.transport_cc)
        await self._send(rtc.SignalRequest(answer=rtc.SessionDescription(type="answer", sdp=answer, id=offer.id)))
        # With transport-cc, the PC connects on the first offer that carries media (the one before the room's tracks
        # reach it has only the data channel, and no transport-cc id for loadgen's feedback).
        carries_media = any(sdp.EXT_TRANSPORT_CC in s.extmap for s in description.sections)
        if self._subscriber_connect is None and (carries_media or not self.clients.transport_cc):
            self._subscriber_connect = asyncio.create_task(self._connect_subscriber(description))

    async def _connect_subscriber(self, description: sdp.SessionDescription) -> None:
        path = self.subscriber_path
        assert path is not None
        try:
            await path.connect(description, self.ice_servers)
        except LoadError as error:
            self.error = f"subscriber PC: {error}"
            return
        # The transport-cc id of the offer it connected on (BUNDLE: one for the transport).
        transport_cc_id = next((s.extmap[sdp.EXT_TRANSPORT_CC] for s in description.sections
                                if sdp.EXT_TRANSPORT_CC in s.extmap), 0) if self.clients.transport_cc else 0
        vp9 = next((c.payload_type for s in description.sections for c in s.codecs if c.name.upper() == "VP9"), -1)
        self.load_receiver_index = path.hand_over(self.clients.load_receiver, transport_cc_id=transport_cc_id,
                                                  vp9_payload_type=vp9)

    async def _publish(self, plan: MediaPlan) -> None:
        tracks: list[OutgoingTrack] = []
        requests: list[rtc.AddTrackRequest] = []
        if plan.video:
            cid = str(uuid.uuid4())
            if plan.codec == "vp9":  # one stream, its spatial layers advertised as LiveKit's SDKs do for SVC
                streams = [(self.clients.new_ssrc(), None)]
                advertised = [models.VideoLayer(quality=quality, width=width, height=height,  # ~1,050 B packets
                                                bitrate=(t0 + t1 + 2 * t2) * VIDEO_FPS // 4 * 8_400)
                              for (quality, width, height), (_, t0, t1, t2) in zip(SVC_LAYERS, SVC_PACKETS)]
            else:
                layers = SIMULCAST_LAYERS if plan.simulcast else SIMULCAST_LAYERS[-1:]
                streams = [(self.clients.new_ssrc(), rid if plan.simulcast else None) for rid, *_ in layers]
                advertised = [models.VideoLayer(quality=quality, width=width, height=height, bitrate=packets * 360_000)
                              for _, quality, packets, width, height in layers]
            tracks.append(OutgoingTrack("video", cid, streams, plan.codec))
            requests.append(rtc.AddTrackRequest(
                cid=cid, name="camera", type=models.TrackType.VIDEO, source=models.TrackSource.CAMERA,
                width=1280, height=720, simulcast_codecs=[rtc.SimulcastCodec(codec=plan.codec, cid=cid)],
                layers=advertised))
        if plan.audio:
            cid = str(uuid.uuid4())
            tracks.append(OutgoingTrack("audio", cid, [(self.clients.new_ssrc(), None)]))
            requests.append(rtc.AddTrackRequest(cid=cid, name="microphone", type=models.TrackType.AUDIO,
                                                source=models.TrackSource.MICROPHONE))
        loop = asyncio.get_running_loop()
        for request in requests:
            self._published[request.cid] = loop.create_future()
            await self._send(rtc.SignalRequest(add_track=request))
        try:
            await asyncio.wait_for(asyncio.gather(*self._published.values()), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise LoadError(f"{self.identity}: no track_published for our AddTrackRequest") from None
        path = self.publisher_path = MediaPath(self.clients.certificate, self.clients.transport)
        self._answer = loop.create_future()
        offer = build_publisher_offer(tracks, path, self.clients.transport_cc)
        await self._send(rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=offer, id=1)))
        try:
            answer = await asyncio.wait_for(self._answer, CONNECT_TIMEOUT)
            description = sdp.parse(answer.sdp)
        except asyncio.TimeoutError:
            raise LoadError(f"{self.identity}: no answer to our publisher offer") from None
        except sdp.SdpError as error:
            raise LoadError(f"{self.identity}: unusable publisher answer: {error}") from None
        await path.connect(description, self.ice_servers)
        tx = path.pointers()[1]
        path.hand_over(self.clients.load_receiver, publisher=True)  # RTCP: counted, PLIs answered
        transport = self.clients.load_sender.new_transport()  # the transport-wide sequence numbers of this PC
        for mid, track in enumerate(tracks):
            self._start_streams(path, str(mid), track, description, tx, transport)

    def _start_streams(self, path: MediaPath, mid: str, track: OutgoingTrack, answer: sdp.SessionDescription,
                       tx: int, transport: int) -> None:
        section = next((s for s in answer.sections if s.mid == mid), None)
        if section is None or section.port == 0:
            raise LoadError(f"{self.identity}: the server declined our {track.kind} m-line")
        extmap = section.extmap
        for index, (ssrc, rid) in enumerate(track.streams):
            elements = [(extmap[sdp.EXT_MID], mid.encode())] if sdp.EXT_MID in extmap else []
            if rid and sdp.EXT_RID in extmap:
                elements.append((extmap[sdp.EXT_RID], rid.encode()))
            if track.kind == "audio":
                level_at = -1
                if sdp.EXT_AUDIO_LEVEL in extmap:
                    elements.append((extmap[sdp.EXT_AUDIO_LEVEL], b"\x1e"))
                    level_at = extension_block(elements)[1]
                block = extension_block(elements)[0] if elements else b""
                self.clients.load_sender.add_stream(path.sock.fileno(), tx, ssrc, OPUS_PT, False, packets_per_frame=1,
                                               frames_per_second=AUDIO_PPS, payload_size=AUDIO_PAYLOAD,
                                               clock_rate=48000, extension=block, level_offset=level_at,
                                               framed=path.tcp, channel=path.channel)
            else:
                packets = SIMULCAST_LAYERS[index][2] if rid else VIDEO_PACKETS_PER_FRAME
                svc = bytes(n for layer in SVC_PACKETS for n in layer) if track.codec == "vp9" else b""
                twcc_at = -1
                if sdp.EXT_TRANSPORT_CC in extmap:  # last, so its offset is the one extension_block returns
                    elements.append((extmap[sdp.EXT_TRANSPORT_CC], b"\0\0"))
                    twcc_at = extension_block(elements)[1]
                block = extension_block(elements)[0] if elements else b""
                self.clients.load_sender.add_stream(path.sock.fileno(), tx, ssrc, VP9_PT if svc else VP8_PT, True,
                                               packets_per_frame=packets, frames_per_second=VIDEO_FPS,
                                               payload_size=VIDEO_PAYLOAD, clock_rate=90000,
                                               keyframe_frames=KEYFRAME_FRAMES, extension=block,
                                               twcc_offset=twcc_at, transport=transport if twcc_at >= 0 else -1,
                                               framed=path.tcp, channel=path.channel, svc_packets=svc)

    def first_media_ns(self) -> int:
        if self.load_receiver_index is None:
            return 0
        return self.clients.load_receiver.socket_stats(self.load_receiver_index)["first_media_ns"]

    async def leave(self) -> None:
        if self.ws is not None:
            try:
                await self._send(rtc.SignalRequest(leave=rtc.LeaveRequest(
                    reason=models.DisconnectReason.CLIENT_INITIATED, action=rtc.LeaveRequest.Action.DISCONNECT)))
                await self.ws.close()
            except (WebSocketException, OSError):
                pass
        for task in self._tasks + ([self._subscriber_connect] if self._subscriber_connect else []):
            task.cancel()


# ---- the whole load -------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    publishers: int
    subscribers: int
    failed: list[str]                    # "identity: why" for clients that did not join or connect
    duration: float                      # seconds of measurement
    sent_packets: int
    received_packets: int
    received_bytes: int
    lost: int                            # sequence gaps seen by subscribers
    auth_failures: int
    rtcp: int
    twcc_feedback_sent: int              # transport-cc feedback packets the subscribers sent
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    join_ms: list[float] = field(default_factory=list)   # per subscriber: token -> first media packet

    def summary(self) -> str:
        joins = sorted(self.join_ms)
        join = (f"{joins[len(joins) // 2]:.0f} ms median, {joins[-1]:.0f} ms max ({len(joins)} subscribers)"
                if joins else "no subscriber received media")
        rate = self.received_packets / self.duration if self.duration else 0.0
        expected = self.received_packets + self.lost
        lines = [
            f"participants     {self.publishers} publishing, {self.subscribers} subscribing"
            + (f", {len(self.failed)} failed" if self.failed else ""),
            f"sent             {self.sent_packets} packets",
            f"received         {self.received_packets} packets, {rate:,.0f} pps, "
            f"{self.received_bytes * 8 / self.duration / 1e6 if self.duration else 0:,.1f} Mbps",
            f"loss             {self.lost} packets ({self.lost / expected if expected else 0:.3%})",
            f"SRTP auth fails  {self.auth_failures}",
            f"TWCC feedback    {self.twcc_feedback_sent} packets sent",
            f"added latency    p50 {_ms(self.latency_p50_ms)}, p99 {_ms(self.latency_p99_ms)}",
            f"join time        {join}",
        ]
        lines += [f"failed           {reason}" for reason in self.failed[:10]]
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


class LoadClients:
    """Every load client of a run, sharing one LoadSender, one LoadReceiver and one DTLS certificate."""

    def __init__(self, url: str, api_key: str, api_secret: str, capacity: int = 8192,
                 transport_cc: bool = True, transport: str = "udp") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}")
        self.url, self.api_key, self.api_secret = url, api_key, api_secret
        self.transport_cc = transport_cc  # negotiated in our offers and answers
        self.transport = transport        # of every media path
        self.certificate = Certificate.generate()
        self.load_sender = loadgen.LoadSender(capacity)
        self.load_receiver = loadgen.LoadReceiver(capacity, self.load_sender)
        self.participants: list[LoadParticipant] = []
        self.failed: list[str] = []
        self._ssrcs = itertools.count(random.getrandbits(24) << 4)
        self._names = itertools.count()
        self.load_sender.start()
        self.load_receiver.start()

    def new_ssrc(self) -> int:
        return next(self._ssrcs) & 0xFFFFFFFF

    async def add(self, room: str, count: int, *, publish: MediaPlan | None = None, subscribe: bool = True,
                  hidden: bool = False, concurrency: int = 16, quality: int | None = None) -> list[LoadParticipant]:
        """Joins `count` participants to `room`, `concurrency` at a time, asking for `quality` (a
        models.VideoQuality) of the video they are offered; failures are recorded, not raised."""
        gate = asyncio.Semaphore(concurrency)
        role = "pub" if publish is not None else "sub"
        joined = [LoadParticipant(self, f"{role}-{next(self._names)}-{secrets.token_hex(3)}", room, publish,
                                  subscribe, hidden, quality) for _ in range(count)]

        async def one(participant: LoadParticipant) -> None:
            async with gate:
                try:
                    await participant.join()
                except LoadError as error:
                    self.failed.append(str(error))

        await asyncio.gather(*(one(p) for p in joined))
        self.participants += joined
        return joined

    async def wait_for_media(self, participants: list[LoadParticipant], timeout: float) -> None:
        """Until each subscriber has received a packet, or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.first_media_ns() or p.error for p in participants if p.subscribe):
                return
            await asyncio.sleep(0.1)

    def join_ms(self) -> list[float]:
        return [(p.first_media_ns() - p.token_ns) / 1e6 for p in self.participants
                if p.subscribe and p.first_media_ns()]

    def errors(self) -> list[str]:
        return self.failed + [f"{p.identity}: {p.error}" for p in self.participants if p.error]

    async def close(self) -> None:
        await asyncio.gather(*(p.leave() for p in self.participants))
        self.load_sender.stop()
        self.load_receiver.stop()
        for participant in self.participants:
            for path in (participant.publisher_path, participant.subscriber_path):
                if path is not None:
                    path.close()


async def run_load(url: str, api_key: str, api_secret: str, *, rooms: int = 1, publishers: int = 1,
                   subscribers: int = 1, duration: float = 10, video: bool = True, audio: bool = True,
                   simulcast: bool = False, room_prefix: str = "load", hidden_subscribers: bool = False,
                   transport_cc: bool = True, transport: str = "udp") -> LoadReport:
    """Joins `publishers` + `subscribers` per room, runs for `duration` seconds after media flows, and reports
    what the subscribers received. Publishers do not subscribe."""
    clients = LoadClients(url, api_key, api_secret, transport_cc=transport_cc, transport=transport)
    try:
        names = [f"{room_prefix}-{index}" for index in range(rooms)]
        plan = MediaPlan(video=video, audio=audio, simulcast=simulcast)
        await asyncio.gather(*(clients.add(name, publishers, publish=plan, subscribe=False) for name in names))
        receiving = [p for name in names
                     for p in await clients.add(name, subscribers, hidden=hidden_subscribers)]
        await clients.wait_for_media(receiving, CONNECT_TIMEOUT)
        before, latency_before = clients.load_receiver.totals(), clients.load_receiver.latency_snapshot()
        started = time.monotonic()
        await asyncio.sleep(duration)
        elapsed = time.monotonic() - started
        after, latency_after = clients.load_receiver.totals(), clients.load_receiver.latency_snapshot()
        p50, p99 = loadgen.latency_percentiles(latency_before, latency_after, [50, 99])
        return LoadReport(
            publishers=publishers * rooms, subscribers=subscribers * rooms, failed=clients.errors(),
            duration=elapsed, sent_packets=clients.load_sender.stats()["packets"],
            received_packets=after["packets"] - before["packets"], received_bytes=after["bytes"] - before["bytes"],
            lost=after["lost"] - before["lost"], auth_failures=after["auth_failures"], rtcp=after["rtcp"],
            twcc_feedback_sent=after["twcc_feedback_sent"],
            latency_p50_ms=p50, latency_p99_ms=p99, join_ms=clients.join_ms())
    finally:
        await clients.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tern load-test", description="Load a tern or LiveKit server with "
                                     "real clients (signal, ICE, DTLS, SRTP) sending and checking media.")
    parser.add_argument("--url", default="ws://127.0.0.1:7880", help="server URL (ws:// or wss://)")
    parser.add_argument("--api-key", default="devkey")
    parser.add_argument("--api-secret", default="secret")
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--publishers", type=int, default=1, help="per room")
    parser.add_argument("--subscribers", type=int, default=1, help="per room")
    parser.add_argument("--duration", type=parse_duration, default=30, help="e.g. 30, 30s, 5m")
    parser.add_argument("--no-video", dest="video", action="store_false", help="publish no video")
    parser.add_argument("--no-audio", dest="audio", action="store_false", help="publish no audio")
    parser.add_argument("--simulcast", action="store_true", help="publish video in three layers (q, h, f)")
    parser.add_argument("--room-prefix", default="load")
    parser.add_argument("--no-transport-cc", dest="transport_cc", action="store_false",
                        help="leave transport-cc out of offers and answers (no stamping, no feedback)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="udp",
                        help="media over the server's UDP candidate, over ICE-TCP (RFC 4571 framing), or relayed "
                             f"by the server's TURN/UDP or TURN/TLS (ChannelData; --duration under "
                             f"{turnclient.RELAY_SECONDS - 2 * CONNECT_TIMEOUT:.0f} s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if min(args.rooms, args.publishers) < 1 or args.subscribers < 0 or not (args.video or args.audio):
        print("tern load-test: need at least one room, one publisher and one kind of media", file=sys.stderr)
        return 2
    if args.transport in ("turn", "turn-tls") and args.duration + 2 * CONNECT_TIMEOUT > turnclient.RELAY_SECONDS:
        print(f"tern load-test: relayed paths are not refreshed; keep --duration under "
              f"{turnclient.RELAY_SECONDS - 2 * CONNECT_TIMEOUT:.0f} s with --transport turn", file=sys.stderr)
        return 2
    url = args.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        report = asyncio.run(run_load(url, args.api_key, args.api_secret, rooms=args.rooms,
                                      publishers=args.publishers, subscribers=args.subscribers,
                                      duration=args.duration, video=args.video, audio=args.audio,
                                      simulcast=args.simulcast, room_prefix=args.room_prefix,
                                      transport_cc=args.transport_cc, transport=args.transport))
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(report.summary())
    return 1 if report.failed or (args.subscribers and not report.received_packets) else 0
