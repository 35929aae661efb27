"""ICE consent (RFC 7675) and address selection on a Transport, sans-I/O against a fake engine: only answers to our
own checks renew consent (a participant can sign checks with its own password and spoof another's address, so its
requests prove nothing), a nominated new address must answer a check before media moves, a taken address is
refused with an error, and one client's two transports expiring together tear down cleanly."""
from __future__ import annotations

import pytest
from aioice import stun

from signaling.peer.ice import handle_binding
from signaling.peer.transport import TransportManager

CLIENT_UFRAG, CLIENT_PWD = "clientufrag", "clientpassword0123456789"
A, B, C = ("192.0.2.1", 5000), ("192.0.2.2", 6000), ("192.0.2.3", 7000)


class Engine:
    """What a Transport asks of the engine for ICE: bindings, raw datagrams, expected responses."""

    port = 7882
    tcp_port = 0  # no ICE-TCP

    def __init__(self) -> None:
        self.bound: dict[int, tuple[str, int]] = {}
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.expected: set[bytes] = set()
        self.ufrags: dict[int, str] = {}  # new ufrags of restarted transports
        self._next = 0

    def add_transport(self, ice_ufrag: str) -> int:
        self._next += 1
        return self._next

    def remove_transport(self, transport_id: int) -> None:
        self.bound.pop(transport_id, None)

    def set_transport_ufrag(self, transport_id: int, ice_ufrag: str) -> None:
        self.ufrags[transport_id] = ice_ufrag

    def bind_transport(self, transport_id: int, host: str, port: int) -> bool:
        if self.transport_at(host, port) not in (None, transport_id):
            return False
        self.bound[transport_id] = (host, port)
        return True

    def unbind_transport(self, transport_id: int) -> None:
        del self.bound[transport_id]  # KeyError for a removed transport, as the engine's _slot raises

    def transport_at(self, host: str, port: int) -> int | None:
        return next((t for t, address in self.bound.items() if address == (host, port)), None)

    def expect_stun_response(self, transport_id: int, transaction_id: bytes) -> None:
        self.expected.add(transaction_id)

    def send_to(self, data: bytes, host: str, port: int) -> None:
        self.sent.append((data, (host, port)))

    def take(self) -> list[tuple[stun.Message, tuple[str, int]]]:
        sent, self.sent = self.sent, []
        return [(stun.parse_message(data), address) for data, address in sent]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup():
    engine = Engine()
    manager = TransportManager(engine, ["127.0.0.1"])
    clock = Clock()

    def create():
        transport = manager.create("publisher")
        transport._now = clock
        transport.set_remote(CLIENT_UFRAG, None, CLIENT_PWD)
        return transport

    return engine, manager, clock, create


def client_check(transport, nominate: bool, pwd: str | None = None) -> bytes:
    attributes = {"USERNAME": f"{transport.ice_ufrag}:{CLIENT_UFRAG}", "PRIORITY": 1, "ICE-CONTROLLING": 1}
    if nominate:
        attributes["USE-CANDIDATE"] = None
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                           attributes=attributes)
    message.add_message_integrity((pwd or transport.ice_pwd).encode())
    return bytes(message)


def answer(check: stun.Message, transport) -> bytes:
    """What the client (a full agent) answers to our consent check."""
    result = handle_binding(bytes(check), ("127.0.0.1", 7882), CLIENT_UFRAG, CLIENT_PWD, transport.ice_ufrag)
    assert result is not None and result.authenticated
    return result.response


def consent_check(engine: Engine, transport, clock: Clock, seconds: float) -> stun.Message:
    """Lets `seconds` pass, runs the consent timer, returns the check it sent."""
    clock.now += seconds
    transport._on_consent_timer()
    [(check, _)] = [(m, a) for m, a in engine.take() if m.message_class == stun.Class.REQUEST]
    return check


async def test_our_checks_are_full_agent_checks_and_answers_renew_consent(setup) -> None:
    engine, manager, clock, create = setup
    transport = create()
    transport.handle_stun(client_check(transport, nominate=True), *A)
    assert engine.bound == {transport.id: A}
    [(response, to)] = engine.take()
    assert response.message_class == stun.Class.RESPONSE and to == A
    for _ in range(12):  # a minute of checks, each answered
        check = consent_check(engine, transport, clock, 6)
        assert check.attributes["USERNAME"] == f"{CLIENT_UFRAG}:{transport.ice_ufrag}"
        assert {"PRIORITY", "ICE-CONTROLLED", "MESSAGE-INTEGRITY", "FINGERPRINT"} <= set(check.attributes)
        assert check.check_message_integrity(CLIENT_PWD.encode())
        assert check.transaction_id in engine.expected
        transport.handle_stun(answer(check, transport), *A)
    assert engine.bound == {transport.id: A}
    assert manager.counters["ice_consent_renewed"] == 12
    assert len({c for c in engine.expected}) == 12  # a fresh transaction id each


