"""A Transport (ICE/DTLS/SCTP control side) against an in-memory DTLS + SCTP client: a client that stops
acknowledging data loses its lossy messages, then is dropped; certificates rotate for new transports; a client
closing its peer connection (SCTP ABORT, DTLS close_notify) is reported."""
from __future__ import annotations

import asyncio
import datetime

from signaling.peer.dcep import ChannelOpened, DataChannelEvent, MessageReceived
from signaling.peer.dtls import Certificate, DtlsEndpoint
from signaling.peer.sctp import MAX_BUFFERED_AMOUNT, SctpAssociation
from signaling.peer.transport import MAX_HELD_BYTES, TransportManager


class Engine:
    """What a TransportManager asks of the engine; datagrams for the client are kept to deliver."""

    port = 7882
    tcp_port = 0  # no ICE-TCP

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._next = 0

    def add_transport(self, ice_ufrag: str) -> int:
        self._next += 1
        return self._next

    def remove_transport(self, transport_id: int) -> None:
        pass

    def set_srtp_policy(self, *args: object) -> None:
        pass

    def send_transport(self, transport_id: int, datagram: bytes) -> None:
        self.sent.append(datagram)


class Client:
    """The browser's side: DTLS client and SCTP association, driven by hand."""

    def __init__(self, server_fingerprint: str) -> None:
        self.certificate = Certificate.generate()
        self.dtls = DtlsEndpoint(self.certificate, ("sha-256", server_fingerprint), client=True)
        self.sctp = SctpAssociation(is_server=False)
        self.events: list[DataChannelEvent] = []

    def exchange(self, engine: Engine, transport, rounds: int = 20) -> None:
        """Delivers datagrams both ways until neither side has anything to say."""
        loop_time = asyncio.get_running_loop().time()
        outgoing = self.dtls.start() if not self.dtls.connected and not engine.sent else []
        for _ in range(rounds):
            for datagram in outgoing:
                transport.handle_dtls(datagram)
            incoming, engine.sent = engine.sent, []
            outgoing = []
            for datagram in incoming:
                outgoing += self.dtls.receive(datagram)
            if self.dtls.connected:
                if self.sctp.state == "new":
                    outgoing += self._sctp_out(self.sctp.start(loop_time))
                for record in self.dtls.read_application_data():
                    outgoing += self._sctp_out(self.sctp.receive(record, loop_time))
                self.events += self.sctp.events()
            if not outgoing and not engine.sent:
                return

    def _sctp_out(self, packets: list[bytes]) -> list[bytes]:
        return [datagram for packet in packets for datagram in self.dtls.send_application_data(packet)]


async def connected_pair() -> tuple[TransportManager, Engine, object, Client]:
    engine = Engine()
    manager = TransportManager(engine, ["127.0.0.1"])
    transport = manager.create("subscriber")
    transport.local_channels = [("_reliable", True, None), ("_lossy", False, 0)]
    client = Client(transport.local_endpoint().fingerprint)
    transport.set_remote("ufrag", ("sha-256", client.certificate.fingerprint))
    client.exchange(engine, transport)
    assert transport.connected and client.sctp.established
    assert {e.channel.label for e in client.events if isinstance(e, ChannelOpened)} == {"_reliable", "_lossy"}
    return manager, engine, transport, client


