"""LiveKit's IngressService over Twirp (`/twirp/livekit.Ingress/<Method>`, grant ingressAdmin): ingress definitions
that a publisher streams to with a stream key. WHIP ingresses are served in-process (ingress/whip.py, `/w`), RTMP
ingresses by the RTMP listener when `ingress.rtmp_port` is set (ingress/rtmp.py, `rtmp://<host>:<port>/live` with the
stream key); URL pulls are not supported."""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from google.protobuf.message import Message
from livekit.protocol import ingress

from ..roomservice import TwirpError, TwirpMethod, TwirpService, check_size
from ..rtc.ids import new_id
from ..rtc.limits import MAX_IDENTITY_LENGTH, MAX_METADATA_SIZE, MAX_NAME_LENGTH, MAX_ROOM_NAME_LENGTH
from .sessions import IngressSessions
from .whip import INGRESS_PATH

if TYPE_CHECKING:
    from ..node import Node

PREFIX = "/twirp/livekit.Ingress/"
# Ingresses one node keeps (tern's: each is ~1 KB; LiveKit keeps them in Redis, uncapped): past it, CreateIngress
# answers resource_exhausted until some are deleted.
MAX_INGRESSES = 10_000
# Bytes of entropy in a stream key: it is the only credential a publisher presents (LiveKit's are 12 base57 characters,
# ~70 bits); 16 bytes make 22 URL-safe characters.
STREAM_KEY_BYTES = 16
RTMP_PORT = 1935  # LiveKit Ingress's, as in IngressInfo.url
RTMP_APP = "live"

Input = ingress.IngressInput
Status = ingress.IngressState.Status


class IngressService(TwirpService):
    prefix = PREFIX

    def __init__(self, node: Node, sessions: IngressSessions) -> None:
        super().__init__(node)
        self.sessions = sessions
        self.store = sessions.store

    async def _node_for(self, name: str, message: Message) -> str | None:
        """DeleteIngress runs where the ingress's live session does; the rest reads and writes Redis from here."""
        if name != "DeleteIngress" or not message.ingress_id:
            return None
        return await self.store.holder(message.ingress_id)

    async def _get(self, ingress_id: str) -> ingress.IngressInfo:
        info = await self.store.get(ingress_id) if ingress_id else None
        if info is None:
            raise TwirpError("not_found", "ingress does not exist")
        return info

    def _url(self, input_type: int) -> str:
        """Where publishers stream to (the stream key goes after it): ingress.rtmp_base_url / whip_base_url, else this
        node's address, as clients reach it."""
        configured = self.node.config.ingress
        base = configured.rtmp_base_url if input_type == Input.RTMP_INPUT else configured.whip_base_url
        if base:
            return base
        host = self.node.config.node_ip()
        host = f"[{host}]" if ":" in host else host
        if input_type == Input.RTMP_INPUT:
            return f"rtmp://{host}:{self.node.config.ingress.rtmp_port or RTMP_PORT}/{RTMP_APP}"
        return f"http://{host}:{self.node.config.port}{INGRESS_PATH}"

    async def create_ingress(self, request: ingress.CreateIngressRequest) -> ingress.IngressInfo:
        if request.input_type not in (Input.RTMP_INPUT, Input.WHIP_INPUT):
            raise TwirpError("unimplemented", "only RTMP_INPUT and WHIP_INPUT ingresses are supported", status=501)
        if await self.store.count() >= MAX_INGRESSES:
            raise TwirpError("resource_exhausted", f"more than {MAX_INGRESSES} ingresses")
        if not request.participant_identity:
            raise TwirpError("invalid_argument", "participant_identity is required")
        _check_fields(request)
        transcoding = _transcoding(request.input_type, request)
        info = ingress.IngressInfo(
            ingress_id=new_id("IN_"),
            name=request.name,
            stream_key=secrets.token_urlsafe(STREAM_KEY_BYTES),
            url=self._url(request.input_type),
            input_type=request.input_type,
            enable_transcoding=transcoding,
            bypass_transcoding=not transcoding,
            audio=request.audio,
            video=request.video,
            room_name=request.room_name,
            participant_identity=request.participant_identity,
            participant_name=request.participant_name,
            participant_metadata=request.participant_metadata,
            reusable=True,
            state=ingress.IngressState(status=Status.ENDPOINT_INACTIVE),
            enabled=request.enabled if request.HasField("enabled") else True,
        )
        await self.store.save(info)
        self.store.save_state(info.ingress_id, info.state)
        return info

    async def update_ingress(self, request: ingress.UpdateIngressRequest) -> ingress.IngressInfo:
        """Fields the request sets replace the stored ones; a live session keeps what it started with."""
        info = await self._get(request.ingress_id)
        _check_fields(request)
        for field in ("name", "room_name", "participant_identity", "participant_name", "participant_metadata"):
            if getattr(request, field):
                setattr(info, field, getattr(request, field))
        if request.HasField("enable_transcoding") or request.HasField("bypass_transcoding") \
                or request.HasField("audio") or request.HasField("video"):
            info.enable_transcoding = _transcoding(info.input_type, request)
            info.bypass_transcoding = not info.enable_transcoding
        if request.HasField("audio"):
            info.audio.CopyFrom(request.audio)
        if request.HasField("video"):
            info.video.CopyFrom(request.video)
        if request.HasField("enabled"):
            info.enabled = request.enabled
        if info.state.status == Status.ENDPOINT_ERROR:  # LiveKit's: an update resets a failed ingress
            info.state.status = Status.ENDPOINT_INACTIVE
            info.state.error = ""
            self.store.save_state(info.ingress_id, info.state)
        await self.store.save(info)
        return info

    async def list_ingress(self, request: ingress.ListIngressRequest) -> ingress.ListIngressResponse:
        return ingress.ListIngressResponse(items=await self.store.list(request.room_name, request.ingress_id))

    async def delete_ingress(self, request: ingress.DeleteIngressRequest) -> ingress.IngressInfo:
        """Ends a live session (its participant leaves), then forgets the ingress."""
        info = await self._get(request.ingress_id)
        ended = self.sessions.stop(request.ingress_id)
        if ended is not None:  # its final state is still being written behind
            info.state.CopyFrom(ended.state)
        await self.store.delete(info)
        return info


