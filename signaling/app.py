"""HTTP and WebSocket endpoints: LiveKit's signal connections, /rtc (v0, two peer connections) and /rtc/v1 (one), and
their validation routes; WHIP ingest (ingress/whip.py) and IngressService (ingress/service.py); WHEP playback
(whep.py); the health check at `/`, which is the development playground's page for browsers (playground/)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from livekit.protocol import models, rtc
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from .agents import endpoint as agent_endpoint
from .agents.dispatcher import token_dispatches
from .agents.service import PREFIX as AGENT_DISPATCH_PREFIX
from .agents.service import WORKERS_PATH, AgentDispatchService, workers_report
from .auth import AuthError, Claims
from .cluster import http_relay
from .cluster.cluster import NODES_PATH
from .cluster.relay import SCOPE_FLAG
from .config import Config
from .egress.service import PREFIX as EGRESS_PREFIX
from .egress.service import EgressService
from .ingress.rtmp import RtmpListener
from .ingress.service import PREFIX as INGRESS_PREFIX
from .ingress.service import IngressService
from .ingress.sessions import IngressSessions
from .ingress.whip import INGRESS_PATH, WhipService
from .node import Node
from .playground import Playground
from .protocol import v0, v1
from .roomservice import PREFIX, RoomService
from .rtc.limits import LimitExceeded, check_join
from .rtc.grants import joins_dependent
from .rtc.participant import Participant
from .whep import WhepService

log = logging.getLogger(__name__)


# Browsers call the validate routes from the application's origin (LiveKit answers them with CORS *).
_CORS = {"Access-Control-Allow-Origin": "*"}


def _token(connection: HTTPConnection) -> str:
    """Rust/Python SDKs send `Authorization: Bearer`, browsers `?access_token=`."""
    header = connection.headers.get("authorization")
    if header is not None:
        if not header.startswith("Bearer "):
            raise AuthError("invalid authorization header: Bearer token expected")
        return header[len("Bearer "):].strip()
    token = connection.query_params.get("access_token")
    if not token:
        raise AuthError("missing access token")
    return token


def _flag(connection: HTTPConnection, name: str, default: bool) -> bool:
    value = connection.query_params.get(name)
    return default if value is None else value.lower() in ("1", "true")


def _int(connection: HTTPConnection, name: str) -> int:
    try:
        return int(connection.query_params.get(name, "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class _Connect:
    """What a signal connection asks for: from the query (v0) or from the JoinRequest (v1, `join`)."""
    reconnect: bool
    sid: str
    auto_subscribe: bool
    client_protocol: int
    protocol: int
    join: rtc.JoinRequest | None = None


def _v0_connect(connection: HTTPConnection) -> _Connect:
    reconnect = _flag(connection, "reconnect", False)
    return _Connect(reconnect, connection.query_params.get("sid", "") if reconnect else "",
                    _flag(connection, "auto_subscribe", True), _int(connection, "client_protocol"),
                    _int(connection, "protocol"))


def _v1_connect(connection: HTTPConnection) -> _Connect:
    """Raises v1.JoinRequestError for a missing or malformed join_request."""
    param = connection.query_params.get("join_request")
    if param is None:
        raise v1.JoinRequestError("missing join_request")
    join = v1.decode_join_request(param)
    settings = join.connection_settings
    return _Connect(join.reconnect, join.participant_sid if join.reconnect else "",
                    settings.auto_subscribe if join.HasField("connection_settings") else True,
                    join.client_info.client_protocol, join.client_info.protocol, join)


def _admit(node: Node, connection: HTTPConnection, token: str | None = None) -> tuple[str, Claims, str]:
    """Checks what LiveKit checks before upgrading, so failures are HTTP statuses; creates nothing. The token is the
    connection's unless given. Returns the token, its claims and the room name. Raises AuthError, LimitExceeded or
    PermissionError."""
    token = _token(connection) if token is None else token
    claims, room_name = node.verifier.verify_join(token)
    check_join(claims, room_name)
    try:
        token_dispatches(claims.room_config)
    except ValueError as error:
        raise AuthError(f"invalid token: {error}") from None
    room = node.store.get(room_name)
    if room is not None and room.is_full(claims.identity, joins_dependent(claims)):
        raise PermissionError("room is full")
    return token, claims, room_name


def create_app(node: Node) -> Starlette:
    playground = Playground(node.config, node.counters)

    async def home(request: Request) -> Response:
        return playground.page() if playground.serves_page(request) else PlainTextResponse("OK")

    async def validate(request: Request) -> Response:
        try:
            _admit(node, request)
            if request.url.path.startswith("/rtc/v1"):
                _v1_connect(request)
        except AuthError as error:
            return PlainTextResponse(str(error), status_code=401, headers=_CORS)
        except (LimitExceeded, v1.JoinRequestError) as error:  # as LiveKit: 400 for these
            return PlainTextResponse(str(error), status_code=400, headers=_CORS)
        except PermissionError as error:
            return PlainTextResponse(str(error), status_code=403, headers=_CORS)
        return PlainTextResponse("success", headers=_CORS)

    async def not_found(request: Request) -> Response:
        # The signal routes are WebSockets; LiveKit answers a plain request there with 404.
        return PlainTextResponse("not found", status_code=404, headers=_CORS)

    async def rtc_socket(websocket: WebSocket) -> None:
        node.counters["signal_connections_v0"] += 1
        await _signal(websocket, _v0_connect(websocket))

    async def v1_socket(websocket: WebSocket) -> None:
        node.counters["signal_connections_v1"] += 1
        try:
            connect = _v1_connect(websocket)
        except v1.JoinRequestError as error:
            node.counters["join_request_malformed"] += 1
            await websocket.send_denial_response(PlainTextResponse(str(error), status_code=400))
            return
        await _signal(websocket, connect)

    def _session(participant: Participant, connect: _Connect) -> v0.SignalSession:
        if connect.join is None:
            return v0.SignalSession(participant, node.counters)
        return v1.SignalSession(participant, node.counters, connect.join)

    async def _signal(websocket: WebSocket, connect: _Connect) -> None:
        """Admits, then resumes or joins: the same for both protocol versions but for the peer connections."""
        try:
            token, claims, room_name = _admit(node, websocket)
        except AuthError as error:
            node.counters["join_unauthorized"] += 1
            await websocket.send_denial_response(PlainTextResponse(str(error), status_code=401))
            return
        except LimitExceeded as error:
            node.counters["join_limit_exceeded"] += 1
            await websocket.send_denial_response(PlainTextResponse(str(error), status_code=400))
            return
        except PermissionError as error:
            await websocket.send_denial_response(PlainTextResponse(str(error), status_code=403))
            return
        if node.cluster is not None and node.store.get(room_name) is None and not websocket.scope.get(SCOPE_FLAG):
            # A room hosted here is served here without asking Redis; any other goes to the node Redis places it on.
            try:
                owner = await node.cluster.placement.place(room_name)
            except (RedisError, OSError) as error:
                node.counters["join_cluster_unavailable"] += 1
                log.warning("cannot place room %s: %s", room_name, error)
                await websocket.send_denial_response(PlainTextResponse("cluster unavailable", status_code=503))
                return
            if owner != node.id:
                await node.cluster.relay.forward(websocket, owner)
                return
        if connect.reconnect:
            await websocket.accept()
            # Resolved after the upgrade, with no await before resume(): the participant may have left meanwhile.
            room = node.store.get(room_name)
            participant = room.participants.get(claims.identity) if room is not None else None
            if participant is None or participant.sid != connect.sid:
                # Identity and sid must both match (else a second tab with the same identity would take over the
                # session): the client is told to rejoin from scratch, and the rejoin replaces the old participant.
                node.counters["signal_resume_refused"] += 1
                await websocket.send_bytes(rtc.SignalResponse(leave=rtc.LeaveRequest(
                    reason=models.DisconnectReason.STATE_MISMATCH, action=rtc.LeaveRequest.Action.RECONNECT,
                    can_reconnect=True,  # what clients before signal protocol 13 understand
                )).SerializeToString())
                await websocket.close()
                return
            await v0.serve(websocket, _session(participant, connect), claims.expires_at, resume=True)
            return
        await websocket.accept()
        # Resolved only now, with no await before join(): the room may have closed, or a participant with the
        # same identity or one more participant may have joined, while the upgrade was in flight.
        participant = _enter(token, claims, room_name, auto_subscribe=connect.auto_subscribe,
                             client_protocol=connect.client_protocol, protocol=connect.protocol,
                             single_pc=connect.join is not None)
        if participant is None:
            await _refuse(websocket)
            return
        await v0.serve(websocket, _session(participant, connect), claims.expires_at)

    def _enter(token: str, claims: Claims, room_name: str, **options: Any) -> Participant | None:
        """A new participant for admitted claims (it joins its room when its signal starts), replacing one with
        its identity; None when the room or the engine is full. A join that creates the room starts it with the
        agents its token's roomConfig names (LiveKit's rule)."""
        room = node.agents.create_room_with(token_dispatches(claims.room_config),
                                            lambda: node.store.get_or_create(room_name))
        previous = room.participants.get(claims.identity)
        if previous is not None:
            previous.close(models.DisconnectReason.DUPLICATE_IDENTITY)
        if room.is_full(claims.identity, joins_dependent(claims)):
            return None
        try:
            return Participant(node, room, claims, token=token, **options)
        except (RuntimeError, MemoryError) as error:  # the engine has no room for more transports
            node.counters["join_engine_full"] += 1
            log.warning("cannot admit %s: %s", claims.identity, error)
            return None

    async def agent_socket(websocket: WebSocket) -> None:
        """An agent worker: its token (minted by the worker from its API key) must carry the agent grant."""
        try:
            claims = node.verifier.verify(_token(websocket))
            if not claims.video.agent:
                raise AuthError("permission denied: agent grant required")
        except AuthError as error:
            node.counters["agent_worker_unauthorized"] += 1
            await websocket.send_denial_response(PlainTextResponse(str(error), status_code=401))
            return
        await agent_endpoint.serve(websocket, claims.api_key, node.agents, node.server_info(), node.counters)

    async def agent_workers(request: Request) -> Response:
        """The registered agent workers (`tern agents list`), for a token that may list rooms."""
        try:
            if not node.verifier.verify(_token(request)).video.room_list:
                return PlainTextResponse("permission denied: roomList grant required", status_code=403)
        except AuthError as error:
            return PlainTextResponse(str(error), status_code=401)
        return JSONResponse(workers_report(node.agents, node.id))

    async def cluster_nodes(request: Request) -> Response:
        """The cluster's live nodes (`tern nodes list`), for a token that may list rooms."""
        try:
            if not node.verifier.verify(_token(request)).video.room_list:
                return PlainTextResponse("permission denied: roomList grant required", status_code=403)
        except AuthError as error:
            return PlainTextResponse(str(error), status_code=401)
        if node.cluster is None:
            return PlainTextResponse("not a cluster: this node has no redis.address", status_code=404)
        try:
            return JSONResponse(await node.cluster.nodes_report())
        except (RedisError, OSError) as error:
            return PlainTextResponse(f"cluster unavailable: {error}", status_code=503)

    room_service = RoomService(node)
    agent_dispatch_service = AgentDispatchService(node)
    ingress_sessions = IngressSessions(node.ingresses, node.notify, node.counters)
    ingress_service = IngressService(node, ingress_sessions)
    egress_service = EgressService(node)
    whip_service = WhipService(node, lambda request, token: _admit(node, request, token), _enter, ingress_sessions)
    whep_service = WhepService(node, lambda request, token: _admit(node, request, token), _enter)
    twirp_methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    app = Starlette(routes=[
        Route("/", home),
        *playground.routes(),
        Route(PREFIX + "{method}", room_service.endpoint, methods=twirp_methods),
        Route(AGENT_DISPATCH_PREFIX + "{method}", agent_dispatch_service.endpoint, methods=twirp_methods),
        Route(INGRESS_PREFIX + "{method}", ingress_service.endpoint, methods=twirp_methods),
        Route(EGRESS_PREFIX + "{method}", egress_service.endpoint, methods=twirp_methods),
        Route("/rtc/validate", validate),
        Route("/rtc/v1/validate", validate),
        Route("/rtc/v1", not_found),
        WebSocketRoute("/rtc/v1", v1_socket),
        Route("/rtc", not_found),
        WebSocketRoute("/rtc", rtc_socket),
        Route(WORKERS_PATH, agent_workers),
        Route(NODES_PATH, cluster_nodes),
        Route("/agent", not_found),
        WebSocketRoute("/agent", agent_socket),
        *whip_service.routes(),
        *whep_service.routes(),
    ])
    if node.cluster is not None:
        # The room's node serves relayed signal connections and WHIP/WHEP requests with its own routes.
        node.cluster.relay.app = app
        node.cluster.rpc.handlers[http_relay.SERVICE] = http_relay.server(app)
    app.state.rtmp = RtmpListener(ingress_sessions, node.counters, f"{_loopback(node.config)}{INGRESS_PATH}")
    if playground.off is None:
        log.info("playground: open %s/ in two browser tabs", _loopback(node.config))
    return app


def _loopback(config: Config) -> str:
    """This node's HTTP endpoint as a process on the same host reaches it."""
    host = config.bind_addresses[0] if config.bind_addresses else "127.0.0.1"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"


async def _refuse(websocket: WebSocket) -> None:
    """After the upgrade, a join that cannot proceed gets a leave as its first message (JOIN_FAILURE)."""
    await websocket.send_bytes(rtc.SignalResponse(leave=rtc.LeaveRequest(
        reason=models.DisconnectReason.JOIN_FAILURE, action=rtc.LeaveRequest.Action.DISCONNECT,
    )).SerializeToString())
    await websocket.close()
