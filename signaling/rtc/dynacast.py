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
    from .publication import TrackPublication

# Downgrades (including all layers off) wait this long; upgrades are sent at once (LiveKit's DynacastPauseDelay).
DYNACAST_PAUSE_DELAY_S = 5.0
# After a track is published, what nobody needs is turned off once this has passed (LiveKit's initial 10 s).
DYNACAST_INITIAL_DELAY_S = 10.0

_QUALITIES = (models.VideoQuality.LOW, models.VideoQuality.MEDIUM, models.VideoQuality.HIGH)


class Dynacast:
    def __init__(self, publication: TrackPublication, engine: Any, pause_delay: float = DYNACAST_PAUSE_DELAY_S,
                 initial_delay: float = DYNACAST_INITIAL_DELAY_S) -> None:
        self.publication = publication
        self.engine = engine
        self.pause_delay = pause_delay
        self.layers = max(1, len(publication.advertised_layers()))
        self.committed = self.layers - 1  # a publisher starts with every layer on
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(initial_delay, self._settle)

    def demand(self, forwarded: bool = True) -> int:
        """The highest layer (0 = lowest) any subscriber needs now (PAUSED = none): what its allocation aims at
        and, with `forwarded`, the layer it is still being sent until the Forwarder has switched away from it."""
        wanted = PAUSED
        for subscription in self.publication.subscriptions.values():
            layer = subscription.subscriber.allocator.wanted_layer(subscription)
            if layer == PAUSED:
                continue
            wanted = max(wanted, min(layer, self.layers - 1))
            if forwarded:
                current = self.engine.downtrack_stats(subscription.downtrack_id)["current_layer"]
                wanted = max(wanted, min(current, self.layers - 1))
        return wanted

    def update(self) -> None:
        """Something a subscriber needs may have changed: more goes on at once, less after the delay."""
        wanted = self.demand()
        if wanted > self.committed:
            self._commit(wanted)
        if self.demand(forwarded=False) < self.committed:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.pause_delay, self._settle)
        else:
            self._cancel()

    def close(self) -> None:
        self._cancel()

    def _settle(self) -> None:
        """The delay has passed: commit what is needed now; while a layer is kept on only because a subscriber is
        still being forwarded it, look again after another delay."""
        self._timer = None
        wanted = self.demand()
        if wanted != self.committed:
            self._commit(wanted)
        if self.demand(forwarded=False) < self.committed:
            self._timer = asyncio.get_running_loop().call_later(self.pause_delay, self._settle)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _commit(self, layer: int) -> None:
        self.committed = layer
        publication = self.publication
        top = quality_of(publication, layer) if layer != PAUSED else None
        qualities = [rtc.SubscribedQuality(quality=q, enabled=top is not None and q <= top) for q in _QUALITIES]
        codec = publication.codec.name.lower() if publication.codec is not None else ""
        publication.participant.send(rtc.SignalResponse(subscribed_quality_update=rtc.SubscribedQualityUpdate(
            track_sid=publication.sid, subscribed_qualities=qualities,
            subscribed_codecs=[rtc.SubscribedCodec(codec=codec, qualities=qualities)])))


def quality_of(publication: TrackPublication, layer: int) -> int:
    """The VideoQuality of a layer index: the advertised layer's, else the index itself (LOW, MEDIUM, HIGH)."""
    layers = publication.advertised_layers()
    if layer < len(layers):
        return layers[layer].quality
    return min(layer, models.VideoQuality.HIGH)
