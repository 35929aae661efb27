"""The room token of an accepted job, as LiveKit mints it: signed with the key the worker registered with, for the
identity the worker chose, kind "agent", with the grants the worker asked for at registration."""
from __future__ import annotations

import time
from typing import Any

import jwt
from livekit.protocol import agent, models

from ..auth import ALGORITHM

JOB_TOKEN_TTL = 3600  # LiveKit's: one hour; the agent's signal connection gets refreshed tokens after joining
# Attribute naming the agent that runs a job (LiveKit's; the Python SDK adds "lk.agent.name" itself).
AGENT_NAME_ATTRIBUTE = "lk.agent_name"


def agent_identity(job: agent.Job, response: agent.AvailabilityResponse) -> str:
    """The identity the worker asked for, else LiveKit's default."""
    return response.participant_identity or f"agent-{job.id}"


def agent_attributes(agent_name: str, response: agent.AvailabilityResponse) -> dict[str, str]:
    return {**response.participant_attributes, AGENT_NAME_ATTRIBUTE: agent_name}


def job_token(api_key: str, secret: str, job: agent.Job, response: agent.AvailabilityResponse,
              permission: models.ParticipantPermission, agent_name: str) -> str:
    now = int(time.time())
    video: dict[str, Any] = {
        "roomJoin": True,
        "room": job.room.name,
        "agent": True,
        "canSubscribe": permission.can_subscribe,
        "canPublish": permission.can_publish,
        "canPublishData": permission.can_publish_data,
        "canUpdateOwnMetadata": permission.can_update_metadata,
        "hidden": permission.hidden,
        "canSubscribeMetrics": permission.can_subscribe_metrics,
    }
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": agent_identity(job, response),
        "nbf": now,
        "exp": now + JOB_TOKEN_TTL,
        "kind": "agent",
        "name": response.participant_name,
        "metadata": response.participant_metadata,
        "attributes": agent_attributes(agent_name, response),
        "video": video,
    }
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
