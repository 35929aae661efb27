"""Layer allocation: which simulcast and temporal layer each of a subscriber's DownTracks aims at, and which are
paused.

Inputs: the publisher's mute, the subscriber's track settings (LiveKit's UpdateTrackSettings: disabled, quality,
dimensions) as an upper bound, and, once a bandwidth estimate for the subscriber arrives (`on_estimate`), that
estimate shared out among its tracks: audio is reserved first and never paused for bandwidth, screenshare goes
before camera, every video gets its lowest step before any gets a second, then upgrades go step by step. A video's
ladder climbs the temporal layers of its lowest spatial layer (a lower frame rate before no video at all), then
whole spatial layers (see VideoDemand.ladder); a track whose packets carry no temporal ids has one step per spatial
layer. A video whose lowest step does not fit is paused for bandwidth, which
the client hears as StreamStateUpdate PAUSED (then ACTIVE): that is not a mute. Without an estimate, tracks get what
the subscriber asks for.

An estimate only rises with evidence, so before an upgrade the allocator probes (`tick`, twice a second): when some
video is below what its subscriber asks for and the estimate does not cover the next step, the subscriber's link is
tested with a probe cluster at the rate the next step needs (engine padding, prober.pyx); a link that carries it
raises the estimate, and the upgrade follows. A paused video resumes the same way."""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from livekit.protocol import models, rtc

if TYPE_CHECKING:
    from .publication import ReceivedCodec, Subscription, TrackPublication

log = logging.getLogger(__name__)

TOP_LAYER = 3  # above any simulcast layer: the Forwarder takes the best one available
TOP_TEMPORAL = 3  # every temporal layer (VP8's temporal ids are 0..3)
PAUSED = -1    # a video allocation that does not fit even its lowest layer

# An upgrade (a higher layer, or resuming a paused video) needs the estimate to cover the new total times this;
# downgrades happen as soon as the total exceeds the estimate. Between the two, nothing moves (no flapping). 30 %:
# the switch starts with the new layer's keyframe, several times a frame's size at once, and a layer's rate is not
# an encoder's steady target; measured behind 600 kbit/s with a 200 ms queue, margins of 15 and 25 % let 360p
# (~500 kbit/s with audio) in, and within seconds its loss threw it out again, each time with a freeze.
UPGRADE_MARGIN = 1.3
# An upgrade to a higher spatial layer (or a paused video's resume) starts with that layer's keyframe, which the
# Forwarder sends at once: behind a link with little room beside the new layer, it fills the queue, and the frames
# behind it wait or are lost (behind the lab's 600 kbit/s, 360p at ~500 kbit/s with audio played at 4-5 fps for
# seconds after such a switch). So an upgrade must also fit draining the new layer's last keyframe (the engine's
# keyframe_bytes) within KEYFRAME_DRAIN_S, and probes aim there too; staying on a layer costs its rate alone. The
# lab's publisher (1280x720 simulcast of detailed content) sent keyframes of 6-15 kB at 180p, 10-15 kB at 360p and
# 17-31 kB at 720p: 0.05-0.75 s of their layers' rates. A keyframe costs at least KEYFRAME_MIN_S of its layer's rate
# (the least measured, 720p's), which prices one not seen yet.
KEYFRAME_DRAIN_S = 1.0
KEYFRAME_MIN_S = 0.05
# A step-down needs the estimate below what the allocation uses by more than this share: GCC answers every
# congestion signal (a probe's own queue, a burst) by falling to 85 % of what was acknowledged, so at the edge of a
# link its estimate dips below a layer the link carries, and following each dip would cost a keyframe wait and a
# freeze both ways. A layer the link really cannot carry loses packets: the loss watch (LOSS_STEP_DOWN) steps it
# down whatever the estimate says.
STEP_DOWN_TOLERANCE = 0.1
# A congested estimate (the estimator is cutting) below COLLAPSE_SHARE of what the allocation uses means the link
# narrowed under it: the delay-based estimate keeps falling for a second or more while the old queue drains, so a video
# steps straight to its lowest full-rate layer, whose keyframe is the smallest, and climbs back by probing. Following
# the estimate down layer by layer pays a keyframe wait per layer (measured: 720p -> 360p -> 180p behind a link
# narrowed to 600 kbit/s, 1.8 s without a frame).
COLLAPSE_SHARE = 0.6
# After a track stepped down, it stays down at least this long (LiveKit probes at most every 3 s before an upgrade).
UPGRADE_HOLD_S = 3.0
# An upgrade undone within UPGRADE_FAILED_S (the link could not carry the new step after all, though a probe said
# it could) doubles the hold before the next one, up to UPGRADE_MAX_HOLD_S: each failed try costs the subscriber a
# keyframe wait and a burst of loss, so a link at the edge of a step settles on the step below.
UPGRADE_FAILED_S = 15.0
UPGRADE_MAX_HOLD_S = 24.0
# And for UPGRADE_RETRY_MEMORY_S that step (like a step left for loss, see LOSS_STEP_DOWN) is tried again only on
# an estimate UPGRADE_RETRY_FACTOR above the one it failed at, which a probe must show first: the probe that led to
# the failed step proved less than it seemed (a shaper's bucket, a crept estimate).
UPGRADE_RETRY_FACTOR = 1.5
UPGRADE_RETRY_MEMORY_S = 30.0
# A video is paused for bandwidth only once its lowest step has not fitted for PAUSE_AFTER_S: right after a link
# narrows, the estimate dips below everything while the queue of the bigger layer drains (measured: 720p -> 180p
# behind 600 kbit/s paused the 180p layer it had just switched to for 4 s).
PAUSE_AFTER_S = 1.5

