"""ICE address selection on a Transport, sans-I/O against a fake engine: a taken address is refused with an error."""
from __future__ import annotations

import pytest
from aioice import stun

from signaling.peer.transport import TransportManager

CLIENT_UFRAG, CLIENT_PWD = "clientufrag", "clientpassword0123456789"
A, B, C = ("192.0.2.1", 5000), ("192.0.2.2", 6000), ("192.0.2.3", 7000)


class Engine:
    """What a Transport asks of the engine for ICE: bindings, raw datagrams, expected responses."""

    port = 7882

    def __init__(self) -> None:
        self.bound: dict[int, tuple[str, int]] = {}
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.expected: set[bytes] = set()
        self._next = 0

    def add_transport(self, ice_ufrag: str) -> int:
        self._next += 1
        return self._next

    def remove_transport(self, transport_id: int) -> None:
        self.bound.pop(transport_id, None)

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
    manager = TransportManager(engine, "127.0.0.1")
    clock = Clock()

    def create():
        transport = manager.create("publisher")
        transport._now = clock
        transport.set_remote(CLIENT_UFRAG, None)
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
