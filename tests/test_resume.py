"""Resume: a participant whose signal connection dropped waits for its client, unseen by the others; a resume picks it
up with its sid, tracks and subscriptions and restarts ICE. In-process with test_rtc's fake engine, the decision tree
against a real server (bare signalling and SDK clients), and an ICE restart on a transport with test_consent's fakes.
The same on a real network with the SDK: tests/test_resume_lab.py."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from aioice import stun
from livekit.protocol import models, rtc
from websockets.exceptions import ConnectionClosed

import engine
from clients import connect, packets_received, remote, until
from media import Publisher, wait_for_tracks
from signal_client import SignalClient
from signaling.peer.ice import handle_binding
from signaling.protocol import v0
from signaling.rtc import participant as participant_module
from signaling.rtc.participant import Participant
from test_consent import A, B, client_check, setup  # noqa: F401 (setup, node: fixtures)
from test_engine import binding_request
from test_rtc import FakeNode, Sink, join, node, publish, settle, sink  # noqa: F401

DISCONNECTED = models.ParticipantInfo.State.DISCONNECTED


def connected(participant: Participant) -> Participant:
    participant._on_primary_connected()  # what its primary transport's DTLS handshake does
    return participant


def updates_about(receiver: Participant, about: Participant) -> list[models.ParticipantInfo]:
    return [info for update in sink(receiver).of("update") for info in update.participants if info.sid == about.sid]


def publisher_offer(ufrag: str, pwd: str) -> rtc.SessionDescription:
    """A client's publisher offer with just a data m-line and these ICE credentials."""
    lines = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
             "m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0", "a=mid:0",
             f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=setup:actpass",
             "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=sctp-port:5000"]
    return rtc.SessionDescription(type="offer", sdp="\r\n".join(lines) + "\r\n", id=1)


async def test_a_dropped_signal_keeps_the_participant_and_a_resume_picks_it_up(node: FakeNode) -> None:
    alice, bob = connected(join(node, "alice")), connected(join(node, "bob"))
    video = publish(alice)
    settle(bob)
    about_alice = updates_about(bob, alice)
    events = list(node.events)

    alice.signal_lost(sink(alice))
    assert not alice.closed and alice.sink is None and node.store.get("room").participants["alice"] is alice
    assert updates_about(bob, alice) == about_alice and node.events == events  # bob and webhooks saw nothing

    subscriber_ufrag = bob.subscriber.transport.ice_ufrag
    bob_old = sink(bob)
    bob.signal_lost(bob_old)
    resumed = Sink()
    bob.resume(resumed)
    kinds = [r.WhichOneof("message") for r in resumed.sent]
    assert kinds[:3] == ["reconnect", "update", "room_update"], kinds  # ReconnectResponse first (the Rust SDK)
    roster = {info.identity: info for info in resumed.of("update")[-1].participants}
    assert roster["bob"].sid == bob.sid and [t.sid for t in roster["alice"].tracks] == [video.sid]
    offer = resumed.of("offer")[-1]  # the subscriber PC restarts ICE: fresh credentials in a new offer
    assert bob.subscriber.transport.ice_ufrag != subscriber_ufrag
    assert f"a=ice-ufrag:{bob.subscriber.transport.ice_ufrag}" in offer.sdp
    assert set(bob.subscriptions) == {video.sid} and node.counters["signal_resumed"] == 1
    assert node.events == events and not bob.closed


async def test_a_participant_whose_media_never_connected_leaves_with_its_signal(node: FakeNode) -> None:
    alice, bob = connected(join(node, "alice")), join(node, "bob")
    bob.signal_lost(sink(bob))
    assert bob.closed and [i.state for i in updates_about(alice, bob)][-1] == DISCONNECTED


async def test_without_a_resume_it_leaves_after_the_departure_timeout(node: FakeNode, monkeypatch) -> None:
    monkeypatch.setattr(participant_module, "SIGNAL_DEPARTURE_TIMEOUT", 0.05)
    alice, bob = connected(join(node, "alice")), connected(join(node, "bob"))
    bob.signal_lost(sink(bob))
    await asyncio.sleep(0.1)
    assert bob.closed and bob.disconnect_reason == models.DisconnectReason.SIGNAL_CLOSE
    assert updates_about(alice, bob)[-1].state == DISCONNECTED and "participant_left" in node.events
    assert node.counters["signal_departure_timeouts"] == 1


