"""Media capabilities policy: the codecs, header extensions and RTCP feedback tern negotiates with publishers and
subscribers. Turning a codec, an extension (TWCC) or a feedback type on or off is an edit here and nowhere else."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from livekit.protocol import models

from ..peer.sdp import (EXT_ABS_CAPTURE_TIME, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL, EXT_DEPENDENCY_DESCRIPTOR, EXT_MID,
                        EXT_RID, EXT_RRID, EXT_TRANSPORT_CC, Codec, ReceivePolicy, with_params)

if TYPE_CHECKING:
    from .publication import TrackPublication

# Accepted from publishers; anything else offered is left out of the answer. transport-cc on video (RTX included),
# as LiveKit does: the engine sends feedback and stops its REMB, so libwebrtc's send-side estimator sets the rate.
# Audio keeps none (LiveKit's choice too); goog-remb stays for clients without transport-cc.
_PUBLISHER_EXTENSIONS = {
    "audio": frozenset({EXT_MID, EXT_AUDIO_LEVEL, EXT_ABS_CAPTURE_TIME}),
    "video": frozenset({EXT_MID, EXT_RID, EXT_RRID, EXT_ABS_CAPTURE_TIME, EXT_TRANSPORT_CC, EXT_DEPENDENCY_DESCRIPTOR}),
}
# The Dependency Descriptor only where the engine selects SVC layers by it: VP8 and H.264 are simulcast, whose
# streams' descriptors (frame numbers, structures) a subscriber switching between them would see jump.
_CODEC_EXTENSIONS = {EXT_DEPENDENCY_DESCRIPTOR: frozenset({"AV1", "VP9"})}
_PUBLISHER_FEEDBACK = {
    "audio": frozenset({"nack"}),
    "video": frozenset({"nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"}),
}

# Offered to subscribers, numbered here (one id per URI across the bundle); the engine renumbers the publisher's ids
# to these, except transport-cc, which it writes itself: the subscriber transport's own sequence numbers, whose
# feedback drives its bandwidth estimate. Audio carries it too (LiveKit's send-side mode numbers video only): the
# estimate is then of everything the link carries, as the allocator, which reserves audio first, counts it; a probe
# measures the link, not the link minus the audio; and feedback keeps coming while every video is paused. The
# allocator still never cuts audio.
# A client without transport-cc (aiortc, older libwebrtc) may answer goog-remb + abs-send-time instead: the engine
# then writes abs-send-time, the client's receive-side estimator answers with REMB, and that drives the estimate.
SUBSCRIBER_EXTENSIONS = {
    "audio": {EXT_AUDIO_LEVEL: 1, EXT_TRANSPORT_CC: 3},
    "video": {EXT_ABS_SEND_TIME: 2, EXT_TRANSPORT_CC: 3, EXT_DEPENDENCY_DESCRIPTOR: 4},
}
SUBSCRIBER_FEEDBACK = {"audio": ["nack", "transport-cc"], "video": ["nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"]}
# Extensions the engine writes itself on the subscriber's side: never forwarded from the publisher.
SUBSCRIBER_OWN_EXTENSIONS = frozenset({EXT_TRANSPORT_CC, EXT_ABS_SEND_TIME})

# RTX toward a video subscriber needs no RTX from the publisher (the engine wraps NACKed packets from its cache, and
# probe clusters ride the RTX stream): when the publisher negotiated none (LiveKit's Rust SDK offers VP8 alone), the
# first of these that is not the codec's own payload type (97 is what libwebrtc pairs with VP8 at 96).
_RTX_PAYLOAD_TYPES = (97, 99, 101)

# Simulcast rids ordered from lowest to highest quality (LiveKit's q/h/f and the 2/1/0 alternative).
_RID_ORDER = {"q": 0, "h": 1, "f": 2, "2": 0, "1": 1, "0": 2}


def codec_rank(kind: str, codec: Codec) -> int | None:
    """Preference of a codec a publisher offers (lower is better); None if tern cannot forward it."""
    name, params = codec.name.upper(), codec.params()
    if kind == "audio":
        return 0 if name == "OPUS" and codec.clock_rate == 48000 else None
    if codec.clock_rate != 90000:
        return None
    if name == "VP8":
        return 0
    if name == "H264":
        profile = params.get("profile-level-id", "").lower()
        if params.get("packetization-mode") != "1" or len(profile) != 6 or not profile.startswith("42"):
            return None
        return 1 if profile == "42e01f" else 2
    if name == "VP9":
        return 3 if params.get("profile-id", "0") == "0" else None
    if name == "AV1":
        return 4
    return None


PUBLISHER = ReceivePolicy(extensions=_PUBLISHER_EXTENSIONS, feedback=_PUBLISHER_FEEDBACK, codec_rank=codec_rank,
                          codec_extensions=_CODEC_EXTENSIONS)
# A single peer connection (LiveKit v1): the same, and on the client's recvonly m-lines what subscribers are offered
# on a subscriber PC, under the client's ids.
SINGLE_PC = ReceivePolicy(extensions=_PUBLISHER_EXTENSIONS, feedback=_PUBLISHER_FEEDBACK, codec_rank=codec_rank,
                          codec_extensions=_CODEC_EXTENSIONS,
                          send_extensions={kind: frozenset(uris) for kind, uris in SUBSCRIBER_EXTENSIONS.items()})


def track_codecs(publications: Iterable[TrackPublication]) -> dict[str, str]:
    """By AddTrackRequest cid, the codec each video track is to be received in: the one negotiated already, else
    the client's first choice (AddTrackRequest simulcast_codecs, e.g. VP9 for an SVC camera with a VP8 backup);
    "red" for audio tracks that may send RED: not disabled (AddTrackRequest disable_red), not end-to-end encrypted
    (the server could not strip what it cannot read, as LiveKit does)."""
    chosen = {}
    for publication in publications:
        if publication.kind == "audio":
            if not publication.info.disable_red and publication.info.encryption == models.Encryption.NONE:
                chosen[publication.cid] = "red"
            continue
        if publication.kind != "video":
            continue
        if publication.codec is not None:
            chosen[publication.cid] = publication.codec.name
        elif publication.info.codecs:
            chosen[publication.cid] = publication.info.codecs[0].mime_type.rpartition("/")[2]
        backup = publication.backup
        if backup is not None and backup.cid:  # the m-line the publisher sends its backup codec on
            chosen[backup.cid] = backup.codec.name if backup.codec is not None else publication.backup_codec or ""
    return chosen


def track_fmtp(publications: Iterable[TrackPublication]) -> dict[str, dict[str, str]]:
    """By AddTrackRequest cid, the Opus parameters an audio track is answered with, as LiveKit's server sets them:
    DTX unless the track turned it off (disable_dtx, TF_NO_DTX), stereo at up to 510 kbps for a stereo track."""
    chosen = {}
    for publication in publications:
        info = publication.info
        if publication.kind != "audio":
            continue
        features = set(info.audio_features)
        params = {"usedtx": "0" if info.disable_dtx or models.AudioTrackFeature.TF_NO_DTX in features else "1"}
        if info.stereo or models.AudioTrackFeature.TF_STEREO in features:
            params.update({"stereo": "1", "maxaveragebitrate": "510000"})
        chosen[publication.cid] = params
    return chosen


def ordered_rids(rids: list[str]) -> list[str]:
    """Simulcast rids from the lowest layer to the highest, as the engine numbers layers."""
    return sorted(rids, key=lambda rid: _RID_ORDER.get(rid.lstrip("~"), len(_RID_ORDER)))


def subscriber_codec(kind: str, published: Codec, red: bool = False) -> Codec:
    """The codec offered to a subscriber for a track published with `published`: the same payload, with the
    feedback tern answers (no NACK for audio in RED, as LiveKit: the redundancy repairs), and RTX for video (the
    publisher's payload type for it, else one of ours)."""
    return Codec(
        payload_type=published.payload_type,
        name=published.name,
        clock_rate=published.clock_rate,
        channels=published.channels,
        # A stereo publisher's Opus is said to be stereo (sprop-stereo), so the subscriber plays both channels.
        fmtp=(with_params(published.fmtp, {"sprop-stereo": "1"})
              if kind == "audio" and published.params().get("stereo") == "1" else published.fmtp),
        rtcp_fb=[fb for fb in SUBSCRIBER_FEEDBACK[kind] if not (red and fb == "nack")],
        rtx_payload_type=(published.rtx_payload_type
                          or next(pt for pt in _RTX_PAYLOAD_TYPES if pt != published.payload_type)
                          if kind == "video" else None),
    )


# A backup codec as subscribers are offered it, before (or whatever) the publisher negotiated for it: the engine
# writes each DownTrack's payload types, so any free ones do. H.264 in constrained baseline, packetization mode 1,
# as LiveKit's SDKs send it.
_BACKUP_FMTP = {"vp8": ("VP8", ""), "h264": ("H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")}


def backup_subscriber_codec(name: str, primary: Codec) -> Codec:
    """The backup codec `name` ("vp8" or "h264") offered to a subscriber after `primary` (with its RTX), under payload
    types the primary does not use."""
    taken = {primary.payload_type, primary.rtx_payload_type}
    payload_type, rtx_payload_type = [pt for pt in range(96, 128) if pt not in taken][:2]
    encoding, fmtp = _BACKUP_FMTP[name]
    return Codec(payload_type=payload_type, name=encoding, clock_rate=90000, fmtp=fmtp,
                 rtcp_fb=list(SUBSCRIBER_FEEDBACK["video"]), rtx_payload_type=rtx_payload_type)


def subscriber_extensions(kind: str) -> dict[str, int]:
    return dict(SUBSCRIBER_EXTENSIONS[kind])

