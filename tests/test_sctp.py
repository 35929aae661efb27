"""SCTP association: ours against ours (sans-I/O, virtual clock) and against aiortc in memory."""
from __future__ import annotations

import asyncio
import random
import struct
import sys
from collections.abc import Callable
from types import FrameType

import pytest
from aiortc.rtcdatachannel import RTCDataChannel, RTCDataChannelParameters
from aiortc.rtcsctptransport import RTCSctpCapabilities, RTCSctpTransport
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.peer import sctp, sctp_chunks, sctp_tsn
from signaling.peer.dcep import ChannelClosed, ChannelOpened, DataChannelEvent, MessageReceived
from signaling.peer.sctp import (CHUNK_COST, MAX_BUFFERED_AMOUNT, MAX_FRAGMENT, MAX_GAP_BLOCKS, MAX_INBOUND_STREAMS,
                                 RECEIVE_BUFFER, RECEIVE_TSN_WINDOW, SctpAssociation, SctpBufferFull)
from signaling.peer.sctp_chunks import (DATA, FORWARD_TSN, SACK, ForwardTsnChunk, SackChunk, SctpError, encode_chunk,
                                        encode_data_chunk, encode_packet, parse_packet)
from signaling.peer.sctp_tsn import ReceivedTsns

# --- ours against ours, virtual clock ---------------------------------------


class Link:
    """Two associations joined by a lossy in-memory wire; time only moves when asked."""

    def __init__(self, drop: Callable[[str, bytes], bool] | None = None, **kwargs: int) -> None:
        self.now = 0.0
        self.client = SctpAssociation(is_server=False, **kwargs)
        self.server = SctpAssociation(is_server=True, **kwargs)
        self.drop = drop or (lambda direction, packet: False)
        self.events: dict[str, list[DataChannelEvent]] = {"client": [], "server": []}
        self.run(self.client.start(self.now), [])

    def run(self, from_client: list[bytes], from_server: list[bytes], until: float = 30.0) -> None:
        """Delivers packets in order and fires timers until nothing moves (or `until` seconds pass)."""
        deadline = self.now + until
        wire = [("c2s", p) for p in from_client] + [("s2c", p) for p in from_server]
        while True:
            while wire:
                direction, packet = wire.pop(0)
                if self.drop(direction, packet):
                    continue
                if direction == "c2s":
                    wire += [("s2c", p) for p in self.server.receive(packet, self.now)]
                else:
                    wire += [("c2s", p) for p in self.client.receive(packet, self.now)]
            self._collect()
            timers = [t for t in (self.client.timeout(), self.server.timeout()) if t is not None]
            if not timers or min(timers) > deadline:
                return
            self.now = max(self.now, min(timers))
            wire += [("c2s", p) for p in self.client.handle_timeout(self.now)]
            wire += [("s2c", p) for p in self.server.handle_timeout(self.now)]

    def _collect(self) -> None:
        self.events["client"] += self.client.events()
        self.events["server"] += self.server.events()

    def messages(self, side: str) -> list[tuple[str, bytes, bool]]:
        return [(e.channel.label, e.data, e.binary) for e in self.events[side] if isinstance(e, MessageReceived)]


def test_link_delivers_both_ways() -> None:
    # The client initiates, the server answers statelessly until the cookie comes back.
    link = Link()
    assert link.client.established and link.server.established


def open_pair(link: Link, label: str, **options: object) -> tuple:
    """Opens a channel from the server side (tern's role) and returns (ours, theirs)."""
    channel = link.server.open_channel(label, **options)  # type: ignore[arg-type]
    link.run([], link.server.flush(link.now))
    theirs = next(e.channel for e in link.events["client"] if isinstance(e, ChannelOpened) and e.channel.label == label)
    assert channel.open and theirs.stream_id == channel.stream_id
    return channel, theirs


def test_simultaneous_init_collision() -> None:
    client = SctpAssociation(is_server=False)
    server = SctpAssociation(is_server=False)  # both initiate, as libwebrtc and aiortc do
    wire = [("a", p) for p in client.start(0.0)] + [("b", p) for p in server.start(0.0)]
    while wire:
        side, packet = wire.pop(0)
        if side == "a":
            wire += [("b", p) for p in server.receive(packet, 0.0)]
        else:
            wire += [("a", p) for p in client.receive(packet, 0.0)]
    assert client.established and server.established
    assert client.dropped == server.dropped == 0


def test_messages_small_large_string_empty() -> None:
    link = Link(max_message_size=512 * 1024, remote_max_message_size=512 * 1024)
    ours, theirs = open_pair(link, "_reliable")
    assert ours.stream_id % 2 == 1 and ours.open
    big = random.randbytes(300 * 1024)
    link.run([], link.server.send(ours, b"hello", binary=False, now=link.now)
             + link.server.send(ours, big, now=link.now) + link.server.send(ours, b"", now=link.now))
    link.run(link.client.send(theirs, "é".encode(), binary=False, now=link.now), [])
    assert link.messages("client") == [("_reliable", b"hello", False), ("_reliable", big, True), ("_reliable", b"", True)]
    assert link.messages("server") == [("_reliable", "é".encode(), False)]


