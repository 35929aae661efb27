"""Layer allocation: which simulcast layer each of a subscriber's DownTracks aims at, and which are paused.

Today the inputs are the publisher's mute and the subscriber's track settings (LiveKit's UpdateTrackSettings:
disabled, quality, dimensions); the subscriber's estimated bandwidth joins them here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models, rtc

if TYPE_CHECKING:
    from .publication import Subscription, TrackPublication

TOP_LAYER = 3  # above any simulcast layer: the Forwarder takes the best one available


class LayerControl(Protocol):
    """The engine's side of an allocation."""

    def set_paused(self, downtrack_id: int, paused: bool) -> None: ...
    def set_target_layer(self, downtrack_id: int, layer: int) -> None: ...


@dataclass(frozen=True)
class Allocation:
    paused: bool
    layer: int  # cap on the simulcast layer (0 = lowest); TOP_LAYER = the best available


def layer_for(publication: TrackPublication, settings: rtc.UpdateTrackSettings | None) -> int:
    """The simulcast layer (0 = lowest) a subscriber's settings ask for: the smallest layer covering the
    requested dimensions, else the requested quality; no settings = the best there is."""
    if settings is None:
        return TOP_LAYER
    if settings.width or settings.height:
        layers = sorted(publication.info.layers, key=lambda layer: layer.quality)
        for index, layer in enumerate(layers):
            if layer.width >= settings.width and layer.height >= settings.height:
                return index
        return TOP_LAYER
    return min(settings.quality, models.VideoQuality.HIGH)


def allocate(publication: TrackPublication, settings: rtc.UpdateTrackSettings | None) -> Allocation:
    """Paused while the track is muted or the subscriber disabled it (e.g. a hidden video element, or quality OFF
    without dimensions); otherwise capped to the quality or dimensions the subscriber asked for."""
    paused = publication.info.muted or (settings is not None and (
        settings.disabled or (settings.quality == models.VideoQuality.OFF and not settings.width)))
    return Allocation(paused, layer_for(publication, settings) if publication.kind == "video" else TOP_LAYER)


class StreamAllocator:
    """One subscriber's StreamAllocator: keeps its track settings and pushes each DownTrack's allocation to the engine."""

    def __init__(self, engine: LayerControl) -> None:
        self.engine = engine
        self.settings: dict[str, rtc.UpdateTrackSettings] = {}  # by track sid, the last UpdateTrackSettings

    def update(self, subscription: Subscription) -> None:
        if subscription.downtrack_id is None:
            return
        allocation = allocate(subscription.publication, self.settings.get(subscription.publication.sid))
        self.engine.set_paused(subscription.downtrack_id, allocation.paused)
        if subscription.publication.kind == "video":
            self.engine.set_target_layer(subscription.downtrack_id, allocation.layer)
