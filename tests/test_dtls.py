"""DtlsEndpoint against an in-memory pyOpenSSL DTLS client (and aiortc's DTLS)."""

import asyncio
import struct
import time

import pylibsrtp
import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from signaling.peer.dtls import (
    MAX_UNVERIFIED_APPLICATION_DATA,
    Certificate,
    DtlsEndpoint,
    DtlsError,
    SrtpKeys,
    session_pointer,
    srtp_sessions,
)

SERVER_CERT = Certificate.generate()
CLIENT_CERT = Certificate.generate()
BOTH_PROFILES = b"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM"
RTP = bytes.fromhex("8060 1234 00000001 deadbeef") + bytes(range(100))
RTCP = bytes.fromhex("81c8 0006 deadbeef") + bytes(20)  # sender report


class Client:
    """A DTLS-SRTP client (the browser's role) driven through memory BIOs."""

    def __init__(self, profiles: bytes = BOTH_PROFILES, certificate: Certificate | None = CLIENT_CERT) -> None:
        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_verify(SSL.VERIFY_PEER, lambda *_: True)
        if certificate is not None:
            context.use_certificate(certificate.cert)
            context.use_privatekey(certificate.key)
        context.set_tlsext_use_srtp(profiles)
        context.set_options(SSL.OP_NO_QUERY_MTU)
        self.ssl = SSL.Connection(context, None)
        self.ssl.set_ciphertext_mtu(1200)
        self.ssl.set_connect_state()
        self.done = False

    def step(self, incoming: list[bytes]) -> bytes:
        for datagram in incoming:
            self.ssl.bio_write(datagram)
        if not self.done:
            try:
                self.ssl.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass
        return self.outgoing()

    def outgoing(self) -> bytes:
        out = b""
        while True:
            try:
                out += self.ssl.bio_read(65536)
            except SSL.WantReadError:
                return out

    def keys(self) -> SrtpKeys:
        """The client's view of the keys, in server terms (rx = what the client sends)."""
        name = self.ssl.get_selected_srtp_profile()
        profile, salt_len = {
            b"SRTP_AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 12),
            b"SRTP_AES128_CM_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 14),
        }[name]
        m = self.ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (16 + salt_len))
        client_write = m[0:16] + m[32 : 32 + salt_len]
        server_write = m[16:32] + m[32 + salt_len :]
        return SrtpKeys(profile=profile, rx_key=client_write, tx_key=server_write)


def handshake(server: DtlsEndpoint, client: Client, max_rounds: int = 10) -> None:
    to_server = client.step([])
    for _ in range(max_rounds):
        to_client = server.receive(to_server) if to_server else []
        to_server = client.step(to_client)
        if not to_server and not to_client:
            return


def client_fingerprint(certificate: Certificate = CLIENT_CERT) -> tuple[str, str]:
    return ("sha-256", certificate.fingerprint)


def test_certificate() -> None:
    fingerprint = SERVER_CERT.fingerprint
    assert len(fingerprint) == 32 * 3 - 1 and fingerprint == fingerprint.upper()
    assert Certificate.generate().fingerprint != fingerprint


def check_srtp(server: DtlsEndpoint, client: Client) -> None:
    """Both sides derived the same keys, in the right directions."""
    server_rx, server_tx = srtp_sessions(server.srtp_keys)
    client_keys = client.keys()
    assert client_keys == server.srtp_keys
    # The client protects with its write key (our rx) and unprotects with ours (our tx).
    client_tx = pylibsrtp.Session(
        pylibsrtp.Policy(client_keys.rx_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=client_keys.profile)
    )
    client_rx = pylibsrtp.Session(
        pylibsrtp.Policy(client_keys.tx_key, pylibsrtp.Policy.SSRC_ANY_INBOUND, srtp_profile=client_keys.profile)
    )
    assert server_rx.unprotect(client_tx.protect(RTP)) == RTP
    assert server_rx.unprotect_rtcp(client_tx.protect_rtcp(RTCP)) == RTCP
    assert client_rx.unprotect(server_tx.protect(RTP)) == RTP
    assert client_rx.unprotect_rtcp(server_tx.protect_rtcp(RTCP)) == RTCP
    # allow_repeat_tx: a NACKed packet can be protected again with the same sequence number.
    server_tx.protect(RTP)