def test_oversized_message_is_dropped_and_counted() -> None:
    link = Link(max_message_size=10_000, remote_max_message_size=100_000)
    ours, _ = open_pair(link, "x")
    link.run([], link.server.send(ours, bytes(20_000), now=link.now) + link.server.send(ours, b"after", now=link.now))
    assert link.client.oversized == 1
    assert [m[1] for m in link.messages("client")] == [b"after"]
    with pytest.raises(SctpError):
        link.server.send(ours, bytes(100_001))


def test_reliable_survives_loss_and_lossy_is_skipped() -> None:
    rng = random.Random(7)
    link = Link()
    reliable, _ = open_pair(link, "_reliable")
    lossy, _ = open_pair(link, "_lossy", ordered=False, max_retransmits=0)
    link.drop = lambda direction, packet: rng.random() < 0.2
    sent_reliable = [b"r%d" % i + bytes(rng.randrange(3000)) for i in range(60)]
    for i, message in enumerate(sent_reliable):
        link.run([], link.server.send(reliable, message, now=link.now)
                 + link.server.send(lossy, b"l%d" % i, now=link.now), until=0.05)
    link.run([], [], until=60)
    got = link.messages("client")
    assert [m[1] for m in got if m[0] == "_reliable"] == sent_reliable
    lossy_got = [m[1] for m in got if m[0] == "_lossy"]
    assert 0 < len(lossy_got) < 60 and len(set(lossy_got)) == len(lossy_got)
    # Every abandoned TSN was skipped with FORWARD-TSN, so nothing stays outstanding.
    assert not link.server._outstanding and link.server.timeout() is None
    # The channel still works afterwards.
    link.drop = lambda direction, packet: False
    link.run([], link.server.send(lossy, b"final", now=link.now))
    assert link.messages("client")[-1] == ("_lossy", b"final", True)


def test_tsn_and_ssn_wraparound_with_loss() -> None:
    rng = random.Random(11)
    link = Link.__new__(Link)
    link.now = 0.0
    link.client = SctpAssociation(is_server=False)
    link.server = SctpAssociation(is_server=True)
    for association in (link.client, link.server):  # start just below the 32-bit wrap
        association._next_tsn = association._initial_tsn = association._reset_seq = 0xFFFFFFF0
        association._cum_acked = association._advanced_ack = 0xFFFFFFEF
    link.drop = lambda direction, packet: False
    link.events = {"client": [], "server": []}
    link.run(link.client.start(0.0), [])
    ours, _ = open_pair(link, "wrap")
    link.server._ssn_out[ours.stream_id] = 0xFFFE
    link.client._ssn_in[ours.stream_id] = 0xFFFE
    link.drop = lambda direction, packet: rng.random() < 0.2
    sent = [bytes([i]) * rng.randrange(1, 4000) for i in range(40)]
    for message in sent:
        link.run([], link.server.send(ours, message, now=link.now), until=0.01)
    link.run([], [], until=60)
    assert [m[1] for m in link.messages("client")] == sent
    assert link.client._tsns.cumulative < 0x100 and not link.server._outstanding


def test_ordered_partial_reliability_skips_ssn() -> None:
    drop_first_data = {"left": 1}

    def drop(direction: str, packet: bytes) -> bool:
        _, _, _, chunks = parse_packet(packet)
        if direction == "s2c" and any(c.type == DATA for c in chunks) and b"lost" in packet and drop_first_data["left"]:
            drop_first_data["left"] -= 1
            return True
        return False

    link = Link(drop=drop)
    ours, _ = open_pair(link, "ordered-lossy", ordered=True, max_retransmits=0)
    link.run([], link.server.send(ours, b"lost", now=link.now) + link.server.send(ours, b"kept", now=link.now))
    assert [m[1] for m in link.messages("client")] == [b"kept"]


def test_close_resets_streams_both_ways() -> None:
    link = Link()
    ours, theirs = open_pair(link, "a")
    link.run([], link.server.close_channel(ours))
    closed = {side: [e.channel.stream_id for e in link.events[side] if isinstance(e, ChannelClosed)] for side in link.events}
    assert closed == {"client": [ours.stream_id], "server": [ours.stream_id]}
    assert not theirs.open and not ours.open
    # The stream id can be used again with fresh sequence numbers.
    again, _ = open_pair(link, "b")
    link.run([], link.server.send(again, b"x", now=link.now))
    assert link.messages("client")[-1] == ("b", b"x", True)


def test_abort_and_heartbeat() -> None:
    link = Link()
    open_pair(link, "a")
    heartbeat = encode_packet(5000, 5000, link.server._tag, encode_chunk(4, 0, b"\x00\x01\x00\x08abcd"))
    replies = link.server.receive(heartbeat, link.now)
    assert parse_packet(replies[0])[3][0].type == 5 and parse_packet(replies[0])[3][0].body.endswith(b"abcd")
    link.run(link.client.abort(), [])
    assert link.server.state == "closed"
    kinds = [type(e).__name__ for e in link.events["server"]]
    assert kinds[-2:] == ["ChannelClosed", "AssociationClosed"]


