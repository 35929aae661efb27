"""Control side of a client's peer connections: ICE-lite credentials, the DTLS endpoint, SRTP keys, data channels.

The engine owns the sockets (UDP, and ICE-TCP connections) and the packets; a Transport owns what is rare and
stateful (STUN checks, the DTLS handshake, the SCTP association over it) and pushes the results (selected address,
SRTP contexts) down into the engine.
"""
from __future__ import annotations

import asyncio
import datetime
import logging
from collections import Counter
from typing import Callable

import pylibsrtp

import engine
from .dcep import AssociationClosed, ChannelClosed, ChannelOpened, DataChannel, MessageReceived
from .dtls import Certificate, DtlsEndpoint, DtlsError, policy_pointer, session_pointer, srtp_policies
from .ice import (CONSENT_TIMEOUT, ConsentChecks, StunError, TransactionLog, error_response, handle_binding,
                  is_response, new_credentials)
from .sctp import SctpAssociation, SctpBufferFull
from .sctp_chunks import SctpError
from .sdp import LocalEndpoint, SdpError

log = logging.getLogger(__name__)

# Bytes of reliable data messages held for a client whose data channel is not open yet (a RoomService SendData or
# another participant's message right after it joined). Past it they are refused (counted data_held_dropped).
MAX_HELD_BYTES = 256 * 1024

# A nomination from a new address gets one check there (media moves when it is answered); more nominations from
# new addresses within this many seconds get none, so spoofed ones cannot make us send checks at their rate.
SWITCH_CHECK_INTERVAL = 0.5

# (counter, attribute): what the DTLS endpoint and the SCTP association count as dropped, exported as these events.
_DTLS_DROPS = (("dtls_malformed", "dropped"), ("dtls_unverified_dropped", "unverified_dropped"))
_SCTP_DROPS = (("sctp_malformed", "dropped"), ("sctp_beyond_window", "beyond_window"),
               ("sctp_oversized", "oversized"), ("sctp_invalid_stream", "invalid_streams"),
               ("sctp_receive_buffer_full", "receive_buffer_full"), ("data_channel_dropped", "channel_drops"),
               ("data_backlog_evicted", "evicted"))


