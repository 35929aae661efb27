"""DTLS-SRTP server endpoint, sans-I/O (RFC 5763, RFC 5764).

The engine hands up the DTLS records that arrive on a Transport's selected
address; a DtlsEndpoint feeds them to OpenSSL through memory BIOs and returns
the datagrams to send back. Once the handshake is done and the client's
certificate matches the fingerprint from its SDP, `srtp_keys` holds the SRTP
master keys exported from the session.

We are the DTLS server: LiveKit clients answer our offers with a=setup:active
and offer to us with actpass, which we answer passive. A client that offers to
be the server (a=setup:passive: FFmpeg's WHIP muxer) gets a DTLS client.

DTLS 1.2 only (RFC 8827 requires it; 1.0 lacks its AEAD suites), no renegotiation (nothing in WebRTC
renegotiates, and a ClientHello after the handshake would cost a full handshake's CPU each time).
"""

from __future__ import annotations

import datetime
import secrets
import struct
from dataclasses import dataclass

import pylibsrtp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from pylibsrtp._binding import ffi as _srtp_ffi

__all__ = [
    "Certificate",
    "DtlsEndpoint",
    "DtlsError",
    "SrtpKeys",
    "policy_pointer",
    "session_pointer",
    "srtp_sessions",
]

# Handshake datagrams must fit under the path MTU without IP fragmentation;
# 1200 is what browsers assume for the WebRTC handshake too.
DTLS_MTU = 1200
CERTIFICATE_VALIDITY = datetime.timedelta(days=30)
# New transports get a fresh certificate (and SDP fingerprint) once a day, so none is ever used near its
# expiry; a transport keeps the certificate it started with (its fingerprint is in the client's SDP).
CERTIFICATE_ROTATION = datetime.timedelta(days=1)
# Application data (SCTP) held until the client's certificate is checked against its SDP fingerprint (the
# subscriber's answer can come after its handshake): SCTP's INIT, COOKIE-ECHO and first DATA need a few KB.
MAX_UNVERIFIED_APPLICATION_DATA = 64 * 1024

# WebRTC stacks speak DTLS 1.2; pinning it also keeps the record framing
# below (13-byte headers) the only one we can receive.
_DTLS1_2_VERSION = 0xFEFD
_RECORD_HEADER = struct.Struct("!BHH6sH")  # type, version, epoch, seq, length
_CONTENT_TYPES = frozenset((20, 21, 22, 23))  # change_cipher_spec .. application_data

_FINGERPRINT_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha-1": hashes.SHA1(),
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}


@dataclass(frozen=True)
class _SrtpProfile:
    openssl_name: bytes
    libsrtp_profile: int
    key_length: int
    salt_length: int


# Offered in order of preference: AEAD first (cheaper per packet, no separate HMAC).
_SRTP_PROFILES = (
    _SrtpProfile(b"SRTP_AEAD_AES_128_GCM", pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12),
    _SrtpProfile(b"SRTP_AES128_CM_SHA1_80", pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14),
)


class DtlsError(Exception):
    """Local misuse of a DtlsEndpoint or an unusable SDP fingerprint."""


def _fingerprint(certificate: x509.Certificate, algorithm: str) -> str:
    digest = certificate.fingerprint(_FINGERPRINT_HASHES[algorithm])
    return ":".join(f"{byte:02X}" for byte in digest)