async def test_client_that_does_not_drain_loses_lossy_messages_then_is_dropped() -> None:
    """Lossy traffic to a client that acknowledges nothing drops the oldest lossy messages (counted, never
    retried elsewhere) and leaves its reliable channel usable; a reliable message with no room calls
    on_backlog_full, for the participant to leave."""
    manager, engine, transport, client = await connected_pair()
    full: list[bool] = []
    transport.on_backlog_full = lambda: full.append(True)
    assert transport.send_message("_lossy", b"hello") and transport.send_message("_reliable", b"hello")
    client.exchange(engine, transport)
    client.sctp._receive_buffer = 1  # from now on it advertises a_rwnd=1 and takes nothing in

    for _ in range(3 * MAX_BUFFERED_AMOUNT // 1000):
        assert transport.send_message("_lossy", bytes(1000))  # handled: sent, or dropped and counted
        client.exchange(engine, transport, rounds=2)
    assert transport.sctp.buffered_amount <= MAX_BUFFERED_AMOUNT
    assert manager.counters["data_backlog_evicted"] > MAX_BUFFERED_AMOUNT // 1000
    assert "_reliable" in transport.channels and not full  # a lossy backlog costs lossy messages only
    assert transport.send_message("_reliable", bytes(1000))  # room made by dropping unsent lossy messages

    while transport.send_message("_reliable", bytes(1000)):
        client.exchange(engine, transport, rounds=2)
    assert full == [True] and manager.counters["data_backlog_closed"] == 1


async def test_certificate_rotates_for_new_transports_and_existing_ones_keep_theirs() -> None:
    engine = Engine()
    manager = TransportManager(engine, ["127.0.0.1"])
    old = manager.create("publisher")
    # The node's certificate has aged until it is about to expire.
    manager._certificate = Certificate.generate(validity=datetime.timedelta(hours=1))
    new = manager.create("publisher")
    assert manager.counters["dtls_certificate_rotated"] == 1
    fresh = manager.certificate
    assert fresh.cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=29)
    assert new.local_endpoint().fingerprint == fresh.fingerprint != old.local_endpoint().fingerprint
    assert manager.create("subscriber").local_endpoint().fingerprint == fresh.fingerprint  # not rotated again
    # The transport made before the rotation still completes its handshake with its own certificate.
    client = Client(old.local_endpoint().fingerprint)
    old.set_remote("ufrag", ("sha-256", client.certificate.fingerprint))
    client.exchange(engine, old)
    assert old.connected and client.dtls.connected


async def test_reliable_messages_sent_before_the_channel_opens_arrive_when_it_does() -> None:
    """A RoomService SendData or another participant's message right after a join: held (bounded) until the
    server's reliable channel opens, then delivered in order; lossy ones are not held."""
    engine = Engine()
    manager = TransportManager(engine, ["127.0.0.1"])
    transport = manager.create("subscriber")
    transport.local_channels = [("_reliable", True, None), ("_lossy", False, 0)]
    assert transport.send_message("_reliable", b"first") and transport.send_message("_reliable", b"second")
    assert not transport.send_message("_lossy", b"gone")
    assert not transport.send_message("_reliable", bytes(MAX_HELD_BYTES))  # past the bound: refused, counted
    assert manager.counters["data_held_dropped"] == 1

    client = Client(transport.local_endpoint().fingerprint)
    transport.set_remote("ufrag", ("sha-256", client.certificate.fingerprint))
    client.exchange(engine, transport)
    assert [e.data for e in client.events if isinstance(e, MessageReceived)] == [b"first", b"second"]


async def test_a_client_that_aborts_its_association_is_reported_closed_once() -> None:
    """SCTP ABORT (what a closing SDK sends) calls on_peer_closed; the close_notify after it does not again."""
    _, _, transport, client = await connected_pair()
    closed: list[bool] = []
    transport.on_peer_closed = lambda: closed.append(True)
    for datagram in client._sctp_out(client.sctp.abort()):
        transport.handle_dtls(datagram)
    assert closed == [True] and not transport.channels
    for datagram in client.dtls.close():
        transport.handle_dtls(datagram)
    assert closed == [True]


async def test_a_client_that_closes_dtls_is_reported_closed() -> None:
    _, _, transport, client = await connected_pair()
    closed: list[bool] = []
    transport.on_peer_closed = lambda: closed.append(True)
    assert not closed
    for datagram in client.dtls.close():
        transport.handle_dtls(datagram)
    assert closed == [True] and not transport.dtls.connected

