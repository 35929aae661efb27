"""SDP offer/answer state of a client's peer connections: LiveKit v0's two (the client offers on the publisher PC,
the server on the subscriber PC), or v1's single one (the client always offers; the server answers, sending its
subscriptions on the client's recvonly m-lines, and asks for a new offer with a MediaSectionsRequirement)."""
from __future__ import annotations

import json
import random

from livekit.protocol import rtc

from . import sdp
from .transport import Transport

# m-lines for media in the subscriber PC's offer: with the data m-line, the client's answer stays within what
# sdp.parse accepts (one answer m-section is ~1 KB, so MAX_SDP_LENGTH and MAX_SDP_LINES hold this many too).
# LiveKit caps no subscriber; like it, inactive m-lines are recycled, so this bounds concurrent subscriptions.
MAX_SUBSCRIBER_MEDIA = sdp.MAX_MEDIA_SECTIONS - 1


class StaleAnswer(sdp.SdpError):
    """An answer to no outstanding offer (late or unsolicited): ignored, the negotiation goes on."""


class _PeerConnection:
    target: int

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.session_id = random.getrandbits(62)
        self._trickled = False

    def _apply_remote(self, description: sdp.SessionDescription) -> None:
        """Takes the client's ICE ufrag, DTLS fingerprint, DTLS role and SCTP max-message-size from its SDP."""
        if any(section.setup == "passive" for section in description.sections):
            self.transport.take_dtls_client_role()
        for section in description.sections:
            if section.ice_ufrag or section.fingerprint:
                self.transport.set_remote(section.ice_ufrag, section.fingerprint, section.ice_pwd)
                break
        for section in description.sections:
            if section.kind == "application" and section.max_message_size:
                self.transport.remote_max_message_size = section.max_message_size

    def _restarts_ice(self, description: sdp.SessionDescription) -> bool:
        """Whether the client's offer restarts ICE: credentials other than those it connected with."""
        known = self.transport.remote_ufrag
        ufrag = next((section.ice_ufrag for section in description.sections if section.ice_ufrag), None)
        return known is not None and ufrag is not None and ufrag != known

    def trickle_once(self, mid: str) -> list[rtc.TrickleRequest]:
        """The server's candidates as LiveKit trickles them, after the first SDP: W3C RTCIceCandidateInit JSON
        with `final` on the last one. They are in the SDP too; clients are used to both. The Rust SDK requires
        a string sdpMid and an integer sdpMLineIndex."""
        if self._trickled:
            return []
        self._trickled = True
        candidates = sdp.host_candidates(self.transport.local_endpoint())
        return [
            rtc.TrickleRequest(
                candidateInit=json.dumps({"candidate": candidate, "sdpMid": mid, "sdpMLineIndex": 0}),
                target=self.target,
                final=index == len(candidates) - 1,
            )
            for index, candidate in enumerate(candidates)
        ]


class PublisherPC(_PeerConnection):
    """The client offers, the server answers (echoing the offer id, which JS waits for)."""

    target = rtc.SignalTarget.PUBLISHER

    def answer(self, offer: rtc.SessionDescription, policy: sdp.ReceivePolicy) -> tuple[
            rtc.SessionDescription, list[sdp.AcceptedMedia], list[str], list[rtc.TrickleRequest]]:
        """Returns the answer (accepting what `policy` allows), the media the client sends, the mids it no longer
        sends on, and candidates to trickle. Raises sdp.SdpError."""
        description = sdp.parse(offer.sdp)
        if self._restarts_ice(description):
            self.transport.restart_ice()  # the answer carries our fresh credentials too (RFC 8839 section 4.4.1.1.2)
            self._trickled = False
        self._apply_remote(description)
        outgoing = self._outgoing(description, policy)
        answer_sdp, accepted = sdp.build_answer(description, self.transport.local_endpoint(), self.session_id, policy,
                                                outgoing)
        self._answered()
        sending = {media.mid for media in accepted}
        stopped = [s.mid for s in description.sections if s.kind != "application" and s.mid not in sending]
        candidates = self.trickle_once(description.bundle[0]) if description.bundle else []
        answer = rtc.SessionDescription(type="answer", sdp=answer_sdp, id=offer.id)
        for mid, media in outgoing.items():
            if media.active:
                answer.mid_to_track_id[mid] = media.track_id
        return answer, accepted, stopped, candidates

    def _outgoing(self, description: sdp.SessionDescription, policy: sdp.ReceivePolicy) -> dict[str, sdp.OutgoingMedia]:
        """What the server sends on the offer's m-lines, by mid: nothing on a publisher PC."""
        return {}

    def _answered(self) -> None:
        """The answer is built (a single PC then frees the m-lines it made inactive)."""