def _check_fields(request: ingress.CreateIngressRequest | ingress.UpdateIngressRequest) -> None:
    check_size("name", request.name, MAX_NAME_LENGTH)
    check_size("room_name", request.room_name, MAX_ROOM_NAME_LENGTH)
    check_size("participant_identity", request.participant_identity, MAX_IDENTITY_LENGTH)
    check_size("participant_name", request.participant_name, MAX_NAME_LENGTH)
    check_size("participant_metadata", request.participant_metadata, MAX_METADATA_SIZE)


def _transcoding(input_type: int, request: ingress.CreateIngressRequest | ingress.UpdateIngressRequest) -> bool:
    """Whether the ingress transcodes, by LiveKit's rules: the request's enable_transcoding (else the inverse of its
    deprecated bypass_transcoding), else on for RTMP and off for WHIP; only WHIP may turn it off, and then no encoding
    options may be given. tern forwards WHIP media unchanged, so transcoding WHIP is refused."""
    if request.HasField("enable_transcoding"):
        transcoding = request.enable_transcoding
    elif request.bypass_transcoding:
        transcoding = False
    else:
        transcoding = input_type != Input.WHIP_INPUT
    if input_type == Input.WHIP_INPUT:
        if transcoding:
            raise TwirpError("unimplemented", "WHIP ingress media is forwarded unchanged: transcoding is not supported",
                             status=501)
        if request.audio.WhichOneof("encoding_options") == "options" \
                or request.video.WhichOneof("encoding_options") == "options":
            raise TwirpError("invalid_argument", "encoding options require transcoding, which WHIP ingress does not do")
    elif not transcoding:
        raise TwirpError("invalid_argument", "transcoding can only be disabled for WHIP ingress")
    return transcoding


IngressService.methods = {
    "CreateIngress": TwirpMethod(ingress.CreateIngressRequest, "ingress", IngressService.create_ingress),
    "UpdateIngress": TwirpMethod(ingress.UpdateIngressRequest, "ingress", IngressService.update_ingress),
    "ListIngress": TwirpMethod(ingress.ListIngressRequest, "ingress", IngressService.list_ingress),
    "DeleteIngress": TwirpMethod(ingress.DeleteIngressRequest, "ingress", IngressService.delete_ingress),
}