def test_peer_shutdown() -> None:
    link = Link()
    ours, theirs = open_pair(link, "a")
    tag = link.server._tag
    shutdown = encode_packet(5000, 5000, tag, encode_chunk(7, 0, struct.pack("!L", link.server._tsns.cumulative)))
    replies = link.server.receive(shutdown, link.now)
    assert [c.type for c in parse_packet(replies[0])[3]] == [8]  # SHUTDOWN-ACK
    assert [c.type for c in parse_packet(link.server.receive(shutdown, link.now)[0])[3]] == [8]  # again if lost
    link.server.receive(encode_packet(5000, 5000, tag, encode_chunk(14, 0, b"")), link.now)
    assert link.server.state == "closed" and not ours.open
    with pytest.raises(SctpError):
        link.server.send(ours, b"late")


def test_delayed_sack_timer() -> None:
    link = Link()
    ours, _ = open_pair(link, "a")
    packets = link.server.send(ours, b"one", now=link.now)
    assert link.client.receive(packets[0], link.now) == []  # one DATA packet: SACK waits
    due = link.client.timeout()
    assert due is not None and due - link.now == pytest.approx(0.2)
    sack = link.client.handle_timeout(due)
    assert parse_packet(sack[0])[3][0].type == 3


# --- robustness ----------------------------------------------------------------


def _valid_packets() -> list[bytes]:
    captured: list[bytes] = []
    link = Link(drop=lambda direction, packet: captured.append(packet) or False)
    ours, theirs = open_pair(link, "cap", ordered=False, max_retransmits=0)
    link.run(link.client.send(theirs, bytes(3000), now=link.now), link.server.close_channel(ours))
    return captured


VALID = _valid_packets()


def _refresh_crc(packet: bytes) -> bytes:
    if len(packet) < 12:
        return packet
    return encode_packet(*struct.unpack_from("!HHL", packet), packet[12:])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_are_dropped(data: bytes) -> None:
    association = SctpAssociation(is_server=True)
    assert association.receive(data, 0.0) == []
    assert association.dropped == 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(VALID))), st.integers(0, 2000), st.binary(min_size=1, max_size=8),
       st.booleans(), st.booleans())
def test_mutated_packets_never_raise(index: int, position: int, patch: bytes, truncate: bool, fix_crc: bool) -> None:
    link = Link()
    link.server._tag = struct.unpack_from("!L", VALID[index], 4)[0] or link.server._tag
    packet = VALID[index]
    position %= len(packet)
    packet = packet[:position] if truncate else packet[:position] + patch + packet[position + len(patch):]
    if fix_crc:
        packet = _refresh_crc(packet)
    before = link.server.dropped
    link.server.receive(packet, link.now)
    link.client.receive(packet, link.now)
    link.server.handle_timeout(link.now + 100)
    if not fix_crc and packet != VALID[index]:
        assert link.server.dropped == before + 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_chunk_parsers_on_garbage(body: bytes) -> None:
    from signaling.peer.sctp_chunks import (DataChunk, ForwardTsnChunk, InitChunk, ResetRequest, SackChunk,
                                            parse_params)
    for parse in (InitChunk.parse, SackChunk.parse, ForwardTsnChunk.parse, ResetRequest.parse, parse_params,
                  lambda b: DataChunk.parse(0, b)):
        try:
            parse(body)
        except SctpError:
            pass


def test_fragment_size_fits_mtu() -> None:
    link = Link()
    ours, _ = open_pair(link, "a")
    packets = link.server.send(ours, bytes(10 * MAX_FRAGMENT), now=link.now)
    assert max(len(p) for p in packets) <= 1200


# --- against aiortc ---------------------------------------------------------------


class FakeDtls:
    """What RTCSctpTransport needs of an RTCDtlsTransport: a role, a state and a way to send."""

    def __init__(self, role: str, deliver: Callable[[bytes], None]) -> None:
        self._role = role
        self.state = "connected"
        self._data_receiver = None
        self._deliver = deliver

    def _register_data_receiver(self, receiver: object) -> None:
        self._data_receiver = receiver

    def _unregister_data_receiver(self, receiver: object) -> None:
        self._data_receiver = None

    async def _send_data(self, data: bytes) -> None:
        self._deliver(data)


