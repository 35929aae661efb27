"""TrackPublication (a track a participant publishes) and Subscription (one subscriber's copy of it)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from livekit.protocol import models, rtc

from ..peer.sdp import Codec, OutgoingMedia
from .ids import new_id

if TYPE_CHECKING:
    from .participant import Participant


class TrackPublication:
    """A track a participant publishes; `receiver_id` is its engine Receiver once media is negotiated."""

    def __init__(self, participant: Participant, request: rtc.AddTrackRequest) -> None:
        self.participant = participant
        self.cid = request.cid
        kind_letter = "A" if request.type == models.TrackType.AUDIO else "V"
        self.info = models.TrackInfo(
            sid=new_id(f"TR_{kind_letter}"),
            type=request.type,
            name=request.name,
            muted=request.muted,
            width=request.width,
            height=request.height,
            source=request.source,
            layers=request.layers,
            disable_dtx=request.disable_dtx,
            stereo=request.stereo,
            disable_red=request.disable_red,
            encryption=request.encryption,
            stream=request.stream,
            audio_features=request.audio_features,
            simulcast=len(request.layers) > 1
            or any(len(c.layers) > 1 for c in request.simulcast_codecs),
        )
        for codec in request.simulcast_codecs:
            # Clients send a bare codec name ("vp8"); TrackInfo carries MIME types, which JS splits on "/".
            mime_type = codec.codec if "/" in codec.codec else f"{self.kind}/{codec.codec}"
            self.info.codecs.add(mime_type=mime_type, cid=codec.cid or request.cid, layers=codec.layers)
        self.receiver_id: int | None = None
        self.codec: Codec | None = None
        self.extmap: dict[str, int] = {}
        self.published = False
        self.subscriptions: dict[str, Subscription] = {}  # by subscriber sid

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def kind(self) -> str:
        return "audio" if self.info.type == models.TrackType.AUDIO else "video"


class Subscription:
    """One subscriber's copy of a publication: an m-line on its subscriber PC and an engine DownTrack."""

    def __init__(self, publication: TrackPublication, subscriber: Participant, media: OutgoingMedia) -> None:
        self.publication = publication
        self.subscriber = subscriber
        self.media = media
        self.downtrack_id: int | None = None