# Probing (LiveKit's probe regulator): a probe at most every PROBE_INTERVAL_S; after one the link did not carry, the
# interval grows by PROBE_BACKOFF up to PROBE_MAX_INTERVAL_S (LiveKit: 2 min; a link that opens should bring the
# video back within seconds, and a probe that fails costs a subscriber's link a few hundred ms of queue). A cluster
# lasts PROBE_DURATION_S (LiveKit starts at 200 ms), and the estimator judges its second half on its own too: a
# router's token bucket passes a burst far above its rate (the lab's 16 kB bucket passed a 300 ms probe 400 kbit/s
# above a 600 kbit/s link), and only once it is empty does the rest arrive at the link's rate. (A probe less than
# ~320 kbit/s over the link does not empty that bucket within its first half: such a probe still passes.) Its rate
# covers the next step with the upgrade margin and PROBE_OVERSHOOT (a probe the link carries measures a little under
# its target), and raises the rate by at least PROBE_MIN_INCREASE_BPS (LiveKit's 200 kbps) but at most to
# PROBE_MAX_GROWTH x the estimate: a big step (360p -> 720p is +1.5 Mbps) is reached by doubling probes 3 s apart
# (as libwebrtc's probe controller does), and one into a narrow link stops at its first loss (prober.pyx). After a
# probe the link carried, the next aims at everything the subscriber asks for (still at most doubling), not just the
# next step: a link that opened climbs 180p -> 720p in two or three probes, not one per step.
PROBE_INTERVAL_S = 3.0
# After a probe the link carried, the next may follow this soon (libwebrtc probes again as soon as a result is in):
# a link that opened climbs by doubling probes, and each costs nothing where the link carries it.
PROBE_RAMP_INTERVAL_S = 1.0
PROBE_BACKOFF = 1.5
PROBE_MAX_INTERVAL_S = 5.0
PROBE_DURATION_S = 0.8
PROBE_OVERSHOOT = 1.05
PROBE_MIN_INCREASE_BPS = 200_000
PROBE_MAX_GROWTH = 2.0
# A probe whose measured rate fell short of this share of its target found the link's limit: back off.
PROBE_CARRIED = 0.9
# A probe's padding (what it adds above the allocation's rate) is at most PROBE_HEADROOM_BPS, doubled after each
# probe the link carried and reset after one it did not and after each upgrade (TCP's slow start): a probe that
# overshoots a link fills its queue with what the link cannot carry, and the media behind it loses what does not fit.
# Measured behind 600 kbit/s (a 15 kB queue): 360p survived no probe toward 720p at twice the estimate (30-40 kB of
# padding in 300 ms), each cost it 1-3 s at 3-12 fps; 320 kbps (12 kB in 300 ms) adds ~150 ms of queue and loses
# nothing (those figures are of 300 ms probes, before PROBE_DURATION_S became 0.8 s). On a link that opened, doubling
# reaches 720p's 2-3 Mbps from 360p in four probes, a second apart.
PROBE_HEADROOM_BPS = 320_000
# After a bandwidth step-down, an upgrade counts the estimate only up to what the last probe the link carried
# measured (where the subscriber's transport can probe): GCC's estimate creeps up by 8 % a second while
# nothing congests, and behind a drop-tail shaper a full queue shows little delay growth, so a crept estimate led to
# upgrades the link could not carry (measured in an earlier session: 360p behind 600 kbit/s lost 42-46 % of its
# packets for a second). And for PROBE_FAILED_HOLD_S after a probe the link did not carry, no upgrade: its queue is
# still draining.
PROBE_FAILED_HOLD_S = 3.0

