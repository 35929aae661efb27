"""SDP offer/answer state of a client's two peer connections (LiveKit v0, dual PC)."""
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
        """Takes the client's ICE ufrag, DTLS fingerprint and SCTP max-message-size from its SDP."""
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
        answer_sdp, accepted = sdp.build_answer(description, self.transport.local_endpoint(), self.session_id, policy)
        sending = {media.mid for media in accepted}
        stopped = [s.mid for s in description.sections if s.kind != "application" and s.mid not in sending]
        candidates = self.trickle_once(description.bundle[0]) if description.bundle else []
        return rtc.SessionDescription(type="answer", sdp=answer_sdp, id=offer.id), accepted, stopped, candidates


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
        self._recyclable: set[str] = set()  # inactive mids the client has answered: free for reuse

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
        # Only m-lines still in the state offered (not refilled meanwhile) are known inactive on both sides.
        self._recyclable |= {m.mid for m in self._offered_inactive if any(m is slot for slot in self.media)}
        return description, (self._offer() if self._dirty else None)
