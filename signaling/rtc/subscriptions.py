"""The subscription manager: the one place that decides who receives which track in a room.

A participant receives a publication when it wants it (an explicit wish, else its auto_subscribe), may see it (the
track is published, its publisher is not hidden, the subscriber has canSubscribe) and the publisher's subscription
permission admits it. Every change that can alter one of these calls the manager, which then subscribes or
unsubscribes, tells subscribers whose permission changed, and renegotiates each subscriber once."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from livekit.protocol import rtc

if TYPE_CHECKING:
    from .participant import Participant
    from .publication import TrackPublication
    from .room import Room


class SubscriptionPermissions:
    """A publisher's SubscriptionPermission, indexed by subscriber identity and sid so each decision is one lookup.
    As in the list, the first entry naming a subscriber (by identity or by sid) is the one that counts."""

    def __init__(self, permission: rtc.SubscriptionPermission) -> None:
        self.all_participants = permission.all_participants
        # identity or sid -> (position in the list, all tracks, the track sids it allows)
        self._by_identity: dict[str, tuple[int, bool, frozenset[str]]] = {}
        self._by_sid: dict[str, tuple[int, bool, frozenset[str]]] = {}
        for index, entry in enumerate(permission.track_permissions):
            allowed = (index, entry.all_tracks, frozenset(entry.track_sids))
            if entry.participant_identity:
                self._by_identity.setdefault(entry.participant_identity, allowed)
            if entry.participant_sid:
                self._by_sid.setdefault(entry.participant_sid, allowed)

    def allows(self, identity: str, sid: str, track_sid: str) -> bool:
        if self.all_participants:
            return True
        entries = [e for e in (self._by_identity.get(identity), self._by_sid.get(sid)) if e is not None]
        if not entries:
            return False
        _, all_tracks, track_sids = min(entries, key=lambda entry: entry[0])
        return all_tracks or track_sid in track_sids


@dataclass(frozen=True)
class Decision:
    wanted: bool   # an explicit wish, else the subscriber's auto_subscribe
    visible: bool  # published, publisher not hidden, subscriber allowed to subscribe at all
    allowed: bool  # the publisher's subscription permission admits this subscriber

    @property
    def subscribe(self) -> bool:
        return self.wanted and self.visible and self.allowed


def decide(subscriber: Participant, publication: TrackPublication) -> Decision:
    publisher = publication.participant
    return Decision(
        wanted=subscriber.subscription_wishes.get(publication.sid, subscriber.auto_subscribe),
        visible=publication.published and not publisher.hidden and subscriber.grant.can_subscribe,
        allowed=publisher.allows_subscriber(subscriber, publication.sid),
    )


class SubscriptionManager:
    """Applies `decide` to a room's participants and publications."""

    def __init__(self, room: Room) -> None:
        self.room = room

    def sync(self, subscriber: Participant, publications: Iterable[TrackPublication], renegotiate: bool = True) -> None:
        """Subscribes `subscriber` to, or unsubscribes it from, each of `publications` as `decide` now says; tells
        it of permission changes; renegotiates once if anything changed."""
        changed = False
        for publication in publications:
            if publication.participant is subscriber:
                continue
            decision = decide(subscriber, publication)
            subscription = subscriber.subscriptions.get(publication.sid)
            if decision.subscribe:
                if subscription is None:
                    changed |= subscriber.subscribe(publication)
            elif subscription is not None:
                subscriber.unsubscribe(subscription, renegotiate=False)
                changed = True
            if decision.wanted and decision.visible \
                    and subscriber.permission_denied.get(publication.sid, False) == decision.allowed:
                subscriber.permission_denied[publication.sid] = not decision.allowed
                subscriber.send(rtc.SignalResponse(subscription_permission_update=rtc.SubscriptionPermissionUpdate(
                    participant_sid=publication.participant.sid, track_sid=publication.sid,
                    allowed=decision.allowed)))
        if changed and renegotiate:
            subscriber.renegotiate()

    def sync_subscriber(self, subscriber: Participant, renegotiate: bool = True) -> None:
        """After the subscriber's wishes or grant changed: every publication of the others."""
        self.sync(subscriber, self.publications_for(subscriber), renegotiate)

    def sync_publications(self, publisher: Participant, publications: Iterable[TrackPublication]) -> None:
        """After some of `publisher`'s tracks, its visibility or its permissions changed: everyone else."""
        publications = list(publications)
        for other in self.room.others(publisher):
            self.sync(other, publications)

    def drop(self, publication: TrackPublication) -> None:
        """The publication is going away: every subscriber loses it, and what each kept for its sid."""
        for subscription in list(publication.subscriptions.values()):
            subscription.subscriber.unsubscribe(subscription)
        for participant in self.room.participants.values():
            participant.forget_track(publication.sid)

    def publications_for(self, subscriber: Participant) -> list[TrackPublication]:
        return [p for other in self.room.others(subscriber) for p in other.publications.values()]