# Loss-driven step-down. At the edge of a link a drop-tail queue (a router's, or the lab's tbf) is full most of the
# time: the delay gradient barely grows, and GCC's loss cut only starts at 10 % loss, so a layer that fits the
# estimate on paper can lose 4-8 % of its packets (and, with them, frames) for as long as it is forwarded. The
# subscriber's TWCC feedback is judged in windows of LOSS_WINDOW_S (at least LOSS_MIN_PACKETS reported, none a
# probe's): LOSS_LOSSY_WINDOWS windows in a row losing more than LOSS_STEP_DOWN, or one losing more than LOSS_HEAVY,
# cap the allocation to what got through, (1 - loss) x what it used, which steps it down; a probe that the link
# carries lifts the cap. Two windows, because a wide link with 2 % random loss (Wi-Fi) has one window in twenty
# above 4 % by chance. (LiveKit's NACK tracker reacts to repeated NACKs above 8 % over 2 s.)
LOSS_STEP_DOWN = 0.04
LOSS_HEAVY = 0.10
LOSS_LOSSY_WINDOWS = 2
LOSS_WINDOW_S = 1.0
LOSS_MIN_PACKETS = 30
# Loss steps down, it never pauses: the cap stays at or above the lowest steps (a paused video is the estimate's
# call, PAUSE_AFTER_S). One window cuts at most this share: heavy loss right after an upgrade is partly the switch's keyframe burst, and
# a cut by all of it took 360p down past 180p to 7.5 fps behind 600 kbit/s. A layer far too big for its link is
# the delay-based estimate's to catch; if not, the next window cuts again.
LOSS_MAX_CUT = 0.3
# After any step-down, the next window starts this much later: the old layer's packets (and their feedback) keep
# coming until the lower layer's keyframe, and a queue the old layer filled drains with loss; none of that is the
# new step's (measured: 61 % lost in the second after 720p -> 180p behind a link narrowed to 600 kbit/s). The same
# after a probe the link did not carry: its queue drains with loss too (measured: 19 %, which stepped 360p down).
LOSS_SETTLE_S = 1.0


class LayerControl(Protocol):
    """The engine's side of an allocation."""

    def set_paused(self, downtrack_id: int, paused: bool) -> None: ...
    def set_target_layer(self, downtrack_id: int, layer: int, temporal: int | None = None,
                         cut: bool = False) -> None: ...
    def receiver_stats(self, receiver_id: int) -> dict: ...


class Prober(Protocol):
    """The subscriber transport's probe clusters (peer/transport.py, over the engine's prober)."""

    def probe(self, target_bps: float, duration: float) -> int | None: ...
    def probe_status(self, cluster: int) -> tuple[str, int]: ...
    def bandwidth(self) -> dict | None: ...


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
    """What the subscriber asks for, bandwidth aside. Paused while the track is muted or the subscriber disabled it
    (e.g. a hidden video element, or quality OFF without dimensions); otherwise capped to the quality or
    dimensions the subscriber asked for."""
    paused = publication.info.muted or (settings is not None and (
        settings.disabled or (settings.quality == models.VideoQuality.OFF and not settings.width)))
    return Allocation(paused, layer_for(publication, settings) if publication.kind == "video" else TOP_LAYER)


@dataclass(frozen=True)
class VideoDemand:
    """One video DownTrack as the bandwidth sharing sees it."""

    key: int                    # the DownTrack id
    screenshare: bool
    max_layer: int              # the subscriber's cap, within the layers the track has
    bitrates: tuple[int, ...]   # bps of each spatial layer, lowest first (each layer is its own stream)
    # per spatial layer, measured stacked temporal bitrates (T0, T0+T1, ...); empty = none (one step for the layer)
    temporal: tuple[tuple[int, ...], ...] = ()
    # per spatial layer, the bps of draining its keyframe (see KEYFRAME_DRAIN_S), added to each step of a spatial layer
    # above `switch_from` (the spatial layer forwarded now, PAUSED for none): the ladder an upgrade climbs
    keyframes: tuple[int, ...] = ()
    switch_from: int = TOP_LAYER

    @cached_property
    def ladder(self) -> tuple[tuple[int, int, int], ...]:
        """(spatial, temporal, bps) steps up to the cap, cheapest first: the lowest spatial layer's temporal layers,
        priced as their measured share of the layer's price, then each whole layer (TOP_TEMPORAL) at its price.
        Higher spatial layers are taken whole: measured behind 600 kbit/s, 360p at 10 fps (its T1, which LiveKit's
        order would pick) looks worse than 180p at 15 fps, and its T0 (5 fps) can cost less than the whole layer
        below. Temporal steps serve where they help: a link too narrow for the lowest layer at full rate."""
        steps = []
        for spatial, price in enumerate(self.bitrates[:self.max_layer + 1]):
            keyframe = self.keyframes[spatial] if spatial > self.switch_from else 0
            stacked = self.temporal[spatial] if spatial == 0 and self.temporal else ()
            steps += [(spatial, t, int(price * part / stacked[-1]) + keyframe) for t, part in enumerate(stacked[:-1])]
            steps.append((spatial, TOP_TEMPORAL, price + keyframe))
        return tuple(steps)

    def step_of(self, layer: int, temporal: int) -> int:
        """The highest step within a (spatial, temporal) cap."""
        return max((i for i, (s, t, _) in enumerate(self.ladder) if (s, t) <= (layer, temporal)), default=PAUSED)