class SinglePC(PublisherPC):
    """LiveKit v1's one peer connection. Subscriptions (`media`) wait, without a mid, for a recvonly m-line of their
    kind in the client's next offer; the answer sends them there. The client offers again when asked with a
    MediaSectionsRequirement naming the m-lines it lacks (0/0 when it has enough and only needs to offer)."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.media: list[sdp.OutgoingMedia] = []
        self._free: dict[str, int] = {}  # kind -> recvonly m-lines of the latest offer that nothing was sent on
        self._requested = True  # a new offer is on its way (the first one always is): asking again adds m-lines
        # Media the latest offer had a free m-line of its kind for, but not its codec: asking for more m-lines would
        # not help (the caller ends those subscriptions).
        self.unplaceable: list[sdp.OutgoingMedia] = []

    def add(self, media: sdp.OutgoingMedia) -> bool:
        """Queues `media` for the next answer; False past MAX_SUBSCRIBER_MEDIA (the caller renegotiates)."""
        if sum(1 for m in self.media if m.active) >= MAX_SUBSCRIBER_MEDIA:
            return False
        self.media.append(media)
        return True

    @property
    def negotiated(self) -> bool:
        """A single PC has no offer of the server's to restart: the client's ICE-restart offer does it."""
        return False

    def changed(self) -> rtc.MediaSectionsRequirement | None:
        """The media changed: asks the client for an offer (with the m-lines it lacks), unless one is coming."""
        self.media = [m for m in self.media if m.active or m.mid]  # never placed: nothing to tell the client
        if self._requested:
            return None
        self._requested = True
        return self._requirement()

    def follow_up(self) -> rtc.MediaSectionsRequirement | None:
        """After an answer: another offer asked for at once while media still waits (with the m-lines it lacks, or
        0/0 when the answer just freed some)."""
        self._requested = any(m.active and not m.mid for m in self.media)
        return self._requirement() if self._requested else None

    def _requirement(self) -> rtc.MediaSectionsRequirement:
        waiting = {kind: sum(1 for m in self.media if m.active and not m.mid and m.kind == kind)
                   for kind in ("audio", "video")}
        return rtc.MediaSectionsRequirement(num_audios=max(0, waiting["audio"] - self._free.get("audio", 0)),
                                            num_videos=max(0, waiting["video"] - self._free.get("video", 0)))

    def _outgoing(self, description: sdp.SessionDescription, policy: sdp.ReceivePolicy) -> dict[str, sdp.OutgoingMedia]:
        offered_bundle = set(description.bundle)
        receiving = {s.mid: s for s in description.sections
                     if s.kind in ("audio", "video") and s.direction == "recvonly"
                     and (s.mid in offered_bundle if offered_bundle else s.port != 0)}
        self.media = [m for m in self.media if m.active or m.mid]
        placed = {m.mid: m for m in self.media if m.mid in receiving}
        for media in self.media:
            if media.active and not media.mid:
                section = next((s for mid, s in receiving.items() if mid not in placed and s.kind == media.kind
                                and _place(media, s, policy)), None)
                if section is not None:
                    placed[section.mid] = media
        self._free = {kind: sum(1 for mid, s in receiving.items() if mid not in placed and s.kind == kind)
                      for kind in ("audio", "video")}
        self.unplaceable = [m for m in self.media if m.active and not m.mid and self._free[m.kind]]
        return placed

    def _answered(self) -> None:
        # m-lines answered inactive are free for the next offer's subscriptions (the client keeps offering them
        # recvonly), as LiveKit reuses transceivers.
        freed = [m for m in self.media if m.mid and not m.active]
        self.media = [m for m in self.media if m.active]
        for media in freed:
            self._free[media.kind] = self._free.get(media.kind, 0) + 1


def _place(media: sdp.OutgoingMedia, section: sdp.MediaSection, policy: sdp.ReceivePolicy) -> bool:
    """Puts `media` in the client's recvonly `section`, in the client's terms (its payload types and extension ids):
    its codec, else the first alternative the client receives; False if the client can receive none there."""
    sent, codec = next(((sent, codec) for sent in [media.codec, *media.alternatives]
                        if (codec := sdp.matching_codec(section, sent)) is not None), (media.codec, None))
    if codec is None:
        return False
    media.codec, media.alternatives = sent, []
    feedback = set(media.codec.rtcp_fb)
    rtx = codec.rtx_payload_type if media.codec.rtx_payload_type is not None else None
    media.codec = sdp.Codec(codec.payload_type, codec.name, codec.clock_rate, codec.channels, media.codec.fmtp,
                            [fb for fb in codec.rtcp_fb if fb in feedback], rtx)
    if rtx is None:
        media.rtx_ssrc = None
    if media.red_payload_type is not None:  # RED if the client receives it too, else Opus stripped out of it
        red = sdp.red_codec(section, codec)
        media.red_payload_type = red.payload_type if red else None
    allowed = policy.send_extensions.get(media.kind, frozenset())
    media.extmap = {uri: ext_id for uri, ext_id in section.extmap.items() if uri in allowed}
    media.extmap_allow_mixed = section.extmap_allow_mixed
    media.mid = section.mid
    return True


class SubscriberPC(_PeerConnection):
    """The server offers; one offer outstanding at a time, re-offering when changes queued up meanwhile."""

    target = rtc.SignalTarget.SUBSCRIBER
    data_mid = "0"

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.media: list[sdp.OutgoingMedia] = []
        self._offer_id = 0
        self._version = 0
        self._awaiting_answer = False
        self._dirty = True
        self._next_mid = 1  # after the data-channel m-line
        self._offered_inactive: list[sdp.OutgoingMedia] = []  # m-lines the outstanding offer has inactive
        self._offered_active: list[sdp.OutgoingMedia] = []  # and those it sends on
        self._recyclable: set[str] = set()  # inactive mids the client has answered: free for reuse
        # Media the latest answer took none of the codecs of (or rejected): the caller ends those subscriptions.
        self.unplaceable: list[sdp.OutgoingMedia] = []

    def add(self, media: sdp.OutgoingMedia) -> bool:
        """Gives `media` an m-line: an inactive one of its kind that the client has already answered as such
        (as LiveKit reuses transceivers, so the SDP does not grow with every track ever subscribed), else a new one
        while fewer than MAX_SUBSCRIBER_MEDIA; False if there is none."""
        for index, slot in enumerate(self.media):
            if not slot.active and slot.kind == media.kind and slot.mid in self._recyclable:
                self._recyclable.discard(slot.mid)
                media.mid = slot.mid
                self.media[index] = media
                return True
        if len(self.media) >= MAX_SUBSCRIBER_MEDIA:
            return False
        media.mid = str(self._next_mid)
        self._next_mid += 1
        self.media.append(media)
        return True

    def changed(self) -> rtc.SessionDescription | None:
        """Marks the media list changed; returns an offer to send now, or None if one is in flight."""
        self._dirty = True
        return None if self._awaiting_answer else self._offer()

    @property
    def negotiated(self) -> bool:
        """Whether an offer has been made (there is an ICE session to restart)."""
        return self._offer_id > 0

    def restart(self) -> rtc.SessionDescription:
        """An offer with fresh ICE credentials (the client resumed), made even while one is outstanding: the client
        may have missed it; its answer to the old one is stale."""
        self.transport.restart_ice()
        self._trickled = False
        return self._offer()

    def _offer(self) -> rtc.SessionDescription:
        self._dirty = False
        self._awaiting_answer = True
        self._offered_inactive = [media for media in self.media if not media.active]
        self._offered_active = [media for media in self.media if media.active]
        self._offer_id += 1
        self._version += 1
        text = sdp.build_offer(self.transport.local_endpoint(), self.media, self.session_id, self._version, self.data_mid)
        return rtc.SessionDescription(type="offer", sdp=text, id=self._offer_id)

    def answered(self, answer: rtc.SessionDescription) -> tuple[sdp.SessionDescription, rtc.SessionDescription | None]:
        """Applies the client's answer to the outstanding offer (R answers with id 0, JS echoes ours). Returns it
        parsed and any follow-up offer. Raises StaleAnswer for a stale or unsolicited answer, sdp.SdpError for a
        refused one, which ends the offer: the next changed() offers again."""
        if not self._awaiting_answer or answer.id not in (0, self._offer_id):
            raise StaleAnswer(f"answer {answer.id} does not match an outstanding offer")
        self._awaiting_answer = False
        description = sdp.parse(answer.sdp)
        self._apply_remote(description)
        with_red = {media.mid: media for media in self.media if media.red_payload_type is not None}
        # What the offer sent and is still sent (not unsubscribed, nor its m-line refilled, meanwhile).
        active = {media.mid: media for media in self._offered_active
                  if media.active and any(media is slot for slot in self.media)}
        self.unplaceable = []
        for section in description.sections:
            if section.mid in active and not _take_codec(active[section.mid], section):
                self.unplaceable.append(active[section.mid])
            if section.mid in with_red:
                # A client that left RED out of its answer gets the Opus inside it (the engine strips it).
                red = sdp.red_codec(section, with_red[section.mid].codec)
                with_red[section.mid].red_payload_type = red.payload_type if red else None
        # Only m-lines still in the state offered (not refilled meanwhile) are known inactive on both sides.
        self._recyclable |= {m.mid for m in self._offered_inactive if any(m is slot for slot in self.media)}
        return description, (self._offer() if self._dirty else None)


def _take_codec(media: sdp.OutgoingMedia, section: sdp.MediaSection) -> bool:
    """The codec the client's answer `section` took for `media` (the first offered that it lists, under the
    offer's payload types) becomes its codec; False if the client rejected the m-line or took none."""
    if section.port == 0:
        return False
    sent = next((c for c in [media.codec, *media.alternatives] if any(
        answered.payload_type == c.payload_type and answered.name.lower() == c.name.lower()
        for answered in section.codecs)), None)
    if sent is None:
        return False
    media.codec, media.alternatives = sent, []
    return True
