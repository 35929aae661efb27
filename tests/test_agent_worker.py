"""The agent worker protocol without sockets: registration checks, status and load, offers and answers, job tokens,
and roomConfig's agents."""
from __future__ import annotations

import asyncio
from collections import Counter

import jwt
import pytest
from livekit import api
from livekit.protocol import agent, models

from signaling.agents.dispatcher import token_dispatches
from signaling.agents.token import JOB_TOKEN_TTL, job_token
from signaling.agents.worker import RegistrationError, Worker, check_registration

pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")


class Listener:
    def __init__(self) -> None:
        self.available: list[Worker] = []
        self.updates: list[agent.UpdateJobStatus] = []

    def on_worker_available(self, worker: Worker) -> None:
        self.available.append(worker)

    def on_job_status(self, worker: Worker, update: agent.UpdateJobStatus) -> None:
        self.updates.append(update)


def make_worker(**register: object) -> tuple[Worker, list[agent.ServerMessage], Listener, Counter[str]]:
    sent: list[agent.ServerMessage] = []
    listener, counters = Listener(), Counter()
    worker = Worker("devkey", agent.RegisterWorkerRequest(**register), sent.append, listener, counters)
    return worker, sent, listener, counters


@pytest.mark.parametrize("request_fields, reason", [
    ({"type": 7}, "unknown job type"),
    ({"agent_name": "x" * 65}, "agent_name longer"),
    ({"agent_name": "two words"}, "whitespace"),
    ({"deployment": "a_b"}, "'_'"),
    ({"version": "v\x00"}, "control"),
])
def test_registration_refused(request_fields: dict, reason: str) -> None:
    with pytest.raises(RegistrationError, match=reason):
        check_registration(agent.RegisterWorkerRequest(**request_fields))


def test_registration_defaults() -> None:
    check_registration(agent.RegisterWorkerRequest(type=agent.JT_PUBLISHER, agent_name="helper", version="1.8.9"))
    worker, *_ = make_worker(type=agent.JT_PUBLISHER, agent_name="helper")
    assert worker.key == ("helper", agent.JT_PUBLISHER) and worker.available
    assert worker.permission.can_publish and worker.permission.can_update_metadata and not worker.permission.hidden


def test_status_and_load() -> None:
    worker, _, listener, _ = make_worker()
    worker.handle(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WS_FULL, load=0.2)))
    assert not worker.available and worker.load == pytest.approx(0.2)
    worker.handle(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(status=agent.WS_AVAILABLE, load=0.3)))
    assert worker.available and listener.available == [worker]  # told once, on the change
    worker.handle(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=float("nan"))))
    assert worker.load == 1.0 and not worker.available  # a load that is no number is read as full
    worker.handle(agent.WorkerMessage(update_worker=agent.UpdateWorkerStatus(load=-3)))
    assert worker.load == 0.0 and listener.available == [worker, worker]


def test_ping_and_ignored_messages() -> None:
    worker, sent, _, counters = make_worker()
    worker.handle(agent.WorkerMessage(ping=agent.WorkerPing(timestamp=7)))
    assert sent[-1].pong.last_timestamp == 7 and sent[-1].pong.timestamp > 0
    worker.handle(agent.WorkerMessage(migrate_job=agent.MigrateJobRequest(job_ids=["AJ_x"])))
    worker.handle(agent.WorkerMessage())
    worker.handle(agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_unknown", status=agent.JS_SUCCESS)))
    assert counters["agent_worker_ignored_migrate_job"] == 1 and counters["agent_worker_ignored_None"] == 1
    assert counters["agent_job_update_unknown"] == 1 and len(sent) == 1


async def test_offers_answered_timed_out_and_abandoned() -> None:
    worker, sent, listener, counters = make_worker()
    job = agent.Job(id="AJ_1", type=agent.JT_ROOM)
    offer = asyncio.create_task(worker.request_availability(job, 5))
    await asyncio.sleep(0)
    assert sent[-1].availability.job.id == "AJ_1" and worker.engaged == 1
    worker.handle(agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id="AJ_1", available=True)))
    assert (await offer).available and worker.engaged == 0
    # A late or unsolicited answer is counted, not acted on.
    worker.handle(agent.WorkerMessage(availability=agent.AvailabilityResponse(job_id="AJ_1", available=True)))
    assert counters["agent_availability_unexpected"] == 1
    assert await worker.request_availability(agent.Job(id="AJ_2"), 0.05) is None
    offer = asyncio.create_task(worker.request_availability(agent.Job(id="AJ_3"), 5))
    await asyncio.sleep(0)
    worker.close()
    assert await offer is None and not worker.available
    # Running jobs: status updates reach the dispatcher; termination is sent once.
    worker.closed = False
    worker.assign(job, "token")
    assert sent[-1].assignment.token == "token"
    worker.handle(agent.WorkerMessage(update_job=agent.UpdateJobStatus(job_id="AJ_1", status=agent.JS_RUNNING)))
    assert [u.status for u in listener.updates] == [agent.JS_RUNNING]
    worker.terminate("AJ_1")
    worker.terminate("AJ_1")
    assert [m.WhichOneof("message") for m in sent].count("termination") == 1


def test_job_token_is_livekits() -> None:
    job = agent.Job(id="AJ_9", room=models.Room(name="room-9"))
    response = agent.AvailabilityResponse(job_id="AJ_9", available=True, participant_name="Helper",
                                          participant_attributes={"lk.agent.name": "helper"})
    permission = models.ParticipantPermission(can_subscribe=True, can_publish=True, can_publish_data=False,
                                              hidden=True)
    token = job_token("devkey", "secret", job, response, permission, "helper")
    claims = api.TokenVerifier("devkey", "secret").verify(token)
    assert claims.identity == "agent-AJ_9" and claims.name == "Helper" and claims.kind == "agent"
    assert claims.attributes == {"lk.agent.name": "helper", "lk.agent_name": "helper"}
    video = claims.video
    assert video.room_join and video.room == "room-9" and video.agent and video.hidden
    assert video.can_publish and video.can_subscribe and not video.can_publish_data
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["nbf"] == JOB_TOKEN_TTL


def test_room_config_agents() -> None:
    camel = token_dispatches({"agents": [{"agentName": "a", "metadata": "m"}], "maxParticipants": 3})
    snake = token_dispatches({"agents": [{"agent_name": "b"}], "unknown": 1})
    assert [(d.agent_name, d.metadata) for d in camel] == [("a", "m")] and snake[0].agent_name == "b"
    assert token_dispatches({}) == []
    with pytest.raises(ValueError):
        token_dispatches({"agents": "everyone"})