def share(videos: Iterable[VideoDemand], capacity: float) -> dict[int, int]:
    """Each video's step on its ladder (or PAUSED) within `capacity` bps: screenshare before camera, every video's
    lowest step first, then one step up at a time for each video in the same order, never above its cap."""
    order = sorted(videos, key=lambda video: not video.screenshare)  # stable: otherwise in subscription order
    steps = {video.key: PAUSED for video in order}
    remaining = capacity
    for step in range(max((len(video.ladder) for video in order), default=0)):
        for video in order:
            if steps[video.key] == step - 1 and step < len(video.ladder):
                extra = video.ladder[step][2] - (video.ladder[step - 1][2] if step else 0)
                if extra <= remaining:
                    steps[video.key] = step
                    remaining -= extra
    return steps


def next_step(videos: Iterable[VideoDemand], steps: dict[int, int]) -> tuple[int, int, int] | None:
    """The next upgrade from `steps` (the one `share` would make first with more capacity: screenshare first, then
    the video on the lowest step) as (spatial, temporal, bps it adds), or None when every video has what it asks
    for."""
    candidates = [(not video.screenshare, steps[video.key], video) for video in videos
                  if steps[video.key] < len(video.ladder) - 1]
    if not candidates:
        return None
    _, step, video = min(candidates, key=lambda candidate: candidate[:2])
    spatial, temporal, bps = video.ladder[step + 1]
    return spatial, temporal, bps - (video.ladder[step][2] if step != PAUSED else 0)


@dataclass
class _Pushed:
    """What the engine was last told for one DownTrack, and the allocator's memory of it."""

    paused: bool
    layer: int
    temporal: int = TOP_TEMPORAL
    bandwidth_paused: bool = False
    stepped_down_at: float = float("-inf")
    upgraded_at: float = float("-inf")
    upgraded_with: float = 0.0  # the estimate at the last upgrade
    hold: float = UPGRADE_HOLD_S
    retry_step: int = 0         # after a failed upgrade: the step that failed, and the estimate a try of it (or
    retry_above: float = 0.0    # above) needs, until retry_until
    retry_until: float = float("-inf")
    short_since: float | None = None  # since when even the lowest step has not fitted (while not paused)


