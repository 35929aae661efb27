"""WHIP ingest (RFC 9725) with a join token, as LiveKit's native `/whip/v1`: the client's SDP offer (sent in one
POST, no trickle: OBS and FFmpeg send none) makes it a publisher participant of the token's room over one peer
connection; its tracks reach subscribers unchanged (no transcoding). The answer carries all of our candidates; our
ICE-lite side answers the client's checks from wherever they come (peer-reflexive addresses included)."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from livekit.protocol import models, rtc
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..auth import AuthError, Claims
from ..peer import sdp
from ..rtc.ids import new_id
from ..rtc.limits import LimitExceeded
from ..rtc.participant import Participant

log = logging.getLogger(__name__)

PATH = "/whip/v1"
# An SDP offer is a few KB (FFmpeg's muxer caps its own at 8 KB; OBS with simulcast stays under 16 KB): a body past
# this is refused with 413 before it is parsed (the signal path's sdp.MAX_SDP_LENGTH of 1 MiB is for SDK offers).
MAX_OFFER_BYTES = 64 * 1024
# The attribute telling SDK subscribers that the participant publishes over WHIP (LiveKit gives ingress-created
# streams kind INGRESS; a token's WHIP client stays STANDARD, as in LiveKit's native endpoint).
INGRESS_ATTRIBUTE = "tern.ingress"

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, ETag, Link",
}
_SOURCES = {"audio": models.TrackSource.MICROPHONE, "video": models.TrackSource.CAMERA}
_TYPES = {"audio": models.TrackType.AUDIO, "video": models.TrackType.VIDEO}

# Admission as the signal endpoints do it (signaling/app.py): the token, its claims and room, or an error raised.
Admit = Callable[[Request], tuple[str, Claims, str]]
# A participant entering its room as the signal endpoints make one, or None if the room or the engine is full.
Enter = Callable[..., Participant | None]


class _Refused(Exception):
    def __init__(self, status: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.status = status
        self.counter = counter


class WhipSession:
    """The WHIP resource's side of its participant's signal: the SDP answer is kept, the rest (join, updates,
    track_published) has no one to go to. The participant closing (DELETE, lost media) ends the resource."""

    def __init__(self, resource_id: str, sessions: dict[str, WhipSession]) -> None:
        self.resource_id = resource_id
        self.participant: Participant | None = None
        self.answer: rtc.SessionDescription | None = None
        self.refusal: str | None = None
        self._sessions = sessions

    def send(self, response: rtc.SignalResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "answer":
            self.answer = response.answer
        elif kind == "request_response":
            self.refusal = response.request_response.message

    def close(self) -> None:
        self._sessions.pop(self.resource_id, None)


class WhipService:
    def __init__(self, node: Any, admit: Admit, enter: Enter) -> None:
        self.node = node
        self._admit = admit
        self._enter = enter
        self.sessions: dict[str, WhipSession] = {}  # by resource id: bounded by the node's participants

    def routes(self) -> list[Route]:
        return [
            Route(PATH, self.endpoint, methods=["POST", "OPTIONS"]),
            Route(PATH + "/{resource_id}", self.resource, methods=["DELETE", "PATCH", "OPTIONS"]),
        ]

    async def endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**_CORS, "Allow": "POST, OPTIONS"})
        try:
            return await self._publish(request)
        except _Refused as error:
            self.node.counters[f"whip_{error.counter}"] += 1
            log.info("WHIP offer refused (%d): %s", error.status, error)
            return PlainTextResponse(str(error), status_code=error.status, headers=_CORS)

    async def resource(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["resource_id"])
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**_CORS, "Allow": "DELETE, OPTIONS"})
        if session is None:
            self.node.counters["whip_unknown_resource"] += 1
            return PlainTextResponse("no such WHIP resource", status_code=404, headers=_CORS)
        if request.method == "PATCH":  # neither trickle nor ICE restart: the client starts a new session instead
            self.node.counters["whip_patch_refused"] += 1
            return PlainTextResponse("trickle ICE and ICE restarts are not supported", status_code=405,
                                     headers={**_CORS, "Allow": "DELETE, OPTIONS"})
        if session.participant is not None:
            session.participant.close(models.DisconnectReason.CLIENT_INITIATED, notify=False)
        session.close()
        self.node.counters["whip_deleted"] += 1
        return Response(status_code=200, headers=_CORS)

    async def _publish(self, request: Request) -> Response:
        try:
            token, claims, room_name = self._admit(request)
        except AuthError as error:
            raise _Refused(401, str(error), "unauthorized") from None
        except LimitExceeded as error:
            raise _Refused(400, str(error), "limit_exceeded") from None
        except PermissionError as error:
            raise _Refused(403, str(error), "forbidden") from None
        if not claims.video.can_publish:
            raise _Refused(403, "permission denied: canPublish grant required", "forbidden")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/sdp":
            raise _Refused(415, "an SDP offer (Content-Type: application/sdp) is expected", "unsupported_media_type")
        offer_text = await _body(request)
        description = _offer(offer_text)

        session = WhipSession(new_id("WH_"), self.sessions)
        participant = self._enter(token, claims, room_name, auto_subscribe=False, single_pc=True)
        if participant is None:
            raise _Refused(503, "the room or the server is full", "full")
        session.participant = participant
        participant.attributes[INGRESS_ATTRIBUTE] = "whip"
        participant.attach(session)
        for section in description.sections:
            if section.kind in _TYPES and section.direction in ("sendonly", "sendrecv"):
                track_id = section.msid[1] if section.msid and section.msid[1] else f"whip-{section.mid}"
                participant.add_track(rtc.AddTrackRequest(
                    cid=track_id, name=section.kind, type=_TYPES[section.kind], source=_SOURCES[section.kind]))
        participant.join(0, 0)
        participant.handle_offer(rtc.SessionDescription(type="offer", sdp=offer_text))
        participant.drop_pending()  # m-lines we could not receive (codec, limits): their tracks go
        if session.answer is None or not participant.publications:  # a track refused alone leaves the others
            participant.close(models.DisconnectReason.JOIN_FAILURE, notify=False)
            reason = session.refusal or ("no audio or video the server can forward (Opus; H.264 baseline "
                                         "with packetization-mode 1, VP8, VP9, AV1)")
            raise _Refused(400, reason, "no_usable_media")
        participant.publisher.transport.receiving = _receiving(participant)
        self.sessions[session.resource_id] = session
        self.node.counters["whip_sessions"] += 1
        location = f"{PATH}/{session.resource_id}"
        headers = {**_CORS, "Location": str(request.url.replace(path=location, query="")),
                   "ETag": f'"{participant.publisher.transport.local_endpoint().ice_ufrag}"'}
        response = Response(session.answer.sdp, status_code=201, media_type="application/sdp", headers=headers)
        for link in _ice_server_links(self.node.ice_servers(participant.sid)):
            response.headers.append("Link", link)
        log.info("WHIP: %s publishes in room %s (%s)", participant.identity, room_name, location)
        return response


async def _body(request: Request) -> str:
    """The offer, read no further than MAX_OFFER_BYTES."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_OFFER_BYTES:
        raise _Refused(413, f"offer larger than {MAX_OFFER_BYTES} bytes", "too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_OFFER_BYTES:
            raise _Refused(413, f"offer larger than {MAX_OFFER_BYTES} bytes", "too_large")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise _Refused(400, "malformed SDP: not UTF-8", "malformed_sdp") from None


def _offer(text: str) -> sdp.SessionDescription:
    """The parsed offer, refused (400) unless it can start a session: ICE credentials, a DTLS fingerprint and
    something sent."""
    try:
        description = sdp.parse(text)
    except sdp.SdpError as error:
        raise _Refused(400, f"malformed SDP: {error}", "malformed_sdp") from None
    sections = description.sections
    if not any(s.ice_ufrag and s.ice_pwd for s in sections):
        raise _Refused(400, "malformed SDP: no ICE ufrag and password", "malformed_sdp")
    if not any(s.fingerprint for s in sections):
        raise _Refused(400, "malformed SDP: no DTLS fingerprint", "malformed_sdp")
    if not any(s.kind in _TYPES and s.direction in ("sendonly", "sendrecv") for s in sections):
        raise _Refused(400, "the offer sends no audio or video", "no_usable_media")
    return description


def _receiving(participant: Participant) -> Callable[[], bool]:
    """Whether the participant's tracks received packets since last asked: WHIP encoders (FFmpeg's muxer) answer
    no consent checks, so the media they send is what keeps their session (LiveKit's pion likewise times a
    connection out on silence)."""
    engine = participant.services.engine
    seen = 0

    def receiving() -> bool:
        nonlocal seen
        total = sum(layer["packets"] for publication in participant.publications.values()
                    if publication.receiver_id is not None
                    for layer in engine.receiver_stats(publication.receiver_id)["layers"])
        arrived, seen = total > seen, total
        return arrived
    return receiving


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