@pytest.mark.parametrize("peer_closed_first", [False, True])
async def test_a_client_that_closed_its_peer_connection_and_lost_its_signal_has_left(node: FakeNode,
                                                                                    peer_closed_first: bool) -> None:
    """The Rust SDK's disconnect can lose its leave (it resets its WebSocket), but it closes its peer connection
    (SCTP ABORT, DTLS close_notify): then the others see it leave at once, not after SIGNAL_DEPARTURE_TIMEOUT."""
    alice, bob = connected(join(node, "alice")), connected(join(node, "bob"))
    if peer_closed_first:
        bob.publisher.transport.on_peer_closed()
        assert not bob.closed  # its signal connection still speaks for it
        bob.signal_lost(sink(bob))
    else:
        bob.signal_lost(sink(bob))
        assert not bob.closed
        bob.subscriber.transport.on_peer_closed()
    await asyncio.sleep(0)  # it leaves on the loop's next turn (close_soon)
    assert bob.closed and bob.disconnect_reason == models.DisconnectReason.CLIENT_INITIATED
    assert updates_about(alice, bob)[-1].state == DISCONNECTED and "participant_left" in node.events
    assert node.counters["signal_lost_peer_closed"] == 1 and node.counters["signal_departure_timeouts"] == 0


async def test_an_agent_that_closed_its_peer_connection_and_lost_its_signal_waits_for_a_resume(
        node: FakeNode) -> None:
    """Its node may have died (then its job is relaunched, which needs its departure read as a lost connection)."""
    bob = connected(join(node, "bob", agent=True))
    bob.signal_lost(sink(bob))
    bob.subscriber.transport.on_peer_closed()
    await asyncio.sleep(0)
    assert not bob.closed and node.counters["signal_lost_peer_closed"] == 0


async def test_a_blip_with_its_peer_connections_open_still_waits_for_a_resume(node: FakeNode) -> None:
    connected(join(node, "alice"))
    bob = connected(join(node, "bob"))
    bob.signal_lost(sink(bob))
    await asyncio.sleep(0)
    assert not bob.closed and node.counters["signal_lost_peer_closed"] == 0
    bob.resume(Sink())
    bob.publisher.transport.on_peer_closed()  # closed while its (resumed) signal connection speaks for it
    await asyncio.sleep(0)
    assert not bob.closed


async def test_a_resume_hears_who_left_meanwhile_and_a_replaced_session_changes_nothing(node: FakeNode) -> None:
    alice, bob = connected(join(node, "alice")), connected(join(node, "bob"))
    old = sink(alice)
    alice.signal_lost(old)
    bob.close(models.DisconnectReason.CLIENT_INITIATED)
    resumed = Sink()
    alice.resume(resumed)
    first, roster = resumed.of("update")[:2]
    assert [(i.sid, i.state) for i in first.participants] == [(bob.sid, DISCONNECTED)]
    assert [i.identity for i in roster.participants] == ["alice"]
    alice.signal_lost(old)  # the old connection ending late: it is no longer the participant's
    assert alice.sink is resumed and not alice.closed


