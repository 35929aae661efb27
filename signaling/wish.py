"""What WHIP (RFC 9725, ingest) and WHEP (draft-ietf-wish-whep, playback) share (both from the IETF WISH working
group): an SDP offer in one POST, answered with 201, a `Location` naming the session's resource, an `ETag`, and
`Link rel="ice-server"` headers; the resource ends with DELETE. No trickle: the offer and the answer carry all the
candidates. A session is one participant driven by HTTP instead of a signal connection."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from livekit.protocol import models, rtc
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .auth import AuthError, Claims
from .cluster import http_relay
from .cluster.relay import SCOPE_FLAG
from .peer import sdp
from .rtc.ids import new_id
from .rtc.limits import LimitExceeded
from .rtc.participant import Participant

log = logging.getLogger(__name__)

# An SDP offer is a few KB (FFmpeg's muxer caps its own at 8 KB; OBS with simulcast stays under 16 KB): a body past
# this is refused with 413 before it is parsed (the signal path's sdp.MAX_SDP_LENGTH of 1 MiB is for SDK offers).
MAX_OFFER_BYTES = 64 * 1024
# Seconds to receive the whole offer once the request's head is in (as RoomService's BODY_TIMEOUT): a client that
# trickles its body must not hold what it claimed meanwhile (an ingress's stream key, a participant's identity).
OFFER_TIMEOUT = 10.0

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}
MEDIA_KINDS = ("audio", "video")
_GRANT_FIELDS = {"canPublish": "can_publish", "canSubscribe": "can_subscribe"}

# Admission as the signal endpoints do it (signaling/app.py): the request's token (or the one given), its claims and
# room, or an error raised.
Admit = Callable[[Request, str | None], tuple[str, Claims, str]]
# A participant entering its room as the signal endpoints make one, or None if the room or the engine is full.
Enter = Callable[..., Participant | None]


class Refused(Exception):
    """A request answered with `status` and the reason as its body; `counter` names what the node counts."""

    def __init__(self, status: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.status = status
        self.counter = counter


class HttpSession:
    """A WHIP or WHEP resource's side of its participant's signal: the SDP answer is kept, the rest (join, updates)
    has no one to go to but `on_update` (the participant's own ParticipantInfo as the room sees it). The participant
    closing (DELETE, lost media, room closed) ends the resource and calls `on_close`."""

    def __init__(self, resource_id: str, sessions: dict[str, HttpSession]) -> None:
        self.resource_id = resource_id
        self.path = ""  # its Location's path, once created: the only URL that reaches it
        self.participant: Participant | None = None
        self.answer: rtc.SessionDescription | None = None
        self.refusal: str | None = None
        self.on_update: Callable[[models.ParticipantInfo], None] | None = None
        self.on_close: Callable[[], None] | None = None
        self._sessions = sessions

    def send(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "answer":
            self.answer = response.answer
        elif kind == "request_response":
            self.refusal = response.request_response.message
        elif kind == "update" and self.on_update is not None and self.participant is not None:
            for info in response.update.participants:
                if info.sid == self.participant.sid:
                    self.on_update(info)

    def close(self) -> None:
        self._sessions.pop(self.resource_id, None)
        if self.on_close is not None:  # once, though both the participant and DELETE close it
            on_close, self.on_close = self.on_close, None
            on_close()


class HttpSessionService:
    """The resource endpoints of one protocol (`name`: "whip" or "whep", also its counters' prefix): OPTIONS, DELETE
    (ends the session), PATCH (405: neither trickle nor ICE restart; a client starts a new session instead)."""

    name: str

    def __init__(self, node: Any, admit: Admit) -> None:
        self.node = node
        self.sessions: dict[str, HttpSession] = {}  # by resource id: bounded by the node's participants
        self._admit = admit

    def admission(self, request: Request, token: str | None, grant: str) -> tuple[str, Claims, str]:
        """(token, claims, room name) of a join by the request's token (or `token`) whose VideoGrant has `grant`
        ("canPublish" or "canSubscribe"), else Refused."""
        try:
            token, claims, room_name = self._admit(request, token)
        except AuthError as error:
            raise Refused(401, str(error), "unauthorized") from None
        except LimitExceeded as error:
            raise Refused(400, str(error), "limit_exceeded") from None
        except PermissionError as error:
            raise Refused(403, str(error), "forbidden") from None
        if not getattr(claims.video, _GRANT_FIELDS[grant]):
            raise Refused(403, f"permission denied: {grant} grant required", "forbidden")
        return token, claims, room_name

    def resource_id(self, prefix: str) -> str:
        """A new resource's id; in a cluster it names this node, so a DELETE reaching any node is routed here."""
        resource_id = new_id(prefix)
        return f"{resource_id}-{self.node.id}" if self.node.cluster is not None else resource_id

    async def room_node(self, request: Request, room_name: str, place: bool) -> str | None:
        """In a cluster, the node that must serve a request for `room_name` when it is not this one (None: this
        one); with `place`, a room hosted nowhere is placed (a publisher creates it). Refused (503) without Redis."""
        cluster = self.node.cluster
        if cluster is None or request.scope.get(SCOPE_FLAG) or self.node.store.get(room_name) is not None:
            return None
        try:
            owner = await (cluster.placement.place(room_name) if place else cluster.placement.owner(room_name))
        except (RedisError, OSError) as error:
            raise Refused(503, f"cluster unavailable: {error}", "cluster_unavailable") from None
        return owner if owner is not None and owner != self.node.id else None

    async def forward(self, request: Request, owner: str, flags: dict[str, str] | None = None) -> Response:
        """Serves the request on the room's node `owner` (cluster/http_relay.py): the offer is read and bounded
        here first."""
        body = (await read_offer(request)).encode() if request.method == "POST" else b""
        self.count("relayed")
        assert self.node.cluster is not None
        return await http_relay.forward(self.node.cluster.rpc, owner, request, body, flags)

    def count(self, event: str) -> None:
        self.node.counters[f"{self.name}_{event}"] += 1

    def refusal(self, error: Refused) -> Response:
        self.count(error.counter)
        log.info("%s request refused (%d): %s", self.name.upper(), error.status, error)
        return PlainTextResponse(str(error), status_code=error.status, headers=CORS)

    def resource_routes(self, path: str) -> list[Route]:
        return [Route(path, self.resource, methods=["DELETE", "PATCH", "OPTIONS"])]

    async def resource(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**CORS, "Allow": "DELETE, OPTIONS"})
        resource_id = request.path_params["resource_id"]
        session = self.sessions.get(resource_id)
        owner = resource_id.rpartition("-")[2]
        if (session is None and self.node.cluster is not None and not request.scope.get(SCOPE_FLAG)
                and owner.startswith("ND_") and owner != self.node.id):
            return await self.forward(request, owner)  # a resource of another node's session
        if session is None or session.path != request.url.path:  # e.g. another stream key's path
            self.count("unknown_resource")
            return PlainTextResponse(f"no such {self.name.upper()} resource", status_code=404, headers=CORS)
        if request.method == "PATCH":
            self.count("patch_refused")
            return PlainTextResponse("trickle ICE and ICE restarts are not supported", status_code=405,
                                     headers={**CORS, "Allow": "DELETE, OPTIONS"})
        if session.participant is not None:
            session.participant.close(models.DisconnectReason.CLIENT_INITIATED, notify=False)
        session.close()
        self.count("deleted")
        return Response(status_code=200, headers=CORS)

    def created(self, request: Request, session: HttpSession, location: str) -> Response:
        """201 with the answer, the resource's Location, the ICE session's ETag and the TURN servers."""
        participant = session.participant
        assert participant is not None and session.answer is not None
        session.path = location
        self.sessions[session.resource_id] = session
        self.count("sessions")
        headers = {**CORS, "Location": str(request.url.replace(path=location, query="")),
                   "ETag": f'"{participant.publisher.transport.local_endpoint().ice_ufrag}"'}
        response = Response(session.answer.sdp, status_code=201, media_type="application/sdp", headers=headers)
        for link in _ice_server_links(self.node.ice_servers(participant.sid)):
            response.headers.append("Link", link)
        return response


async def read_offer(request: Request) -> str:
    """The offer's text: `application/sdp`, no larger than MAX_OFFER_BYTES, UTF-8."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/sdp":
        raise Refused(415, "an SDP offer (Content-Type: application/sdp) is expected", "unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OFFER_BYTES:
        raise Refused(413, f"offer larger than {MAX_OFFER_BYTES} bytes", "too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(OFFER_TIMEOUT):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_OFFER_BYTES:
                    raise Refused(413, f"offer larger than {MAX_OFFER_BYTES} bytes", "too_large")
    except TimeoutError:
        raise Refused(408, f"offer not received within {OFFER_TIMEOUT:g} s", "offer_timeout") from None
    except ClientDisconnect:
        raise Refused(400, "the client went away before its offer was read", "client_disconnect") from None
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise Refused(400, "malformed SDP: not UTF-8", "malformed_sdp") from None


def parse_offer(text: str, directions: tuple[str, ...], missing: str) -> sdp.SessionDescription:
    """The parsed offer, refused (400) unless it can start a session: ICE credentials, a DTLS fingerprint and an
    audio or video m-line in one of `directions` (`missing` says what is lacking otherwise)."""
    try:
        description = sdp.parse(text)
    except sdp.SdpError as error:
        raise Refused(400, f"malformed SDP: {error}", "malformed_sdp") from None
    sections = description.sections
    if not any(s.ice_ufrag and s.ice_pwd for s in sections):
        raise Refused(400, "malformed SDP: no ICE ufrag and password", "malformed_sdp")
    if not any(s.fingerprint for s in sections):
        raise Refused(400, "malformed SDP: no DTLS fingerprint", "malformed_sdp")
    if not any(s.kind in MEDIA_KINDS and s.direction in directions for s in sections):
        raise Refused(400, missing, "no_usable_media")
    return description


def _ice_server_links(servers: list[rtc.ICEServer]) -> list[str]:
    """TURN servers as RFC 9725 section 4.6 Link headers (with the credentials the participant's token earns)."""
    links = []
    for server in servers:
        for url in server.urls:
            link = f'<{url}>; rel="ice-server"'
            if server.username:
                link += f'; username="{server.username}"; credential="{server.credential}"; credential-type="password"'
            links.append(link)
    return links
