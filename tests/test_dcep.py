"""DCEP messages and the data-channel table."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.peer.dcep import (PPID_BINARY, PPID_BINARY_EMPTY, PPID_DCEP, PPID_STRING, ChannelClosed, ChannelOpened,
                            ChannelTable, DcepAck, DcepError, DcepOpen, MessageReceived, parse_dcep)


@given(st.text(max_size=40), st.text(max_size=20), st.booleans(),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)), st.integers(0, 0xFFFF))
def test_open_roundtrip(label: str, protocol: str, ordered: bool, retransmits: int | None, priority: int) -> None:
    message = DcepOpen(label, protocol, ordered, retransmits, None, priority)
    assert parse_dcep(message.encode()) == message


def test_timed_and_ack() -> None:
    timed = DcepOpen("t", "", False, None, 1500)
    assert parse_dcep(timed.encode()) == timed
    assert isinstance(parse_dcep(DcepAck().encode()), DcepAck)
    with pytest.raises(DcepError):
        ChannelTable(True).open("x", True, 1, 2, "")


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_parser_on_garbage(data: bytes) -> None:
    try:
        parse_dcep(data)
    except DcepError:
        pass


@pytest.mark.parametrize("data", [b"", b"\x03", b"\x03\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00ab",
                                  b"\x03\x05" + bytes(10), b"\x03\x00" + bytes(6) + b"\x00\x02\x00\x00\xff\xfe",
                                  b"\x07"])
def test_parser_rejects(data: bytes) -> None:
    with pytest.raises(DcepError):
        parse_dcep(data)


def test_incoming_open_creates_channel_and_acks() -> None:
    table = ChannelTable(is_dtls_server=True)
    replies = table.receive(2, PPID_DCEP, DcepOpen("_lossy", "", False, 0, None).encode())
    assert [(r.stream_id, r.ppid, r.payload, r.ordered) for r in replies] == [(2, PPID_DCEP, b"\x02", True)]
    (opened,) = table.events
    assert isinstance(opened, ChannelOpened) and opened.channel.open and opened.channel.max_retransmits == 0
    # A second OPEN on a used stream is ignored and counted.
    assert table.receive(2, PPID_DCEP, DcepOpen("again", "", True, None, None).encode()) == []
    assert table.dropped == 1
    table.receive(2, PPID_STRING, b"hi")
    table.receive(2, PPID_BINARY_EMPTY, b"\x00")
    table.receive(9, PPID_BINARY, b"unknown stream")
    assert [(e.data, e.binary) for e in table.events if isinstance(e, MessageReceived)] == [(b"hi", False), (b"", True)]
    assert table.dropped == 2


def test_own_channel_ids_and_ack() -> None:
    server = ChannelTable(is_dtls_server=True)
    client = ChannelTable(is_dtls_server=False)
    a, open_a = server.open("a", True, None, None, "")
    b, _ = server.open("b", False, 0, None, "")
    c, _ = client.open("c", True, None, None, "")
    assert (a.stream_id, b.stream_id, c.stream_id) == (1, 3, 0)
    assert open_a.ppid == PPID_DCEP and not a.open
    # Before the ACK an unordered channel still sends ordered, so nothing overtakes the OPEN.
    assert server.message(b, b"x", True).ordered
    server.receive(3, PPID_DCEP, b"\x02")
    assert b.open and not server.message(b, b"x", True).ordered
    assert server.message(b, b"", False).payload == b"\x00"
    server.closed(3)
    assert isinstance(server.events[-1], ChannelClosed)
    with pytest.raises(DcepError):
        server.message(b, b"x", True)


def test_peer_cannot_open_more_than_max_channels_or_long_labels() -> None:
    from signaling.peer.dcep import MAX_CHANNELS, MAX_LABEL_LENGTH
    table = ChannelTable(is_dtls_server=True)
    assert table.receive(0, PPID_DCEP, DcepOpen("x" * MAX_LABEL_LENGTH, "p", True, None, None).encode()) == []
    opened = [table.receive(2 * i, PPID_DCEP, DcepOpen(f"c{i}", "", True, None, None).encode()) for i in range(300)]
    assert sum(1 for replies in opened if replies) == MAX_CHANNELS == len(table.channels)
    assert table.dropped == 1 + 300 - MAX_CHANNELS
