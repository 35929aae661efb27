"""ICE-lite Binding handling against requests and parsing done by aioice; our consent checks against aioice's agent."""

import asyncio
import socket
import struct

import aioice
import pytest
from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.peer.ice import (
    BindingResult,
    ConsentChecks,
    StunError,
    handle_binding,
    is_stun,
    new_credentials,
)

LOCAL_UFRAG, LOCAL_PWD = "srvUfrag", "serverpasswordserverpassword"
REMOTE_UFRAG = "cli1"
SOURCE = ("192.0.2.7", 50123)


def binding_request(
    username: str | None = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}",
    pwd: str | None = LOCAL_PWD,
    use_candidate: bool = True,
) -> stun.Message:
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    if username is not None:
        request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    if pwd is not None:
        request.add_message_integrity(pwd.encode())  # with FINGERPRINT
    else:
        request.add_fingerprint()
    return request


def answer(request: stun.Message, remote_ufrag: str | None = REMOTE_UFRAG) -> BindingResult:
    result = handle_binding(bytes(request), SOURCE, LOCAL_UFRAG, LOCAL_PWD, remote_ufrag)
    assert result is not None
    return result


def test_new_credentials() -> None:
    ufrag, pwd = new_credentials()
    assert len(ufrag) >= 4 and len(pwd) >= 22
    ice_chars = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    assert set(ufrag) <= ice_chars and set(pwd) <= ice_chars
    assert new_credentials() != (ufrag, pwd)


@pytest.mark.parametrize("use_candidate", [True, False])
@pytest.mark.parametrize("remote_ufrag", [REMOTE_UFRAG, None])
def test_success_response(use_candidate: bool, remote_ufrag: str | None) -> None:
    request = binding_request(use_candidate=use_candidate)
    result = answer(request, remote_ufrag)
    assert result.authenticated and result.use_candidate is use_candidate

    response = stun.parse_message(result.response)  # also checks FINGERPRINT
    assert "FINGERPRINT" in response.attributes
    assert response.message_method == stun.Method.BINDING
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == request.transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == SOURCE
    assert response.check_message_integrity(LOCAL_PWD.encode())
    assert not response.check_message_integrity(b"another password")


def test_ipv6_source() -> None:
    source = ("2001:db8::1", 9)
    result = handle_binding(bytes(binding_request()), source, LOCAL_UFRAG, LOCAL_PWD, None)
    assert result is not None and result.authenticated
    assert stun.parse_message(result.response).attributes["XOR-MAPPED-ADDRESS"] == source


@pytest.mark.parametrize(
    "request_kwargs, remote_ufrag",
    [
        ({"pwd": "wrong password wrong password"}, REMOTE_UFRAG),
        ({"username": f"other:{REMOTE_UFRAG}"}, REMOTE_UFRAG),
        ({"username": f"{LOCAL_UFRAG}:someone"}, REMOTE_UFRAG),
        ({"username": LOCAL_UFRAG}, None),
        ({"username": f"{LOCAL_UFRAG}:"}, None),
    ],
)
def test_unauthorized(request_kwargs: dict, remote_ufrag: str | None) -> None:
    request = binding_request(**request_kwargs)
    result = answer(request, remote_ufrag)
    assert not result.authenticated and not result.use_candidate
    response = stun.parse_message(result.response)
    assert response.message_class == stun.Class.ERROR
    assert response.transaction_id == request.transaction_id
    assert response.error_code == 401
    assert "XOR-MAPPED-ADDRESS" not in response.attributes


@pytest.mark.parametrize("request_kwargs", [{"username": None}, {"pwd": None}])
def test_bad_request(request_kwargs: dict) -> None:
    result = answer(binding_request(**request_kwargs))
    assert not result.authenticated
    assert stun.parse_message(result.response).error_code == 400


def test_tampered_request_fails_integrity() -> None:
    request = binding_request()
    request.attributes["PRIORITY"] += 1  # changed after signing, fingerprint redone
    request.add_fingerprint()
    assert not answer(request).authenticated


def test_non_requests_are_ignored() -> None:
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION)
    indication.add_fingerprint()
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    allocate = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    for message in (indication, response, allocate):
        assert handle_binding(bytes(message), SOURCE, LOCAL_UFRAG, LOCAL_PWD, None) is None


def test_is_stun() -> None:
    assert is_stun(bytes(binding_request()))
    assert not is_stun(b"\x16\xfe\xfd" + bytes(30))  # DTLS
    assert not is_stun(b"\x80\x60" + bytes(30))  # RTP
    assert not is_stun(bytes(binding_request())[:19])


def test_bad_fingerprint_raises() -> None:
    data = bytearray(bytes(binding_request()))
    data[-1] ^= 1
    with pytest.raises(StunError):
        handle_binding(bytes(data), SOURCE, LOCAL_UFRAG, LOCAL_PWD, None)


def _must_be_clean(data: bytes) -> None:
    try:
        result = handle_binding(data, SOURCE, LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG)
    except StunError:
        pass
    else:
        assert result is None or isinstance(result.response, bytes)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_garbage(data: bytes) -> None:
    _must_be_clean(data)


_VALID = bytes(binding_request())


@settings(max_examples=300)
@given(st.integers(0, len(_VALID)))
def test_truncations(length: int) -> None:
    _must_be_clean(_VALID[:length])


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x0006, 0x0008, 0x0009, 0x0020, 0x0024, 0x0025, 0x8028, 0x802A, 0x1234]),
            st.binary(max_size=40),
            st.integers(-8, 8),
        ),
        max_size=6,
    ),
    st.sampled_from([0x0001, 0x0011, 0x0101, 0x0111, 0x0003, 0x3FFF]),
)
def test_structured_garbage(attributes: list[tuple[int, bytes, int]], message_type: int) -> None:
    """Well-framed headers with hostile attribute types, lengths and values."""
    body = b""
    for attr_type, value, length_skew in attributes:
        length = max(0, min(0xFFFF, len(value) + length_skew))
        body += struct.pack("!HH", attr_type, length) + value + bytes(-len(value) % 4)
    header = struct.pack("!HHI12s", message_type, len(body), stun.COOKIE, bytes(12))
    _must_be_clean(header + body)


async def test_aioice_answers_our_consent_checks() -> None:
    """aioice (aiortc's ICE agent, controlling against our ICE-lite side) answers our checks, and only its answer
    from the address the check went to, with the right password, settles it."""
    agent = aioice.Connection(ice_controlling=True, components=1)
    agent.remote_username, agent.remote_password, agent.remote_is_lite = LOCAL_UFRAG, LOCAL_PWD, True
    await agent.gather_candidates()
    host = next((c for c in agent.local_candidates if "." in c.host), None)
    if host is None:
        await agent.close()
        pytest.skip("aioice found no IPv4 host address (it leaves out loopback)")
    checks = ConsentChecks(LOCAL_UFRAG)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        address = (host.host, host.port)
        request, _ = checks.request(address, agent.local_username, agent.local_password)
        sock.sendto(request, address)
        response, source = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 2048), 2)
        assert not checks.response(response, ("192.0.2.1", source[1]))  # from elsewhere: not an answer
        assert checks.response(response, source)
        assert not checks.response(response, source)  # settled once
        forged, _ = checks.request(address, agent.local_username, "not the agent's password")
        sock.sendto(forged, address)
        response, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 2048), 2)
        assert stun.parse_message(response).message_class == stun.Class.ERROR
    finally:
        sock.close()
        await agent.close()
