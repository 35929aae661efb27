"""One registered agent worker: what it registered for, the status and load it reports, the jobs it runs, and the
protocol it speaks once registered. Sans-I/O: WorkerMessages come in through handle(), ServerMessages go out through
the `send` callback (endpoint.py owns the WebSocket)."""
from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from livekit.protocol import agent, models

from ..rtc.ids import new_id, now_ms

log = logging.getLogger(__name__)

# ServerInfo.agent_protocol: the worker protocol version tern speaks (LiveKit's, which SDKs check).
AGENT_PROTOCOL = 1
# Bytes of a worker's agent_name, namespace, deployment or SDK version (LiveKit limits deployment to 64; tern all
# four, so what a worker registers stays small in every job, list and log).
MAX_WORKER_NAME_LENGTH = 64
# Jobs one worker may run at once; past it the worker is treated as full. A worker's load report normally says so
# far earlier (a job is a process with its own media).
MAX_WORKER_JOBS = 256
# Permissions of a worker that registers without allowed_permissions (LiveKit's default).
DEFAULT_PERMISSION = models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=True,
                                                  can_update_metadata=True)

WorkerKey = tuple[str, int]  # (agent_name, job type): which jobs a worker gets (namespaces are deprecated)


def pong(ping: agent.WorkerPing) -> agent.ServerMessage:
    return agent.ServerMessage(pong=agent.WorkerPong(last_timestamp=ping.timestamp, timestamp=now_ms()))


class RegistrationError(Exception):
    """A register request tern refuses; the message says why (logged, and the worker is closed)."""


class Listener(Protocol):
    """What a worker tells its dispatcher."""

    def on_worker_available(self, worker: Worker) -> None:
        """The worker reports it can take jobs again (after reporting itself full)."""

    def on_job_status(self, worker: Worker, update: agent.UpdateJobStatus) -> None: ...


def _valid_name(value: str, what: str) -> None:
    if len(value.encode()) > MAX_WORKER_NAME_LENGTH:
        raise RegistrationError(f"{what} longer than {MAX_WORKER_NAME_LENGTH} bytes")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise RegistrationError(f"{what} contains whitespace or control characters")


def check_registration(request: agent.RegisterWorkerRequest) -> None:
    """Raises RegistrationError for a register request LiveKit would refuse (or tern cannot keep bounded)."""
    if request.type not in agent.JobType.values():
        raise RegistrationError(f"unknown job type {request.type}")
    _valid_name(request.agent_name, "agent_name")
    _valid_name(request.namespace, "namespace")
    _valid_name(request.deployment, "deployment")
    _valid_name(request.version, "version")
    if "_" in request.deployment:  # LiveKit's rule: deployments are DNS-like names
        raise RegistrationError("deployment contains '_'")


class Worker:
    def __init__(self, api_key: str, request: agent.RegisterWorkerRequest,
                 send: Callable[[agent.ServerMessage], None], listener: Listener, counters: Counter[str]) -> None:
        self.id = new_id("AW_")
        self.api_key = api_key  # job tokens are signed with this key's secret
        self.agent_name = request.agent_name
        self.job_type = request.type
        self.version = request.version
        self.permission = request.allowed_permissions if request.HasField("allowed_permissions") \
            else DEFAULT_PERMISSION
        self.registered_at_ms = now_ms()
        self.status = agent.WS_AVAILABLE  # until the worker's first status update (protobuf zero values, as LiveKit)
        self.load = 0.0
        self.jobs: dict[str, agent.Job] = {}  # by job id: jobs assigned to this worker and not ended
        self.closed = False
        self._send = send
        self._listener = listener
        self._counters = counters
        self._waiting: dict[str, asyncio.Future[agent.AvailabilityResponse | None]] = {}  # by job id

    @property
    def key(self) -> WorkerKey:
        return self.agent_name, self.job_type

    @property
    def engaged(self) -> int:
        """Jobs it runs or is being offered."""
        return len(self.jobs) + len(self._waiting)

    @property
    def available(self) -> bool:
        return not self.closed and self.status == agent.WS_AVAILABLE and self.load < 1.0 \
            and self.engaged < MAX_WORKER_JOBS

    # -- from the worker
    def handle(self, message: agent.WorkerMessage) -> None:
        kind = message.WhichOneof("message")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:  # register again, migrate_job, simulate_job, or a newer SDK's message: not for tern
            self._counters[f"agent_worker_ignored_{kind}"] += 1
            return
        handler(getattr(message, kind))

    def _on_update_worker(self, update: agent.UpdateWorkerStatus) -> None:
        was_available = self.available
        if update.HasField("status"):
            self.status = update.status if update.status in agent.WorkerStatus.values() else agent.WS_FULL
        # A load that is not a number in [0, 1] is read as full rather than trusted.
        self.load = min(1.0, max(0.0, update.load)) if math.isfinite(update.load) else 1.0
        if self.available and not was_available:
            self._listener.on_worker_available(self)

    def _on_availability(self, response: agent.AvailabilityResponse) -> None:
        waiter = self._waiting.get(response.job_id)
        if waiter is None or waiter.done():  # late (timed out), repeated, or for a job never offered
            self._counters["agent_availability_unexpected"] += 1
            return
        waiter.set_result(response)

    def _on_update_job(self, update: agent.UpdateJobStatus) -> None:
        if update.job_id not in self.jobs:
            self._counters["agent_job_update_unknown"] += 1
            return
        self._listener.on_job_status(self, update)

    def _on_ping(self, ping: agent.WorkerPing) -> None:
        self._send(pong(ping))

    # -- to the worker
    async def request_availability(self, job: agent.Job, timeout: float) -> agent.AvailabilityResponse | None:
        """Offers the job; the worker's answer, or None if it did not answer within `timeout` or went away."""
        if self.closed or job.id in self._waiting:
            return None
        waiter: asyncio.Future[agent.AvailabilityResponse | None] = asyncio.get_running_loop().create_future()
        self._waiting[job.id] = waiter
        try:
            self._send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            del self._waiting[job.id]

    def assign(self, job: agent.Job, token: str) -> None:
        self.jobs[job.id] = job
        self._send(agent.ServerMessage(assignment=agent.JobAssignment(job=job, token=token)))

    def terminate(self, job_id: str) -> None:
        if self.jobs.pop(job_id, None) is not None:
            self._send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))

    def close(self) -> None:
        """The connection ended: pending offers are answered with nothing."""
        self.closed = True
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_result(None)