class Transport:
    """One ICE-lite + DTLS + SRTP endpoint (one client peer connection)."""

    def __init__(self, manager: TransportManager, label: str) -> None:
        self.manager = manager
        self.label = label
        while True:
            self.ice_ufrag, self.ice_pwd = new_credentials()
            try:
                self.id = manager.engine.add_transport(self.ice_ufrag)
                break
            except ValueError:  # another transport drew the same ufrag
                continue
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None  # for our consent checks, signed as the client expects
        self.certificate = manager.certificate  # for its whole life: its fingerprint is in the client's SDP
        self.dtls = DtlsEndpoint(self.certificate, None)
        # The selected path: (host, port) over UDP, (host, port, connection) over an ICE-TCP connection, as the
        # engine names them in events and takes them in its methods.
        self.address: tuple | None = None
        self.consent_at = 0.0  # loop time of the last answer to our consent checks from `address` (RFC 7675)
        self._consent = ConsentChecks(self.ice_ufrag)
        self._consent_timer: asyncio.TimerHandle | None = None
        self._next_check_at = 0.0
        self._switch_to: tuple | None = None  # a nominated new address, checked before media moves there
        self._switch_checked_at = -SWITCH_CHECK_INTERVAL
        self._transactions = TransactionLog()
        self.on_connected: Callable[[], None] | None = None
        self.on_consent_lost: Callable[[], None] | None = None
        # For a peer that sends media but answers no consent checks (FFmpeg's WHIP muxer): whether media arrived since
        # last asked. Then it stands in for an expired consent (all we send such a peer is RTCP about its media).
        self.receiving: Callable[[], bool] | None = None
        self.on_message: Callable[[DataChannel, bytes], None] | None = None
        self.on_backlog_full: Callable[[], None] | None = None  # a reliable message found no room: the client does not drain
        # The client closed this peer connection (SCTP ABORT or SHUTDOWN, DTLS close_notify or a fatal alert): called
        # once. A closing SDK may lose its signal leave (it resets its WebSocket), but this arrives.
        self.on_peer_closed: Callable[[], None] | None = None
        self._peer_closed = False
        # The downlink estimate of this (subscriber) transport moved by more than the engine's change threshold, or
        # its congestion state changed (engine E_BANDWIDTH, raised on TWCC feedback or REMB): on_bandwidth(bps,
        # congested); `congested` means: do not upgrade now. Engine.transport_bandwidth(id) reads it at any time.
        self.on_bandwidth: Callable[[int, bool], None] | None = None
        self._srtp = None  # the receive pylibsrtp session, kept alive for the engine's raw pointer (the engine makes
                           # and owns the send session, on the thread that forwards to this transport)
        self.sctp: SctpAssociation | None = None
        self.remote_max_message_size = 65536  # the client's a=max-message-size
        self.local_channels: list[tuple[str, bool, int | None]] = []  # (label, ordered, max_retransmits) we open
        # Reliable channels the client opens that carry our messages too (a single peer connection has no others):
        # messages for them are held until they open, as for ours.
        self.awaited_channels: frozenset[str] = frozenset()
        self.channels: dict[str, DataChannel] = {}  # open data channels by label
        # Reliable messages for a channel of ours that is not open yet (the client is still connecting): sent, in
        # order, when it opens. At most MAX_HELD_BYTES; a client that never opens it leaves with the transport.
        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0
        self._opened: set[str] = set()  # labels that have been open (a closed one holds nothing: the other PC may deliver)
        self._timer: asyncio.TimerHandle | None = None
        self._drops: dict[str, int] = {}  # the DTLS endpoint's and SCTP association's drop counts, as exported
        self.closed = False

    @property
    def connected(self) -> bool:
        return self._srtp is not None

    def local_endpoint(self) -> LocalEndpoint:
        return LocalEndpoint(
            ice_ufrag=self.ice_ufrag,
            ice_pwd=self.ice_pwd,
            fingerprint=self.certificate.fingerprint,
            candidates=[(ip, self.manager.engine.port) for ip in self.manager.candidate_ips],
            tcp_candidates=[(ip, tcp_port) for ip in self.manager.candidate_ips]
            if (tcp_port := self.manager.engine.tcp_port) else [],
            answer_setup="active" if self.dtls.client else "passive",
        )

    def take_dtls_client_role(self) -> None:
        """The client offered to be the DTLS server (a=setup:passive; FFmpeg's WHIP muxer does): we are the DTLS
        client, sending the ClientHello once ICE has selected its address. Only before anything was negotiated."""
        if self.address is None and self.remote_ufrag is None and not self.dtls.client:
            self.dtls = DtlsEndpoint(self.certificate, None, client=True)

    def set_remote(self, ufrag: str | None, fingerprint: tuple[str, str] | None, pwd: str | None = None) -> None:
        """Parameters from the client's SDP (its offer on the publisher PC, its answer on the subscriber PC)."""
        restarted = self.remote_ufrag is None and self.address is not None
        if ufrag:
            self.remote_ufrag = ufrag
        if pwd:
            self.remote_pwd = pwd
        if restarted and self._switch_to is not None:
            self._send_check(self._switch_to)  # nominated before its credentials arrived (an ICE restart's answer)
        if fingerprint:
            failed_before = self.dtls.failed is not None
            try:
                self.dtls.set_remote_fingerprint(fingerprint)
            except DtlsError as error:
                raise SdpError(f"unusable fingerprint: {error}") from error
            # The client's answer may arrive after its DTLS handshake finished: keys are released only now.
            self._advance(failed_before)

    def restart_ice(self) -> None:
        """An ICE restart (RFC 8445 section 9): fresh local credentials, the client's to come with its next SDP. The
        selected address keeps media flowing until the client nominates another; DTLS, SRTP and SCTP go on as they
        are (a restart is not a new handshake)."""
        while True:
            ufrag, pwd = new_credentials()
            try:
                self.manager.engine.set_transport_ufrag(self.id, ufrag)
                break
            except ValueError:  # another transport drew the same ufrag
                continue
        self.ice_ufrag, self.ice_pwd = ufrag, pwd
        self._consent.local_ufrag = ufrag
        self.remote_ufrag = self.remote_pwd = None
        self.manager.counters["ice_restarts"] += 1

    def handle_stun(self, data: bytes, host: str, port: int, connection: int = 0) -> None:
        """A Binding request the engine found addressed to our ufrag (answered; it may select an address), or a
        success response the engine matched to one of our consent checks. `connection`: the ICE-TCP connection it
        came on (0: UDP); a connection's first authenticated request claims it for this transport, and one that
        fails authentication before that closes it."""
        source = (host, port, connection) if connection else (host, port)
        engine_ = self.manager.engine
        if is_response(data):
            self._consent_answered(data, source)
            return
        result = handle_binding(data, (host, port), self.ice_ufrag, self.ice_pwd, self.remote_ufrag)
        if result is None:
            self.manager.counters["stun_ignored"] += 1
            return
        if not result.authenticated:
            self.manager.counters["stun_unauthenticated"] += 1
            if not (connection and engine_.tcp_reject(connection)):
                engine_.send_to(result.response, *source)
            return
        if self._transactions.first_source(data[8:20], source) != source:
            self.manager.counters["stun_replayed"] += 1
            if connection:
                engine_.tcp_reject(connection)  # a captured request proves nothing about this connection
            return
        if connection and not engine_.tcp_claim(connection, self.id):
            self.manager.counters["ice_tcp_refused"] += 1  # another transport's, gone, or one too many
            return
        # ICE-lite: the controlling client nominates; until then the first valid pair is good enough to answer DTLS.
        if source != self.address and (result.use_candidate or self.address is None):
            holder = engine_.transport_at(*source)
            if holder is not None and holder != self.id:  # another live transport's address: it keeps it
                self.manager.counters["ice_address_taken"] += 1
                engine_.send_to(error_response(data[8:20], 403, "Forbidden"), *source)
                return
            if self.address is None:
                # The first address needs no check: no media goes anywhere before a DTLS handshake, which a client
                # only completes where it receives our flights.
                self._select(source)
                if self.address is not None and self.dtls.client:  # after the answer to the check it follows
                    engine_.send_to(result.response, *source)
                    self._send(self.dtls.start())
                    self._schedule_timer()
                    return
            else:
                self._check_switch(source)
        engine_.send_to(result.response, *source)

    def _select(self, address: tuple) -> None:
        if not self.manager.engine.bind_transport(self.id, *address):
            self.manager.counters["ice_address_taken"] += 1  # taken meanwhile
            return
        self.address = address
        self.consent_at = self._now()
        self._switch_to = None
        if self._consent_timer is None:
            self._next_check_at = self.consent_at + self._consent.next_delay()
            self._schedule_consent()

    def _check_switch(self, address: tuple) -> None:
        """A nomination from a new address: media moves there once it answers our check (so a spoofed nomination,
        answered by nobody, moves nothing)."""
        now = self._now()
        if now - self._switch_checked_at < SWITCH_CHECK_INTERVAL:
            self.manager.counters["ice_switch_check_limited"] += 1
            return
        self._switch_checked_at = now
        self._switch_to = address
        self._send_check(address)

    def _send_check(self, address: tuple) -> None:
        if self.remote_ufrag is None or self.remote_pwd is None:
            return  # the client's SDP has not arrived yet: its next check will do
        datagram, transaction_id = self._consent.request(address, self.remote_ufrag, self.remote_pwd)
        self.manager.engine.expect_stun_response(self.id, transaction_id)
        self.manager.engine.send_to(datagram, *address)

    def _consent_answered(self, data: bytes, source: tuple) -> None:
        if not self._consent.response(data, source):
            self.manager.counters["ice_consent_response_refused"] += 1
            return
        if source == self.address:
            self.consent_at = self._now()
            self.manager.counters["ice_consent_renewed"] += 1
        elif source == self._switch_to:
            self.manager.counters["ice_address_switched"] += 1
            self._select(source)

    def _schedule_consent(self) -> None:
        delay = min(self._next_check_at, self.consent_at + CONSENT_TIMEOUT) - self._now()
        self._consent_timer = asyncio.get_running_loop().call_later(max(0.0, delay) + 0.001, self._on_consent_timer)

    def _on_consent_timer(self) -> None:
        """Sends the due consent check, or stops media to an address whose consent expired (RFC 7675); the owner
        decides about the rest."""
        self._consent_timer = None
        if self.closed or self.address is None:
            return
        now = self._now()
        if now - self.consent_at > CONSENT_TIMEOUT and self.receiving is not None and self.receiving():
            self.consent_at = now
            self.manager.counters["ice_consent_by_media"] += 1
        if now - self.consent_at > CONSENT_TIMEOUT:
            log.info("transport %s (%s): no consent from %s for %.0f s", self.id, self.label, self.address,
                     now - self.consent_at)
            self.manager.engine.unbind_transport(self.id)
            self.address = None
            self.manager.counters["ice_consent_expired"] += 1
            if self.on_consent_lost:
                self.on_consent_lost()
            return
        if now >= self._next_check_at:
            self._send_check(self.address)
            self._next_check_at = now + self._consent.next_delay()
        self._schedule_consent()

    def handle_dtls(self, data: bytes) -> None:
        failed_before = self.dtls.failed is not None
        dtls_open = not self.dtls.closed
        self._send(self.dtls.receive(data))
        self._advance(failed_before)
        if dtls_open and self.dtls.closed:  # only the client's close_notify or alert closes it here
            self._closed_by_peer("DTLS closed")

    def _advance(self, failed_before: bool) -> None:
        """Acts on what the DTLS endpoint has become: SRTP keys to the engine, SCTP data, a failure to count."""
        if self.dtls.srtp_keys is not None and self._srtp is None:
            rx_policy, tx_policy = srtp_policies(self.dtls.srtp_keys)
            self._srtp = pylibsrtp.Session(rx_policy)
            self.manager.engine.set_srtp_policy(self.id, session_pointer(self._srtp), policy_pointer(tx_policy))
            log.debug("transport %s (%s) connected from %s", self.id, self.label, self.address)
            self._start_sctp()
            if self.on_connected:
                self.on_connected()
        elif self.dtls.failed and not failed_before:
            self.manager.counters["dtls_failed"] += 1
            log.info("transport %s DTLS failed: %s", self.id, self.dtls.failed)
        if self.sctp is not None:
            now = self._now()
            for record in self.dtls.read_application_data():
                self._send_sctp(self.sctp.receive(record, now))
            self._sctp_events()
        self._count_drops()
        self._schedule_timer()

    def _count_drops(self) -> None:
        """Adds to the node's counters what the DTLS endpoint and SCTP association dropped since last time."""
        self._count(self.dtls, _DTLS_DROPS)
        if self.sctp is not None:
            self._count(self.sctp, _SCTP_DROPS)

    def _count(self, source: object, drops: tuple[tuple[str, str], ...]) -> None:
        for name, attribute in drops:
            total = getattr(source, attribute)
            counted = self._drops.get(name, 0)
            if total != counted:
                self.manager.counters[name] += total - counted
                self._drops[name] = total

    # -- data channels (SCTP over the DTLS association)
    def _start_sctp(self) -> None:
        # tern is always the DTLS server; the client's SCTP stack sends the INIT.
        self.sctp = SctpAssociation(is_server=True, remote_max_message_size=self.remote_max_message_size)
        for label, ordered, max_retransmits in self.local_channels:
            self.sctp.open_channel(label, ordered=ordered, max_retransmits=max_retransmits)
        now = self._now()
        self._send_sctp(self.sctp.start(now) + self.sctp.flush(now))

    def send_message(self, label: str, data: bytes) -> bool:
        """Sends one binary message on the open channel `label`; False when there is none. A reliable channel of
        ours (or an awaited one) that is not open yet holds the message until it opens (see _held).

        When the client has not acknowledged sctp.MAX_BUFFERED_AMOUNT (the association has already dropped its
        oldest unsent lossy messages to make room): a lossy message is dropped and counted, and True says it was
        handled (trying the other peer connection would deliver it out of order); a reliable one cannot be dropped,
        so on_backlog_full is called (the participant leaves) and False returned."""
        channel = self.channels.get(label)
        if self.closed:
            return False
        if channel is None or self.sctp is None:
            return self._hold(label, data)
        try:
            self._send_sctp(self.sctp.send(channel, data, binary=True, now=self._now()))
        except SctpBufferFull:
            self._count_drops()
            if channel.max_retransmits is not None or channel.max_packet_lifetime is not None:
                self.manager.counters["data_backlog_dropped"] += 1
                return True
            self.manager.counters["data_backlog_closed"] += 1
            log.info("transport %s (%s): the client has not acknowledged %d bytes of data channel messages",
                     self.id, self.label, self.sctp.buffered_amount)
            if self.on_backlog_full:
                self.on_backlog_full()
            return False
        except SctpError:  # larger than the client accepts, or the channel closed meanwhile
            self.manager.counters["data_send_failed"] += 1
            return False
        self._count_drops()  # lossy messages it dropped to make room
        self._schedule_timer()
        return True

    def _hold(self, label: str, data: bytes) -> bool:
        reliable = label in self.awaited_channels or any(
            ours == label and max_retransmits is None for ours, _, max_retransmits in self.local_channels)
        if not reliable or label in self._opened:
            return False
        if self._held_bytes + len(data) > MAX_HELD_BYTES:
            self.manager.counters["data_held_dropped"] += 1
            return False
        self._held.append((label, data))
        self._held_bytes += len(data)
        return True

    def _release_held(self, label: str) -> None:
        waiting = [data for held_label, data in self._held if held_label == label]
        if not waiting:
            return
        self._held = [(held_label, data) for held_label, data in self._held if held_label != label]
        self._held_bytes = sum(len(data) for _, data in self._held)
        for data in waiting:
            self.send_message(label, data)

    def _sctp_events(self) -> None:
        assert self.sctp is not None
        for event in self.sctp.events():
            if isinstance(event, ChannelOpened):
                self.channels[event.channel.label] = event.channel
                self._opened.add(event.channel.label)
                self._release_held(event.channel.label)
            elif isinstance(event, ChannelClosed):
                if self.channels.get(event.channel.label) is event.channel:
                    del self.channels[event.channel.label]
            elif isinstance(event, MessageReceived):
                if self.on_message:
                    self.on_message(event.channel, event.data)
            elif isinstance(event, AssociationClosed):
                self.channels.clear()
                log.debug("transport %s SCTP closed: %s", self.id, event.reason)
                if event.by_peer:
                    self._closed_by_peer(f"SCTP {event.reason}")

    def _closed_by_peer(self, how: str) -> None:
        if self._peer_closed:
            return
        self._peer_closed = True
        log.debug("transport %s (%s): the client closed it (%s)", self.id, self.label, how)
        if self.on_peer_closed:
            self.on_peer_closed()

    def _send_sctp(self, packets: list[bytes]) -> None:
        if not self.dtls.connected:  # the client closed DTLS (close_notify) while SCTP still had something to say
            return
        for packet in packets:
            self._send(self.dtls.send_application_data(packet))

    def _send(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            self.manager.engine.send_transport(self.id, datagram)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _schedule_timer(self) -> None:
        """One timer for the DTLS retransmissions (a delay) and the SCTP timers (a deadline on the loop's clock)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.closed:
            return
        delays = [self.dtls.timeout()]
        if self.sctp is not None and (deadline := self.sctp.timeout()) is not None:
            delays.append(max(0.0, deadline - self._now()))
        delays = [d for d in delays if d is not None]
        if delays:
            self._timer = asyncio.get_running_loop().call_later(min(delays), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        self._send(self.dtls.handle_timeout())
        if self.sctp is not None:
            self._send_sctp(self.sctp.handle_timeout(self._now()))
            self._sctp_events()
        self._schedule_timer()

    def probe(self, target_bps: float, duration: float) -> int | None:
        """A probe cluster toward the client (Engine.probe); None when this transport cannot be probed."""
        if self.closed:
            return None
        return self.manager.engine.probe(self.id, int(target_bps), duration)

    def probe_status(self, cluster: int) -> tuple[str, int]:
        return ("unknown", 0) if self.closed else self.manager.engine.probe_status(self.id, cluster)

    def bandwidth(self) -> dict | None:
        """The downlink estimate (Engine.transport_bandwidth), None before there is one."""
        return None if self.closed else self.manager.engine.transport_bandwidth(self.id)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._consent_timer is not None:
            self._consent_timer.cancel()
        if self.address is not None and self.connected:
            self._send(self.dtls.close())
        self.manager.remove(self)


class TransportManager:
    """Routes the engine's rare-packet events to the Transport they belong to."""

    def __init__(self, engine_: engine.Engine, node_ips: list[str]) -> None:
        self.engine = engine_
        self.node_ip = node_ips[0]  # the primary address (IPv4 when there is one)
        # Every address as a UDP and a passive TCP host candidate, IPv6 ones first (RFC 8421 prefers IPv6 on a
        # dual-stack host; a client without IPv6 pairs only the IPv4 ones).
        self.candidate_ips = sorted(node_ips, key=lambda ip: ":" not in ip)
        self._certificate = Certificate.generate()
        self.counters: Counter[str] = Counter()
        self._by_id: dict[int, Transport] = {}
        self.on_receiver_layer: Callable[[int, int, int], None] | None = None

    @property
    def certificate(self) -> Certificate:
        """The DTLS certificate for new transports, replaced every dtls.CERTIFICATE_ROTATION."""
        if self._certificate.due(datetime.datetime.now(datetime.timezone.utc)):
            self._certificate = Certificate.generate()
            self.counters["dtls_certificate_rotated"] += 1
        return self._certificate

    def create(self, label: str) -> Transport:
        transport = Transport(self, label)
        self._by_id[transport.id] = transport
        self.counters["transports_created"] += 1  # how many peer connections clients get: one (v1) or two (v0) each
        return transport

    def remove(self, transport: Transport) -> None:
        self._by_id.pop(transport.id, None)
        self.engine.remove_transport(transport.id)

    def on_event(self, event: tuple) -> None:
        kind = event[0]
        if kind == engine.EV_STUN:
            _, transport_id, data, *source = event  # (host, port), or (host, port, connection) over ICE-TCP
            transport = self._by_id.get(transport_id)
            if transport is None:
                self.counters["stun_unknown_transport"] += 1
                return
            try:
                transport.handle_stun(data, *source)
            except StunError:
                self.counters["stun_malformed"] += 1
                if len(source) == 3:
                    self.engine.tcp_reject(source[2])  # not a Binding request: a pending connection closes
        elif kind == engine.EV_DTLS:
            _, transport_id, data = event
            transport = self._by_id.get(transport_id)
            if transport is None:
                self.counters["dtls_unknown_transport"] += 1
            else:
                transport.handle_dtls(data)
        elif kind == engine.EV_RECEIVER_LAYER and self.on_receiver_layer:
            _, receiver_id, layer, ssrc = event
            self.on_receiver_layer(receiver_id, layer, ssrc)
        elif kind == engine.EV_BANDWIDTH:
            _, transport_id, estimate_bps, congested = event
            transport = self._by_id.get(transport_id)
            if transport is None:
                self.counters["bandwidth_unknown_transport"] += 1
            elif transport.on_bandwidth is not None:
                transport.on_bandwidth(estimate_bps, congested)
