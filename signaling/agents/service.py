"""LiveKit's AgentDispatchService over Twirp (`POST /twirp/livekit.AgentDispatchService/<Method>`): explicit agent
dispatches, for which roomAdmin on the room is required. In a cluster each call runs on the room's node, where its
dispatches live (CreateDispatch places a room hosted nowhere, as it creates it)."""
from __future__ import annotations

from google.protobuf.message import Message
from livekit.protocol import agent
from livekit.protocol import agent_dispatch as proto

from ..roomservice import TwirpError, TwirpMethod, TwirpService, check_size
from ..rtc.limits import MAX_ATTRIBUTES_SIZE, MAX_METADATA_SIZE, MAX_ROOM_NAME_LENGTH, attributes_size
from .dispatcher import AgentDispatcher
from .worker import MAX_WORKER_NAME_LENGTH

PREFIX = "/twirp/livekit.AgentDispatchService/"


class AgentDispatchService(TwirpService):
    prefix = PREFIX

    async def _node_for(self, name: str, message: Message) -> str | None:
        return await self._room_node(message.room, place=name == "CreateDispatch")

    def create_dispatch(self, request: proto.CreateAgentDispatchRequest) -> proto.AgentDispatch:
        if not request.room:
            raise TwirpError("invalid_argument", "room is required")
        check_size("room name", request.room, MAX_ROOM_NAME_LENGTH)
        check_size("agent_name", request.agent_name, MAX_WORKER_NAME_LENGTH)
        check_size("metadata", request.metadata, MAX_METADATA_SIZE)
        if attributes_size(request.attributes) > MAX_ATTRIBUTES_SIZE:
            raise TwirpError("invalid_argument", f"attributes exceed {MAX_ATTRIBUTES_SIZE} bytes")
        agents = self.node.agents
        room = self.node.store.get(request.room)
        if room is None:  # as LiveKit with room auto-creation: the room is created, here with this dispatch alone
            wanted = proto.RoomAgentDispatch(agent_name=request.agent_name, metadata=request.metadata,
                                             attributes=request.attributes)
            room = agents.create_room_with([wanted], lambda: self.node.store.create(request.room))
            dispatches = agents.dispatches(room.name)
            if not dispatches:
                raise TwirpError("internal", "room created without its dispatch")
            return dispatches[0]
        try:
            return agents.create_dispatch(room, request)
        except OverflowError as error:
            raise TwirpError("resource_exhausted", str(error)) from None
        except LookupError as error:
            raise TwirpError("failed_precondition", str(error)) from None

    def delete_dispatch(self, request: proto.DeleteAgentDispatchRequest) -> proto.AgentDispatch:
        deleted = self.node.agents.delete_dispatch(request.room, request.dispatch_id)
        if deleted is None:
            raise TwirpError("not_found", "dispatch not found")
        return deleted

    def list_dispatch(self, request: proto.ListAgentDispatchRequest) -> proto.ListAgentDispatchResponse:
        return proto.ListAgentDispatchResponse(
            agent_dispatches=self.node.agents.dispatches(request.room, request.dispatch_id))


AgentDispatchService.methods = {
    "CreateDispatch": TwirpMethod(proto.CreateAgentDispatchRequest, "admin", AgentDispatchService.create_dispatch),
    "DeleteDispatch": TwirpMethod(proto.DeleteAgentDispatchRequest, "admin", AgentDispatchService.delete_dispatch),
    "ListDispatch": TwirpMethod(proto.ListAgentDispatchRequest, "admin", AgentDispatchService.list_dispatch),
}


# tern's own, LiveKit has no such API: the registered workers, as JSON, for a token with the roomList grant.
WORKERS_PATH = "/agent/workers"


def workers_report(dispatcher: AgentDispatcher, node_id: str) -> dict:
    """Every worker the node knows: its own and, in a cluster, the other nodes' (whose `jobs` are only those of
    rooms on this node: the others' are known to their rooms' nodes)."""
    return {"workers": [{
        "id": worker.id,
        "node": getattr(worker, "node_id", node_id),
        "agent_name": worker.agent_name,
        "type": agent.JobType.Name(worker.job_type),
        "status": agent.WorkerStatus.Name(worker.status) if worker.status in agent.WorkerStatus.values() else "WS_FULL",
        "load": worker.load,
        "jobs": sorted(worker.jobs),
        "version": worker.version,
        "registered_at_ms": worker.registered_at_ms,
    } for worker in dispatcher.all_workers()]}