class Certificate:
    """The server's DTLS identity: an ECDSA P-256 self-signed certificate."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.fingerprint = _fingerprint(cert, "sha-256")
        """The a=fingerprint value for our SDP ("sha-256" algorithm)."""

    def due(self, now: datetime.datetime) -> bool:
        """Time to give new transports another: less than CERTIFICATE_VALIDITY - CERTIFICATE_ROTATION left."""
        return self.cert.not_valid_after_utc - now < CERTIFICATE_VALIDITY - CERTIFICATE_ROTATION

    @classmethod
    def generate(cls, validity: datetime.timedelta = CERTIFICATE_VALIDITY) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(8))])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Backdated a day so peers with a slightly wrong clock accept it.
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)


@dataclass
class SrtpKeys:
    profile: int
    """pylibsrtp.Policy.SRTP_PROFILE_*."""
    rx_key: bytes
    """Master key + salt for traffic from the client (the client write key)."""
    tx_key: bytes
    """Master key + salt for traffic to the client (the server write key)."""


def _split_records(data: bytes) -> list[bytes] | None:
    """The DTLS records in one datagram, or None if any is malformed."""
    records = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _RECORD_HEADER.size:
            return None
        content_type, version, _, _, length = _RECORD_HEADER.unpack_from(data, pos)
        end = pos + _RECORD_HEADER.size + length
        if content_type not in _CONTENT_TYPES or version >> 8 != 0xFE or end > len(data):
            return None
        records.append(data[pos:end])
        pos = end
    return records


def _check_fingerprint(fingerprint: tuple[str, str]) -> tuple[str, str]:
    algorithm, value = fingerprint[0].lower(), fingerprint[1].upper()
    if algorithm not in _FINGERPRINT_HASHES:
        raise DtlsError(f"unsupported fingerprint algorithm {fingerprint[0]!r}")
    return algorithm, value


class DtlsEndpoint:
    """One Transport's DTLS endpoint; bytes in, datagrams out. The server's is the DTLS server; load clients
    play the client (`client=True`, then `start()`)."""

    def __init__(
        self, certificate: Certificate, remote_fingerprint: tuple[str, str] | None, *, client: bool = False
    ) -> None:
        self.client = client
        self._remote_fingerprint = (
            _check_fingerprint(remote_fingerprint) if remote_fingerprint is not None else None
        )
        self.srtp_keys: SrtpKeys | None = None
        self.failed: str | None = None
        self.closed = False
        """The peer sent close_notify, or close() was called."""
        self.dropped = 0
        """Datagrams dropped because they were not well-formed DTLS records."""
        self.unverified_dropped = 0
        """Application records dropped past MAX_UNVERIFIED_APPLICATION_DATA."""
        self._handshake_done = False
        self._application_data: list[bytes] = []
        self._application_bytes = 0

        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_min_proto_version(_DTLS1_2_VERSION)
        context.set_max_proto_version(_DTLS1_2_VERSION)
        # A memory BIO has no MTU to query; use ours instead of OpenSSL's tiny fallback.
        context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        # The client must present a certificate; it is self-signed, so trust
        # comes from the SDP fingerprint, checked after the handshake.
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True
        )
        context.use_certificate(certificate.cert)
        context.use_privatekey(certificate.key)
        context.set_tlsext_use_srtp(b":".join(p.openssl_name for p in _SRTP_PROFILES))
        self._ssl = SSL.Connection(context, None)
        self._ssl.set_ciphertext_mtu(DTLS_MTU)
        if client:
            self._ssl.set_connect_state()
        else:
            self._ssl.set_accept_state()

    def start(self) -> list[bytes]:
        """A client's first flight (ClientHello); a server waits for it instead."""
        if not self.client:
            return []
        self._continue_handshake()
        return self._flush()

    @property
    def connected(self) -> bool:
        return self.srtp_keys is not None and not self.closed

    def set_remote_fingerprint(self, fp: tuple[str, str]) -> None:
        """Set the client's fingerprint when it arrives after the handshake began."""
        self._remote_fingerprint = _check_fingerprint(fp)
        if self._handshake_done and self.srtp_keys is None and self.failed is None:
            self._verify_peer()

    def receive(self, data: bytes) -> list[bytes]:
        """Feed one datagram; returns the datagrams to send back."""
        if self.failed is not None or self.closed:
            return []
        if not _split_records(data):  # malformed, or empty
            self.dropped += 1
            return []
        self._ssl.bio_write(data)
        if not self._handshake_done:
            self._continue_handshake()
        if self._handshake_done and self.failed is None:
            self._read_application_data()
        return self._flush()

    def timeout(self) -> float | None:
        """Seconds until handle_timeout() is due (handshake retransmission)."""
        if self.failed is not None or self.closed:
            return None
        return self._ssl.DTLSv1_get_timeout()

    def handle_timeout(self) -> list[bytes]:
        """Retransmit the last flight if its timer expired."""
        if self.failed is not None or self.closed:
            return []
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:  # e.g. too many retransmissions
            self.failed = f"handshake timed out: {exc}"
        return self._flush()

    def read_application_data(self) -> list[bytes]:
        """Decrypted application data (SCTP packets) received so far.

        Withheld until the peer's certificate has been checked against its
        fingerprint, and dropped if it never matches.
        """
        if self.srtp_keys is None:
            return []
        data, self._application_data = self._application_data, []
        self._application_bytes = 0
        return data

    def send_application_data(self, data: bytes) -> list[bytes]:
        if not self.connected:
            raise DtlsError("DTLS is not connected")
        try:
            self._ssl.send(data)
        except SSL.Error as exc:
            raise DtlsError(f"cannot send application data: {exc}") from exc
        return self._flush()

    def close(self) -> list[bytes]:
        """Send close_notify (once) and stop."""
        if self.closed:
            return []
        self.closed = True
        try:
            self._ssl.shutdown()
        except SSL.Error:
            pass  # nothing to notify before a handshake; just stop
        return self._flush()

    def _continue_handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            # OpenSSL has queued the fatal alert; _flush sends it.
            self.failed = f"handshake failed: {exc}"
            return
        self._handshake_done = True
        if self._remote_fingerprint is not None:
            self._verify_peer()

    def _verify_peer(self) -> None:
        assert self._remote_fingerprint is not None
        algorithm, expected = self._remote_fingerprint
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None or _fingerprint(certificate, algorithm) != expected:
            self._fail("peer certificate does not match the SDP fingerprint")
            return
        self.srtp_keys = self._export_srtp_keys()
        if self.srtp_keys is None:
            self._fail("no SRTP profile negotiated")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self._application_data.clear()  # never from an unverified peer
        self._application_bytes = 0
        try:
            self._ssl.shutdown()  # a close_notify tells the client to give up
        except SSL.Error:
            pass  # the failure stands either way

    def _export_srtp_keys(self) -> SrtpKeys | None:
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in _SRTP_PROFILES if p.openssl_name == selected), None)
        if profile is None:
            return None
        key_len, salt_len = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(
            b"EXTRACTOR-dtls_srtp", 2 * (key_len + salt_len)
        )
        # RFC 5764 section 4.2: client key | server key | client salt | server salt.
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client_keys, server_keys = client_key + client_salt, server_key + server_salt
        return SrtpKeys(
            profile=profile.libsrtp_profile,
            rx_key=server_keys if self.client else client_keys,
            tx_key=client_keys if self.client else server_keys,
        )

    def _read_application_data(self) -> None:
        # Reading also lets OpenSSL answer a retransmitted final client flight
        # (our last flight was lost), so it runs even before the peer is verified.
        while True:
            try:
                data = self._ssl.recv(65536)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:  # the client sent close_notify
                self.closed = True
                return
            except SSL.Error:
                # DTLS drops bad records silently, so this is a fatal alert.
                self.closed = True
                return
            if self._application_bytes + len(data) > MAX_UNVERIFIED_APPLICATION_DATA:
                self.unverified_dropped += 1  # SCTP sends it again
                continue
            self._application_bytes += len(data)
            self._application_data.append(data)

    def _flush(self) -> list[bytes]:
        """Drain the outgoing BIO into datagrams of whole records up to the MTU.

        A memory BIO is a byte stream, so the records of a flight come out
        concatenated; regroup them rather than cut a record in two.
        """
        out = bytearray()
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            out += chunk
        datagrams: list[bytes] = []
        current = b""
        for record in _split_records(bytes(out)) or ():
            if current and len(current) + len(record) > DTLS_MTU:
                datagrams.append(current)
                current = b""
            current += record
        if current:
            datagrams.append(current)
        return datagrams