class StreamAllocator:
    """One subscriber's StreamAllocator: keeps its track settings and its bandwidth estimate, and pushes each
    DownTrack's allocation to the engine. `subscriptions()` lists the subscriber's current subscriptions; `send`
    reaches its client (StreamStateUpdate); `on_demand(publication)` is told when what this subscriber needs of a
    publication may have changed (dynacast); bandwidth pauses are counted in `counters`."""

    def __init__(self, engine: LayerControl, subscriptions: Callable[[], Iterable[Subscription]] = tuple,
                 send: Callable[[rtc.SignalResponse], None] | None = None,
                 on_demand: Callable[[TrackPublication], None] | None = None,
                 counters: Counter[str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.settings: dict[str, rtc.UpdateTrackSettings] = {}  # by track sid, the last UpdateTrackSettings
        self.estimate: float | None = None  # the subscriber's available bitrate (bps); None = unknown
        self.congested = False
        self._subscriptions = subscriptions
        self._send = send
        self._on_demand = on_demand
        self._counters = Counter() if counters is None else counters
        self.clock = clock
        self._pushed: dict[int, _Pushed] = {}  # by DownTrack id
        self.prober: Prober | None = None  # set once the subscriber transport exists
        # what the current allocation uses (bps) and what its next upgrade would add (None: nothing to upgrade)
        self._usage = 0.0
        self._wanted = 0.0  # what the allocation would use if every track had what its subscriber asks for
        self._ramping = False  # the last probe was carried: the next one aims at the whole of `_wanted`
        self._floor = 0.0  # what the lowest steps use (audio, and every video's first step)
        self._next_step: tuple[int, int, int] | None = None  # see next_step
        self._retry_above = 0.0  # a failed upgrade's retry needs an estimate this high: probes aim there
        self._first_estimate = True  # the estimate being allocated is the first (no dip to sit out)
        self._probe: int | None = None  # the cluster in flight
        self._probe_target = 0.0
        self._probe_backs_off = True  # a failed probe lengthens the interval (PROBE_BACKOFF)
        self._probe_at = float("-inf")
        self._probe_interval = PROBE_INTERVAL_S
        self._probe_headroom = PROBE_HEADROOM_BPS
        self._proven = float("inf")  # what the last carried probe since the last step-down measured
        self._probe_failed_at = float("-inf")
        self._loss_cap: float | None = None  # bps the allocation keeps under after a lossy window
        self._loss_window: tuple[float, int, int] | None = None  # since (time, packets reported, lost)
        self._loss_settled_at = float("-inf")  # no window starts before
        self._lossy_windows = 0  # lossy windows in a row
        self._lost_at: float | None = None  # while a loss step-down is allocated: the estimate the link lost at
        self._cuts: set[int] = set()  # DownTracks stepped down for bandwidth by the allocation being pushed

    # -- inputs
    def update(self, subscription: Subscription) -> None:
        """A subscription's mute, settings or DownTrack changed: allocate again (all tracks share one estimate)."""
        if subscription.downtrack_id is not None:
            self.reallocate(extra=subscription)

    def on_estimate(self, bps: float | None, congested: bool = False) -> None:
        """A new estimate of the subscriber's available bitrate (None = unknown: each track gets what is asked)."""
        self._first_estimate = self.estimate is None
        self.estimate = None if bps is None else max(0.0, float(bps))
        if self.estimate is not None and self._loss_cap is not None:
            self.estimate = min(self.estimate, self._loss_cap)
        self.congested = congested
        self.reallocate()

    def tick(self) -> None:
        """Twice a second: judge the probe in flight; watch the loss the subscriber reports; while some video is
        below what its subscriber asks for, take the estimate afresh (events come with feedback only when it moves,
        and a paused video leaves none) so an upgrade whose hold ran out happens, and start a probe when the
        estimate does not cover the next step."""
        if self._probe is not None:
            status, measured_bps = self.prober.probe_status(self._probe)
            if status == "pending":
                return
            carried = status == "succeeded" and measured_bps >= PROBE_CARRIED * self._probe_target
            log.debug("probe %d at %.0f kbps %s: %.0f kbps", self._probe, self._probe_target / 1000, status,
                      measured_bps / 1000)
            if carried:
                self._probe_interval = PROBE_RAMP_INTERVAL_S
            elif self._probe_backs_off:
                self._probe_interval = min(PROBE_MAX_INTERVAL_S, max(PROBE_INTERVAL_S, self._probe_interval)
                                           * PROBE_BACKOFF)
            else:
                self._probe_interval = PROBE_INTERVAL_S
            self._counters["probes_carried" if carried else "probes_short"] += 1
            self._ramping = carried
            self._probe_headroom = 2 * self._probe_headroom if carried else PROBE_HEADROOM_BPS
            if carried:
                self._loss_cap = None
                self._proven = measured_bps
            else:  # the queue it filled drains with loss that is the probe's, not the layers'
                self._probe_failed_at = self.clock()
                self._loss_window, self._loss_settled_at = None, self.clock() + LOSS_SETTLE_S
            self._probe = None
        if self.prober is None or self.estimate is None:
            return
        if self._next_step is None and not self._loss_window_due():
            return  # nothing to upgrade, no loss window to open or close: no engine read (twice a second per
                    # subscriber, it showed in transport-cc's cost at hundreds of subscribers)
        bandwidth = self.prober.bandwidth()
        if bandwidth is None:
            return
        if self._lossy(bandwidth):
            self._lost_at = bandwidth["estimate_bps"]
            self.on_estimate(bandwidth["estimate_bps"], bandwidth["congested"])
            self._lost_at = None
            return
        if self._next_step is None:
            return
        self.on_estimate(bandwidth["estimate_bps"], bandwidth["congested"])
        now = self.clock()
        if self.congested or self._next_step is None or now - self._probe_at < self._probe_interval:
            return
        needed = max((self._usage + self._next_step[2]) * UPGRADE_MARGIN, self._retry_above)
        if self._ramping:  # the link carried the last probe: aim at all that is wanted (still at most doubling)
            needed = max(needed, self._wanted * UPGRADE_MARGIN)
        if self._upgradable() >= needed:
            return  # the estimate covers it already: the upgrade waits only for its hold time
        target = max(min(needed * PROBE_OVERSHOOT, PROBE_MAX_GROWTH * self.estimate,
                         self._usage + self._probe_headroom), self._usage + PROBE_MIN_INCREASE_BPS)
        self._probe = self.prober.probe(target, PROBE_DURATION_S)
        if self._probe is None:
            self._proven = float("inf")  # the transport cannot probe: the estimate is all there is
        log.debug("probe %s at %.0f kbps (estimate %.0f kbps) toward layer %d/%d: %.0f kbps with the margin",
                  self._probe, target / 1000, self.estimate / 1000, *self._next_step[:2], needed / 1000)
        self._probe_at = now
        self._probe_target = target
        # a probe toward the lowest layer at full rate (a paused video, a lower frame rate) keeps its interval when
        # the link does not carry it: that layer is the one a subscriber most needs back
        self._probe_backs_off = self._next_step[:2] > (0, TOP_TEMPORAL)
        if self._probe is not None:
            self._counters["probes_started"] += 1
            self._loss_window = None

    def _loss_window_due(self) -> bool:
        """Whether _lossy has something to do: a window to open (once settled) or one old enough to close."""
        if self._loss_window is None:
            return self.clock() >= self._loss_settled_at
        return self.clock() - self._loss_window[0] >= LOSS_WINDOW_S

    def _lossy(self, bandwidth: dict) -> bool:
        """Whether the window of reported packets that just closed makes the loss too much (see LOSS_STEP_DOWN):
        then the loss cap falls to what got through. A window starts afresh after each probe (its loss is the
        prober's to judge) and after each step-down."""
        now, packets, lost = self.clock(), bandwidth["packets"], bandwidth["lost"]
        if self._loss_window is None:
            self._lossy_windows = 0
            if now >= self._loss_settled_at:
                self._loss_window = (now, packets, lost)
            return False
        since, packets_before, lost_before = self._loss_window
        reported = packets - packets_before
        if now - since < LOSS_WINDOW_S or reported < LOSS_MIN_PACKETS:
            return False
        self._loss_window = (now, packets, lost)
        loss = (lost - lost_before) / reported
        self._lossy_windows = self._lossy_windows + 1 if loss > LOSS_STEP_DOWN else 0
        if self._usage <= self._floor or (self._lossy_windows < LOSS_LOSSY_WINDOWS and loss <= LOSS_HEAVY):
            return False
        self._loss_cap = max(self._floor,
                             (1.0 - min(loss, LOSS_MAX_CUT)) * min(self._usage, self._loss_cap or self._usage))
        log.debug("%.0f %% of %d packets lost: allocating under %.0f kbps", 100 * loss, reported,
                  self._loss_cap / 1000)
        self._counters["loss_step_downs"] += 1
        return True

    def forget(self, downtrack_id: int) -> None:
        """The DownTrack is gone (unsubscribed)."""
        self._pushed.pop(downtrack_id, None)

    # -- outputs
    def wanted_layer(self, subscription: Subscription) -> int:
        """The highest spatial layer this subscription currently aims at (PAUSED when it needs none): dynacast's
        input."""
        pushed = self._pushed.get(subscription.downtrack_id) if subscription.downtrack_id is not None else None
        if pushed is None or pushed.paused:
            return PAUSED
        return pushed.layer

    def reallocate(self, extra: Subscription | None = None) -> None:
        self._cuts.clear()  # only this allocation's bandwidth step-downs cut (none without an estimate)
        subscriptions = [s for s in self._subscriptions() if s.downtrack_id is not None]
        if extra is not None and all(s is not extra for s in subscriptions):
            subscriptions.append(extra)
        asked = {s.downtrack_id: allocate(s.publication, self.settings.get(s.publication.sid)) for s in subscriptions}
        layers = {key: (allocation.layer, TOP_TEMPORAL) for key, allocation in asked.items()}
        if self.estimate is not None:
            layers.update(self._bandwidth_layers(subscriptions, asked))
        for subscription in subscriptions:
            key = subscription.downtrack_id
            self._push(subscription, asked[key].paused, *layers[key])

    # -- internals
    def _upgradable(self) -> float:
        """The estimate an upgrade may count on (see PROBE_FAILED_HOLD_S's comment)."""
        return min(self.estimate or 0.0, self._proven)

    def _bandwidth_layers(self, subscriptions: list[Subscription],
                          asked: dict[int, Allocation]) -> dict[int, tuple[int, int]]:
        """Each unpaused video's (spatial, temporal) layer under the estimate, with hysteresis against the last
        allocation ((PAUSED, TOP_TEMPORAL) when paused)."""
        audio = 0.0
        videos = []
        upgrades = []  # the same as an upgrade prices them
        for subscription in subscriptions:
            key, publication, source = subscription.downtrack_id, subscription.publication, subscription.source
            if publication.kind == "audio":
                if not asked[key].paused:
                    audio += source.audio_bitrate(self.engine)
            elif not asked[key].paused:
                bitrates = source.layer_bitrates(self.engine)
                videos.append(VideoDemand(key, publication.info.source == models.TrackSource.SCREEN_SHARE,
                                          min(asked[key].layer, len(bitrates) - 1), bitrates,
                                          tuple(source.temporal_bitrates(self.engine))))
                upgrades.append(self._upgrade(videos[-1], source))
        capacity = (self.estimate or 0.0) - audio
        fits = share(videos, capacity)
        cautious = share(upgrades, self._upgradable() / UPGRADE_MARGIN - audio)  # the margin covers audio too
        tolerated = share(videos, capacity / (1.0 - STEP_DOWN_TOLERANCE))
        now = self.clock()
        layers = {}
        steps = {}
        retry_above = 0.0
        for video in videos:
            pushed = self._pushed.get(video.key)
            if pushed is None:
                current = None
            else:
                current = PAUSED if pushed.bandwidth_paused else video.step_of(pushed.layer, pushed.temporal)
            if pushed is not None and current != PAUSED and fits[video.key] == PAUSED and not self._first_estimate:
                if pushed.short_since is None:
                    pushed.short_since = now
                if now - pushed.short_since < PAUSE_AFTER_S:
                    fits[video.key] = 0  # not yet: the lowest step meanwhile
            elif pushed is not None:
                pushed.short_since = None
            kept = (current is not None and current != PAUSED and self._lost_at is None
                    and tolerated[video.key] >= current)  # an estimate's dip, not loss: see STEP_DOWN_TOLERANCE
            if current is None or (fits[video.key] < current and not kept):
                step = fits[video.key]
                if current is not None and self.congested and (self.estimate or 0.0) < COLLAPSE_SHARE * self._usage:
                    step = min(step, video.step_of(0, TOP_TEMPORAL))
                if pushed is not None and step < len(video.ladder) - 1:  # stepped down for bandwidth
                    failed_upgrade = now - pushed.upgraded_at < UPGRADE_FAILED_S
                    if failed_upgrade or self._lost_at is not None:  # the step it leaves could not be carried
                        if failed_upgrade:
                            pushed.hold = min(UPGRADE_MAX_HOLD_S, pushed.hold * 2)
                            pushed.upgraded_at = float("-inf")  # judged: a further step-down is not its failure too
                        pushed.retry_step = current
                        pushed.retry_above = UPGRADE_RETRY_FACTOR * max(
                            pushed.upgraded_with if failed_upgrade else 0.0, self._lost_at or 0.0)
                        pushed.retry_until = now + UPGRADE_RETRY_MEMORY_S
                    elif pushed.upgraded_at > float("-inf"):  # the last upgrade held: what failed before says nothing
                        pushed.hold = UPGRADE_HOLD_S
                        pushed.retry_until = float("-inf")
                    pushed.stepped_down_at = now
                    self._loss_window, self._loss_settled_at = None, now + LOSS_SETTLE_S
                    # and no probe for an interval: the link just showed its limit, the new layer's keyframe is on
                    # its way through the old layer's queue, and a probe now would add to both
                    self._probe_at = max(self._probe_at, now)
                    self._probe_interval = max(self._probe_interval, PROBE_INTERVAL_S)
                    self._cuts.add(video.key)
                    if self.prober is not None:
                        self._proven = 0.0  # an upgrade waits for a probe the link carries
            elif (fits[video.key] < current or self.congested or now - pushed.stepped_down_at < pushed.hold
                  or now - self._probe_failed_at < PROBE_FAILED_HOLD_S):
                step = current
            else:
                step = max(current, min(cautious[video.key], fits[video.key]))
                if now < pushed.retry_until and self._upgradable() < pushed.retry_above:
                    step = min(step, max(current, pushed.retry_step - 1))  # the step that failed needs more
                    if step + 1 >= pushed.retry_step:
                        retry_above = max(retry_above, pushed.retry_above)
                if step > current:
                    pushed.upgraded_at, pushed.upgraded_with = now, self.estimate or 0.0
                    self._probe_headroom = PROBE_HEADROOM_BPS  # the headroom a probe found is now the layer's
                    # and the next probe waits an interval: the new layer's keyframe crosses the link first (a probe
                    # started with the upgrade measured a tenth of its rate)
                    self._probe_at = max(self._probe_at, now)
            layers[video.key] = video.ladder[step][:2] if step != PAUSED else (PAUSED, TOP_TEMPORAL)
            steps[video.key] = step
        self._usage = audio + sum(video.ladder[steps[video.key]][2] for video in videos if steps[video.key] != PAUSED)
        self._floor = audio + sum(video.ladder[0][2] for video in videos)
        self._wanted = audio + sum(video.ladder[-1][2] for video in upgrades)
        self._next_step = next_step(upgrades, steps)
        self._retry_above = retry_above
        return layers

    def _upgrade(self, video: VideoDemand, source: ReceivedCodec) -> VideoDemand:
        """`video` as an upgrade prices it: each spatial layer above the one forwarded now costs at least what the
        publisher advertised for it (an idle layer's measure can read low: one dynacast just turned back on is still
        ramping up), plus draining its keyframe (see KEYFRAME_DRAIN_S)."""
        pushed = self._pushed.get(video.key)
        switch_from = PAUSED if pushed is None or pushed.bandwidth_paused else pushed.layer
        advertised = [] if source.svc else [layer.bitrate for layer in source.advertised_layers()]
        bitrates = tuple(max(price, advertised[spatial]) if switch_from < spatial < len(advertised) else price
                         for spatial, price in enumerate(video.bitrates))
        keyframe_bits = source.keyframe_bits(self.engine)
        keyframes = tuple(int(max(keyframe_bits[spatial] if spatial < len(keyframe_bits) else 0,
                                  KEYFRAME_MIN_S * price) / KEYFRAME_DRAIN_S)
                          for spatial, price in enumerate(bitrates))
        return replace(video, bitrates=bitrates, keyframes=keyframes, switch_from=switch_from)

    def _push(self, subscription: Subscription, asked_paused: bool, layer: int, temporal: int = TOP_TEMPORAL) -> None:
        key = subscription.downtrack_id
        pushed = self._pushed.get(key)
        # A track paused for bandwidth stays so while the subscriber disables it too (clients hide paused tiles,
        # which disables them): it resumes through the bandwidth path, and the client is not told ACTIVE meanwhile.
        bandwidth_paused = layer == PAUSED if not asked_paused else pushed is not None and pushed.bandwidth_paused
        paused = asked_paused or bandwidth_paused
        if pushed is None:
            pushed = self._pushed[key] = _Pushed(not paused, PAUSED)
        elif bandwidth_paused:
            layer, temporal = pushed.layer, pushed.temporal  # the layer to resume at stays what it was
        if (pushed.paused, pushed.layer, pushed.temporal, pushed.bandwidth_paused) == (
                paused, layer, temporal, bandwidth_paused):
            return
        log.debug("downtrack %d: layer %d%s%s (estimate %s)", key, layer, " paused" if paused else "",
                  " for bandwidth" if bandwidth_paused else "", self.estimate)
        if paused != pushed.paused:
            self.engine.set_paused(key, paused)
        if subscription.publication.kind == "video" and not bandwidth_paused and (layer, temporal) != (
                pushed.layer, pushed.temporal):
            # A step-down for bandwidth cuts the old layer at once: the link cannot carry it until the new layer's
            # keyframe, and its queue would hold that keyframe back (measured: a 1.1 s freeze at 720p -> 180p).
            self.engine.set_target_layer(key, layer, temporal, cut=key in self._cuts)
        if bandwidth_paused and not pushed.bandwidth_paused:
            self._counters["stream_paused_bandwidth"] += 1
        if bandwidth_paused != pushed.bandwidth_paused:
            self._stream_state(subscription, rtc.StreamState.PAUSED if bandwidth_paused else rtc.StreamState.ACTIVE)
        pushed.paused, pushed.bandwidth_paused = paused, bandwidth_paused
        if not bandwidth_paused:
            pushed.layer, pushed.temporal = layer, temporal
        if self._on_demand is not None:
            self._on_demand(subscription.publication)

    def _stream_state(self, subscription: Subscription, state: int) -> None:
        if self._send is not None:
            publication = subscription.publication
            self._send(rtc.SignalResponse(stream_state_update=rtc.StreamStateUpdate(stream_states=[rtc.StreamStateInfo(
                participant_sid=publication.participant.sid, track_sid=publication.sid, state=state)])))
