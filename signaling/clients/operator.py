"""Operator commands over a server's RoomService (Twirp), through livekit-api's LiveKitAPI.

Each command is a coroutine taking the RoomService client and returning the response message and its
human-readable rendering; `execute` runs one against a server and turns every failure a user can cause
(unreachable server, refused credentials, unknown room) into one line on stderr and an exit status.
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import aiohttp
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api
from google.protobuf import struct_pb2
from livekit.api.agent_dispatch_service import AgentDispatchService
from livekit.api.room_service import RoomService
from livekit.protocol import agent, agent_dispatch, models

DEFAULT_URL = "http://localhost:7880"
REQUEST_TIMEOUT = 10.0
_SCHEMES = ("http", "https", "ws", "wss")

Result = tuple[Message, str]
# A command takes the client of the service it uses (execute's `service`): a RoomService, an AgentDispatchService, or
# for tern's own endpoints (agent workers) the Target itself.
Command = Callable[[Any], Awaitable[Result]]


class UsageError(Exception):
    """The command line cannot be run as given (exit status 2)."""


@dataclass(frozen=True)
class Target:
    url: str
    api_key: str
    api_secret: str


def resolve_target(url: str | None, api_key: str | None, api_secret: str | None) -> Target:
    """Flags first, then LiveKit's environment variables; the URL defaults to a local server, credentials
    never do (a silent devkey would hide a misconfigured production call)."""
    url = url or os.environ.get("LIVEKIT_URL") or DEFAULT_URL
    try:
        parsed = urlparse(url)
        valid = parsed.scheme in _SCHEMES and bool(parsed.hostname) and (parsed.port or 0) >= 0
    except ValueError:  # a malformed IPv6 address or port
        valid = False
    if not valid:
        raise UsageError(f"invalid server URL {url!r}: expected http(s)://host[:port] or ws(s)://host[:port]")
    return Target(url, *resolve_credentials(api_key, api_secret))


def resolve_credentials(api_key: str | None, api_secret: str | None) -> tuple[str, str]:
    """The API key and secret from flags, else LiveKit's environment variables; UsageError naming what is
    missing otherwise."""
    api_key = api_key or os.environ.get("LIVEKIT_API_KEY")
    api_secret = api_secret or os.environ.get("LIVEKIT_API_SECRET")
    missing = [what for what, value in (("API key: set --api-key or LIVEKIT_API_KEY", api_key),
                                        ("API secret: set --api-secret or LIVEKIT_API_SECRET", api_secret))
               if not value]
    if missing:
        raise UsageError("missing " + "; missing ".join(missing))
    return api_key, api_secret  # type: ignore[return-value]


def execute(target: Target, command: Command, as_json: bool = False, service: str = "room") -> int:
    """Runs `command` against the target server's `service` (a LiveKitAPI attribute, or "target") and prints its
    result; the exit status."""
    try:
        message, text = asyncio.run(_call(target, command, service))
    except api.TwirpError as exc:
        if exc.code == api.TwirpErrorCode.UNKNOWN and not exc.message:
            return _fail(f"{target.url} answered HTTP {exc.status} without a Twirp error (not a LiveKit server?)")
        hint = " (check --api-key/--api-secret)" if exc.code == api.TwirpErrorCode.UNAUTHENTICATED else ""
        return _fail(f"{exc.code}: {exc.message or 'no message'} (HTTP {exc.status}){hint}")
    except aiohttp.ClientConnectorError as exc:
        return _fail(f"cannot reach {target.url}: {exc.os_error.strerror or exc.os_error}")
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        return _fail(f"cannot reach {target.url}: {exc or 'no answer within %g s' % REQUEST_TIMEOUT}")
    except aiohttp.ClientError as exc:
        return _fail(f"request to {target.url} failed: {exc}")
    except DecodeError:
        return _fail(f"{target.url} did not answer as a LiveKit server (undecodable response)")
    print(json_format.MessageToJson(message) if as_json else text)
    return 0


async def _call(target: Target, command: Command, service: str) -> Result:
    if service == "target":
        return await command(target)
    # No failover: it only applies to LiveKit Cloud hosts, and an operator wants the server they named.
    async with api.LiveKitAPI(target.url, target.api_key, target.api_secret, failover=False,
                              timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as client:
        return await command(getattr(client, service))


def _fail(line: str) -> int:
    print(f"tern: {line}", file=sys.stderr)
    return 1


# Rooms.

async def room_list(service: RoomService, names: Sequence[str]) -> Result:
    response = await service.list_rooms(api.ListRoomsRequest(names=list(names)))
    rows = [(r.sid, r.name, str(r.num_participants), str(r.num_publishers), _when(r.creation_time), r.metadata)
            for r in response.rooms]
    return response, _table(("SID", "NAME", "PARTICIPANTS", "PUBLISHERS", "CREATED", "METADATA"), rows,
                            empty="no rooms")


async def room_create(service: RoomService, name: str, empty_timeout: int | None = None,
                      departure_timeout: int | None = None, max_participants: int | None = None,
                      metadata: str = "") -> Result:
    request = api.CreateRoomRequest(name=name, metadata=metadata)
    # Unset fields stay unset so the server applies its configured defaults.
    if empty_timeout is not None:
        request.empty_timeout = empty_timeout
    if departure_timeout is not None:
        request.departure_timeout = departure_timeout
    if max_participants is not None:
        request.max_participants = max_participants
    room = await service.create_room(request)
    return room, _room_details(room)


async def room_delete(service: RoomService, name: str) -> Result:
    return await service.delete_room(api.DeleteRoomRequest(room=name)), f"deleted room {name}"


async def room_update_metadata(service: RoomService, name: str, metadata: str) -> Result:
    room = await service.update_room_metadata(api.UpdateRoomMetadataRequest(room=name, metadata=metadata))
    return room, _room_details(room)


# Participants.

async def participant_list(service: RoomService, room: str) -> Result:
    response = await service.list_participants(api.ListParticipantsRequest(room=room))
    rows = [(p.sid, p.identity, p.name, _state(p), str(len(p.tracks)), _when(p.joined_at), p.metadata)
            for p in response.participants]
    return response, _table(("SID", "IDENTITY", "NAME", "STATE", "TRACKS", "JOINED", "METADATA"), rows,
                            empty=f"no participants in {room}")


async def participant_get(service: RoomService, room: str, identity: str) -> Result:
    info = await service.get_participant(api.RoomParticipantIdentity(room=room, identity=identity))
    return info, _participant_details(info)


async def participant_remove(service: RoomService, room: str, identity: str) -> Result:
    response = await service.remove_participant(api.RoomParticipantIdentity(room=room, identity=identity))
    return response, f"removed {identity} from {room}"


async def participant_mute(service: RoomService, room: str, identity: str, track_sid: str,
                           muted: bool = True) -> Result:
    response = await service.mute_published_track(api.MuteRoomTrackRequest(
        room=room, identity=identity, track_sid=track_sid, muted=muted))
    action = "muted" if response.track.muted else "unmuted"
    return response, f"{action} {_track(response.track)} of {identity} in {room}"


async def participant_update(service: RoomService, room: str, identity: str, name: str | None = None,
                             metadata: str | None = None, attributes: dict[str, str] | None = None,
                             permission: dict[str, object] | None = None) -> Result:
    """Updates what is given. A permission in UpdateParticipant replaces all of them, so the changed flags
    are applied over the participant's current permission."""
    request = api.UpdateParticipantRequest(room=room, identity=identity, attributes=attributes or {})
    if name is not None:
        request.name = name
    if metadata is not None:
        request.metadata = metadata
    if permission:
        current = await service.get_participant(api.RoomParticipantIdentity(room=room, identity=identity))
        request.permission.CopyFrom(current.permission)
        for field, value in permission.items():
            if field == "can_publish_sources":
                request.permission.ClearField(field)
                request.permission.can_publish_sources.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request.permission, field, value)
    info = await service.update_participant(request)
    return info, _participant_details(info)