@pytest.mark.parametrize(
    "profiles, expected",
    [
        (BOTH_PROFILES, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
        (b"SRTP_AES128_CM_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
        (b"SRTP_AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
    ],
)
def test_handshake_and_keys(profiles: bytes, expected: int) -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client(profiles)
    handshake(server, client)
    assert client.done and server.connected and server.failed is None
    assert server.srtp_keys.profile == expected
    check_srtp(server, client)
    assert server.timeout() is None


@pytest.mark.parametrize("algorithm", ["sha-1", "SHA-384", "sha-512"])
def test_other_fingerprint_algorithms(algorithm: str) -> None:
    digest = CLIENT_CERT.cert.fingerprint(
        {"sha-1": hashes.SHA1(), "sha-384": hashes.SHA384(), "sha-512": hashes.SHA512()}[algorithm.lower()]
    )
    fingerprint = ":".join(f"{b:02x}" for b in digest)  # lower-case is accepted too
    server = DtlsEndpoint(SERVER_CERT, (algorithm, fingerprint))
    handshake(server, Client())
    assert server.connected


def test_unsupported_fingerprint_algorithm() -> None:
    with pytest.raises(DtlsError):
        DtlsEndpoint(SERVER_CERT, ("md5", "AA:BB"))


def test_fingerprint_mismatch() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint(Certificate.generate()))
    client = Client()
    handshake(server, client)
    assert not server.connected and server.srtp_keys is None
    assert "fingerprint" in server.failed
    assert server.receive(client.step([])) == []


def test_fingerprint_arrives_after_handshake() -> None:
    server = DtlsEndpoint(SERVER_CERT, None)
    client = Client()
    handshake(server, client)
    assert client.done and not server.connected
    client.ssl.send(b"early sctp")
    assert server.receive(client.outgoing()) == []
    assert server.read_application_data() == []  # withheld until verified
    server.set_remote_fingerprint(client_fingerprint())
    assert server.connected
    assert server.read_application_data() == [b"early sctp"]
    check_srtp(server, client)


def test_late_fingerprint_mismatch() -> None:
    server = DtlsEndpoint(SERVER_CERT, None)
    client = Client()
    handshake(server, client)
    client.ssl.send(b"unverified")
    server.receive(client.outgoing())
    server.set_remote_fingerprint(client_fingerprint(SERVER_CERT))
    assert server.failed and not server.connected
    assert server.read_application_data() == []


def test_client_certificate_required() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client(certificate=None)
    with pytest.raises(SSL.Error):  # the server's alert ends the client's handshake
        handshake(server, client)
    assert server.failed and not server.connected


def test_no_common_srtp_profile() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    handshake(server, Client(b"SRTP_AES128_CM_SHA1_32"))
    assert server.failed and server.srtp_keys is None


def test_application_data_both_ways() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    with pytest.raises(DtlsError):
        server.send_application_data(b"too early")
    handshake(server, client)
    client.ssl.send(b"one")
    client.ssl.send(b"two")
    assert server.receive(client.outgoing()) == []
    assert server.read_application_data() == [b"one", b"two"]
    assert server.read_application_data() == []
    for datagram in server.send_application_data(b"x" * 1000):
        client.ssl.bio_write(datagram)
    assert client.ssl.recv(2000) == b"x" * 1000


def test_close_both_ways() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    handshake(server, client)
    notify = server.close()
    assert len(notify) == 1 and notify[0][0] == 21  # an alert record
    client.ssl.bio_write(notify[0])
    with pytest.raises(SSL.ZeroReturnError):
        client.ssl.recv(100)
    assert not server.connected and server.close() == []

    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    handshake(server, client)
    client.ssl.shutdown()
    server.receive(client.outgoing())
    assert server.closed and not server.connected


def test_retransmission_timer() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    assert server.timeout() is None
    lost = server.receive(client.step([]))  # ServerHello..ServerHelloDone, lost
    assert lost
    timeout = server.timeout()
    assert timeout is not None and 0 < timeout <= 1.5
    retransmitted = []
    for _ in range(50):  # the timer is real time; wait for it by polling
        retransmitted = server.handle_timeout()
        if retransmitted:
            break
        time.sleep(0.05)
    assert retransmitted
    to_server = client.step(retransmitted)
    for _ in range(5):
        to_client = server.receive(to_server) if to_server else []
        to_server = client.step(to_client)
    assert client.done and server.connected
    check_srtp(server, client)


def test_lost_final_flight() -> None:
    """The client retransmits its Finished flight; the connected server answers it again."""
    server = DtlsEndpoint(SERVER_CERT, None)
    client = Client()
    to_server = client.step(server.receive(client.step([])))
    assert server.receive(to_server)  # CCS + Finished, lost
    assert not client.done
    retransmitted = b""
    for _ in range(50):
        client.ssl.DTLSv1_handle_timeout()
        retransmitted = client.outgoing()
        if retransmitted:
            break
        time.sleep(0.05)
    answer = server.receive(retransmitted)
    assert answer
    client.step(answer)
    assert client.done
    server.set_remote_fingerprint(client_fingerprint())
    check_srtp(server, client)


def test_handshake_datagrams_fit_mtu() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    flight = server.receive(Client().step([]))
    assert flight and all(len(d) <= 1200 for d in flight)


def test_garbage_is_dropped() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    hello = client.step([])
    for junk in (b"", b"\x16", hello[:20], hello[:-1], b"\x80" + bytes(40), b"\x16\xfe\xfd" + bytes(20)):
        assert server.receive(junk) == []
    assert server.dropped == 6
    handshake_rest = server.receive(hello)
    assert handshake_rest and server.failed is None
    to_server = client.step(handshake_rest)
    client.step(server.receive(to_server))
    assert server.connected
    # After the handshake: junk and forged application records change nothing.
    forged = struct.pack("!BHH6sH", 23, 0xFEFD, 1, bytes(6), 40) + bytes(40)
    assert server.receive(forged) == [] and server.receive(b"\x17\xfe") == []
    assert server.read_application_data() == [] and server.connected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5))
