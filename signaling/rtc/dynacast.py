"""Dynacast: a publisher encodes only the simulcast layers someone watches.

Per published video track, the highest layer any subscriber needs right now (what its allocation aims at, and the
layer it is still being forwarded while a switch is under way; paused or unsubscribed copies need nothing) goes to
the publisher as SubscribedQualityUpdate. Turning a layer on happens at once; turning one off waits, so a subscriber
going back and forth does not make the encoder restart layers. A track nobody subscribes to has every layer off."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from livekit.protocol import models, rtc

from .allocator import PAUSED

if TYPE_CHECKING:
    from .publication import ReceivedCodec, TrackPublication

# Downgrades (including all layers off) wait this long; upgrades are sent at once (LiveKit's DynacastPauseDelay).
DYNACAST_PAUSE_DELAY_S = 5.0
# After a track is published, what nobody needs is turned off once this has passed (LiveKit's initial 10 s).
DYNACAST_INITIAL_DELAY_S = 10.0

_QUALITIES = (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)


class Dynacast:
    """What the publisher is to send of one codec of a track (`source`: the publication or its backup)."""

    def __init__(self, publication: TrackPublication, engine: Any, pause_delay: float = DYNACAST_PAUSE_DELAY_S,
                 initial_delay: float = DYNACAST_INITIAL_DELAY_S, source: ReceivedCodec | None = None) -> None:
        self.publication = publication
        self.source = source or publication
        self.engine = engine
        self.pause_delay = pause_delay
        self.layers = max(1, len(self.source.advertised_layers()))
        self.committed = self.layers - 1  # a publisher starts with every layer on
        self.closed = False
        self._pending = False
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(initial_delay, self._settle)

    def demand(self) -> tuple[int, int]:
        """The highest layer (0 = lowest; PAUSED = none) any subscriber needs now: (what the allocations aim at,
        that or a layer a subscriber is still being forwarded until the Forwarder has switched away from it)."""
        aimed = forwarded = PAUSED
        top = self.layers - 1
        for subscription in self.publication.subscriptions.values():
            if subscription.source is not self.source:
                continue
            layer = subscription.subscriber.allocator.wanted_layer(subscription)
            if layer == PAUSED:
                continue
            aimed = max(aimed, min(layer, top))
            if aimed == top:  # nothing can ask for more: the common case needs no look at the rest (O(1) per join)
                return top, top
            stats = self.engine.downtrack_stats(subscription.downtrack_id)
            current = stats["current_spatial"] if stats.get("current_spatial", -1) >= 0 else stats["current_layer"]
            forwarded = max(forwarded, min(current, top))
        return aimed, max(aimed, forwarded)

    def update(self) -> None:
        """Something a subscriber needs may have changed: looked at once per event-loop turn, however many
        subscribers changed in it."""
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._evaluate)

    def announce(self) -> None:
        """Tells the publisher again what to send (after a resume: what it was told while away was lost)."""
        if not self.closed:
            self._commit(self.committed)

    def close(self) -> None:
        self._cancel()
        self.closed = True

    def _evaluate(self) -> None:
        """More goes on at once; less after the delay."""
        self._pending = False
        if self.closed:
            return
        aimed, wanted = self.demand()
        if wanted > self.committed:
            self._commit(wanted)
        loop = asyncio.get_running_loop()
        if aimed >= self.committed:
            self._cancel()
        elif self._timer is None or self._timer.when() > loop.time() + self.pause_delay:  # e.g. the initial timer
            self._cancel()
            self._timer = loop.call_later(self.pause_delay, self._settle)

    def _settle(self) -> None:
        """The delay has passed: commit what is needed now; while a layer is kept on only because a subscriber is
        still being forwarded it, look again after another delay."""
        self._timer = None
        aimed, wanted = self.demand()
        if wanted != self.committed:
            self._commit(wanted)
        if aimed < self.committed:
            self._timer = asyncio.get_running_loop().call_later(self.pause_delay, self._settle)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _commit(self, layer: int) -> None:
        self.committed = layer
        announce_qualities(self.publication)


def announce_qualities(publication: TrackPublication) -> None:
    """Tells the publisher which qualities of each of the track's codecs to send: what each codec's Dynacast
    committed; all of a wanted backup codec the publisher has yet to send (the JS SDK then publishes it)."""
    primary = publication.dynacast
    if primary is None or publication.codec is None:
        return
    qualities = _qualities(publication, primary.committed)
    codecs = [rtc.SubscribedCodec(codec=publication.codec.name.lower(), qualities=qualities)]
    backup = publication.backup
    if backup is not None and backup.dynacast is not None and backup.codec is not None:
        codecs.append(rtc.SubscribedCodec(codec=backup.codec.name.lower(),
                                          qualities=_qualities(backup, backup.dynacast.committed)))
    elif backup is not None and publication.backup_codec is not None and any(
            subscription.source is backup for subscription in publication.subscriptions.values()):
        codecs.append(rtc.SubscribedCodec(codec=publication.backup_codec,
                                          qualities=[rtc.SubscribedQuality(quality=q, enabled=True)
                                                     for q in _QUALITIES]))
    publication.participant.send(rtc.SignalResponse(subscribed_quality_update=rtc.SubscribedQualityUpdate(
        track_sid=publication.sid, subscribed_qualities=qualities, subscribed_codecs=codecs)))


def _qualities(source: ReceivedCodec, layer: int) -> list[rtc.SubscribedQuality]:
    """Every quality up to the one of `layer` enabled (none for PAUSED)."""
    top = quality_of(source, layer) if layer != PAUSED else None
    return [rtc.SubscribedQuality(quality=q, enabled=top is not None and q <= top) for q in _QUALITIES]


def quality_of(source: ReceivedCodec, layer: int) -> int:
    """The VideoQuality of a layer index: the advertised layer's, else the index itself (LOW, MEDIUM, HIGH)."""
    layers = source.advertised_layers()
    if layer < len(layers):
        return layers[layer].quality
    return min(layer, models.VideoQuality.HIGH)