async def participant_subscription(service: RoomService, room: str, identity: str,
                                   track_sids: Sequence[str], subscribe: bool) -> Result:
    response = await service.update_subscriptions(api.UpdateSubscriptionsRequest(
        room=room, identity=identity, track_sids=list(track_sids), subscribe=subscribe))
    action = "subscribed" if subscribe else "unsubscribed"
    return response, f"{action} {identity} in {room} {'to' if subscribe else 'from'} {', '.join(track_sids)}"


async def send_data(service: RoomService, room: str, data: bytes, topic: str = "",
                    destinations: Sequence[str] = (), reliable: bool = True) -> Result:
    kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
    request = api.SendDataRequest(room=room, data=data, kind=kind, destination_identities=list(destinations))
    if topic:
        request.topic = topic
    response = await service.send_data(request)
    to = ", ".join(destinations) if destinations else "everyone"
    return response, f"sent {len(data)} bytes to {to} in {room}" + (f" on topic {topic}" if topic else "")


# Agents.

WORKERS_PATH = "/agent/workers"  # signaling/agents/service.py's


async def _report(target: Target, path: str) -> tuple[Message, dict]:
    """GET one of tern's own JSON endpoints with a roomList token: the report as a Struct (for --json) and a dict."""
    token = api.AccessToken(target.api_key, target.api_secret).with_grants(api.VideoGrants(room_list=True)).to_jwt()
    base = urlparse(target.url)
    scheme = "https" if base.scheme in ("https", "wss") else "http"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
        async with session.get(f"{scheme}://{base.netloc}{path}",
                               headers={"Authorization": f"Bearer {token}"}) as response:
            if response.status != 200:
                code = {401: "unauthenticated", 403: "permission_denied",
                        404: "not_found"}.get(response.status, "unknown")
                raise api.TwirpError(code, (await response.text()).strip(), status=response.status)
            report = await response.json()
    message = struct_pb2.Struct()
    message.update(report)
    return message, report