def test_random_datagrams_never_raise(datagrams: list[bytes]) -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    for datagram in datagrams:
        assert isinstance(server.receive(datagram), list)
    server.handle_timeout()
    server.read_application_data()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([20, 21, 22, 23]), st.integers(0, 2), st.binary(max_size=120)),
        min_size=1,
        max_size=4,
    )
)
def test_well_framed_garbage_records_never_raise(records: list[tuple[int, int, bytes]]) -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    datagram = b"".join(
        struct.pack("!BHH6sH", kind, 0xFEFD, epoch, bytes(6), len(body)) + body
        for kind, epoch, body in records
    )
    assert isinstance(server.receive(datagram), list)
    server.handle_timeout()


def test_srtp_session_pointers() -> None:
    keys = SrtpKeys(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, bytes(30), bytes(range(30)))
    rx, tx = srtp_sessions(keys)
    assert session_pointer(rx) != 0 and session_pointer(rx) != session_pointer(tx)
    assert session_pointer(rx) == session_pointer(rx)


async def test_aiortc_dtls_client() -> None:
    """Interop with aiortc's RTCDtlsTransport as the DTLS client."""
    from aiortc.rtcdtlstransport import (
        RTCCertificate,
        RTCDtlsFingerprint,
        RTCDtlsParameters,
        RTCDtlsTransport,
    )

    class FakeIceTransport:
        """The two coroutines RTCDtlsTransport uses, wired to our endpoint."""

        role = "controlled"  # -> aiortc takes the DTLS client role

        def __init__(self) -> None:
            self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

        async def _recv(self) -> bytes:
            return await self.inbox.get()

        async def _send(self, data: bytes) -> None:
            for datagram in server.receive(data):
                self.inbox.put_nowait(datagram)

    certificate = RTCCertificate.generateCertificate()
    fingerprint = next(f for f in certificate.getFingerprints() if f.algorithm == "sha-256")
    server = DtlsEndpoint(SERVER_CERT, (fingerprint.algorithm, fingerprint.value))
    ice = FakeIceTransport()
    client = RTCDtlsTransport(ice, [certificate])
    await asyncio.wait_for(
        client.start(RTCDtlsParameters([RTCDtlsFingerprint("sha-256", SERVER_CERT.fingerprint)])),
        timeout=5,
    )
    assert client.state == "connected" and server.connected
    server_rx, server_tx = srtp_sessions(server.srtp_keys)
    assert server_rx.unprotect(client._tx_srtp.protect(RTP)) == RTP
    assert client._rx_srtp.unprotect(server_tx.protect(RTP)) == RTP
    await client.stop()


