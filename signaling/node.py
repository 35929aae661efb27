"""The composition root: builds this node's engine, transports, room store and webhooks, and wires engine events
(track started, audio levels, connection quality) to the rooms. Participants reach the node only through
rtc.participant.Services."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from livekit.protocol import agent, ingress, models, rtc
from livekit.protocol import egress as egress_proto

import engine
from .agents.dispatcher import AgentDispatcher
from .auth import TokenVerifier
from .config import Config
from .cluster.cluster import Cluster
from .cluster.ingress import IngressStore, MemoryIngressStore
from .cluster.memory import MemoryRoomStore
from .cluster.store import RoomStore
from .egress.manager import EgressManager
from .peer.transport import TransportManager
from .peer.turn import TurnServer, credentials, turn_secret
from .peer.turn_streams import TurnStreams, dev_tls_context, tls_context
from .rtc.publication import TrackPublication
from .rtc.quality import INTERVAL as QUALITY_INTERVAL
from .rtc.speakers import INTERVAL as SPEAKER_INTERVAL
from .webhook import WebhookNotifier

if TYPE_CHECKING:
    from .rtc.participant import Participant
    from .rtc.room import Room

log = logging.getLogger(__name__)

TURN_SWEEP_S = 1.0  # TURN allocations, permissions and channels expire with this precision
ALLOCATOR_TICK_S = 0.5  # probes last 0.3 s and are judged ~0.1 s after: twice a second keeps the 3 s cadence close
# Periodic sweeps over a room's participants give the event loop (and the engine on it) back after this many: a
# 1,000-subscriber room's allocator ticks or quality scores in one go would delay every packet behind them.
SWEEP_BATCH = 64

# Reported to clients as server_info.version: it must be semver, and >= 1.8.0 for the SDKs' RPC support.
PROTOCOL_VERSION = "1.9.0"
SERVER_PROTOCOL = 16


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.id = "ND_" + uuid.uuid4().hex[:12]
        self.version = PROTOCOL_VERSION
        self.verifier = TokenVerifier(config.keys)
        self.counters: Counter[str] = Counter()
        self.webhooks: WebhookNotifier | None = None
        if config.webhook.urls:
            self.webhooks = WebhookNotifier(config.webhook.api_key, config.keys[config.webhook.api_key],
                                            config.webhook.urls, self.counters)
        self.cluster: Cluster | None = None
        self.store: RoomStore
        if config.redis.configured:
            self.cluster = Cluster(self)
            self.store = self.cluster.store
        else:
            self.store = MemoryRoomStore(config.room.empty_timeout, config.room.departure_timeout,
                                         config.room.max_participants, self.notify)
        self.agents = AgentDispatcher(self.store, config.keys, self.counters, self.notify)
        self.ingresses: IngressStore = self.cluster.ingresses if self.cluster is not None else MemoryIngressStore()
        self.egress = EgressManager(lambda: self.engine, self.store.get, config.egress.output_dir,
                                    _loopback(config.media_host()), self.notify, self.counters)
        self.receivers: dict[int, TrackPublication] = {}  # engine receiver id -> publication
        self.engine: engine.Engine
        self.transports: TransportManager
        self.turn: TurnServer | None = None
        self.turn_streams: TurnStreams | None = None
        self._turn_secret = turn_secret(next(iter(config.keys.values()), ""))
        self._tasks: list[asyncio.Task] = []

    def server_info(self) -> models.ServerInfo:
        return models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version=self.version,
            protocol=SERVER_PROTOCOL,
            node_id=self.id,
            region=self.config.region,
        )

    def notify(self, event: str, *, room: models.Room | None = None, participant: models.ParticipantInfo | None = None,
               track: models.TrackInfo | None = None, job: agent.Job | None = None,
               ingress_info: ingress.IngressInfo | None = None,
               egress: egress_proto.EgressInfo | None = None) -> None:
        """A room's event (room_started, participant_joined, track_published, ...): the agent dispatcher launches
        jobs on them, egresses of a track that is gone end; sent as a webhook when webhooks are configured (by the
        room's node only: each event once)."""
        if self.cluster is not None:
            self.cluster.store.observe(event, room)
        if job is None and egress is None and ingress_info is None:
            try:
                self.agents.on_event(event, room, participant)
            except Exception:  # a bug launching agents must not break the room operation that reports the event
                log.exception("agent dispatch on %s failed", event)
            try:
                self.egress.on_event(event, room, participant, track)
            except Exception:  # nor a bug ending a recording
                log.exception("egress update on %s failed", event)
        if self.webhooks is not None:
            self.webhooks.notify(event, room=room, participant=participant, track=track, job=job,
                                 ingress_info=ingress_info, egress=egress)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        host = self.config.media_host()  # "::": dual-stack sockets, IPv4 peers as IPv4-mapped addresses
        # rtc.tcp_port 0 turns ICE-TCP off, as in LiveKit.
        turn = self.config.turn
        self.engine = engine.Engine(host, self.config.rtc.udp_port, self._on_engine_event,
                                    tcp_port=self.config.rtc.tcp_port or None,
                                    turn=turn.enabled, turn_port=turn.udp_port or None,
                                    workers=self.config.media_workers())
        self.transports = TransportManager(self.engine, self.config.node_ips())
        if turn.enabled:
            media = [(ip, self.engine.port) for ip in self.transports.candidate_ips]  # the only permitted peers
            self.turn = TurnServer(self.engine, self._turn_secret, media,
                                   lambda: (p.sid for p in self.store.participants() if not p.closed), self.counters)
            self.turn_streams = TurnStreams(self.engine, self.counters)
            if turn.tcp_port:
                self.turn_streams.listen_tcp(loop, host, turn.tcp_port)
            if turn.tls_port:
                # turn.cert_file/key_file, or (development) a self-signed certificate for turn.domain or the node IP
                context = (tls_context(turn.cert_file, turn.key_file) if turn.cert_file
                           else dev_tls_context(turn.domain or self.transports.node_ip))
                self.turn_streams.listen_tls(loop, host, turn.tls_port, context)
            self._tasks.append(loop.create_task(self._sweep_turn()))
            log.info("TURN on udp %s, tcp %s, tls %s (relaying only to port %d of %s)", self.engine.turn_port or "off",
                     self.turn_streams.tcp_port or "off", self.turn_streams.tls_port or "off", self.engine.port,
                     ", ".join(self.transports.candidate_ips))
        self.transports.on_receiver_layer = self._on_receiver_layer
        self.engine.attach(loop)
        if self.webhooks is not None:
            self.webhooks.start()
        self._tasks.append(loop.create_task(self._observe_speakers()))
        self._tasks.append(loop.create_task(self._observe_quality()))
        self._tasks.append(loop.create_task(self._drive_allocators()))
        if self.cluster is not None:
            self.cluster.start(loop)
        log.info("media on udp [%s]:%d and ice-tcp %s, candidates advertise %s", host, self.engine.port,
                 self.engine.tcp_port or "off", ", ".join(self.transports.candidate_ips))

    def ice_servers(self, participant_sid: str) -> list[rtc.ICEServer]:
        """The embedded TURN server's URLs with fresh credentials for the participant (none when TURN is off)."""
        if self.turn is None or self.turn_streams is None:
            return []
        host = self.transports.node_ip
        host = f"[{host}]" if ":" in host else host
        domain = self.config.turn.domain or host
        urls = []
        if self.engine.turn_port:
            urls.append(f"turn:{host}:{self.engine.turn_port}?transport=udp")
        if self.turn_streams.tcp_port:
            urls.append(f"turn:{host}:{self.turn_streams.tcp_port}?transport=tcp")
        if self.turn_streams.tls_port:
            urls.append(f"turns:{domain}:{self.turn_streams.tls_port}?transport=tcp")
        username, password = credentials(self._turn_secret, participant_sid, time.time())
        return [rtc.ICEServer(urls=urls, username=username, credential=password)]

    def _on_engine_event(self, event: tuple) -> None:
        if event[0] == engine.EV_TURN:
            if self.turn is not None:
                _, data, *client = event
                answer = self.turn.handle(data, tuple(client))
                if answer is not None:
                    self.engine.turn_send(answer, *client)
            return
        self.transports.on_event(event)

    async def _sweep_turn(self) -> None:
        while True:
            await asyncio.sleep(TURN_SWEEP_S)
            try:
                assert self.turn is not None
                self.turn.sweep()
            except Exception:  # a bug here must not leave allocations to live for ever
                log.exception("TURN sweep failed")

    def _on_receiver_layer(self, receiver_id: int, layer: int, ssrc: int) -> None:
        publication = self.receivers.get(receiver_id)
        if publication is not None:
            publication.participant.on_track_started(publication)

    async def _observe_speakers(self) -> None:
        while True:
            await asyncio.sleep(SPEAKER_INTERVAL)
            try:
                self._announce_speakers(self.engine.audio_levels(SPEAKER_INTERVAL))
            except Exception:  # a bug here must not end speaker detection for good
                log.exception("active speaker update failed")

    def _announce_speakers(self, receiver_levels: dict[int, float]) -> None:
        levels: dict[str, dict[str, float]] = {}  # room name -> participant sid -> loudest track's level
        for receiver_id, level in receiver_levels.items():
            publication = self.receivers.get(receiver_id)
            if publication is None or publication.info.muted or publication.participant.hidden:
                continue
            participant = publication.participant
            room = levels.setdefault(participant.room.name, {})
            room[participant.sid] = max(level, room.get(participant.sid, 0.0))
        for room in self.store.rooms():
            room.announce_speakers(levels.get(room.name, {}))

    async def _observe_quality(self) -> None:
        while True:
            await asyncio.sleep(QUALITY_INTERVAL)
            for room in self.store.rooms():
                try:
                    scores = {p.sid: p.connection_stats.update(self.engine) async for p in _yielding(room)}
                    if not room.closed:  # a room's scores are announced together, to those still in it
                        present = {p.sid for p in room.participants.values()}
                        room.announce_quality({sid: score for sid, score in scores.items() if sid in present})
                except Exception:  # a bug here must not end quality updates for good
                    log.exception("connection quality update failed in room %s", room.name)

    async def _drive_allocators(self) -> None:
        """Every ALLOCATOR_TICK_S: each subscriber's StreamAllocator judges its probe or starts one."""
        while True:
            await asyncio.sleep(ALLOCATOR_TICK_S)
            for room in self.store.rooms():
                async for participant in _yielding(room):
                    try:
                        participant.allocator.tick()
                    except Exception:  # a bug here must not end probing for good
                        log.exception("stream allocator tick failed for %s", participant.sid)

    def shutdown(self) -> None:
        """Closes every room: participants get `leave` (SERVER_SHUTDOWN), webhooks participant_left and room_finished."""
        for room in self.store.rooms():
            room.close(models.DisconnectReason.SERVER_SHUTDOWN)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.turn_streams is not None:
            self.turn_streams.close()
        if self.turn is not None:
            self.turn.close()
        await self.egress.close()  # before the engine: recordings read what it sent, then close their files
        self.engine.close()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.webhooks is not None:
            await self.webhooks.close()

    def stats(self) -> dict[str, int]:
        return {**self.engine.stats(), **self.transports.counters, **self.counters}


async def _yielding(room: Room) -> AsyncIterator[Participant]:
    """The room's participants, SWEEP_BATCH per event-loop turn; those that left meanwhile are skipped."""
    for index, participant in enumerate(list(room.participants.values())):
        if index and index % SWEEP_BATCH == 0:
            await asyncio.sleep(0)
        if room.participants.get(participant.identity) is participant:
            yield participant
    await asyncio.sleep(0)  # room by room, so a node of many rooms does not hold the loop for all


def _loopback(media_host: str) -> str:
    """The address the engine reaches an in-process egress's socket on: IPv6 loopback for an IPv6-only socket."""
    return "::1" if ":" in media_host and media_host != "::" else "127.0.0.1"
