"""LiveKit's RoomService over Twirp: `POST /twirp/livekit.RoomService/<Method>` with a protobuf or protojson body,
answered in kind; failures are Twirp error bodies {"code", "msg", "meta"} with the matching HTTP status."""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from google.protobuf import json_format, symbol_database
from google.protobuf.message import DecodeError, Message
from livekit.protocol import models
from livekit.protocol import room as proto
from starlette.requests import ClientDisconnect, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from .auth import AuthError, Claims
from .cluster.rpc import CallFailed
from .rtc.data import route
from .rtc.limits import MAX_ATTRIBUTES_SIZE, MAX_METADATA_SIZE, MAX_NAME_LENGTH, MAX_ROOM_NAME_LENGTH
from .rtc.participant import Participant
from .rtc.room import Room

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

PREFIX = "/twirp/livekit.RoomService/"
_PROTOBUF = "application/protobuf"
_JSON = "application/json"
# Request body bytes. The largest legitimate request, UpdateParticipant with 512 KiB metadata and 64 KiB attributes,
# fits in protobuf and in JSON unless the metadata is mostly escaped characters. Twirp and LiveKit set none.
MAX_BODY_SIZE = 1024 * 1024
# Seconds to receive a whole body once the head is in (the head has its own deadline: httpfront.HEAD_TIMEOUT).
BODY_TIMEOUT = 10.0

# Twirp's error codes and the HTTP status each travels with.
_STATUS = {
    "invalid_argument": 400, "malformed": 400, "unauthenticated": 401, "permission_denied": 403,
    "not_found": 404, "bad_route": 404, "failed_precondition": 412, "internal": 500,
    "resource_exhausted": 429, "deadline_exceeded": 408, "canceled": 408, "already_exists": 409,
    "unimplemented": 501, "unavailable": 503,
}