async def agents_list(target: Target) -> Result:
    """The server's registered agent workers (tern's own endpoint: LiveKit has no API for them)."""
    message, report = await _report(target, WORKERS_PATH)
    rows = [(w["id"], w["node"], w["agent_name"] or "(automatic)", w["type"], w["status"], f"{w['load']:.2f}",
             str(len(w["jobs"])), w["version"]) for w in report["workers"]]
    return message, _table(("ID", "NODE", "AGENT NAME", "JOB TYPE", "STATUS", "LOAD", "JOBS", "SDK"), rows,
                           empty="no agent workers")


# Cluster.

NODES_PATH = "/cluster/nodes"  # signaling/cluster/cluster.py's


async def nodes_list(target: Target) -> Result:
    """The cluster's live nodes and their load (tern's own endpoint), as any node sees them in Redis."""
    message, report = await _report(target, NODES_PATH)
    rows = [(n["id"], ",".join(n["ips"]), n["region"] or "-", n["state"], f"{n['cpu_load']:.2f}",
             f"{n['sysload']:.2f}", str(n["rooms"]), str(n["participants"]), f"{n['forwarded_pps']:.0f}",
             f"{max(0.0, report['now'] - n['updated_at']):.1f}s") for n in report["nodes"]]
    return message, _table(("ID", "IPS", "REGION", "STATE", "CPU", "SYSLOAD", "ROOMS", "PARTICIPANTS", "FWD PPS",
                            "UPDATED"), rows, empty="no live nodes")


async def dispatch_create(service: AgentDispatchService, room: str, agent_name: str, metadata: str = "") -> Result:
    dispatch = await service.create_dispatch(api.CreateAgentDispatchRequest(
        room=room, agent_name=agent_name, metadata=metadata))
    return dispatch, _dispatch_table([dispatch])


async def dispatch_list(service: AgentDispatchService, room: str) -> Result:
    dispatches = await service.list_dispatch(room)
    return agent_dispatch.ListAgentDispatchResponse(agent_dispatches=dispatches), _dispatch_table(dispatches)


async def dispatch_delete(service: AgentDispatchService, room: str, dispatch_id: str) -> Result:
    dispatch = await service.delete_dispatch(dispatch_id, room)
    return dispatch, f"deleted dispatch {dispatch.id} of {dispatch.agent_name or '(automatic)'} in {dispatch.room}"


def _dispatch_table(dispatches: Sequence[agent_dispatch.AgentDispatch]) -> str:
    rows = [(d.id, d.agent_name or "(automatic)", d.metadata,
             ", ".join(f"{j.id} {agent.JobType.Name(j.type)} {agent.JobStatus.Name(j.state.status)}"
                       for j in d.state.jobs) or "-") for d in dispatches]
    return _table(("ID", "AGENT NAME", "METADATA", "JOBS"), rows, empty="no dispatches")


# Rendering.

def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    rows = list(rows)
    if not rows:
        return empty
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in (headers, *rows))


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) if seconds else "-"


def _state(info: models.ParticipantInfo) -> str:
    return models.ParticipantInfo.State.Name(info.state)


def _track(track: models.TrackInfo) -> str:
    kind = models.TrackType.Name(track.type)
    source = models.TrackSource.Name(track.source)
    return f"{track.sid} ({kind} {source}{', ' + track.name if track.name else ''})"


def _room_details(room: models.Room) -> str:
    return "\n".join([
        f"room         {room.name}",
        f"sid          {room.sid}",
        f"created      {_when(room.creation_time)} UTC",
        f"participants {room.num_participants} ({room.num_publishers} publishing, max "
        f"{room.max_participants or 'unlimited'})",
        f"timeouts     empty {room.empty_timeout}s, departure {room.departure_timeout}s",
        f"metadata     {room.metadata}",
    ])


def _participant_details(info: models.ParticipantInfo) -> str:
    permission = info.permission
    flags = [f"{label}={'yes' if getattr(permission, field) else 'no'}" for label, field in (
        ("publish", "can_publish"), ("subscribe", "can_subscribe"), ("data", "can_publish_data"),
        ("update-metadata", "can_update_metadata"), ("hidden", "hidden"))]
    if permission.can_publish_sources:
        flags.append("sources=" + ",".join(models.TrackSource.Name(s) for s in permission.can_publish_sources))
    lines = [
        f"identity    {info.identity}",
        f"sid         {info.sid}",
        f"name        {info.name}",
        f"state       {_state(info)}",
        f"joined      {_when(info.joined_at)} UTC",
        f"metadata    {info.metadata}",
        f"attributes  {', '.join(f'{k}={v}' for k, v in sorted(info.attributes.items()))}",
        f"permission  {' '.join(flags)}",
        f"tracks      {len(info.tracks)}",
    ]
    lines += [f"  {_track(t)}{' muted' if t.muted else ''}" for t in info.tracks]
    return "\n".join(lines)