def test_our_client_role_against_our_server() -> None:
    """Load clients play the DTLS client: both ends agree on the keys, each sending with what the other receives."""
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = DtlsEndpoint(CLIENT_CERT, ("sha-256", SERVER_CERT.fingerprint), client=True)
    assert server.start() == []
    flight = client.start()
    for _ in range(10):
        flight = [reply for datagram in flight for reply in server.receive(datagram)]
        flight = [reply for datagram in flight for reply in client.receive(datagram)]
        if client.connected and server.connected:
            break
    assert client.connected and server.connected
    assert client.srtp_keys.profile == server.srtp_keys.profile
    assert (client.srtp_keys.tx_key, client.srtp_keys.rx_key) == (server.srtp_keys.rx_key, server.srtp_keys.tx_key)


# --- hardening: version, renegotiation, buffering (issue 10 items 6 and 11) -------------


def test_dtls_1_0_client_gets_a_protocol_version_alert() -> None:
    client = Client()
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_max_proto_version(0xFEFF)  # DTLS 1.0 only
    context.set_cipher_list(b"ALL:@SECLEVEL=0")
    context.use_certificate(CLIENT_CERT.cert)
    context.use_privatekey(CLIENT_CERT.key)
    context.set_tlsext_use_srtp(BOTH_PROFILES)
    client.ssl = SSL.Connection(context, None)
    client.ssl.set_connect_state()
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    (alert,) = server.receive(client.step([]))
    assert alert[0] == 21 and alert[13:15] == bytes([2, 70])  # fatal protocol_version
    assert server.failed and server.srtp_keys is None
    client.ssl.bio_write(alert)
    with pytest.raises(SSL.Error):
        client.ssl.do_handshake()


def test_renegotiation_is_refused_and_the_session_stays() -> None:
    server = DtlsEndpoint(SERVER_CERT, client_fingerprint())
    client = Client()
    handshake(server, client)
    keys = server.srtp_keys
    client.ssl.renegotiate()
    with pytest.raises(SSL.WantReadError):
        client.ssl.do_handshake()
    refusal = server.receive(client.outgoing())
    assert [datagram[0] for datagram in refusal] == [21]  # one (encrypted) no_renegotiation alert
    client.ssl.bio_write(refusal[0])
    with pytest.raises(SSL.Error, match="no renegotiation"):
        client.ssl.do_handshake()
    assert server.connected and server.failed is None and server.srtp_keys == keys


def test_application_data_before_the_fingerprint_is_bounded() -> None:
    """A client that never sends its SDP fingerprint cannot make the server hold more than the cap."""
    server = DtlsEndpoint(SERVER_CERT, None)
    client = Client()
    handshake(server, client)
    for _ in range(200):
        client.ssl.send(bytes(1000))
        server.receive(client.outgoing())
    assert server.unverified_dropped >= 200 - MAX_UNVERIFIED_APPLICATION_DATA // 1000
    server.set_remote_fingerprint(client_fingerprint())
    held = server.read_application_data()
    assert 0 < sum(map(len, held)) <= MAX_UNVERIFIED_APPLICATION_DATA