class AiortcPeer:
    """Ours on an asyncio loop (tern is the DTLS server unless told), talking to aiortc."""

    def __init__(self, drop: Callable[[str, bytes], bool] | None = None, max_message_size: int = 65536,
                 we_are_server: bool = True) -> None:
        self.loop = asyncio.get_running_loop()
        self.ours = SctpAssociation(is_server=we_are_server, max_message_size=max_message_size,
                                    remote_max_message_size=max_message_size)
        self.drop = drop or (lambda direction, packet: False)
        self.dtls = FakeDtls("client" if we_are_server else "server", self._to_ours)
        self.theirs = RTCSctpTransport(self.dtls)  # type: ignore[arg-type]
        self.events: list[DataChannelEvent] = []
        self.remote_channels: list[RTCDataChannel] = []
        self.theirs.on("datachannel", self.remote_channels.append)
        self.tasks: set[asyncio.Task] = set()
        self.timer = self.loop.create_task(self._timers())

    async def start(self, max_message_size: int = 65536) -> None:
        await self.theirs.start(RTCSctpCapabilities(maxMessageSize=max_message_size), 5000)
        self._out(self.ours.start(self.loop.time()))
        await self.wait(lambda: self.ours.established and self.theirs._association_state.name == "ESTABLISHED")

    def _to_ours(self, packet: bytes) -> None:
        if not self.drop("c2s", packet):
            self._out(self.ours.receive(packet, self.loop.time()))

    def _out(self, packets: list[bytes]) -> None:
        self.events += self.ours.events()
        for packet in packets:
            if not self.drop("s2c", packet):
                task = self.loop.create_task(self.theirs._handle_data(packet))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            due = self.ours.timeout()
            if due is not None and due <= self.loop.time():
                self._out(self.ours.handle_timeout(self.loop.time()))

    def send(self, channel, data: bytes, binary: bool = True) -> None:  # type: ignore[no-untyped-def]
        self._out(self.ours.send(channel, data, binary, now=self.loop.time()))

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not condition():
                self.events += self.ours.events()
                await asyncio.sleep(0.005)
        await asyncio.wait_for(poll(), timeout)

    def received(self, label: str) -> list[bytes]:
        return [e.data for e in self.events if isinstance(e, MessageReceived) and e.channel.label == label]

    async def stop(self) -> None:
        self.timer.cancel()
        await self.theirs.stop()


def aiortc_channel(peer: AiortcPeer, label: str, **options: object) -> tuple[RTCDataChannel, list]:
    channel = RTCDataChannel(peer.theirs, RTCDataChannelParameters(label=label, **options))  # type: ignore[arg-type]
    inbox: list = []
    channel.on("message", inbox.append)
    return channel, inbox


async def test_aiortc_opens_channels_and_exchanges_messages() -> None:
    peer = AiortcPeer(max_message_size=300 * 1024)
    await peer.start(max_message_size=300 * 1024)
    reliable, reliable_inbox = aiortc_channel(peer, "_reliable")
    lossy, lossy_inbox = aiortc_channel(peer, "_lossy", ordered=False, maxRetransmits=0)
    await peer.wait(lambda: len([e for e in peer.events if isinstance(e, ChannelOpened)]) == 2)
    await peer.wait(lambda: reliable.readyState == "open" and lossy.readyState == "open")
    ours = {e.channel.label: e.channel for e in peer.events if isinstance(e, ChannelOpened)}
    assert ours["_reliable"].ordered and ours["_reliable"].max_retransmits is None
    assert not ours["_lossy"].ordered and ours["_lossy"].max_retransmits == 0
    assert ours["_reliable"].stream_id % 2 == 0  # aiortc is the DTLS client: even ids

    big = random.randbytes(300 * 1024)
    reliable.send("text")
    reliable.send(big)
    reliable.send(b"")
    lossy.send(b"fast")
    await peer.wait(lambda: len(peer.received("_reliable")) == 3 and peer.received("_lossy"))
    assert peer.received("_reliable") == [b"text", big, b""]
    assert peer.received("_lossy") == [b"fast"]
    strings = [e.binary for e in peer.events if isinstance(e, MessageReceived)]
    assert strings[0] is False and strings[1] is True

    peer.send(ours["_reliable"], "héllo".encode(), binary=False)
    peer.send(ours["_reliable"], big)
    peer.send(ours["_lossy"], b"back")
    await peer.wait(lambda: len(reliable_inbox) == 2 and lossy_inbox)
    assert reliable_inbox == ["héllo", big] and lossy_inbox == [b"back"]

    reliable.close()
    await peer.wait(lambda: any(isinstance(e, ChannelClosed) for e in peer.events))
    await peer.wait(lambda: reliable.readyState == "closed")
    assert not ours["_reliable"].open
    assert peer.ours.dropped == 0
    await peer.stop()


@pytest.mark.parametrize("we_are_server", [True, False])
async def test_we_open_channels_to_aiortc_and_close_them(we_are_server: bool) -> None:
    peer = AiortcPeer(we_are_server=we_are_server)
    await peer.start()
    ours = peer.ours.open_channel("server-data", ordered=False, max_retransmits=0)
    peer._out(peer.ours.flush(peer.loop.time()))
    await peer.wait(lambda: bool(peer.remote_channels) and ours.open)
    theirs = peer.remote_channels[0]
    assert theirs.label == "server-data" and theirs.id == ours.stream_id
    assert ours.stream_id % 2 == (1 if we_are_server else 0)
    assert not theirs.ordered and theirs.maxRetransmits == 0
    inbox: list = []
    theirs.on("message", inbox.append)
    payload = random.randbytes(64 * 1024)
    peer.send(ours, payload)
    await peer.wait(lambda: bool(inbox))
    assert inbox == [payload]
    closed: list = []
    theirs.on("close", lambda: closed.append(True))
    peer._out(peer.ours.close_channel(ours))
    await peer.wait(lambda: bool(closed) and any(isinstance(e, ChannelClosed) for e in peer.events))
    await peer.stop()


