"""TrackPublication (a track a participant publishes) and Subscription (one subscriber's copy of it)."""
from __future__ import annotations

import time
from collections import deque
from itertools import accumulate
from statistics import median
from typing import TYPE_CHECKING, Any

from livekit.protocol import models, rtc

from ..peer.sdp import Codec, OutgoingMedia
from .ids import new_id

if TYPE_CHECKING:
    from .dynacast import Dynacast
    from .participant import Participant

# Layer bitrates are measured over windows of this length (LiveKit's stream trackers report camera layers every 1 s).
BITRATE_WINDOW_S = 1.0
# A layer's price is the median of its last this many windows: a keyframe (every layer sends one after a PLI, and
# each layer switch asks for one) fills a window with several times the layer's usual rate, and a price that follows
# it pauses a video for an estimate that carries the layer well.
BITRATE_WINDOWS = 5
# A simulcast layer's bitrate before it is measured, when the publisher advertised none: LiveKit's SDK presets for
# 180p, 360p and 720p (bps), lowest first; a fourth layer costs what the third does.
DEFAULT_LAYER_BPS = (160_000, 450_000, 1_700_000)
# Codecs whose layers LiveKit's SDKs send as spatial layers of one stream (SVC) rather than as simulcast streams.
SVC_CODECS = ("vp9", "av1")
# Codecs a video track may be backed up in (LiveKit's BackupVideoCodec): what every WebRTC client decodes.
BACKUP_CODECS = ("vp8", "h264")
# An audio track's bitrate before it is measured, reserved first by the allocator: Opus voice at LiveKit's default
# 32 kbps plus RTP/SRTP/UDP/IP overhead at 50 packets a second (~20 kbps), rounded up.
DEFAULT_AUDIO_BPS = 64_000


class LayerBitrates:
    """Bits per second of each of a receiver's layers: the median of the last BITRATE_WINDOWS windows, from the
    engine's cumulative byte counts (RTX excluded: it repairs, it does not add a layer). Empty until that many
    windows were measured. `temporal_bps` has, per layer, what its temporal layers cost stacked as an encoder
    stacks them (T0, T0+T1, ...; up to the highest temporal id seen), empty where packets carry no temporal id."""

    def __init__(self) -> None:
        self.bps: list[int] = []
        self.temporal_bps: list[tuple[int, ...]] = []
        self.keyframe_bytes: list[int] = []  # per layer, its last keyframe's size (0 = none seen), as last read
        self._windows: deque[list[int]] = deque(maxlen=BITRATE_WINDOWS)
        self._temporal_windows: deque[list[list[int]]] = deque(maxlen=BITRATE_WINDOWS)
        self._bytes: list[int] = []
        self._temporal_bytes: list[list[int]] = []
        self._at: float | None = None

    def due(self, now: float) -> bool:
        return self._at is None or now - self._at >= BITRATE_WINDOW_S

    def sample(self, layer_bytes: list[int], now: float, temporal_bytes: list[list[int]] | None = None) -> None:
        """`temporal_bytes`: per layer, bytes by temporal id (the engine's receiver_stats `temporal_bytes`)."""
        if not self.due(now):
            return
        temporal_bytes = temporal_bytes or [[] for _ in layer_bytes]
        if self._at is not None and len(layer_bytes) == len(self._bytes):
            elapsed = now - self._at
            self._windows.append([rate(new, old, elapsed) for new, old in zip(layer_bytes, self._bytes)])
            self._temporal_windows.append([list(accumulate(rate(new, old, elapsed) for new, old in zip(layer, before)))
                                           for layer, before in zip(temporal_bytes, self._temporal_bytes)])
            if len(self._windows) == BITRATE_WINDOWS:  # the first windows hold the start's keyframes: too few to judge
                self.bps = [int(median(window[i] for window in self._windows)) for i in range(len(layer_bytes))]
                self.temporal_bps = [stacked([window[i] for window in self._temporal_windows])
                                     for i in range(len(layer_bytes))]
        elif len(layer_bytes) != len(self._bytes):
            self._windows.clear()  # layers came or went: earlier windows describe other layers
            self._temporal_windows.clear()
        self._bytes, self._temporal_bytes, self._at = layer_bytes, temporal_bytes, now


def preset(layer: int) -> int:
    """LiveKit's preset bitrate (bps) for a simulcast layer index; a fourth layer costs what the third does."""
    return DEFAULT_LAYER_BPS[min(layer, len(DEFAULT_LAYER_BPS) - 1)]


def rate(new: int, old: int, elapsed: float) -> int:
    """Bits per second between two cumulative byte counts (a counter reset counts as nothing sent)."""
    return int(max(0, new - old) * 8 / elapsed)