async def test_spoofed_checks_and_forged_answers_do_not_renew_consent(setup) -> None:
    engine, manager, clock, create = setup
    transport = create()
    lost = []
    transport.on_consent_lost = lambda: lost.append(True)
    transport.handle_stun(client_check(transport, nominate=True), *A)
    engine.take()
    for _ in range(5):  # 30 s: authenticated checks from A (the attacker's, spoofed) and answers that are not ours
        check = consent_check(engine, transport, clock, 6)
        transport.handle_stun(client_check(transport, nominate=False), *A)
        forged = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                              attributes={"XOR-MAPPED-ADDRESS": A})
        forged.add_message_integrity(CLIENT_PWD.encode())  # a transaction id of its own
        transport.handle_stun(bytes(forged), *A)
        wrong_key = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                 transaction_id=check.transaction_id, attributes={"XOR-MAPPED-ADDRESS": A})
        wrong_key.add_message_integrity(b"not the client's password")
        transport.handle_stun(bytes(wrong_key), *A)
        transport.handle_stun(answer(check, transport), *B)  # the right answer, from elsewhere
    clock.now += 1
    transport._on_consent_timer()
    assert lost == [True] and engine.bound == {}
    assert manager.counters["ice_consent_renewed"] == 0
    assert manager.counters["ice_consent_response_refused"] == 15
    assert manager.counters["ice_consent_expired"] == 1


async def test_media_moves_to_a_nominated_address_only_when_it_answers(setup) -> None:
    engine, manager, clock, create = setup
    transport = create()
    transport.handle_stun(client_check(transport, nominate=True), *A)
    engine.take()
    transport.handle_stun(client_check(transport, nominate=True), *B)  # a spoofed nomination, or a network change
    sent = engine.take()
    assert [(m.message_class, a) for m, a in sent] == [(stun.Class.REQUEST, B), (stun.Class.RESPONSE, B)]
    assert engine.bound == {transport.id: A}
    check = sent[0][0]
    transport.handle_stun(answer(check, transport), *C)  # not from where the check went
    clock.now += 0.1
    transport.handle_stun(client_check(transport, nominate=True), *C)  # within SWITCH_CHECK_INTERVAL: no check
    assert [m.message_class for m, _ in engine.take()] == [stun.Class.RESPONSE]
    assert engine.bound == {transport.id: A}
    transport.handle_stun(answer(check, transport), *B)
    assert engine.bound == {transport.id: B}
    assert manager.counters["ice_address_switched"] == 1
    assert manager.counters["ice_switch_check_limited"] == 1


async def test_an_address_held_by_another_transport_gets_an_error(setup) -> None:
    engine, manager, clock, create = setup
    victim, attacker = create(), create()
    victim.handle_stun(client_check(victim, nominate=True), *A)
    attacker.handle_stun(client_check(attacker, nominate=True), *B)
    engine.take()
    attacker.handle_stun(client_check(attacker, nominate=True), *A)
    [(response, to)] = engine.take()  # no check is sent there either
    assert response.message_class == stun.Class.ERROR and response.attributes["ERROR-CODE"][0] == 403 and to == A
    assert engine.bound == {victim.id: A, attacker.id: B}
    assert manager.counters["ice_address_taken"] == 1


async def test_an_address_is_free_again_once_its_consent_lapsed(setup) -> None:
    """A client reconnecting from the port of its old, still open transport: refused until the old one's consent
    lapses (its client no longer answers), then it binds."""
    engine, manager, clock, create = setup
    old = create()
    old.handle_stun(client_check(old, nominate=True), *A)
    new = create()
    new.handle_stun(client_check(new, nominate=True), *A)
    assert engine.bound == {old.id: A}
    clock.now += 31
    old._on_consent_timer()
    new.handle_stun(client_check(new, nominate=True), *A)
    assert engine.bound == {new.id: A}


async def test_a_vanished_clients_transports_expire_together(setup) -> None:
    engine, manager, clock, create = setup
    publisher, subscriber = create(), create()

    def close_both() -> None:  # what the participant does when its media path is lost
        publisher.close()
        subscriber.close()

    publisher.on_consent_lost = subscriber.on_consent_lost = close_both
    publisher.handle_stun(client_check(publisher, nominate=True), *A)
    subscriber.handle_stun(client_check(subscriber, nominate=True), *B)
    clock.now += 31
    publisher._on_consent_timer()
    subscriber._on_consent_timer()  # its timer was cancelled; had it fired anyway, nothing happens
    assert publisher.closed and subscriber.closed and engine.bound == {}
    assert manager.counters["ice_consent_expired"] == 1