async def test_aiortc_with_packet_loss() -> None:
    rng = random.Random(3)
    lossy_phase = {"on": False}
    forward_tsn: dict[str, int] = {"c2s": 0, "s2c": 0}

    def drop(direction: str, packet: bytes) -> bool:
        forward_tsn[direction] += any(c.type == 192 for c in parse_packet(packet)[3])
        return lossy_phase["on"] and rng.random() < 0.15

    peer = AiortcPeer(drop=drop)
    await peer.start()
    reliable, reliable_inbox = aiortc_channel(peer, "_reliable")
    lossy, lossy_inbox = aiortc_channel(peer, "_lossy", ordered=False, maxRetransmits=0)
    await peer.wait(lambda: reliable.readyState == "open" and lossy.readyState == "open")
    ours = {e.channel.label: e.channel for e in peer.events if isinstance(e, ChannelOpened)}
    lossy_phase["on"] = True
    expected = [b"%d" % i + bytes(rng.randrange(2500)) for i in range(40)]
    for i, message in enumerate(expected):
        reliable.send(message)
        lossy.send(b"up%d" % i)
        peer.send(ours["_reliable"], message)
        peer.send(ours["_lossy"], b"down%d" % i)
        await asyncio.sleep(0.002)
    await peer.wait(lambda: len(peer.received("_reliable")) == 40 and len(reliable_inbox) == 40, timeout=30)
    assert peer.received("_reliable") == expected and reliable_inbox == expected
    # Lossy data is never retransmitted: whatever was lost stays lost, and FORWARD-TSN clears it.
    await peer.wait(lambda: not peer.ours._outstanding, timeout=15)
    assert len(peer.received("_lossy")) < 40 and len(lossy_inbox) < 40
    assert forward_tsn["c2s"] and forward_tsn["s2c"]
    lossy_phase["on"] = False
    peer.send(ours["_lossy"], b"last")
    lossy.send(b"last")
    await peer.wait(lambda: b"last" in lossy_inbox and b"last" in peer.received("_lossy"), timeout=10)
    await peer.stop()


# --- bounds under a hostile peer (issue 10 items 3 and 6) -----------------------------

F_WHOLE = 0x03  # BEGIN | END
F_UNORDERED = 0x04


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.lists(st.tuples(st.booleans(), st.integers(1, 64)), max_size=200))
def test_received_tsns_match_a_set(start: int, steps: list[tuple[bool, int]]) -> None:
    """Intervals behave as a plain set of TSNs above a cumulative TSN, across the 32-bit wrap."""
    window = 128
    tsns = ReceivedTsns(start, window)
    cum, held = start, set()
    for forward, step in steps:
        tsn = (cum + step) & 0xFFFFFFFF
        if forward:
            tsns.forward(tsn)
            cum, held = tsn, {t for t in held if (t - tsn) & 0xFFFFFFFF < 0x80000000 and t != tsn}
        elif tsn not in tsns:
            assert tsn not in held
            tsns.add(tsn)
            held.add(tsn)
        while (cum + 1) & 0xFFFFFFFF in held:
            cum = (cum + 1) & 0xFFFFFFFF
            held.discard(cum)
        assert tsns.cumulative == cum
        offsets = sorted((t - cum) & 0xFFFFFFFF for t in held)
        blocks: list[list[int]] = []
        for offset in offsets:
            if blocks and blocks[-1][1] + 1 == offset:
                blocks[-1][1] = offset
            else:
                blocks.append([offset, offset])
        assert tsns.gap_blocks(1000) == [tuple(b) for b in blocks]
        assert all(t in tsns for t in held) and (cum + 1) & 0xFFFFFFFF not in tsns


def _data_packets(tag: int, chunks: list[bytes]) -> list[bytes]:
    packets, batch = [], b""
    for chunk in chunks:
        if batch and 12 + len(batch) + len(chunk) > 1188:
            packets.append(encode_packet(5000, 5000, tag, batch))
            batch = b""
        batch += chunk
    return packets + [encode_packet(5000, 5000, tag, batch)]


# Work bounds in lines of Python run by the SCTP modules (_receive_work), each a few times what the receive
# measured at the time of writing (in brackets) and below one pass over the ~3,500 entries the tests pile up
# (RECEIVE_BUFFER // CHUNK_COST held, MAX_BUFFERED_AMOUNT // (CHUNK_COST + 1) in flight).
DATA_LINES_PER_CHUNK = 250     # a DATA chunk received (83)
FORWARD_LINES = 3000           # a FORWARD-TSN naming 200 streams (1,663)
SACK_LINES = 1000              # a SACK acknowledging one more chunk, 3,530 or 14,122 in flight (229)
SACK_PACKET_LINES = 2500       # a packet of 60 SACKs (912)
FORWARD_PACKET_LINES = 8000    # a packet of 146 FORWARD-TSNs, or of 90 naming a stream each (3,850, 3,486)
_SCTP_FILES = frozenset(module.__file__ for module in (sctp, sctp_chunks, sctp_tsn))


