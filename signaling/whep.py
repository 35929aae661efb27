"""WHEP playback (draft-ietf-wish-whep; LiveKit has none): `POST /whep/v1` with a join token (canSubscribe) and an SDP
offer of recvonly audio/video m-lines; the query names what to watch: `?participant=<identity>` (its published
tracks) and/or `?track=<track sid>` (repeatable). The viewer becomes a hidden, subscribe-only participant over one
peer connection; each named track goes on an offered m-line of its kind (first published first), and the server's
StreamAllocator picks its simulcast layer from the viewer's bandwidth estimate. The track set is fixed by the POST
(WHEP has no renegotiation); DELETE on the Location ends it."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from livekit.protocol import models, rtc
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .rtc.publication import TrackPublication
from .rtc.room import Room
from .wish import CORS, MEDIA_KINDS, Admit, Enter, HttpSession, HttpSessionService, Refused, parse_offer, read_offer

log = logging.getLogger(__name__)

PATH = "/whep/v1"
# Track sids one request may name (tern's): a viewer's offer has one m-line per track, and sdp.MAX_MEDIA_SECTIONS
# bounds those anyway; past this the request is refused before the room is searched.
MAX_NAMED_TRACKS = 64


class WhepService(HttpSessionService):
    name = "whep"

    def __init__(self, node: Any, admit: Admit, enter: Enter) -> None:
        super().__init__(node, admit)
        self._enter = enter

    def routes(self) -> list[Route]:
        return [Route(PATH, self.endpoint, methods=["POST", "OPTIONS"]), *self.resource_routes(PATH + "/{resource_id}")]

    async def endpoint(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={**CORS, "Allow": "POST, OPTIONS",
                                                      "Accept-Post": "application/sdp"})
        try:
            return await self._play(request)
        except Refused as error:
            return self.refusal(error)

    async def _play(self, request: Request) -> Response:
        token, claims, room_name = self.admission(request, None, "canSubscribe")
        identity, sids = _names(request)
        owner = await self.room_node(request, room_name, place=False)
        if owner is not None:
            return await self.forward(request, owner)
        offer_text = await read_offer(request)
        description = parse_offer(offer_text, ("recvonly", "sendrecv"), "the offer receives no audio or video")
        room = self.node.store.get(room_name)
        if room is None:
            raise Refused(404, f"room {room_name!r} is not open", "not_found")
        present = room.participants.get(claims.identity)
        if present is not None and not any(s.participant is present for s in self.sessions.values()):
            # Joining would replace it (LiveKit's rule for a duplicate identity); a WHEP viewer of that identity is
            # replaced, as a reloaded player should be.
            raise Refused(409, f"{claims.identity!r} is in the room already: a viewer needs an identity of its own",
                          "identity_conflict")
        offered = {kind: sum(1 for s in description.sections if s.kind == kind and s.port != 0
                             and s.direction in ("recvonly", "sendrecv")) for kind in MEDIA_KINDS}
        chosen = _fitting(_named(room, identity, sids), offered)
        # Hidden: the others do not see a viewer join (LiveKit's hidden participants: recorders, monitors). Its grant
        # is for watching only, whatever else the token allows.
        viewer = dataclasses.replace(claims, video=dataclasses.replace(
            claims.video, hidden=True, can_publish=False, can_publish_data=False))
        participant = self._enter(token, viewer, room_name, auto_subscribe=False, single_pc=True)
        if participant is None:
            raise Refused(503, "the room or the server is full", "full")
        session = HttpSession(self.resource_id("WE_"), self.sessions)
        session.participant = participant
        participant.attach(session)
        participant.join(0, 0)
        participant.update_subscriptions({p.sid for p in chosen}, True)
        participant.handle_offer(rtc.SessionDescription(type="offer", sdp=offer_text))
        if session.answer is None or not any(s.media.mid for s in participant.subscriptions.values()):
            participant.close(models.DisconnectReason.JOIN_FAILURE, notify=False)
            raise Refused(400, session.refusal or "the offer receives none of the tracks' codecs (the server forwards "
                          "them unchanged: " + ", ".join(sorted({p.info.mime_type for p in chosen})) + ")",
                          "no_usable_media")
        location = f"{PATH}/{session.resource_id}"
        log.info("WHEP: %s watches %s in room %s (%s)", participant.identity,
                 ", ".join(s.publication.sid for s in participant.subscriptions.values()), room_name, location)
        return self.created(request, session, location)


def _names(request: Request) -> tuple[str, list[str]]:
    """The participant identity and track sids the query names; one or the other is required."""
    identity = request.query_params.get("participant", "")
    sids = request.query_params.getlist("track")
    if not identity and not sids:
        raise Refused(400, "name what to watch: ?participant=<identity> or ?track=<track sid>", "nothing_named")
    if len(sids) > MAX_NAMED_TRACKS:
        raise Refused(400, f"more than {MAX_NAMED_TRACKS} tracks named", "limit_exceeded")
    return identity, sids


def _named(room: Room, identity: str, sids: list[str]) -> list[TrackPublication]:
    """The published tracks named (the participant's, then the sids'), oldest first; 404 if there are none."""
    named: dict[str, TrackPublication] = {}
    if identity:
        publisher = room.participants.get(identity)
        if publisher is None or publisher.hidden:
            raise Refused(404, f"no participant {identity!r} in the room", "not_found")
        named.update((p.sid, p) for p in publisher.publications.values() if p.published)
    for sid in sids:
        publication = room.tracks.get(sid)
        if publication is None or not publication.published or publication.participant.hidden:
            raise Refused(404, f"no published track {sid!r} in the room", "not_found")
        named[sid] = publication
    if not named:
        raise Refused(404, f"{identity!r} publishes no tracks yet", "not_found")
    return list(named.values())


def _fitting(publications: list[TrackPublication], offered: dict[str, int]) -> list[TrackPublication]:
    """As many of the publications of each kind as the offer has m-lines for: WHEP cannot ask for more."""
    left = dict(offered)
    chosen = []
    for publication in publications:
        if left.get(publication.kind, 0) > 0:
            left[publication.kind] -= 1
            chosen.append(publication)
    if not chosen:
        raise Refused(400, "the offer has no m-line for the named tracks' kinds ("
                      + ", ".join(sorted({p.kind for p in publications})) + ")", "no_usable_media")
    return chosen