class TwirpError(Exception):
    def __init__(self, code: str, msg: str, status: int | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status or _STATUS[code]

    def response(self) -> Response:
        body = json.dumps({"code": self.code, "msg": self.msg, "meta": {}})
        return Response(body, status_code=self.status, media_type=_JSON)


def _too_large() -> TwirpError:
    # Twirp has no code for it; the HTTP status says what happened, the code what Twirp clients understand.
    return TwirpError("resource_exhausted", f"request body exceeds {MAX_BODY_SIZE} bytes", status=413)


@dataclass(frozen=True)
class TwirpMethod:
    request: type[Message]
    grant: str  # "create", "list", "record", "admin" (roomAdmin for the request's room) or "ingress" (ingressAdmin)
    handler: Callable[[Any, Message], Message]  # (service, request) -> reply


class TwirpService:
    """A Twirp service of LiveKit's API: POST `prefix`<Method>, authenticated by an access token's grants. In cluster
    mode a call that must run on another node (`_node_for`) is routed there over the bus."""

    prefix: ClassVar[str]
    methods: ClassVar[dict[str, TwirpMethod]]

    def __init__(self, node: Node) -> None:
        self.node = node
        if node.cluster is not None:
            node.cluster.rpc.handlers[self.service()] = self._serve_call

    @classmethod
    def service(cls) -> str:
        """The service's name, e.g. livekit.RoomService: what routed calls name."""
        return cls.prefix.strip("/").rsplit("/", 1)[-1]

    async def endpoint(self, request: Request) -> Response:
        # Everything about the request that its head decides comes first, so a refused caller's body is never read
        # (the HTTP front discards what the client still sends, for a bounded time: httpfront.UNREAD_BODY_TIME).
        try:
            name, method, content_type, claims = self._admit(request)
            body = await _read_body(request)
            message = self._parse(method, content_type, claims, body)
            if self.node.cluster is None:
                reply = await self._run(name, method, message)
            else:
                reply = await self._run_in_cluster(name, method, message)
            return _encode(reply, content_type)
        except TwirpError as error:
            self.node.counters[f"api_error_{error.code}"] += 1
            return error.response()

    def _admit(self, request: Request) -> tuple[str, TwirpMethod, str, Claims]:
        name = request.path_params["method"]
        method = self.methods.get(name)
        if request.method != "POST" or method is None:
            raise TwirpError("bad_route", f"no such method: {request.method} {self.prefix}{name}")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (_PROTOBUF, _JSON):
            raise TwirpError("bad_route", f"unexpected Content-Type {content_type!r}: use {_PROTOBUF} or {_JSON}")
        claims = self._authenticate(request)
        _require_grant(claims, method.grant)
        return name, method, content_type, claims

    @staticmethod
    def _parse(method: TwirpMethod, content_type: str, claims: Claims, body: bytes) -> Message:
        try:
            message = method.request()
            if content_type == _JSON:
                json_format.Parse(body or b"{}", message, ignore_unknown_fields=True)
            else:
                message.ParseFromString(body)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as error:
            raise TwirpError("malformed", f"the request body is not a valid {method.request.__name__}: {error}") from None
        _require_room(claims, method.grant, getattr(message, "room", ""))
        return message

    async def _run(self, name: str, method: TwirpMethod, message: Message) -> Message:
        try:
            reply = method.handler(self, message)
            if inspect.isawaitable(reply):  # handlers that read a shared store (Redis) are coroutines
                reply = await reply
        except TwirpError:
            raise
        except Exception:  # a bug must answer like Twirp does, not with a traceback page
            log.exception("%s%s failed", self.prefix, name)
            raise TwirpError("internal", "internal error") from None
        self.node.counters[f"api_{name}"] += 1
        return reply

    async def _run_in_cluster(self, name: str, method: TwirpMethod, message: Message) -> Message:
        """Runs the call here, or on the node `_node_for` names."""
        cluster = self.node.cluster
        assert cluster is not None
        try:
            owner = await self._node_for(name, message)
        except (RedisError, OSError) as error:
            raise TwirpError("unavailable", f"cluster unavailable: {error}") from None
        if owner is None or owner == self.node.id:
            return await self._run(name, method, message)
        self.node.counters["api_routed"] += 1
        try:
            reply = await cluster.rpc.call(owner, self.service(), name, message.SerializeToString())
        except CallFailed as error:
            raise TwirpError(error.code if error.code in _STATUS else "internal", error.msg) from None
        except (RedisError, OSError) as error:
            raise TwirpError("unavailable", f"cluster unavailable: {error}") from None
        type_name, _, data = reply.partition(b"\0")
        return symbol_database.Default().GetSymbol(type_name.decode()).FromString(data)

    async def _node_for(self, name: str, message: Message) -> str | None:
        """The node that must run this call in cluster mode (None: this one). Raises RedisError or OSError."""
        return None

    async def _room_node(self, room: str, place: bool) -> str | None:
        """The node hosting `room` (None: this one, or no node when `place` is false); with `place`, a room hosted
        nowhere is placed, as a call that creates it needs."""
        cluster = self.node.cluster
        if cluster is None or not room or self.node.store.get(room) is not None:
            return None
        return await (cluster.placement.place(room) if place else cluster.placement.owner(room))

    async def _serve_call(self, name: str, data: bytes) -> bytes:
        """A call routed here by another node, which authorised it: the reply's type name, a NUL, and its bytes."""
        method = self.methods.get(name)
        if method is None:
            raise CallFailed("bad_route", f"no such method: {name}")
        try:
            message = method.request.FromString(data)
        except DecodeError:
            raise CallFailed("malformed", f"the routed request is not a valid {method.request.__name__}") from None
        try:
            reply = await self._run(name, method, message)
        except TwirpError as error:
            raise CallFailed(error.code, error.msg) from None
        return reply.DESCRIPTOR.full_name.encode() + b"\0" + reply.SerializeToString()

    def _authenticate(self, request: Request) -> Claims:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise TwirpError("unauthenticated", "missing or invalid Authorization header: Bearer token expected")
        try:
            return self.node.verifier.verify(header[len("Bearer "):].strip())
        except AuthError as error:
            raise TwirpError("unauthenticated", str(error)) from None


class RoomService(TwirpService):
    prefix = PREFIX

    # -- cluster mode: ListRooms sees every node's rooms; a room's calls run on its node
    async def _run_in_cluster(self, name: str, method: TwirpMethod, message: Message) -> Message:
        if name != "ListRooms":
            return await super()._run_in_cluster(name, method, message)
        try:
            return await self._list_cluster_rooms(message)
        except (RedisError, OSError) as error:
            raise TwirpError("unavailable", f"cluster unavailable: {error}") from None

    async def _node_for(self, name: str, message: Message) -> str | None:
        if name == "CreateRoom":
            return await self._room_node(message.name, place=True)
        return await self._room_node(message.room, place=False)

    async def _list_cluster_rooms(self, request: proto.ListRoomsRequest) -> proto.ListRoomsResponse:
        """This node's rooms as they are, the others' as their nodes last listed them."""
        cluster = self.node.cluster
        assert cluster is not None
        local = [room.info() for room in self.node.store.rooms(request.names)]
        hosted = {room.name for room in local}
        wanted = set(request.names)
        others = [room for room in await cluster.store.listed()
                  if room.name not in hosted and (not wanted or room.name in wanted)]
        self.node.counters["api_ListRooms"] += 1
        return proto.ListRoomsResponse(rooms=local + sorted(others, key=lambda room: room.name))

    # -- lookups
    def _room(self, name: str) -> Room:
        room = self.node.store.get(name)
        if room is None:
            raise TwirpError("not_found", "requested room does not exist")
        return room

    def _participant(self, room_name: str, identity: str) -> Participant:
        participant = self._room(room_name).participants.get(identity)
        if participant is None:
            raise TwirpError("not_found", "participant does not exist")
        return participant

    # -- methods
    def create_room(self, request: proto.CreateRoomRequest) -> models.Room:
        if not request.name:
            raise TwirpError("invalid_argument", "room name is required")
        check_size("room name", request.name, MAX_ROOM_NAME_LENGTH)
        check_size("metadata", request.metadata, MAX_METADATA_SIZE)
        # A room this creates starts with the agents the request names (else the automatic dispatch).
        return self.node.agents.create_room_with(request.agents, lambda: self.node.store.create(
            request.name, request.empty_timeout, request.departure_timeout, request.max_participants,
            request.metadata,
        )).info()

    def list_rooms(self, request: proto.ListRoomsRequest) -> proto.ListRoomsResponse:
        return proto.ListRoomsResponse(rooms=[
            room.info() for room in self.node.store.rooms(request.names)
        ])

    def delete_room(self, request: proto.DeleteRoomRequest) -> proto.DeleteRoomResponse:
        self._room(request.room).close(models.DisconnectReason.ROOM_DELETED)
        return proto.DeleteRoomResponse()

    def list_participants(self, request: proto.ListParticipantsRequest) -> proto.ListParticipantsResponse:
        room = self._room(request.room)
        return proto.ListParticipantsResponse(participants=[p.info() for p in room.participants.values()])

    def get_participant(self, request: proto.RoomParticipantIdentity) -> models.ParticipantInfo:
        return self._participant(request.room, request.identity).info()

    def remove_participant(self, request: proto.RoomParticipantIdentity) -> proto.RemoveParticipantResponse:
        self._participant(request.room, request.identity).close(models.DisconnectReason.PARTICIPANT_REMOVED)
        return proto.RemoveParticipantResponse()

    def mute_published_track(self, request: proto.MuteRoomTrackRequest) -> proto.MuteRoomTrackResponse:
        participant = self._participant(request.room, request.identity)
        publication = participant.find_publication(request.track_sid)
        if publication is None:
            raise TwirpError("not_found", "track does not exist")
        if not request.muted and publication.info.muted:
            # As LiveKit without room.enable_remote_unmute: only the publisher may unmute its media.
            raise TwirpError("failed_precondition", "remote unmute not enabled")
        participant.set_muted(publication, request.muted, by_server=True)
        return proto.MuteRoomTrackResponse(track=publication.info)

    def update_participant(self, request: proto.UpdateParticipantRequest) -> models.ParticipantInfo:
        participant = self._participant(request.room, request.identity)
        attributes = participant.attributes_with(request.attributes)
        check_size("metadata", request.metadata, MAX_METADATA_SIZE)
        check_size("name", request.name, MAX_NAME_LENGTH)
        check_size("attributes", "".join(k + v for k, v in attributes.items()), MAX_ATTRIBUTES_SIZE)
        changed = participant.update_identity_fields(request.name, request.metadata, attributes)
        if request.HasField("permission"):
            participant.update_permission(request.permission)
        elif changed:
            participant.refresh_token()  # a reconnect keeps what the server set
        return participant.info()

    def update_subscriptions(self, request: proto.UpdateSubscriptionsRequest) -> proto.UpdateSubscriptionsResponse:
        sids = set(request.track_sids)
        for tracks in request.participant_tracks:
            sids.update(tracks.track_sids)
        self._participant(request.room, request.identity).update_subscriptions(sids, request.subscribe)
        return proto.UpdateSubscriptionsResponse()

    def send_data(self, request: proto.SendDataRequest) -> proto.SendDataResponse:
        room = self._room(request.room)
        if request.nonce and len(request.nonce) != 16:
            raise TwirpError("invalid_argument", "nonce must be 16 bytes")
        reliable = request.kind != models.DataPacket.Kind.LOSSY
        packet = models.DataPacket(
            kind=request.kind,
            destination_identities=request.destination_identities,
            user=models.UserPacket(
                payload=request.data,
                topic=request.topic if request.HasField("topic") else None,
                destination_sids=request.destination_sids,
                nonce=request.nonce,
            ),
        )
        route(packet, room.participants.values(), reliable, self.node.counters)
        return proto.SendDataResponse()

    def update_room_metadata(self, request: proto.UpdateRoomMetadataRequest) -> models.Room:
        room = self._room(request.room)
        check_size("metadata", request.metadata, MAX_METADATA_SIZE)
        room.set_metadata(request.metadata)
        return room.info()


def _encode(reply: Message, content_type: str) -> Response:
    if content_type == _JSON:
        return Response(json_format.MessageToJson(reply), media_type=_JSON)
    return Response(reply.SerializeToString(), media_type=_PROTOBUF)


async def _read_body(request: Request) -> bytes:
    """The body, refused past MAX_BODY_SIZE: a declared Content-Length at once, else (chunked, or a length that
    lies) as soon as cap + 1 bytes have arrived; uvicorn stops reading the socket while the app does not read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_SIZE:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_SIZE:
                    raise _too_large()
                chunks.append(chunk)
    except TimeoutError:
        raise TwirpError("deadline_exceeded", f"request body not received within {BODY_TIMEOUT:g} s") from None
    except ClientDisconnect:
        raise TwirpError("canceled", "client disconnected") from None
    return b"".join(chunks)


def _require_grant(claims: Claims, grant: str) -> None:
    """What the token allows regardless of the request's content (checked before its body is read)."""
    video = claims.video
    if grant == "create" and not video.room_create:
        raise TwirpError("permission_denied", "roomCreate grant required")
    if grant == "list" and not video.room_list:
        raise TwirpError("permission_denied", "roomList grant required")
    if grant == "record" and not video.room_record:
        raise TwirpError("permission_denied", "roomRecord grant required")
    if grant == "admin" and not (video.room_admin and video.room):
        raise TwirpError("permission_denied", "roomAdmin grant for this room required")
    if grant == "ingress" and not video.ingress_admin:
        raise TwirpError("permission_denied", "ingressAdmin grant required")


def _require_room(claims: Claims, grant: str, room: str) -> None:
    """roomAdmin is for the room the token names: checked once the request (and so its room) is parsed."""
    if grant == "admin" and claims.video.room != room:
        raise TwirpError("permission_denied", "roomAdmin grant for this room required")


def check_size(what: str, value: str, limit: int) -> None:
    if len(value.encode()) > limit:
        raise TwirpError("invalid_argument", f"{what} exceeds {limit} bytes")


RoomService.methods = {
    "CreateRoom": TwirpMethod(proto.CreateRoomRequest, "create", RoomService.create_room),
    "ListRooms": TwirpMethod(proto.ListRoomsRequest, "list", RoomService.list_rooms),
    "DeleteRoom": TwirpMethod(proto.DeleteRoomRequest, "create", RoomService.delete_room),
    "ListParticipants": TwirpMethod(proto.ListParticipantsRequest, "admin", RoomService.list_participants),
    "GetParticipant": TwirpMethod(proto.RoomParticipantIdentity, "admin", RoomService.get_participant),
    "RemoveParticipant": TwirpMethod(proto.RoomParticipantIdentity, "admin", RoomService.remove_participant),
    "MutePublishedTrack": TwirpMethod(proto.MuteRoomTrackRequest, "admin", RoomService.mute_published_track),
    "UpdateParticipant": TwirpMethod(proto.UpdateParticipantRequest, "admin", RoomService.update_participant),
    "UpdateSubscriptions": TwirpMethod(proto.UpdateSubscriptionsRequest, "admin", RoomService.update_subscriptions),
    "SendData": TwirpMethod(proto.SendDataRequest, "admin", RoomService.send_data),
    "UpdateRoomMetadata": TwirpMethod(proto.UpdateRoomMetadataRequest, "admin", RoomService.update_room_metadata),
}