def _receive_work(association: SctpAssociation, packets: list[bytes], now: float) -> list[int]:
    """Feeds every packet; returns, per receive(), the lines of Python the SCTP modules ran: the association's work
    counted, not timed, so neither the machine's speed nor its load changes it. A pass over a backlog of thousands
    costs thousands of lines; what C does inside one line (a list insert, a bytes slice) counts once."""
    lines = 0

    def in_sctp(frame: FrameType, event: str, arg: object) -> Callable | None:
        if frame.f_code.co_filename not in _SCTP_FILES:
            return None

        def count(frame: FrameType, event: str, arg: object) -> Callable:
            nonlocal lines
            lines += event == "line"
            return count
        return count

    work, tracer = [], sys.gettrace()
    sys.settrace(in_sctp)
    try:
        for packet in packets:
            lines = 0
            association.receive(packet, now)
            work.append(lines)
    finally:
        sys.settrace(tracer)
    return work


def _feed(association: SctpAssociation, packets: list[bytes], now: float) -> None:
    for packet in packets:
        association.receive(packet, now)


def _chunks(packet: bytes) -> int:
    return len(parse_packet(packet)[3])


def test_gapped_data_flood_then_forward_tsns_stay_bounded_and_cheap() -> None:
    """300,000 one-byte DATA chunks with gaps (ordered on stream 0 behind a missing SSN, and unordered), spread
    over twice the receive window, then 200 FORWARD-TSN chunks: the held state stays within the window and the
    buffer, and no receive works through it (DATA_LINES_PER_CHUNK, FORWARD_LINES)."""
    link = Link()
    server, tag = link.server, link.server._tag
    cum = server._tsns.cumulative
    chunks = []
    for i in range(300_000):
        offset = 2 + 2 * ((i * 7919) % RECEIVE_TSN_WINDOW)  # every other TSN, half of them past the window
        ordered = i % 2 == 0
        chunks.append(encode_data_chunk((cum + offset) & 0xFFFFFFFF, 0, (i // 2 + 1) & 0xFFFF if ordered else 0,
                                        53, F_WHOLE if ordered else F_WHOLE | F_UNORDERED, b"x"))
    data = _data_packets(tag, chunks)
    data_work = max(lines / _chunks(packet) for lines, packet in zip(_receive_work(server, data, link.now), data))

    assert server._tsns.blocks <= RECEIVE_TSN_WINDOW // 2
    assert server.beyond_window > 0
    assert server._buffered <= RECEIVE_BUFFER
    held = sum(len(pending) for pending in server._ordered.values()) + len(server._fragments)
    assert held <= RECEIVE_BUFFER // CHUNK_COST
    sack = SackChunk.parse(parse_packet(server.receive(_data_packets(tag, chunks[:1])[0], link.now)[0])[3][0].body)
    assert len(sack.gaps) == MAX_GAP_BLOCKS and sack.cumulative_tsn == cum

    forwards = []
    for k in range(200):
        new_cum = (cum + (k + 1) * (RECEIVE_TSN_WINDOW // 200)) & 0xFFFFFFFF
        streams = [(0, (k + 1) * 40)] + [(s, 65535 - s) for s in range(1, 200)]  # 812 bytes, like the report
        forwards.append(encode_packet(5000, 5000, tag,
                                      encode_chunk(FORWARD_TSN, 0, ForwardTsnChunk(new_cum, streams).encode())))
    forward_work = max(_receive_work(server, forwards, link.now))

    print(f"DATA: at most {data_work:.1f} lines per chunk, FORWARD-TSN: {forward_work} lines, "
          f"blocks {server._tsns.blocks}, beyond window {server.beyond_window}")
    assert data_work < DATA_LINES_PER_CHUNK and forward_work < FORWARD_LINES
    assert server._tsns.blocks < 100 and server._buffered < RECEIVE_BUFFER // 4
    assert sorted(t & 0xFFFFFFFF for t in server._fragment_order) == sorted(server._fragments)
    assert server.established


def test_peer_advertising_a_tiny_window_holds_at_most_the_backlog_cap() -> None:
    """The client advertises a_rwnd=1 and takes nothing in: our backlog for it stops at MAX_BUFFERED_AMOUNT,
    past which send() refuses (SctpBufferFull), while the association itself stays up."""
    link = Link()
    ours, _ = open_pair(link, "slow")
    link.client._receive_buffer = 1  # its SACKs advertise a_rwnd=1, and no DATA fits
    refused = 0
    for _ in range(1500):
        try:
            packets = link.server.send(ours, bytes(1000), now=link.now)
        except SctpBufferFull:
            refused += 1
            packets = []
        link.run([], packets, until=0.01)
        assert link.server.buffered_amount <= MAX_BUFFERED_AMOUNT
    assert link.server._peer_rwnd <= 1 and link.server.established
    assert refused > 400
    assert MAX_BUFFERED_AMOUNT - 2 * (1000 + CHUNK_COST) < link.server.buffered_amount
    assert len(link.server._outstanding) <= MAX_BUFFERED_AMOUNT // (1000 + CHUNK_COST)


def test_packet_full_of_sacks_costs_one_sack() -> None:
    """A full send backlog of one-byte messages, then a packet of 60 SACK chunks with a gap block: one receive
    costs about one SACK (only the packet's last SACK is processed), not a pass over the backlog."""
    link = Link()
    ours, _ = open_pair(link, "x", ordered=False)
    link.client._receive_buffer = 1
    while True:
        try:
            link.server.send(ours, b"y", now=link.now)
        except SctpBufferFull:
            break
    link.server._peer_rwnd = 1 << 30  # as if the peer had advertised room: everything goes out once
    link.server.flush(link.now)
    assert len(link.server._outstanding) > MAX_BUFFERED_AMOUNT // (CHUNK_COST + 1) - 10
    sack = encode_chunk(SACK, 0, SackChunk(link.server._cum_acked, 1 << 20, [(2, 3)], []).encode())
    packet = encode_packet(5000, 5000, link.server._tag, sack * 60)
    assert _receive_work(link.server, [packet], link.now)[0] < SACK_PACKET_LINES


def test_per_stream_state_stays_within_the_streams_we_accept() -> None:
    """Ordered DATA on 3,000 streams and a FORWARD-TSN naming 200 more: streams past our INIT's MIS are
    acknowledged and discarded, so per-stream state covers at most MAX_INBOUND_STREAMS."""
    link = Link()
    server, tag = link.server, link.server._tag
    cum = server._tsns.cumulative
    chunks = [encode_data_chunk((cum + 1 + i) & 0xFFFFFFFF, i, 1, 53, F_WHOLE, b"x") for i in range(3000)]
    _feed(server, _data_packets(tag, chunks), link.now)
    assert server._tsns.cumulative == (cum + 3000) & 0xFFFFFFFF  # every TSN acknowledged
    assert server.invalid_streams == 3000 - MAX_INBOUND_STREAMS
    fwd = ForwardTsnChunk((cum + 3000) & 0xFFFFFFFF, [(s, 7) for s in range(60_000, 60_200)])
    server.receive(encode_packet(5000, 5000, tag, encode_chunk(FORWARD_TSN, 0, fwd.encode())), link.now)
    assert len(server._ssn_in) <= MAX_INBOUND_STREAMS and len(server._ordered) <= MAX_INBOUND_STREAMS


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.lists(st.tuples(st.integers(0, 80), st.integers(0, 40)), max_size=60))
def test_acked_ranges_match_a_set(start: int, ranges: list[tuple[int, int]]) -> None:
    """add_range reports exactly the TSNs it newly records, and missing() the holes below a TSN, across the wrap."""
    tsns = ReceivedTsns(start, 0xFFFF)
    held: set[int] = set()
    for offset, length in ranges:
        first = (start + offset) & 0xFFFFFFFF
        cum = tsns.cumulative
        expected = {(first + i) & 0xFFFFFFFF for i in range(length + 1)
                    if 0 < ((first + i - cum) & 0xFFFFFFFF) < 0x80000000} - held
        new = {(f + i) & 0xFFFFFFFF for f, count in tsns.add_range(first, (first + length) & 0xFFFFFFFF)
               for i in range(count)}
        assert new == expected
        held |= new
        top = (start + 130) & 0xFFFFFFFF
        holes = [t for t in ((tsns.cumulative + i) & 0xFFFFFFFF for i in range(1, 131))
                 if t not in held and (top - t) & 0xFFFFFFFF < 0x80000000 and t != top]
        assert tsns.missing(top, 7) == holes[:7]


@pytest.mark.parametrize("cap", [MAX_BUFFERED_AMOUNT, 4 * MAX_BUFFERED_AMOUNT])
def test_sack_costs_what_it_acknowledges(cap: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full send backlog of one-byte messages, all in flight (also with 4x the cap: the cost must not follow the
    backlog); then 3,000 SACKs, one per packet, each gap-acking one more TSN above a missing first one, one
    gap-acking all the rest, and 1,000 repeating it: no SACK costs a pass over the backlog (but the one
    acknowledging the rest, each costs under SACK_LINES), the missing TSN is fast-retransmitted, and the backlog
    drains."""
    monkeypatch.setattr(sctp, "MAX_BUFFERED_AMOUNT", cap)
    link = Link()
    ours, _ = open_pair(link, "x", ordered=False)
    server = link.server
    link.client._receive_buffer = 1
    while True:
        try:
            server.send(ours, b"y", now=link.now)
        except SctpBufferFull:
            break
    server._peer_rwnd = 1 << 30
    server.flush(link.now)
    outstanding = len(server._outstanding)
    assert outstanding > cap // (CHUNK_COST + 1) - 10
    cum, tag = server._cum_acked, server._tag

    def sack(gaps: list[tuple[int, int]], cumulative: int = cum) -> bytes:
        return encode_packet(5000, 5000, tag, encode_chunk(SACK, 0, SackChunk(cumulative, 1 << 20, gaps, []).encode()))

    growing = [sack([(2, 2 + k)]) for k in range(min(3000, outstanding - 2))]
    widest = [sack([(2, 0xFFFF)])] * 1000
    heaviest = max(_receive_work(server, growing, link.now))
    server.receive(widest[0], link.now)  # acknowledges the rest but the first TSN: its cost is theirs
    heaviest = max(heaviest, *_receive_work(server, widest[1:], link.now))
    assert server._retransmits or server._outstanding[(cum + 1) & 0xFFFFFFFF].transmissions == 2
    drained = _receive_work(server, [sack([], (cum + outstanding) & 0xFFFFFFFF)], link.now)[0]
    print(f"{outstanding} outstanding: heaviest SACK {heaviest} lines, the draining one {drained}")
    assert heaviest < SACK_LINES
    assert not server._outstanding and server.buffered_amount == 0


def test_packet_full_of_forward_tsns_costs_one() -> None:
    """256 held fragments of unfinished messages, then a packet of 146 FORWARD-TSN chunks (each a little further)
    and one of 90 naming a stream each: a packet costs about one FORWARD-TSN (not one per chunk), drops the
    fragments it passes and skips every SSN any of its chunks named."""
    link = Link()
    server, tag = link.server, link.server._tag
    cum = server._tsns.cumulative
    begins = [encode_data_chunk((cum + 2 + 2 * i) & 0xFFFFFFFF, 1, i, 53, 0x02, b"x") for i in range(256)]  # BEGIN only
    _feed(server, _data_packets(tag, begins), link.now)
    assert len(server._fragments) == len(server._fragment_order) == 256

    def packet(forwards: list[ForwardTsnChunk]) -> bytes:
        return encode_packet(5000, 5000, tag, b"".join(encode_chunk(FORWARD_TSN, 0, f.encode()) for f in forwards))

    plain = packet([ForwardTsnChunk((cum + 2 + k) & 0xFFFFFFFF, []) for k in range(146)])
    named = packet([ForwardTsnChunk((cum + 200 + k) & 0xFFFFFFFF, [(2 + k % 30, k)]) for k in range(90)])
    assert max(len(plain), len(named)) <= 1188
    assert _receive_work(server, [plain], link.now)[0] < FORWARD_PACKET_LINES
    assert server._tsns.cumulative == (cum + 148) & 0xFFFFFFFF  # the next fragment was held already
    assert len(server._fragments) == len(server._fragment_order) == 256 - 73
    assert _receive_work(server, [named], link.now)[0] < FORWARD_PACKET_LINES
    assert server._tsns.cumulative == (cum + 290) & 0xFFFFFFFF
    assert len(server._fragments) == len(server._fragment_order) == 256 - 144
    assert all(server._ssn_in[2 + s] == max(k for k in range(90) if k % 30 == s) + 1 for s in range(30))


def test_forward_tsn_past_the_window_is_applied() -> None:
    """The peer abandoned more than our window holds: its FORWARD-TSN moves the cumulative TSN anyway (it only
    skips the peer's own data), drops what it passes and is acknowledged, instead of being refused forever."""
    link = Link()
    server, tag = link.server, link.server._tag
    cum = server._tsns.cumulative
    server.receive(_data_packets(tag, [encode_data_chunk((cum + 5) & 0xFFFFFFFF, 0, 0, 53, 0x02, b"x")])[0], link.now)
    new = (cum + 3 * RECEIVE_TSN_WINDOW) & 0xFFFFFFFF
    replies = server.receive(encode_packet(5000, 5000, tag, encode_chunk(
        FORWARD_TSN, 0, ForwardTsnChunk(new, [(0, 4)]).encode())), link.now)
    sack = SackChunk.parse(parse_packet(replies[0])[3][0].body)
    assert sack.cumulative_tsn == new == server._tsns.cumulative and not sack.gaps
    assert not server._fragments and server._buffered == 0 and server.dropped == 0
    link.run([encode_packet(5000, 5000, tag, encode_data_chunk((new + 1) & 0xFFFFFFFF, 0, 5, 53, F_WHOLE, b"z"))], [])
    assert server._tsns.cumulative == (new + 1) & 0xFFFFFFFF


def test_data_without_room_is_counted_and_not_acknowledged() -> None:
    """Fragments of unfinished messages past what may be held are dropped, counted and left unacknowledged."""
    link = Link()
    server, tag = link.server, link.server._tag
    cum = server._tsns.cumulative
    begins = [encode_data_chunk((cum + 1 + i) & 0xFFFFFFFF, 1, 0, 53, 0x02 if i == 0 else 0, b"x") for i in range(300)]
    _feed(server, _data_packets(tag, begins), link.now)
    assert len(server._fragments) == server._max_fragments
    assert server.receive_buffer_full == 300 - server._max_fragments
    assert server._tsns.cumulative == (cum + server._max_fragments) & 0xFFFFFFFF