class SilentSocket:
    """A WebSocket whose client has gone quiet (its connection dead without a close): nothing ever arrives."""

    async def receive(self) -> dict:
        await asyncio.Event().wait()
        return {}

    async def send_bytes(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_silent_signal_connection_is_a_lost_one_once_media_connected(node: FakeNode, monkeypatch) -> None:
    """Silence for ping_timeout: a participant whose media connected waits for a resume; one whose media never
    connected is told it timed out and leaves."""
    monkeypatch.setattr(v0, "PING_TIMEOUT", 0.05)
    alice, bob = connected(join(node, "alice")), join(node, "bob")
    session = v0.SignalSession(alice, node.counters)
    await asyncio.wait_for(v0.serve(SilentSocket(), session, time.time() + 600, resume=True), v0.CLOSE_TIMEOUT)
    assert not alice.closed and alice.sink is None and session.closed and node.counters["signal_lost"] == 1
    bob_sink = sink(bob)
    await v0.serve(SilentSocket(), v0.SignalSession(bob, node.counters), time.time() + 600, resume=True)
    assert bob.closed and bob.disconnect_reason == models.DisconnectReason.CONNECTION_TIMEOUT
    assert node.counters["signal_ping_timeouts"] == 2 and bob_sink.closed


async def test_resuming_over_a_live_connection_closes_the_old_one(node: FakeNode) -> None:
    alice = connected(join(node, "alice"))
    old, resumed = sink(alice), Sink()
    alice.resume(resumed)
    assert old.closed and alice.sink is resumed


async def test_a_sync_state_naming_a_track_it_does_not_publish_makes_it_rejoin(node: FakeNode) -> None:
    alice, bob = connected(join(node, "alice")), connected(join(node, "bob"))
    video = publish(alice)
    assert alice.sync_state(rtc.SyncState(publish_tracks=[rtc.TrackPublishedResponse(cid="c", track=video.info)],
                                          track_sids_disabled=[video.sid]))
    assert bob.sync_state(rtc.SyncState(track_sids_disabled=[video.sid]))
    assert bob.allocator.settings[video.sid].disabled
    assert not alice.sync_state(rtc.SyncState(publish_tracks=[
        rtc.TrackPublishedResponse(cid="x", track=models.TrackInfo(sid="TR_unknown"))]))
    leave = sink(alice).of("leave")[-1]
    assert alice.closed and leave.action == rtc.LeaveRequest.Action.RECONNECT and leave.can_reconnect
    assert leave.reason == models.DisconnectReason.STATE_MISMATCH


async def test_a_publisher_offer_with_new_credentials_restarts_ice(node: FakeNode) -> None:
    alice = connected(join(node, "alice"))
    alice.handle_offer(publisher_offer("client1", "p" * 24))
    transport = alice.publisher.transport
    first = transport.ice_ufrag
    alice.handle_offer(publisher_offer("client1", "p" * 24))  # a renegotiation: same credentials
    assert transport.ice_ufrag == first
    alice.handle_offer(publisher_offer("client2", "q" * 24))
    answer = sink(alice).of("answer")[-1]
    assert transport.ice_ufrag != first and f"a=ice-ufrag:{transport.ice_ufrag}" in answer.sdp
    assert (transport.remote_ufrag, transport.remote_pwd) == ("client2", "q" * 24)
    assert node.transports.counters["ice_restarts"] == 1


# ---------------------------------------------------------------- the decision tree, against a real server

@pytest.mark.parametrize("v1", [False, True], ids=["v0", "v1"])
async def test_a_reconnect_is_a_resume_only_for_the_live_session_it_names(server, v1: bool) -> None:
    """A wrong or missing sid, or an identity not in the room: leave{RECONNECT} (rejoin) as the only message, and the
    live session is untouched. The right sid: ReconnectResponse first, then the roster with the participant's sid and
    tracks, the room and (v0) a subscriber offer restarting ICE; the SDK whose connection was taken over resumes it
    back, over the same protocol version. The others never see the participant leave."""
    room = f"resume-room-{int(v1)}"
    alice = await connect(server, "alice", room, single_peer_connection=v1)
    watcher = await connect(server, "watcher", room)
    left: list[str] = []
    watcher.on("participant_disconnected", lambda p: left.append(p.identity))
    sid = alice.local_participant.sid
    publisher = Publisher(alice, video=False)
    try:
        await publisher.start()
        tone = (await wait_for_tracks(watcher, 1))["audio"]
        for identity, asked in [("alice", "PA_wrong"), ("alice", ""), ("nobody", sid)]:
            client, first = await SignalClient.reconnect(server.url, server.token(identity, room), asked, v1)
            assert first.WhichOneof("message") == "leave", first
            assert first.leave.action == rtc.LeaveRequest.Action.RECONNECT and first.leave.can_reconnect
            assert first.leave.reason == models.DisconnectReason.STATE_MISMATCH
            with pytest.raises(ConnectionClosed):
                await client.receive()
        counters = server.counters()
        assert counters["signal_resume_refused"] == 3 * (1 + v1)

        resumed_before, v1_before = counters.get("signal_resumed", 0), counters.get("signal_connections_v1", 0)
        restarts_before = counters.get("ice_restarts", 0)
        client, first = await SignalClient.reconnect(server.url, server.token("alice", room), sid, v1)
        assert first.WhichOneof("message") == "reconnect", first
        roster = (await client.receive_until("update")).update
        assert any(p.sid == sid and p.identity == "alice" for p in roster.participants)
        await client.receive_until("room_update")
        if v1:  # one peer connection, the client's: its ICE-restart offer does it, the server offers nothing until
            # the SDK (its connection taken over) resumes, taking this one over in turn
            kinds = []
            with pytest.raises(ConnectionClosed):
                while True:
                    kinds.append((await client.receive()).WhichOneof("message"))
            assert "offer" not in kinds, kinds
        else:
            offer = (await client.receive_until("offer")).offer
            assert "a=ice-ufrag:" in offer.sdp
        await client.connection.close()  # and the SDK, its own connection closed, resumes in turn
        await until(lambda: server.counters().get("signal_resumed", 0) >= resumed_before + 2, timeout=15)
        assert server.counters().get("signal_connections_v1", 0) == v1_before + 2 * v1
        assert remote(watcher, "alice").sid == sid and alice.local_participant.sid == sid and left == []
        await until(lambda: server.counters().get("ice_restarts", 0) > restarts_before)  # the client's offer restarts
        received = await packets_received(tone)
        await asyncio.sleep(1)
        assert await packets_received(tone) > received  # its tone still reaches the watcher
    finally:
        await publisher.stop()
        await alice.disconnect()
        await watcher.disconnect()


# ---------------------------------------------------------------- ICE restart on a transport (test_consent's fakes)

async def test_after_an_ice_restart_media_moves_to_the_address_the_client_nominates(setup) -> None:
    """New credentials on both sides; a nomination from a new address that arrives before the client's credentials is
    checked once they do; media stays on the old address until the new one answers."""
    engine, manager, clock, create = setup
    transport = create()
    transport.handle_stun(client_check(transport, nominate=True), *A)
    old_ufrag = transport.ice_ufrag
    transport.restart_ice()
    assert transport.ice_ufrag != old_ufrag and engine.ufrags[transport.id] == transport.ice_ufrag
    engine.take()

    check = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST, attributes={
        "USERNAME": f"{transport.ice_ufrag}:client2", "PRIORITY": 1, "ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
    check.add_message_integrity(transport.ice_pwd.encode())
    transport.handle_stun(bytes(check), *B)
    [(response, to)] = engine.take()  # answered; no check of ours yet: the client's password is not known
    assert response.message_class == stun.Class.RESPONSE and to == B and engine.bound == {transport.id: A}

    transport.set_remote("client2", None, "p" * 24)  # its answer to our restart offer
    [(ours, to)] = engine.take()
    assert ours.message_class == stun.Class.REQUEST and to == B
    assert ours.attributes["USERNAME"] == f"client2:{transport.ice_ufrag}"
    reply = handle_binding(bytes(ours), ("127.0.0.1", 7882), "client2", "p" * 24, transport.ice_ufrag)
    transport.handle_stun(reply.response, *B)
    assert engine.bound == {transport.id: B} and manager.counters["ice_address_switched"] == 1


async def test_the_engine_lets_through_only_a_restarted_transports_new_ufrag() -> None:
    events: list[tuple] = []
    eng = engine.Engine("127.0.0.1", 0, events.append)
    eng.attach(asyncio.get_running_loop())
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        transport, other = eng.add_transport("oldufrag"), eng.add_transport("otherufrag")
        eng.set_transport_ufrag(transport, "newufrag")
        for ufrag in ("oldufrag", "newufrag"):
            client.sendto(binding_request(ufrag), ("127.0.0.1", eng.port))
        await asyncio.sleep(0.05)
        assert [(e[0], e[1]) for e in events] == [("stun", transport)] and b"newufrag:" in events[0][2]
        assert eng.stats()["drop_stun_unknown_ufrag"] == 1
        with pytest.raises(ValueError):
            eng.set_transport_ufrag(other, "newufrag")  # taken: the caller draws another
        eng.remove_transport(eng.add_transport("oldufrag"))  # the old one is free again
        eng.remove_transport(transport)
        eng.remove_transport(eng.add_transport("newufrag"))  # and the new one once its transport is gone
    finally:
        eng.close()
        client.close()


async def test_a_client_that_vanished_leaves_after_the_departure_timeout_and_cannot_resume(tmp_path, monkeypatch) -> None:
    """An SDK client killed with its media connected: the others see it leave once the (shortened) departure timeout is
    over, not before; its resume then gets leave{RECONNECT}."""
    from conftest import start_server, stop_server

    monkeypatch.setenv("TERN_SIGNAL_DEPARTURE_TIMEOUT", "2")
    server = start_server(tmp_path)
    script = textwrap.dedent(f"""
        import asyncio
        from livekit import rtc
        async def main():
            room = rtc.Room()
            await room.connect({server.url!r}, {server.token("ghost", "vanish-room")!r})
            print(room.local_participant.sid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    watcher = None
    try:
        sid = child.stdout.readline().strip()
        watcher = await connect(server, "watcher", "vanish-room")
        await until(lambda: remote(watcher, "ghost") is not None)
        child.kill()
        killed = asyncio.get_running_loop().time()
        await until(lambda: remote(watcher, "ghost") is None, timeout=10)
        assert asyncio.get_running_loop().time() - killed >= 1.5
        assert server.counters()["signal_departure_timeouts"] == 1
        client, first = await SignalClient.reconnect(server.url, server.token("ghost", "vanish-room"), sid)
        assert first.leave.action == rtc.LeaveRequest.Action.RECONNECT
        await client.connection.close()
    finally:
        child.kill()
        if watcher is not None:
            await watcher.disconnect()
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
