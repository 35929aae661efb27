"""WHIP ingest (RFC 9725): the client's SDP offer (sent in one POST, no trickle: OBS and FFmpeg send none) makes it a
publisher participant over one peer connection; its tracks reach subscribers unchanged (no transcoding). The answer
carries all of our candidates; our ICE-lite side answers the client's checks from wherever they come (peer-reflexive
addresses included). Two ways in: a join token (LiveKit's native `/whip/v1`), or an ingress's stream key (LiveKit
Ingress's `/w/{stream_key}`)."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import jwt
from google.protobuf.message import DecodeError
from livekit.protocol import ingress, models, rtc
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth import ALGORITHM, Claims
from ..cluster import http_relay
from ..cluster.http_relay import FLAGS
from ..cluster.relay import SCOPE_FLAG
from ..cluster.rpc import CallFailed
from ..rtc.participant import Participant
from ..wish import CORS, Admit, Enter, HttpSession, HttpSessionService, Refused, parse_offer, read_offer
from .sessions import IngressSessions

log = logging.getLogger(__name__)

PATH = "/whip/v1"
INGRESS_PATH = "/w"  # LiveKit Ingress's WHIP app name: IngressInfo.url is <base>/w
# The attribute telling SDK subscribers that the participant publishes over WHIP or RTMP (which ingress/rtmp.py relays
# to /w/{stream_key}). LiveKit gives ingress-created streams kind INGRESS; a token's WHIP client stays STANDARD, as in
# LiveKit's native endpoint.
INGRESS_ATTRIBUTE = "tern.ingress"
# Seconds an ingress publisher's token lasts (LiveKit's: 24 h); the session itself may last longer.
INGRESS_TOKEN_TTL = 24 * 3600

# An RTMP session's WHIP handed by the node holding it (where the encoder connected) to the room's node: the flag
# names the holder, and the room's node reports the session's tracks and end to the holder's HOLDER_SERVICE.
RTMP_HOLDER = "rtmp_holder"
HOLDER_SERVICE = "rtmp_holder"

_SOURCES = {"audio": models.TrackSource.MICROPHONE, "video": models.TrackSource.CAMERA}
_TYPES = {"audio": models.TrackType.AUDIO, "video": models.TrackType.VIDEO}


class WhipService(HttpSessionService):
    """`POST /whip/v1` with a join token, and `POST /w/{stream_key}` (or `POST /w` with the stream key as Bearer
    token, as OBS sends it) for WHIP ingresses made with IngressService: that publisher joins the ingress's room as
    the ingress's participant, kind INGRESS."""

    name = "whip"

    def __init__(self, node: Any, admit: Admit, enter: Enter, ingresses: IngressSessions) -> None:
        super().__init__(node, admit)
        self._enter = enter
        self._ingresses = ingresses
        self._tasks: set[asyncio.Future] = set()
        if node.cluster is not None:
            node.cluster.rpc.handlers[HOLDER_SERVICE] = self._serve_holder

    def routes(self) -> list[Route]:
        return [
            Route(PATH, self.endpoint, methods=["POST", "OPTIONS"]),
            *self.resource_routes(PATH + "/{resource_id}"),
            Route(INGRESS_PATH, self.ingress_endpoint, methods=["POST", "OPTIONS"]),
            Route(INGRESS_PATH + "/{stream_key}", self.ingress_endpoint, methods=["POST", "OPTIONS"]),
            *self.resource_routes(INGRESS_PATH + "/{stream_key}/{resource_id}"),
        ]

    async def endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return _options()
        try:
            token, claims, room_name = self.admission(request, None, "canPublish")
            owner = await self.room_node(request, room_name, place=True)
            if owner is not None:
                return await self.forward(request, owner)
            return await self._publish(request, token, claims, room_name, PATH, self.resource_id("WH_"))
        except Refused as error:
            return self.refusal(error)

    async def ingress_endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return _options()
        stream_key = request.path_params.get("stream_key") or _bearer(request)
        # The RTMP listener's worker relays an RTMP ingress's publisher here, with its connection's secret; or the
        # node holding the RTMP session hands it over (a relayed request flagged with that node's id).
        holder = request.scope.get(FLAGS, {}).get(RTMP_HOLDER) if request.scope.get(SCOPE_FLAG) else None
        relayed = bool(request.path_params.get("stream_key")) and self._ingresses.relayed(stream_key, _bearer(request))
        input_type = ingress.IngressInput.RTMP_INPUT if relayed or holder else ingress.IngressInput.WHIP_INPUT
        try:
            # An RTMP worker's session is hosted here unless the room already runs elsewhere (see README: cluster)
            owner = await self._ingress_node(request, stream_key, place=not relayed)
            if relayed:  # the listener claimed the ingress when the encoder published
                info = await self._ingresses.relayed_claim(stream_key)
                resource_id = info.state.resource_id
                if owner is not None:  # the room runs elsewhere: its node serves the worker, the claim stays here
                    return await self._hand_over(request, owner, info)
            elif holder:  # served here for the holder, which keeps the claim and the ingress's state
                info = await self._ingresses.store.by_stream_key(stream_key)
                if info is None or info.input_type != input_type:
                    raise Refused(404, "no RTMP ingress has this stream key", "unknown_stream_key")
                resource_id = self.resource_id("RT_")  # names this node: the worker's DELETE through the holder
            else:
                if owner is not None:
                    return await self.forward(request, owner)
                resource_id = self.resource_id("WH_")
                info = await self._ingresses.claim(stream_key, input_type, resource_id)
        except Refused as error:
            return self.refusal(error)
        except (RedisError, OSError) as error:
            return self.refusal(Refused(503, f"cluster unavailable: {error}", "cluster_unavailable"))
        try:
            ingress_token = _ingress_token(info, self.node.config.keys)
            token, claims, room_name = self.admission(request, ingress_token, "canPublish")
            return await self._publish(request, token, claims, room_name, f"{INGRESS_PATH}/{stream_key}",
                                       resource_id, info.ingress_id, "rtmp" if relayed or holder else "whip",
                                       holder)
        except Refused as error:
            self._ingresses.ended(info.ingress_id, str(error))
            return self.refusal(error)
        except BaseException:  # the client went away mid-offer (cancelled): the claim must not stay
            self._ingresses.ended(info.ingress_id, "the publisher went away")
            raise

    async def _ingress_node(self, request: Request, stream_key: str, place: bool = True) -> str | None:
        """In a cluster, the node hosting (or, with `place`, now placed to host) the ingress's room, when it is not
        this one."""
        if self.node.cluster is None or request.scope.get(SCOPE_FLAG):
            return None
        try:
            info = await self._ingresses.store.by_stream_key(stream_key) if stream_key else None
        except (RedisError, OSError) as error:
            raise Refused(503, f"cluster unavailable: {error}", "cluster_unavailable") from None
        if info is None or not info.room_name:  # refused by the claim, here
            return None
        return await self.room_node(request, info.room_name, place=place)

    async def _hand_over(self, request: Request, owner: str, info: ingress.IngressInfo) -> Response:
        """The RTMP worker's WHIP session, served by the room's node `owner`: this node keeps the ingress's claim
        and state (which `owner` reports here, HOLDER_SERVICE) and ends the session there when the RTMP one ends."""
        response = await self.forward(request, owner, {RTMP_HOLDER: self.node.id})
        if response.status_code != 201:
            self._ingresses.ended(info.ingress_id, f"the room's node {owner} refused the session: "
                                                   f"{bytes(response.body).decode(errors='replace')}")
            return response
        self.count("rtmp_handed_over")
        path = urlsplit(response.headers["location"]).path
        rpc = self.node.cluster.rpc
        if not self._ingresses.bind(info.ingress_id, lambda: self._spawn(http_relay.delete(rpc, owner, path))):
            await http_relay.delete(rpc, owner, path)
            return self.refusal(Refused(404, "the ingress was deleted", "unknown_stream_key"))
        return response

    async def _serve_holder(self, method: str, request: bytes) -> bytes:
        """HOLDER_SERVICE: the room's node reports on an RTMP session this node handed over."""
        try:
            report = json.loads(request)
            ingress_id, room_sid = str(report["ingress_id"]), str(report.get("room_sid", ""))
            participant = models.ParticipantInfo.FromString(base64.b64decode(report.get("participant", "")))
        except (ValueError, KeyError, TypeError, DecodeError):
            raise CallFailed("malformed", "not an ingress report") from None
        if method == "publishing":
            self._ingresses.publishing(ingress_id, room_sid, participant)
        elif method == "ended":
            self._ingresses.ended(ingress_id)
        else:
            raise CallFailed("bad_route", f"no such ingress report: {method}")
        return b""

    def _report(self, holder: str, method: str, ingress_id: str, room_sid: str = "",
                participant: models.ParticipantInfo | None = None) -> None:
        report = {"ingress_id": ingress_id, "room_sid": room_sid,
                  "participant": base64.b64encode(participant.SerializeToString()).decode() if participant else ""}
        self._spawn(self._send_report(holder, method, json.dumps(report).encode()))

    async def _send_report(self, holder: str, method: str, report: bytes) -> None:
        try:
            await self.node.cluster.rpc.call(holder, HOLDER_SERVICE, method, report)
        except CallFailed as error:  # the holder is gone: the others sweep its sessions
            self.count("rtmp_report_failed")
            log.info("RTMP: cannot report %s to %s: %s", method, holder, error.msg)

    def _spawn(self, work: Awaitable) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, request: Request, token: str, claims: Claims, room_name: str, base: str,
                       resource_id: str, ingress_id: str = "", protocol: str = "whip",
                       holder: str | None = None) -> Response:
        offer_text = await read_offer(request)
        description = parse_offer(offer_text, ("sendonly", "sendrecv"), "the offer sends no audio or video")
        session = HttpSession(resource_id, self.sessions)
        participant = self._enter(token, claims, room_name, auto_subscribe=False, single_pc=True)
        if participant is None:
            raise Refused(503, "the room or the server is full", "full")
        session.participant = participant
        participant.attributes[INGRESS_ATTRIBUTE] = protocol
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
            raise Refused(400, reason, "no_usable_media")
        participant.publisher.transport.receiving = _receiving(participant)
        if holder:  # the holder keeps the ingress's state: it hears the tracks and the end
            room_sid = participant.room.sid
            session.on_update = lambda info: self._report(holder, "publishing", ingress_id, room_sid, info)
            session.on_close = lambda: self._report(holder, "ended", ingress_id)
        elif ingress_id:
            removed = models.DisconnectReason.PARTICIPANT_REMOVED  # by DeleteIngress
            if not self._ingresses.bind(ingress_id, lambda: participant.close(removed)):
                participant.close(models.DisconnectReason.JOIN_FAILURE, notify=False)
                raise Refused(404, "the ingress was deleted", "unknown_stream_key")
            room_sid = participant.room.sid
            session.on_update = lambda info: self._ingresses.publishing(ingress_id, room_sid, info)
            session.on_close = lambda: self._ingresses.ended(ingress_id)
        location = f"{base}/{session.resource_id}"
        log.info("WHIP: %s publishes in room %s (%s)", participant.identity, room_name, location)
        return self.created(request, session, location)


def _options() -> Response:
    return Response(status_code=204, headers={**CORS, "Allow": "POST, OPTIONS", "Accept-Post": "application/sdp"})


def _bearer(request: Request) -> str:
    """The stream key in `Authorization`: OBS sends `Bearer <key>`, some clients the bare key (LiveKit takes both)."""
    header = request.headers.get("authorization", "").strip()
    return header[len("Bearer "):].strip() if header.startswith("Bearer ") else header


def _ingress_token(info: ingress.IngressInfo, keys: dict[str, str]) -> str:
    """A join token for an ingress's publisher, as LiveKit mints one: the ingress's identity, name and metadata,
    kind ingress, allowed to publish (and to set its own metadata) only."""
    api_key, secret = next(iter(keys.items()))
    now = int(time.time())
    return jwt.encode({
        "iss": api_key, "sub": info.participant_identity, "name": info.participant_name,
        "metadata": info.participant_metadata, "kind": "ingress", "nbf": now, "exp": now + INGRESS_TOKEN_TTL,
        "video": {"roomJoin": True, "room": info.room_name, "canPublish": True, "canSubscribe": False,
                  "canPublishData": False, "canUpdateOwnMetadata": True},
    }, secret, algorithm=ALGORITHM)


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
