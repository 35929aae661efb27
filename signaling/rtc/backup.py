"""Backup codecs (LiveKit's multi-codec simulcast): a video track published in VP9 or AV1 may name a VP8 or H.264
backup. Subscribers are offered both codecs; one that takes only the backup is forwarded from it, and the publisher,
asked for it, sends it on an m-line of its own, received as a second Receiver of the same track (the publication's
BackupCodec). This module is what the publisher's requests and m-lines for a backup do (a publishing Participant's
BackupCodecs), and which codec a subscription is offered and forwarded from (offered, choose_source)."""
from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import rtc

from . import media_caps
from .dynacast import Dynacast, announce_qualities
from .publication import BackupCodec

if TYPE_CHECKING:
    from ..peer import sdp
    from .participant import Services
    from .publication import Subscription, TrackPublication

log = logging.getLogger(__name__)


class Publisher(Protocol):
    """What a backup codec needs of the participant publishing its track."""

    identity: str
    services: Services
    publications: dict[str, TrackPublication]  # by track sid, media negotiated

    def add_receiver(self, media: sdp.AcceptedMedia) -> int: ...


class BackupCodecs:
    """The backup codecs of one publisher's tracks: its AddTrackRequests and m-lines for them."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def add(self, request: rtc.AddTrackRequest) -> TrackPublication | None:
        """An AddTrackRequest naming a track's sid: its backup codec (the one simulcast codec) comes on the m-line
        whose msid track id is the request's cid. The track, to answer with (as LiveKit does); None if no track
        with this sid awaits this codec."""
        publication = self.publisher.publications.get(request.sid)
        backup = publication.backup if publication is not None else None
        codecs = request.simulcast_codecs
        if backup is None or backup.receiver_id is not None or len(codecs) != 1 or not request.cid \
                or codecs[0].codec.rpartition("/")[2].lower() != publication.backup_codec:
            return None
        backup.cid = request.cid
        backup.layers = sorted(codecs[0].layers or request.layers, key=lambda layer: layer.quality)
        for info in publication.info.codecs[1:]:
            if info.mime_type.rpartition("/")[2].lower() == publication.backup_codec:
                info.cid = request.cid
                del info.layers[:]
                info.layers.extend(backup.layers)
        return publication

    def receive(self, media: sdp.AcceptedMedia) -> bool:
        """Whether an m-line the publisher sends on is a backup codec's: one received already (renegotiation), or
        one a backup awaits (its AddTrackRequest's cid), which is then received."""
        publications = self.publisher.publications.values()
        if any(p.backup is not None and p.backup.mid == media.mid for p in publications):
            return True
        backup = next((p.backup for p in publications if p.backup is not None and p.backup.cid
                       and p.backup.cid == media.track_id and p.backup.receiver_id is None), None)
        if backup is None:
            return False
        self._attach(backup, media)
        return True

    def _attach(self, backup: BackupCodec, media: sdp.AcceptedMedia) -> None:
        """The publisher sends a track's backup codec: the subscriptions waiting for it start."""
        publication, services = backup.publication, self.publisher.services
        if media.codec.name.lower() != publication.backup_codec:
            services.counters["media_rejected"] += 1  # the answer could not pick the backup's codec
            return
        try:
            receiver_id = self.publisher.add_receiver(media)
        except (ValueError, RuntimeError, MemoryError) as error:  # its subscribers keep waiting; the primary goes on
            services.counters["media_rejected"] += 1
            log.info("participant %s: cannot receive backup codec m-line %s: %s", self.publisher.identity,
                     media.mid, error)
            return
        backup.receiver_id, backup.codec, backup.extmap, backup.mid = receiver_id, media.codec, dict(media.extmap), \
            media.mid
        for info in publication.info.codecs[1:]:
            if info.cid == backup.cid:
                info.mid = media.mid
        services.receivers[receiver_id] = publication
        backup.dynacast = Dynacast(publication, services.engine, source=backup)
        for subscription in list(publication.subscriptions.values()):
            if subscription.source is backup:
                subscription.subscriber.start_downtrack(subscription)

    def stopped(self, publication: TrackPublication, mid: str) -> None:
        """The publisher stopped sending m-line `mid`: if it was the track's backup codec, the subscriptions
        forwarded from it wait for it again (the publisher is asked for it anew)."""
        if publication.backup is not None and publication.backup.mid == mid:
            self._drop(publication, unpublished=False)

    def release(self, publication: TrackPublication) -> None:
        """The track is unpublished: its backup codec's Receiver goes with it."""
        self._drop(publication, unpublished=True)

    def _drop(self, publication: TrackPublication, unpublished: bool) -> None:
        backup, services = publication.backup, self.publisher.services
        if backup is None or backup.receiver_id is None:
            return
        if backup.dynacast is not None:
            backup.dynacast.close()
        services.receivers.pop(backup.receiver_id, None)
        services.engine.remove_receiver(backup.receiver_id)
        backup.receiver_id = None
        if unpublished:
            return
        publication.backup = BackupCodec(publication)
        for subscription in publication.subscriptions.values():
            if subscription.source is not backup:
                continue
            subscription.source = publication.backup
            if subscription.downtrack_id is not None:  # the engine removed it with the receiver
                subscription.subscriber.allocator.forget(subscription.downtrack_id)
                subscription.downtrack_id = None
        announce_qualities(publication)


def offered(publication: TrackPublication, primary: sdp.Codec) -> list[sdp.Codec]:
    """The codecs a subscriber is offered after the track's own (`primary`): its backup codec, if it has one, for
    a client that cannot decode the primary."""
    if publication.backup_codec is None:
        return []
    return [media_caps.backup_subscriber_codec(publication.backup_codec, primary)]


def choose_source(subscription: Subscription, counters: Counter[str]) -> None:
    """The client's SDP chose the codec of the subscription's m-line: a backup codec is forwarded from the backup,
    which the publisher is asked to send if it does not yet."""
    publication, backup = subscription.publication, subscription.publication.backup
    if backup is None or publication.codec is None or subscription.source is backup \
            or subscription.media.codec.name.lower() == publication.codec.name.lower():
        return
    subscription.source = backup
    counters["subscriptions_backup_codec"] += 1
    if backup.receiver_id is None:
        announce_qualities(publication)