def stacked(windows: list[list[int]]) -> tuple[int, ...]:
    """The median over windows of each stacked temporal rate, up to the highest temporal id that adds anything."""
    if not windows or any(len(window) != len(windows[0]) for window in windows):
        return ()
    rates = [int(median(window[t] for window in windows)) for t in range(len(windows[0]))]
    top = max((t for t, value in enumerate(rates) if value > (rates[t - 1] if t else 0)), default=-1)
    return tuple(rates[:top + 1])


def svc_layers(svc_bytes: list[list[int]], advertised: int) -> tuple[list[int], list[list[int]]] | None:
    """An SVC stream's bytes (by spatial, then temporal id) as the allocator's layers: spatial layer s costs what
    layers 0..s send (the Forwarder passes every layer at or below the cap), by temporal id likewise. As many layers
    as the publisher advertised, or as have arrived if more; None when the stream carries no layer ids (not SVC)."""
    sent = [s for s, by_temporal in enumerate(svc_bytes) if any(by_temporal)]
    if not sent:
        return None
    count = min(max(sent[-1] + 1, advertised), len(svc_bytes))
    temporal = [[sum(svc_bytes[s][t] for s in range(top + 1)) for t in range(len(svc_bytes[0]))]
                for top in range(count)]
    return [sum(by_temporal) for by_temporal in temporal], temporal


def backup_codec(request: rtc.AddTrackRequest) -> str | None:
    """The backup codec of a video track (lower-case name), if it asks for one tern forwards. LiveKit's SDKs ask
    for one at most (VP8 or H.264 behind VP9/AV1) and none for an encrypted track."""
    names = [codec.codec.rpartition("/")[2].lower() for codec in request.simulcast_codecs]
    if request.encryption != models.Encryption.NONE:
        return None
    return next((name for name in names[1:] if name in BACKUP_CODECS and name != names[0]), None)


