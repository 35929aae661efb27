"""DataPacket routing, as LiveKit's server does it: the server vouches for the sender, honours destinations,
never echoes, and keeps reliability from the channel the packet came on (clients set `kind` unreliably)."""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError
from livekit.protocol import models

if TYPE_CHECKING:
    from .participant import Participant

RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
DATA_TRACK_LABEL = "_data_track"
# The channels the server opens on the subscriber PC: (label, ordered, max_retransmits).
SERVER_CHANNELS = [(RELIABLE_LABEL, True, None), (LOSSY_LABEL, False, 0), (DATA_TRACK_LABEL, False, 0)]
_RECENT_NONCES = 128


class DataPublisher:
    """One participant's outgoing data packets: checked, de-duplicated, stamped and routed to the others."""

    def __init__(self, participant: Participant, counters: Counter[str]) -> None:
        self.participant = participant
        self.counters = counters
        self.last_sequence = 0  # of the last reliable packet: replays at or below it are duplicates (resume)
        self._nonces: deque[bytes] = deque(maxlen=_RECENT_NONCES)

    def receive(self, label: str, raw: bytes) -> None:
        if label not in (RELIABLE_LABEL, LOSSY_LABEL):
            self.counters["data_unrouted_channel"] += 1  # data tracks are not implemented yet
            return
        sender = self.participant
        if not sender.grant.can_publish_data:
            self.counters["data_not_allowed"] += 1
            return
        try:
            packet = models.DataPacket.FromString(raw)
        except DecodeError:
            self.counters["data_malformed"] += 1
            return
        reliable = label == RELIABLE_LABEL
        if reliable and packet.sequence:
            if packet.sequence <= self.last_sequence:
                self.counters["data_duplicate"] += 1
                return
            self.last_sequence = packet.sequence
        kind = packet.WhichOneof("value")
        if kind == "transcription" and not sender.is_agent:  # as LiveKit: only agents speak for others' audio
            self.counters["data_transcription_not_agent"] += 1
            return
        if kind == "user" and packet.user.nonce:
            if packet.user.nonce in self._nonces:
                self.counters["data_duplicate"] += 1
                return
            self._nonces.append(packet.user.nonce)

        # The server, not the client, says who sent it (hidden participants stay anonymous).
        identity, sid = ("", "") if sender.hidden else (sender.identity, sender.sid)
        packet.participant_identity, packet.participant_sid = identity, sid
        # The deprecated `kind` is what JS reports to the application; the Rust SDK sets it wrongly.
        packet.kind = models.DataPacket.Kind.RELIABLE if reliable else models.DataPacket.Kind.LOSSY
        if kind == "user":
            packet.user.participant_identity, packet.user.participant_sid = identity, sid  # for older clients
        route(packet, sender.room.others(sender), reliable, self.counters)


def route(packet: models.DataPacket, receivers: Iterable[Participant], reliable: bool, counters: Counter[str]) -> None:
    """Delivers a stamped packet to the receivers its destinations name (all when none are named)."""
    kind = packet.WhichOneof("value")
    destinations = set(packet.destination_identities)
    destination_sids: set[str] = set()
    if kind == "user":
        destinations.update(packet.user.destination_identities)
        destination_sids.update(packet.user.destination_sids)
    data = packet.SerializeToString()
    for receiver in receivers:
        if (destinations or destination_sids) and receiver.identity not in destinations \
                and receiver.sid not in destination_sids:
            continue
        if kind == "metrics" and not receiver.grant.can_subscribe_metrics:
            continue
        if receiver.send_data(data, reliable):
            counters["data_forwarded"] += 1
        else:
            counters["data_undeliverable"] += 1
