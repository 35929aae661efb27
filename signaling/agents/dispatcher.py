"""The agent dispatcher: the registered workers, each room's agent dispatches, and the jobs they launch.

LiveKit's rules: a room starts with the dispatches its creator asked for (CreateRoom.agents, a join token's
roomConfig.agents), or else one automatic dispatch for workers without an agent_name. Each dispatch launches a
JT_ROOM job when the room starts, a JT_PARTICIPANT job for every participant who joins and a JT_PUBLISHER job for
every participant's first published track; agents (and other dependent participants) launch none. A job goes to the
least-loaded available worker registered for its agent_name and type, which is offered it (availability) and, when
it accepts, gets the job with a room token.

Where tern does more than LiveKit (which drops such a job):
- a worker that declines or does not answer in time is skipped and the next worker is offered the job;
- a room job no worker can take waits, for up to PENDING_JOB_TIMEOUT, for a matching worker to register or to
  report itself available again (participant and publisher jobs are launched only when a worker of their agent_name
  and type is registered, as LiveKit does for all jobs: a participant's job is only useful while it is there);
- a job whose worker disconnects is failed and launched again (a new job of the same dispatch) once its agent
  participant has left the room: an agent that is still in the room keeps serving, as its media connection does
  not depend on its worker's /agent connection. A job whose agent loses its connection to the room (rather than
  leaving it) is failed and launched again too.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf import json_format
from livekit.protocol import agent, agent_dispatch, models
from livekit.protocol import room as room_proto

from ..rtc.ids import new_id
from ..rtc.limits import MAX_IDENTITY_LENGTH, identity_fields_error, utf8_size
from ..rtc.grants import is_dependent
from .remote import RemoteWorker
from .token import agent_identity, job_token
from .worker import Worker, WorkerKey

if TYPE_CHECKING:
    from ..cluster.agents import AgentRouter
    from ..cluster.store import RoomStore
    from ..rtc.room import Room

log = logging.getLogger(__name__)

# How long a worker has to answer an availability request before the next worker is offered the job (LiveKit's
# AssignJobTimeout). Tests shorten it with TERN_AGENT_AVAILABILITY_TIMEOUT (seconds).
AVAILABILITY_TIMEOUT = float(os.environ.get("TERN_AGENT_AVAILABILITY_TIMEOUT", "10"))
# How long a job no worker can take waits for one (tern's; LiveKit drops it at once). Long enough for a worker to
# restart, short enough that a room nobody serves does not hold jobs for ever.
PENDING_JOB_TIMEOUT = 60.0
# Jobs waiting for a worker on this node; past it a job that finds no worker is failed at once.
MAX_PENDING_JOBS = 1024
# Registered workers on this node (each is an authenticated WebSocket); past it a worker is refused.
MAX_WORKERS = 1024
# Dispatches one room holds (the automatic one included); CreateDispatch past it is refused.
MAX_ROOM_DISPATCHES = 32
# Jobs one room remembers for ListDispatch; past it the oldest ended ones are forgotten.
MAX_ROOM_JOBS = 512
# After DeleteDispatch terminates a job, how long its agent has to leave before it is removed (LiveKit's 3 s).
DELETE_GRACE = 3.0

_ENDED = (agent.JS_SUCCESS, agent.JS_FAILED)
# How an agent participant leaves when it did not mean to (rather than leaving, or being removed or replaced).
_CONNECTION_LOST = frozenset({models.DisconnectReason.SIGNAL_CLOSE, models.DisconnectReason.CONNECTION_TIMEOUT,
                              models.DisconnectReason.MEDIA_FAILURE})


def token_dispatches(room_config: dict) -> list[agent_dispatch.RoomAgentDispatch]:
    """The agents a join token's roomConfig asks for (protojson: camelCase or snake_case keys, as Go's protojson
    reads them). Raises ValueError for a roomConfig that is not a RoomConfiguration."""
    if not room_config:
        return []
    try:
        config = json_format.ParseDict(room_config, room_proto.RoomConfiguration(), ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise ValueError(f"roomConfig is not a RoomConfiguration: {error}") from None
    return list(config.agents)


def _dependent(info: models.ParticipantInfo) -> bool:
    return is_dependent(info.kind, info.permission.agent, info.permission.recorder)


@dataclass(eq=False)
class _Job:
    job: agent.Job  # its state is the job's state
    worker: Worker | RemoteWorker | None = None  # the worker running it
    task: asyncio.Task | None = None  # while offering it to workers
    tried: set[str] = field(default_factory=set)  # workers offered it in this round
    deadline: float = 0.0  # loop time its wait for a worker ends (0: not waiting yet)
    timer: asyncio.TimerHandle | None = None  # ends its wait
    orphaned: bool = False  # its worker disconnected while its agent was in the room

    @property
    def ended(self) -> bool:
        return self.job.state.status in _ENDED


@dataclass(eq=False)
class _RoomAgents:
    sid: str
    dispatches: dict[str, agent_dispatch.AgentDispatch] = field(default_factory=dict)  # by id
    jobs: dict[str, _Job] = field(default_factory=dict)  # by job id, in launch order
    publishers: set[str] = field(default_factory=set)  # identities that have published a track


class AgentDispatcher:
    """Implements worker.Listener. `notify(event, room=, job=)` receives the job webhooks (agent_job_started,
    agent_job_ended); `secrets` are the API keys' secrets, which sign job tokens."""

    def __init__(self, store: RoomStore, secrets: dict[str, str], counters: Counter[str],
                 notify: Callable[..., None]) -> None:
        self.store = store
        self.workers: dict[str, Worker] = {}  # by id: this node's
        self.remote: dict[str, RemoteWorker] = {}  # by id: other nodes' (cluster mode)
        self.hosting: AgentRouter | None = None  # cluster mode: runs this node's workers' jobs for other nodes
        self._secrets = secrets
        self._counters = counters
        self._notify = notify
        self._rooms: dict[str, _RoomAgents] = {}  # by room name
        self._jobs: dict[str, _Job] = {}  # by job id: every room's jobs
        self._pending: dict[str, _Job] = {}  # by job id: jobs waiting for a worker
        self._creating: list[agent_dispatch.RoomAgentDispatch] | None = None

    # -- workers
    @property
    def full(self) -> bool:
        return len(self.workers) >= MAX_WORKERS

    def register(self, worker: Worker) -> None:
        self.workers[worker.id] = worker
        log.info("agent worker %s registered (agent_name %r, %s, sdk %s)", worker.id, worker.agent_name,
                 agent.JobType.Name(worker.job_type), worker.version)
        self.on_worker_available(worker)

    def unregister(self, worker: Worker | RemoteWorker) -> None:
        """The worker's connection ended (or, for another node's, it or its node is gone): its jobs fail, and are
        launched again as the module says."""
        if (self.workers if isinstance(worker, Worker) else self.remote).pop(worker.id, None) is None:
            return
        worker.close()
        log.info("agent worker %s disconnected with %d jobs", worker.id, len(worker.jobs))
        if self.hosting is not None and isinstance(worker, Worker):
            self.hosting.worker_gone(worker)
        for job_id in list(worker.jobs):
            record = self._jobs.get(job_id)
            worker.jobs.pop(job_id)
            if record is None or record.ended:
                continue
            self._end(record, agent.JS_FAILED, "agent worker disconnected")
            record.orphaned = True
            if not self._agent_present(record):
                self._relaunch(record)

    def all_workers(self) -> list[Worker | RemoteWorker]:
        return [*self.workers.values(), *self.remote.values()]

    def on_worker_available(self, worker: Worker | RemoteWorker) -> None:
        for record in [r for r in self._pending.values() if self._key(r.job) == worker.key]:
            self._stop_waiting(record)
            record.tried.clear()
            self._start(record)

    def on_job_status(self, worker: Worker | RemoteWorker, update: agent.UpdateJobStatus) -> None:
        record = self._jobs.get(update.job_id)
        if record is None and self.hosting is not None and isinstance(worker, Worker):
            self.hosting.job_status(worker, update)  # a job of a room on another node
            return
        if record is None or record.worker is not worker or record.ended:
            return
        state = record.job.state
        state.updated_at = time.time_ns()
        if update.status in _ENDED:
            worker.jobs.pop(update.job_id, None)
            self._end(record, update.status, update.error[:1024])

    # -- rooms (through Node.notify's events)
    def create_room_with(self, dispatches: Iterable[agent_dispatch.RoomAgentDispatch],
                         create: Callable[[], Room]) -> Room:
        """Runs `create` (which creates a room or finds it open) so that a room it creates starts with `dispatches`
        instead of the automatic one; an open room keeps its own (LiveKit ignores them too)."""
        self._creating = list(dispatches)[:MAX_ROOM_DISPATCHES]
        try:
            return create()
        finally:
            self._creating = None

    def on_event(self, event: str, room: models.Room | None, participant: models.ParticipantInfo | None) -> None:
        if room is None:
            return
        if event == "room_started":
            self._room_started(room)
            return
        agents = self._rooms.get(room.name)
        if agents is None or agents.sid != room.sid:
            return
        if event == "room_finished":
            self._room_finished(room.name, agents)
        elif participant is None:
            return
        elif event in ("participant_left", "participant_connection_aborted"):
            self._participant_left(room, agents, participant)
        elif _dependent(participant):
            return
        elif event == "participant_joined":
            for dispatch in list(agents.dispatches.values()):
                self._launch(room, agents, dispatch, agent.JT_PARTICIPANT, participant)
        elif event == "track_published" and participant.identity not in agents.publishers:
            agents.publishers.add(participant.identity)
            for dispatch in list(agents.dispatches.values()):
                self._launch(room, agents, dispatch, agent.JT_PUBLISHER, participant)

    def _room_started(self, room: models.Room) -> None:
        agents = _RoomAgents(room.sid)
        self._rooms[room.name] = agents
        requested = self._creating or [agent_dispatch.RoomAgentDispatch()]  # the automatic dispatch
        for request in requested:
            self._add_dispatch(room, agents, request.agent_name, request.metadata, request.attributes)

    def _room_finished(self, name: str, agents: _RoomAgents) -> None:
        del self._rooms[name]
        for record in agents.jobs.values():
            self._cancel(record, agent.JS_SUCCESS, "room closed")
            del self._jobs[record.job.id]

    def _participant_left(self, room: models.Room, agents: _RoomAgents, participant: models.ParticipantInfo) -> None:
        agents.publishers.discard(participant.identity)
        record = next((r for r in agents.jobs.values()
                       if r.job.state.participant_identity == participant.identity and r.worker is not None
                       and (r.orphaned or not r.ended)), None)
        if record is None:
            return
        if record.orphaned:
            self._relaunch(record)
            return
        open_room = self.store.get(room.name)
        if open_room is None or open_room.closed:
            self._cancel(record, agent.JS_SUCCESS, "room closed")
            return
        # As LiveKit: the worker is told to end the job, which has failed. An agent whose connection was lost (its
        # worker's machine died, often noticed here before the worker's own connection ends) is replaced.
        lost = participant.disconnect_reason in _CONNECTION_LOST
        self._cancel(record, agent.JS_FAILED, "agent lost its connection" if lost else "agent left the room")
        if lost:
            self._relaunch(record)

    # -- dispatches (AgentDispatchService)
    def dispatches(self, room: str, dispatch_id: str = "") -> list[agent_dispatch.AgentDispatch]:
        agents = self._rooms.get(room)
        if agents is None:
            return []
        return [self._with_jobs(agents, d) for d in agents.dispatches.values() if not dispatch_id or d.id == dispatch_id]

    def create_dispatch(self, room: Room, request: agent_dispatch.CreateAgentDispatchRequest) -> agent_dispatch.AgentDispatch:
        """Adds a dispatch to an open room, launching its jobs for the room and for who is in it."""
        agents = self._rooms.get(room.name)
        if agents is None:  # a room that started before the dispatcher knew it cannot be
            raise LookupError("room has no agent state")
        if len(agents.dispatches) >= MAX_ROOM_DISPATCHES:
            raise OverflowError(f"room already has {MAX_ROOM_DISPATCHES} agent dispatches")
        info = room.info()
        dispatch = self._add_dispatch(info, agents, request.agent_name, request.metadata, request.attributes)
        for participant in list(room.participants.values()):
            participant_info = participant.info()
            if _dependent(participant_info) or participant.closed:
                continue
            if participant.identity in agents.publishers:
                self._launch(info, agents, dispatch, agent.JT_PUBLISHER, participant_info)
            self._launch(info, agents, dispatch, agent.JT_PARTICIPANT, participant_info)
        return self._with_jobs(agents, dispatch)

    def delete_dispatch(self, room: str, dispatch_id: str) -> agent_dispatch.AgentDispatch | None:
        """Removes a dispatch: its jobs end, and agents still in the room after DELETE_GRACE are removed."""
        agents = self._rooms.get(room)
        dispatch = agents.dispatches.pop(dispatch_id, None) if agents is not None else None
        if agents is None or dispatch is None:
            return None
        dispatch.state.deleted_at = time.time_ns()
        identities = []
        for record in agents.jobs.values():
            if record.job.dispatch_id == dispatch_id and not record.ended:
                if record.worker is not None:
                    identities.append(record.job.state.participant_identity)
                self._cancel(record, agent.JS_SUCCESS, "dispatch deleted")
        if identities:
            asyncio.get_running_loop().call_later(DELETE_GRACE, self._remove_agents, room, identities)
        return self._with_jobs(agents, dispatch)

    def _remove_agents(self, room_name: str, identities: list[str]) -> None:
        room = self.store.get(room_name)
        for identity in identities:
            participant = room.participants.get(identity) if room is not None else None
            if participant is not None:
                participant.close(models.DisconnectReason.PARTICIPANT_REMOVED)

    def _add_dispatch(self, room: models.Room, agents: _RoomAgents, agent_name: str, metadata: str,
                      attributes: dict[str, str]) -> agent_dispatch.AgentDispatch:
        dispatch = agent_dispatch.AgentDispatch(
            id=new_id("AD_"), agent_name=agent_name, room=room.name, metadata=metadata, attributes=attributes,
            state=agent_dispatch.AgentDispatchState(created_at=time.time_ns()))
        agents.dispatches[dispatch.id] = dispatch
        self._launch(room, agents, dispatch, agent.JT_ROOM, None)
        return dispatch

    @staticmethod
    def _with_jobs(agents: _RoomAgents, dispatch: agent_dispatch.AgentDispatch) -> agent_dispatch.AgentDispatch:
        listed = agent_dispatch.AgentDispatch()
        listed.CopyFrom(dispatch)
        listed.state.jobs.extend(r.job for r in agents.jobs.values() if r.job.dispatch_id == dispatch.id)
        return listed

    # -- jobs
    def _launch(self, room: models.Room, agents: _RoomAgents, dispatch: agent_dispatch.AgentDispatch, job_type: int,
                participant: models.ParticipantInfo | None) -> None:
        if job_type != agent.JT_ROOM and not any(w.key == (dispatch.agent_name, job_type) for w in self.all_workers()):
            return  # participant and publisher jobs are for the workers there are (LiveKit's rule for every job)
        job = agent.Job(id=new_id("AJ_"), dispatch_id=dispatch.id, type=job_type, room=room,
                        agent_name=dispatch.agent_name, metadata=dispatch.metadata, attributes=dispatch.attributes,
                        state=agent.JobState(status=agent.JS_PENDING, updated_at=time.time_ns()))
        if participant is not None:
            job.participant.CopyFrom(participant)
        record = _Job(job)
        agents.jobs[job.id] = record
        self._jobs[job.id] = record
        self._forget_ended(agents)
        self._counters["agent_jobs_dispatched"] += 1
        self._start(record)

    def _relaunch(self, record: _Job) -> None:
        """A new job in place of one whose worker disconnected (if its room, dispatch and participant remain)."""
        record.orphaned = False
        job = record.job
        agents = self._rooms.get(job.room.name)
        room = self.store.get(job.room.name)
        if agents is None or room is None or room.closed or job.dispatch_id not in agents.dispatches:
            return
        participant = None
        if job.HasField("participant"):
            present = room.participants.get(job.participant.identity)
            if present is None or present.closed:
                return
            participant = present.info()
        self._counters["agent_jobs_redispatched"] += 1
        self._launch(room.info(), agents, agents.dispatches[job.dispatch_id], job.type, participant)

    def _start(self, record: _Job) -> None:
        record.task = asyncio.get_running_loop().create_task(self._offer(record), name=f"agent job {record.job.id}")

    async def _offer(self, record: _Job) -> None:
        """Offers the job to one worker after another until one takes it, or no worker is left to ask."""
        job = record.job
        while True:
            worker = self._choose(job, record.tried)
            if worker is None:
                record.task = None
                self._wait(record)
                return
            record.tried.add(worker.id)
            self._counters["agent_availability_requests"] += 1
            response = await worker.request_availability(job, AVAILABILITY_TIMEOUT)
            if response is None:
                self._counters["agent_availability_timeouts"] += 1
                log.info("agent worker %s did not answer for job %s within %g s", worker.id, job.id,
                         AVAILABILITY_TIMEOUT)
                continue
            if response.terminate:  # the worker ends the job without running it (LiveKit: success)
                record.task = None
                self._end(record, agent.JS_SUCCESS, "")
                return
            if not response.available or worker.closed:
                self._counters["agent_availability_declined"] += 1
                continue
            error = _response_error(response)
            if error is not None:
                self._counters["agent_availability_invalid"] += 1
                log.info("agent worker %s accepted job %s with %s", worker.id, job.id, error)
                continue
            record.task = None
            self._assign(record, worker, response)
            return

    def _choose(self, job: agent.Job, tried: set[str]) -> Worker | RemoteWorker | None:
        """The available worker (of any node) for the job's key with the lowest reported load, then the fewest jobs
        (running or being offered): LiveKit picks at random weighted by 1 - load; this spreads jobs
        deterministically, and a worker's load report, sent every few seconds, does not lag behind the jobs just
        given to it. Another node's worker whose API key this node does not know cannot get a job token here."""
        key = self._key(job)
        candidates = [w for w in self.all_workers() if w.key == key and w.available and w.id not in tried
                      and w.api_key in self._secrets]
        return min(candidates, key=lambda w: (w.load, w.engaged, w.registered_at_ms), default=None)

    @staticmethod
    def _key(job: agent.Job) -> WorkerKey:
        return job.agent_name, job.type

    def _assign(self, record: _Job, worker: Worker | RemoteWorker, response: agent.AvailabilityResponse) -> None:
        job = record.job
        now = time.time_ns()
        state = job.state
        state.status = agent.JS_RUNNING
        state.worker_id = worker.id
        state.participant_identity = agent_identity(job, response)
        state.started_at = state.updated_at = now
        record.worker = worker
        token = job_token(worker.api_key, self._secrets[worker.api_key], job, response, worker.permission,
                          worker.agent_name)
        worker.assign(job, token)
        self._counters["agent_jobs_accepted"] += 1
        log.info("agent job %s (%s, room %s) assigned to worker %s as %s", job.id, agent.JobType.Name(job.type),
                 job.room.name, worker.id, state.participant_identity)
        self._notify("agent_job_started", room=job.room, job=job)

    def _wait(self, record: _Job) -> None:
        """No worker can take the job now: it waits for one, for what is left of PENDING_JOB_TIMEOUT."""
        loop = asyncio.get_running_loop()
        if not record.deadline:
            if len(self._pending) >= MAX_PENDING_JOBS:
                self._end(record, agent.JS_FAILED, "no agent worker available")
                self._counters["agent_jobs_unserved"] += 1
                return
            record.deadline = loop.time() + PENDING_JOB_TIMEOUT
        remaining = record.deadline - loop.time()
        if remaining <= 0:
            self._expire(record)
            return
        self._pending[record.job.id] = record
        record.timer = loop.call_later(remaining, self._expire, record)

    def _stop_waiting(self, record: _Job) -> None:
        self._pending.pop(record.job.id, None)
        if record.timer is not None:
            record.timer.cancel()
            record.timer = None

    def _expire(self, record: _Job) -> None:
        self._stop_waiting(record)
        self._counters["agent_jobs_unserved"] += 1
        log.info("agent job %s (%s, agent_name %r, room %s): no worker took it within %g s", record.job.id,
                 agent.JobType.Name(record.job.type), record.job.agent_name, record.job.room.name, PENDING_JOB_TIMEOUT)
        self._end(record, agent.JS_FAILED, "no agent worker available")

    def _cancel(self, record: _Job, status: int, error: str) -> None:
        """Ends a job from the server's side: no longer offered or awaited, and its worker told to stop it."""
        self._stop_waiting(record)
        if record.task is not None:
            record.task.cancel()
            record.task = None
        if record.ended:
            return
        if record.worker is not None:
            record.worker.terminate(record.job.id)
        self._end(record, status, error)

    def _end(self, record: _Job, status: int, error: str) -> None:
        state = record.job.state
        state.status = status
        state.error = error
        state.ended_at = state.updated_at = time.time_ns()
        if record.worker is None:  # never ran: only counted (unserved), no webhook
            return
        self._counters["agent_jobs_succeeded" if status == agent.JS_SUCCESS else "agent_jobs_failed"] += 1
        self._notify("agent_job_ended", room=record.job.room, job=record.job)

    def _agent_present(self, record: _Job) -> bool:
        room = self.store.get(record.job.room.name)
        participant = room.participants.get(record.job.state.participant_identity) if room is not None else None
        return participant is not None and not participant.closed

    def _forget_ended(self, agents: _RoomAgents) -> None:
        excess = len(agents.jobs) - MAX_ROOM_JOBS
        if excess > 0:
            for job_id in [i for i, r in agents.jobs.items() if r.ended and not r.orphaned][:excess]:
                del agents.jobs[job_id]
                del self._jobs[job_id]


def _response_error(response: agent.AvailabilityResponse) -> str | None:
    """Why the identity, name, metadata or attributes a worker chose for its agent cannot join, or None."""
    if utf8_size(response.participant_identity) > MAX_IDENTITY_LENGTH:
        return f"an identity longer than {MAX_IDENTITY_LENGTH} bytes"
    return identity_fields_error(response.participant_name, response.participant_metadata,
                                 dict(response.participant_attributes))