class ReceivedCodec:
    """One codec a track arrives in: its engine Receiver (once media is negotiated), the codec and header extension
    ids the publisher's m-line negotiated, and what its layers cost. A track is received in its primary codec (the
    TrackPublication itself) and, for a video with a backup codec, in that too once the publisher sends it."""

    receiver_id: int | None
    codec: Codec | None
    extmap: dict[str, int]
    bitrates: LayerBitrates
    dynacast: Dynacast | None

    def advertised_layers(self) -> list[models.VideoLayer]:
        raise NotImplementedError

    def measure(self, engine: Any, now: float | None = None) -> list[int]:
        """Each layer's measured bitrate (bps; refreshed at most once a window), empty before the first window."""
        now = time.monotonic() if now is None else now
        if self.receiver_id is not None and self.bitrates.due(now):
            layers = engine.receiver_stats(self.receiver_id)["layers"]
            self.bitrates.keyframe_bytes = [layer.get("keyframe_bytes", 0) for layer in layers]
            svc = svc_layers(layers[0].get("svc_bytes", []), len(self.advertised_layers())) if len(layers) == 1 \
                else None
            if svc is not None:
                self.bitrates.sample(svc[0], now, svc[1])
            else:
                self.bitrates.sample([layer["bytes"] for layer in layers], now,
                                     [layer.get("temporal_bytes", []) for layer in layers])
        return self.bitrates.bps

    @property
    def svc(self) -> bool:
        """Whether its layers are spatial layers of one SVC stream (LiveKit's SDKs send VP9 and AV1 so)."""
        return self.codec is not None and self.codec.name.lower() in SVC_CODECS

    def layer_bitrates(self, engine: Any) -> tuple[int, ...]:
        """What each spatial layer costs a subscriber, lowest first: measured where the layer is flowing, else what
        the publisher advertised, else LiveKit's preset for that rung. Layers measured at 0 (not sent right now,
        e.g. turned off by dynacast) keep a price, so they can be allocated and turned back on. An SVC stream's
        advertised bitrates are ignored: LiveKit's SDKs put the whole stream's on every layer, which priced its
        lowest layer like the top one (and paused it behind a link that carries it well). An SVC layer unmeasured,
        or adding nothing to the one below (not arriving), costs the layer below it scaled by the presets' ratio
        (its price includes the layers below, which the Forwarder passes with it)."""
        measured = self.measure(engine)
        advertised = [layer.bitrate for layer in self.advertised_layers()]
        count = max(1, len(measured) if measured else len(advertised))
        prices: list[int] = []
        for i in range(count):
            price = measured[i] if i < len(measured) and measured[i] > 0 else 0
            if self.svc:
                if i and price and price <= measured[i - 1]:
                    price = 0  # adds nothing to the layer below: not arriving
                price = price or (prices[-1] * preset(i) // preset(i - 1) if prices else preset(i))
            prices.append(price or (advertised[i] if i < len(advertised) and advertised[i] > 0 else 0) or preset(i))
        return tuple(prices)

    def keyframe_bits(self, engine: Any) -> list[int]:
        """Per spatial layer, lowest first, the size in bits of its last keyframe (0 where none was seen). An SVC
        stream's keyframe carries all its spatial layers: a layer's share of it is its price's share of the top's."""
        self.measure(engine)
        bits = [8 * size for size in self.bitrates.keyframe_bytes]
        if self.svc and len(bits) == 1:
            prices = self.layer_bitrates(engine)
            return [bits[0] * price // prices[-1] for price in prices]
        return bits

    def temporal_bitrates(self, engine: Any) -> list[tuple[int, ...]]:
        """Per spatial layer, its measured stacked temporal layer bitrates (T0, T0+T1, ...; bps), empty where none
        were measured (no temporal ids, or the layer is not flowing)."""
        self.measure(engine)
        return self.bitrates.temporal_bps

    def audio_bitrate(self, engine: Any) -> int:
        return sum(self.measure(engine)) or DEFAULT_AUDIO_BPS


class TrackPublication(ReceivedCodec):
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
        for index, codec in enumerate(request.simulcast_codecs):
            # Clients send a bare codec name ("vp8"); TrackInfo carries MIME types, which JS splits on "/". A backup
            # codec has no cid until its publisher sends it (an AddTrackRequest naming this track's sid).
            mime_type = codec.codec if "/" in codec.codec else f"{self.kind}/{codec.codec}"
            self.info.codecs.add(mime_type=mime_type, cid=codec.cid or (request.cid if index == 0 else ""),
                                 layers=codec.layers)
        self.backup_codec = backup_codec(request) if self.kind == "video" else None
        if self.backup_codec is not None:
            # Subscribers that decode the primary codec get it while others get the backup: LiveKit's multi-codec
            # simulcast. tern does not regress a track to its backup (LiveKit's default for small rooms), so it
            # says so rather than echo the client's policy.
            self.info.backup_codec_policy = models.BackupCodecPolicy.SIMULCAST
        # Received once a subscriber needed it and the publisher then sent it (its receiver_id set).
        self.backup = BackupCodec(self) if self.backup_codec is not None else None
        self.receiver_id: int | None = None
        self.codec: Codec | None = None
        self.red_payload_type: int | None = None  # audio: the publisher sends RED around `codec` under this PT
        self.extmap: dict[str, int] = {}
        self.published = False
        self.subscriptions: dict[str, Subscription] = {}  # by subscriber sid
        self.bitrates = LayerBitrates()
        self.dynacast: Dynacast | None = None  # video only, once media is negotiated

    @property
    def sid(self) -> str:
        return self.info.sid

    @property
    def kind(self) -> str:
        return "audio" if self.info.type == models.TrackType.AUDIO else "video"

    def advertised_layers(self) -> list[models.VideoLayer]:
        """The simulcast layers the publisher announced (AddTrack layers, else its first codec's), lowest first."""
        layers = self.info.layers or (self.info.codecs[0].layers if self.info.codecs else [])
        return sorted(layers, key=lambda layer: layer.quality)


class BackupCodec(ReceivedCodec):
    """A track's backup codec as the publisher sends it on an m-line of its own (LiveKit's multi-codec simulcast)."""

    def __init__(self, publication: TrackPublication) -> None:
        self.publication = publication
        self.cid = ""  # the publisher's AddTrackRequest for it names the m-line (msid track id) it comes on
        self.layers = sorted(publication.info.layers, key=lambda layer: layer.quality)
        self.receiver_id: int | None = None
        self.codec: Codec | None = None
        self.extmap: dict[str, int] = {}
        self.mid = ""
        self.bitrates = LayerBitrates()
        self.dynacast: Dynacast | None = None

    def advertised_layers(self) -> list[models.VideoLayer]:
        return self.layers


class Subscription:
    """One subscriber's copy of a publication: an m-line on its subscriber PC and an engine DownTrack."""

    def __init__(self, publication: TrackPublication, subscriber: Participant, media: OutgoingMedia) -> None:
        self.publication = publication
        self.subscriber = subscriber
        self.media = media
        self.downtrack_id: int | None = None
        # What it is forwarded from: the publication (its primary codec), or its backup for a subscriber that
        # decodes only that; chosen when the subscriber's SDP says which codec it takes.
        self.source: ReceivedCodec = publication
        self.extmap: dict[str, int] | None = None  # the header extensions its m-line negotiated (URI -> id)
        self.extmap_allow_mixed = False  # and whether they may take the two-byte form (a=extmap-allow-mixed)