def srtp_sessions(keys: SrtpKeys) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """(rx, tx) libsrtp sessions for a Transport's SRTP traffic."""
    rx_policy, tx_policy = srtp_policies(keys)
    return pylibsrtp.Session(rx_policy), pylibsrtp.Session(tx_policy)


def srtp_policies(keys: SrtpKeys) -> tuple[pylibsrtp.Policy, pylibsrtp.Policy]:
    """(rx, tx) libsrtp policies for a Transport's SRTP traffic."""
    rx_policy = pylibsrtp.Policy(
        key=keys.rx_key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=keys.profile,
    )
    rx_policy.window_size = 1024
    tx_policy = pylibsrtp.Policy(
        key=keys.tx_key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=keys.profile,
    )
    tx_policy.window_size = 1024
    # NACK retransmissions re-protect packets with a sequence number already sent.
    tx_policy.allow_repeat_tx = True
    return rx_policy, tx_policy


def policy_pointer(policy: pylibsrtp.Policy) -> int:
    """The raw srtp_policy_t * of a policy (valid while `policy` is alive)."""
    return int(_srtp_ffi.cast("uintptr_t", policy._policy))


def session_pointer(session: pylibsrtp.Session) -> int:
    """The raw srtp_t of a session, for the engine to call libsrtp directly.

    Valid only while `session` is alive: the caller must keep a reference.
    """
    return int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))
