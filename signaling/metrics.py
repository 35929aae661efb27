"""Prometheus metrics (LiveKit's `prometheus_port`): the engine's and the control plane's counters."""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Iterator

from livekit.protocol import agent, models
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from .node import Node


class NodeCollector(Collector):
    """Reads the counters at scrape time, so nothing on the packet path touches prometheus."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop) -> None:
        self.node = node
        self.loop = loop

    async def _snapshot(self) -> tuple[dict[str, int], int, int, list[tuple[str, str, int]], Counter[int],
                                       list[tuple[str, dict]], Counter[tuple[str, str]]]:
        # Taken on the event loop: the state it reads is only ever changed there.
        store = self.node.store
        participants = list(store.participants())
        layers = [
            (publication.sid, layer["rid"], layer["packets"], layer["temporal_bytes"], layer["svc_bytes"])
            for participant in participants
            for publication in participant.publications.values() if publication.receiver_id is not None
            for layer in self.node.engine.receiver_stats(publication.receiver_id)["layers"]
        ]
        qualities = Counter(participant.connection_stats.level for participant in participants)
        # Downlink estimates (engine bwe.pyx) of the subscriber transports that have one.
        bandwidth = []
        for participant in participants:
            try:
                estimate = self.node.engine.transport_bandwidth(participant.subscriber.transport.id)
            except KeyError:  # its transport is already gone (the participant is leaving)
                continue
            if estimate is not None:
                bandwidth.append((participant.sid, estimate))
        workers = Counter((w.agent_name, agent.JobType.Name(w.job_type)) for w in self.node.agents.workers.values())
        return (self.node.stats(), len(store.rooms()), len(participants), layers, qualities, bandwidth, workers,
                self.node.engine.worker_stats())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snapshot = asyncio.run_coroutine_threadsafe(self._snapshot(), self.loop).result(5)
        stats, room_count, participant_count, layers, qualities, bandwidth, workers, engine_workers = snapshot
        counters = CounterMetricFamily("tern_events", "Packets, drops and signalling events by name", labels=["name"])
        for name, value in sorted(stats.items()):
            counters.add_metric([name], value)
        yield counters
        rooms = GaugeMetricFamily("tern_rooms", "Open rooms")
        rooms.add_metric([], room_count)
        yield rooms
        participants = GaugeMetricFamily("tern_participants", "Connected participants")
        participants.add_metric([], participant_count)
        yield participants
        quality = GaugeMetricFamily("tern_connection_quality_participants",
                                    "Connected participants by their last connection quality", labels=["quality"])
        for name, level in models.ConnectionQuality.items():
            quality.add_metric([name.lower()], qualities[level])
        yield quality
        layer_packets = CounterMetricFamily("tern_track_layer_packets", "RTP packets received per published track and simulcast layer",
                                            labels=["track", "rid"])
        temporal_bytes = CounterMetricFamily("tern_track_layer_temporal_bytes",
                                             "Bytes received per published track, simulcast layer and temporal id",
                                             labels=["track", "rid", "temporal"])
        # An SVC stream's layers all arrive in one simulcast layer: what each (spatial, temporal) layer costs.
        svc_bytes = CounterMetricFamily("tern_track_svc_bytes",
                                        "Bytes received per published SVC track, spatial and temporal id",
                                        labels=["track", "spatial", "temporal"])
        for track, rid, packets, by_temporal, by_spatial in layers:
            layer_packets.add_metric([track, rid], packets)
            for temporal, sent in enumerate(by_temporal):
                if sent:
                    temporal_bytes.add_metric([track, rid, str(temporal)], sent)
            for spatial, by_layer in enumerate(by_spatial):
                for temporal, sent in enumerate(by_layer):
                    if sent:
                        svc_bytes.add_metric([track, str(spatial), str(temporal)], sent)
        yield layer_packets
        yield temporal_bytes
        yield svc_bytes
        estimates = GaugeMetricFamily("tern_subscriber_bandwidth_bps",
                                      "Downlink bandwidth estimate per subscriber and what drives it: its TWCC "
                                      "feedback, its REMB, or neither yet (start)",
                                      labels=["participant", "source"])
        congested = GaugeMetricFamily("tern_subscriber_congested", "1 while a subscriber's downlink is congested",
                                      labels=["participant"])
        for participant, estimate in bandwidth:
            source = "twcc" if estimate["twcc"] else "remb" if estimate["rembs"] else "start"
            estimates.add_metric([participant, source], estimate["estimate_bps"])
            congested.add_metric([participant], int(estimate["congested"]))
        yield estimates
        yield congested
        agent_workers = GaugeMetricFamily("tern_agent_workers", "Registered agent workers by agent_name and job type "
                                          "(their jobs: agent_jobs_* in tern_events_total)",
                                          labels=["agent_name", "job_type"])
        for (agent_name, job_type), count in workers.items():
            agent_workers.add_metric([agent_name, job_type], count)
        yield agent_workers
        yield from worker_metrics(engine_workers)


def worker_metrics(workers: list[dict]) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """The engine's forwarding threads (Engine.worker_stats; worker 0 is the event loop's): their load, work and
    drops. A worker that falls behind shows as busy time near wall time and as worker 0's wait time growing."""
    families = {
        "transports": GaugeMetricFamily("tern_worker_transports", "Transports a forwarding worker owns",
                                        labels=["worker"]),
        "downtracks": GaugeMetricFamily("tern_worker_downtracks", "DownTracks a forwarding worker forwards to",
                                        labels=["worker"]),
        "batches": CounterMetricFamily("tern_worker_batches", "Received batches a worker forwarded a share of",
                                       labels=["worker"]),
        "packets": CounterMetricFamily("tern_worker_packets", "Packets a worker sent", labels=["worker"]),
        "busy_seconds": CounterMetricFamily("tern_worker_busy_seconds", "Time a worker spent forwarding",
                                            labels=["worker"]),
        "wait_seconds": CounterMetricFamily("tern_worker_wait_seconds", "Time the event loop's thread waited for the "
                                            "other workers to finish a batch", labels=["worker"]),
    }
    drops = CounterMetricFamily("tern_worker_drops", "Packets a worker dropped, by reason", labels=["worker", "reason"])
    for index, worker in enumerate(workers):
        for name, family in families.items():
            family.add_metric([str(index)], worker[name])
        for reason, count in worker["drops"].items():
            drops.add_metric([str(index), reason], count)
    yield from families.values()
    yield drops


def serve_metrics(node: Node, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
    """Serves /metrics from prometheus-client's own thread."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(node, loop))
    start_http_server(port, addr=host, registry=registry)
