"""Agent workers registered with other nodes of a cluster, as this node's dispatcher sees them: each node publishes a
summary of its workers (WorkerSummary, in Redis), and a RemoteWorker stands in for one of them, so the dispatcher
offers a job to a worker on any node as it does to its own. What a RemoteWorker is asked (offer, assign, terminate)
runs on the worker's node through `Calls` (cluster/agents.py sends them over the bus)."""
from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

from livekit.protocol import agent, models

from .worker import MAX_WORKER_JOBS, MAX_WORKER_NAME_LENGTH, Worker, WorkerKey

MAX_SUMMARY_FIELD = 256  # bytes of an id or key in a summary read from Redis: longer is another writer's garbage


@dataclass
class WorkerSummary:
    """What a node tells the cluster about one of its workers: enough to choose it and to sign its jobs' tokens."""
    id: str
    api_key: str
    agent_name: str
    type: int
    version: str
    permission: str  # models.ParticipantPermission, serialized and base64-encoded
    registered_at_ms: int
    status: int
    load: float
    engaged: int

    @classmethod
    def of(cls, worker: Worker) -> WorkerSummary:
        return cls(id=worker.id, api_key=worker.api_key, agent_name=worker.agent_name, type=worker.job_type,
                   version=worker.version, permission=base64.b64encode(worker.permission.SerializeToString()).decode(),
                   registered_at_ms=worker.registered_at_ms, status=worker.status, load=worker.load,
                   engaged=worker.engaged)


def encode_summaries(workers: Iterable[Worker]) -> bytes:
    return json.dumps([asdict(WorkerSummary.of(w)) for w in workers], separators=(",", ":")).encode()


def decode_summaries(data: bytes | None) -> list[WorkerSummary]:
    """The summaries a node wrote; entries this version cannot read (another version's, corrupted) are left out."""
    if data is None:
        return []
    try:
        raw = json.loads(data)
    except ValueError:
        return []
    if not isinstance(raw, list):
        return []
    return [summary for summary in map(_summary, raw) if summary is not None]


def _summary(raw: object) -> WorkerSummary | None:
    if not isinstance(raw, dict):
        return None
    try:
        summary = WorkerSummary(**{name: raw[name] for name in WorkerSummary.__dataclass_fields__})
    except (KeyError, TypeError):
        return None
    texts = (summary.id, summary.api_key, summary.agent_name, summary.version, summary.permission)
    integers = (summary.type, summary.registered_at_ms, summary.status, summary.engaged)
    if not (all(isinstance(t, str) and len(t) <= MAX_SUMMARY_FIELD for t in texts) and summary.id
            and len(summary.agent_name.encode()) <= MAX_WORKER_NAME_LENGTH
            and all(isinstance(i, int) and not isinstance(i, bool) for i in integers)
            and isinstance(summary.load, (int, float)) and not isinstance(summary.load, bool)
            and math.isfinite(summary.load) and summary.type in agent.JobType.values()):
        return None
    return summary


class Calls(Protocol):
    """Runs a RemoteWorker's requests on its node (cluster/agents.py)."""

    async def offer(self, worker: RemoteWorker, job: agent.Job, timeout: float) -> agent.AvailabilityResponse | None:
        """The worker's answer to the job's offer; None if it gave none (declined to answer, gone, node gone)."""

    def assign(self, worker: RemoteWorker, job: agent.Job, token: str) -> None:
        """Hands the job over; a worker that turns out to be gone is unregistered (its jobs fail)."""

    def terminate(self, worker: RemoteWorker, job_id: str) -> None: ...


class RemoteWorker:
    """A worker of another node (`node_id`), with the interface the dispatcher uses of its own Workers."""

    def __init__(self, node_id: str, summary: WorkerSummary, calls: Calls) -> None:
        self.node_id = node_id
        self.id = summary.id
        self.api_key = summary.api_key
        self.agent_name = summary.agent_name
        self.job_type = summary.type
        self.version = summary.version
        self.registered_at_ms = summary.registered_at_ms
        self.permission = models.ParticipantPermission()
        try:
            self.permission.ParseFromString(base64.b64decode(summary.permission))
        except ValueError:  # binascii.Error and protobuf's DecodeError: the default grants, read as LiveKit's
            self.permission = models.ParticipantPermission()
        self.jobs: dict[str, agent.Job] = {}  # by job id: this node's jobs it runs
        self.closed = False
        self._calls = calls
        self._offers = 0  # this node's offers awaiting its answer
        self.update(summary)

    def update(self, summary: WorkerSummary) -> None:
        self.status = summary.status
        self.load = min(1.0, max(0.0, summary.load))
        self._reported_engaged = summary.engaged

    @property
    def key(self) -> WorkerKey:
        return self.agent_name, self.job_type

    @property
    def engaged(self) -> int:
        """Its jobs as its node last reported them, or this node's alone if more (given since that report)."""
        return max(self._reported_engaged, len(self.jobs) + self._offers)

    @property
    def available(self) -> bool:
        return not self.closed and self.status == agent.WS_AVAILABLE and self.load < 1.0 \
            and self.engaged < MAX_WORKER_JOBS

    async def request_availability(self, job: agent.Job, timeout: float) -> agent.AvailabilityResponse | None:
        if self.closed:
            return None
        self._offers += 1
        try:
            return await self._calls.offer(self, job, timeout)
        finally:
            self._offers -= 1

    def assign(self, job: agent.Job, token: str) -> None:
        self.jobs[job.id] = job
        self._calls.assign(self, job, token)

    def terminate(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self._calls.terminate(self, job_id)

    def close(self) -> None:
        self.closed = True
