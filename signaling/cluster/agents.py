"""Agent workers shared by the cluster, as LiveKit's agent service routes jobs over psrpc: any worker, whichever node
its /agent connection reached, may get the jobs of a room on any node.

- Each node publishes its workers' summaries under a key that expires with its registration, every STATS_INTERVAL_S;
  every node reads the others' and keeps a RemoteWorker for each (agents/remote.py). A worker missing from two reads
  in a row (disconnected, or its node dead) is unregistered: its jobs fail and are launched again as for a worker of
  this node.
- The room's node runs the job as ever (offer, token, webhooks, ListDispatch); an offer, an assignment and a
  termination for another node's worker are calls to that node (SERVICE), which passes them to the worker. That node
  passes back the worker's end of such a job and, at once, the worker's disconnection.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Coroutine

import redis.asyncio as aioredis
from google.protobuf.message import DecodeError
from livekit.protocol import agent
from redis.exceptions import RedisError

from ..agents.dispatcher import AVAILABILITY_TIMEOUT, AgentDispatcher
from ..agents.remote import RemoteWorker, WorkerSummary, decode_summaries, encode_summaries
from ..agents.worker import Worker
from .connection import PREFIX
from .registry import NODE_TTL_S, STATS_INTERVAL_S, NodeRegistry
from .rpc import CallFailed, Rpc

log = logging.getLogger(__name__)

SERVICE = "agents"
CALL_MARGIN_S = 2.0  # an offer's call waits this much longer than the worker has to answer
MISSES_TO_DROP = 2   # reads a worker may be missing from (its node re-registering after Redis lost it) before it goes
_ENDED = (agent.JS_SUCCESS, agent.JS_FAILED)
_ID = struct.Struct("!B")  # the length of each id in front of a call's body


def workers_key(node_id: str) -> str:
    return f"{PREFIX}agent_workers:{node_id}"


def pack(*ids: str, body: bytes = b"") -> bytes:
    return b"".join(_ID.pack(len(encoded)) + encoded for encoded in (i.encode() for i in ids)) + body


def unpack(data: bytes, count: int) -> tuple[list[str], bytes]:
    """`count` ids and the body after them; raises CallFailed for what `pack` did not make."""
    ids, at = [], 0
    try:
        for _ in range(count):
            length = data[at]
            ids.append(data[at + 1:at + 1 + length].decode())
            at += 1 + length
    except (IndexError, UnicodeDecodeError):
        raise CallFailed("malformed", "not an agent call") from None
    if at > len(data):
        raise CallFailed("malformed", "not an agent call")
    return ids, data[at:]


class AgentRouter:
    def __init__(self, redis: aioredis.Redis, registry: NodeRegistry, rpc: Rpc, dispatcher: AgentDispatcher,
                 counters: dict[str, int]) -> None:
        self.redis = redis
        self.registry = registry
        self.rpc = rpc
        self.node_id = rpc.node_id
        self.dispatcher = dispatcher
        self.counters = counters
        self._hosted: dict[str, str] = {}  # job id -> its room's node: this node's workers' jobs for other nodes
        self._misses: dict[str, int] = {}  # remote worker id -> reads it has been missing from
        self._tasks: set[asyncio.Task] = set()
        rpc.handlers[SERVICE] = self._serve
        dispatcher.hosting = self

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as error:
                self.counters["cluster_agent_refresh_errors"] += 1
                log.debug("cannot share agent workers: %s", error)
            await asyncio.sleep(STATS_INTERVAL_S)

    async def refresh(self) -> None:
        """Publishes this node's workers and reads the other nodes'."""
        await self.redis.set(workers_key(self.node_id), encode_summaries(self.dispatcher.workers.values()),
                             ex=NODE_TTL_S)
        others = [info.id for info in await self.registry.nodes() if info.id != self.node_id]
        values = await self.redis.mget([workers_key(node) for node in others]) if others else []
        self.update({summary.id: (node, summary) for node, value in zip(others, values)
                     for summary in decode_summaries(value)})

    def update(self, seen: dict[str, tuple[str, WorkerSummary]]) -> None:
        """Applies one read of the other nodes' workers: {worker id: (node id, WorkerSummary)}."""
        remote = self.dispatcher.remote
        for worker_id, (node, summary) in seen.items():
            if worker_id in self.dispatcher.workers:  # a summary claiming one of ours: not another node's
                continue
            self._misses.pop(worker_id, None)
            worker = remote.get(worker_id)
            if worker is None:
                worker = remote[worker_id] = RemoteWorker(node, summary, self)
                was_available = False
            else:
                was_available = worker.available
                worker.update(summary)
            if worker.available and not was_available:
                self.dispatcher.on_worker_available(worker)
        for worker_id in [i for i in remote if i not in seen]:
            self._misses[worker_id] = self._misses.get(worker_id, 0) + 1
            if self._misses[worker_id] >= MISSES_TO_DROP:
                self._drop(remote[worker_id])

    def _drop(self, worker: RemoteWorker) -> None:
        self._misses.pop(worker.id, None)
        self.dispatcher.unregister(worker)

    # -- the room's node: calls to a worker's node (agents/remote.py's Calls)
    async def offer(self, worker: RemoteWorker, job: agent.Job, timeout: float) -> agent.AvailabilityResponse | None:
        request = pack(worker.id, body=agent.AvailabilityRequest(job=job).SerializeToString())
        try:
            reply = await self.rpc.call(worker.node_id, SERVICE, "offer", request, timeout + CALL_MARGIN_S)
        except CallFailed as error:
            self.counters["cluster_agent_calls_failed"] += 1
            log.info("agent worker %s on %s was not offered job %s: %s", worker.id, worker.node_id, job.id, error.msg)
            return None
        if reply[:1] != b"\x01":
            return None
        try:
            return agent.AvailabilityResponse.FromString(reply[1:])
        except DecodeError:
            self.counters["cluster_agent_calls_failed"] += 1
            return None

    def assign(self, worker: RemoteWorker, job: agent.Job, token: str) -> None:
        body = agent.JobAssignment(job=job, token=token).SerializeToString()
        self._spawn(self._assign(worker, pack(worker.id, self.node_id, body=body)))

    async def _assign(self, worker: RemoteWorker, request: bytes) -> None:
        try:
            await self.rpc.call(worker.node_id, SERVICE, "assign", request)
        except CallFailed as error:  # the worker left (or its node died) between its answer and the assignment
            self.counters["cluster_agent_calls_failed"] += 1
            log.info("agent worker %s on %s could not take its job: %s", worker.id, worker.node_id, error.msg)
            self._drop(worker)

    def terminate(self, worker: RemoteWorker, job_id: str) -> None:
        self._spawn(self._tell(worker.node_id, "terminate", pack(worker.id, job_id)))

    # -- the worker's node: what its workers do with other nodes' jobs
    def job_status(self, worker: Worker, update: agent.UpdateJobStatus) -> None:
        """A report from this node's worker on a job of a room elsewhere: its end goes to the room's node."""
        origin = self._hosted.get(update.job_id)
        if origin is None or update.status not in _ENDED:
            return
        del self._hosted[update.job_id]
        worker.jobs.pop(update.job_id, None)
        self._spawn(self._tell(origin, "status", pack(worker.id, body=update.SerializeToString())))

    def worker_gone(self, worker: Worker) -> None:
        """This node's worker disconnected: the nodes whose jobs it ran learn it now, not at their next read."""
        origins = {self._hosted.pop(job_id) for job_id in list(worker.jobs) if job_id in self._hosted}
        for origin in origins:
            self._spawn(self._tell(origin, "gone", pack(worker.id)))

    async def _serve(self, method: str, request: bytes) -> bytes:
        try:
            return await self._run(method, request)
        except DecodeError:
            raise CallFailed("malformed", "not an agent call") from None

    async def _run(self, method: str, request: bytes) -> bytes:
        if method == "offer":
            (worker_id,), body = unpack(request, 1)
            worker = self.dispatcher.workers.get(worker_id)
            response = None
            if worker is not None:
                self.counters["agent_availability_requests_relayed"] += 1
                response = await worker.request_availability(agent.AvailabilityRequest.FromString(body).job,
                                                             AVAILABILITY_TIMEOUT)
            return b"\x01" + response.SerializeToString() if response is not None else b"\x00"
        if method == "assign":
            (worker_id, origin), body = unpack(request, 2)
            worker = self.dispatcher.workers.get(worker_id)
            if worker is None or worker.closed:
                raise CallFailed("not_found", "agent worker gone")
            assignment = agent.JobAssignment.FromString(body)
            self._hosted[assignment.job.id] = origin
            worker.assign(assignment.job, assignment.token)
            return b""
        if method == "terminate":
            (worker_id, job_id), _ = unpack(request, 2)
            worker = self.dispatcher.workers.get(worker_id)
            self._hosted.pop(job_id, None)
            if worker is not None:
                worker.terminate(job_id)
            return b""
        if method == "status":
            (worker_id,), body = unpack(request, 1)
            remote = self.dispatcher.remote.get(worker_id)
            if remote is not None:
                self.dispatcher.on_job_status(remote, agent.UpdateJobStatus.FromString(body))
            return b""
        if method == "gone":
            (worker_id,), _ = unpack(request, 1)
            remote = self.dispatcher.remote.get(worker_id)
            if remote is not None:
                self._drop(remote)
            return b""
        raise CallFailed("bad_route", f"no such agent call: {method}")

    async def _tell(self, node_id: str, method: str, request: bytes) -> None:
        try:
            await self.rpc.call(node_id, SERVICE, method, request)
        except CallFailed as error:  # the other node is gone: what it should have heard no longer matters
            self.counters["cluster_agent_calls_failed"] += 1
            log.info("agent %s call to %s failed: %s", method, node_id, error.msg)

    def _spawn(self, call: Coroutine) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
