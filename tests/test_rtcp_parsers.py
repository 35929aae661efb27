"""engine.rtcp: RTCP demultiplexing, compound parsing and the SR/RR/SDES/PLI/FIR/NACK/REMB builders.

Hand-built packets pin the edge cases; aiortc's pure-Python RTCP code is the oracle in both directions (it parses
what we build, we parse what it builds); hypothesis feeds garbage and truncations to the parsers."""
import struct

import pytest
from aiortc.rtp import (RtcpByePacket, RtcpPacket, RtcpPsfbPacket, RtcpReceiverInfo, RtcpRrPacket, RtcpRtpfbPacket,
                        RtcpSdesPacket, RtcpSenderInfo, RtcpSourceInfo, RtcpSrPacket, unpack_remb_fci)
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import rtcp

u32 = st.integers(0, 2**32 - 1)
report_blocks = st.builds(dict, ssrc=u32, fraction_lost=st.integers(0, 255),
                          cumulative_lost=st.integers(-(1 << 23), (1 << 23) - 1), highest_sequence=u32, jitter=u32,
                          last_sr=u32, delay_since_last_sr=u32)
sender_infos = st.builds(dict, ssrc=u32, ntp_time=st.integers(0, 2**64 - 1), rtp_time=u32, packet_count=u32,
                         octet_count=u32)


def as_aiortc(block: dict) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(ssrc=block["ssrc"], fraction_lost=block["fraction_lost"],
                            packets_lost=block["cumulative_lost"], highest_sequence=block["highest_sequence"],
                            jitter=block["jitter"], lsr=block["last_sr"], dlsr=block["delay_since_last_sr"])


def block(**fields) -> dict:
    return {"ssrc": 1, "fraction_lost": 0, "cumulative_lost": 0, "highest_sequence": 0, "jitter": 0, "last_sr": 0,
            "delay_since_last_sr": 0} | fields


def check_compound(data: bytes) -> list | None:
    """Parses `data` and checks that an accepted compound packet is exactly covered by its packets."""
    packets = rtcp.parse_compound(data)
    if packets is not None:
        assert sum(p["length"] for p in packets) == len(data)
        assert all(p["length"] >= 4 and p["length"] % 4 == 0 for p in packets)
    return packets


# ---- demultiplexing and headers ----

@pytest.mark.parametrize("data, expected", [
    (bytes([0x80, 200]), True), (bytes([0x81, 206]), True), (bytes([0x80, 192]), True), (bytes([0x80, 223]), True),
    (bytes([0x80, 191]), False), (bytes([0x80, 224]), False), (bytes([0x80, 96]), False),
    (bytes([0x80, 0xE0]), False),                             # RTP, marker set, payload type 96
    (bytes([0x40, 200]), False), (bytes([0x80]), False), (b"", False),
])
def test_is_rtcp(data, expected):
    assert rtcp.is_rtcp_packet(data) is expected


@pytest.mark.parametrize("data", [
    b"\x80\xc9\x00",                                          # shorter than a header
    b"\x40\xc9\x00\x01\x00\x00\x00\x01",                      # version 1
    b"\x80\xc9\x00\x02\x00\x00\x00\x01",                      # length field says 12 bytes, 8 present
    b"\x80\xc9\x00\x01\x00\x00\x00\x01\x80",                  # second packet truncated
    b"\x80\xc8\x00\x01\x00\x00\x00\x01",                      # SR without sender info
    b"\x81\xc9\x00\x01\x00\x00\x00\x01",                      # RR claiming a report block it lacks
    b"\x81\xcd\x00\x01\x00\x00\x00\x01",                      # NACK without media SSRC
    b"\x84\xce\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00",      # FIR without an FCI entry
    b"\xa1\xce\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00",      # P set, padding count 0
    b"\xa1\xce\x00\x02\x00\x00\x00\x01\x00\x00\x00\x0d",      # padding count beyond the packet
])
def test_rejects_malformed(data):
    assert rtcp.parse_compound(data) is None


def test_unknown_types_are_walked_over():
    data = b"\x80\xcc\x00\x01abcd" + rtcp.pli(1, 2)           # APP (204), then a PLI
    assert [p["type"] for p in check_compound(data)] == [204, 206]


def test_nack_padding_is_not_read_as_fci():
    data = rtcp.nack(1, 2, [10, 12])
    padded = bytes([data[0] | 0x20, data[1]]) + struct.pack("!H", len(data) // 4) + data[4:] + b"\x00\x00\x00\x04"
    assert check_compound(padded)[0]["nack"] == [10, 12]


# ---- builders, checked byte for byte and by aiortc ----

def test_pli():
    data = rtcp.pli(0x11111111, 0x22222222)
    assert data == bytes.fromhex("81ce0002" "11111111" "22222222")
    assert RtcpPacket.parse(data) == [RtcpPsfbPacket(fmt=1, ssrc=0x11111111, media_ssrc=0x22222222)]
    assert check_compound(data) == [{"type": 206, "count": 1, "length": 12, "sender_ssrc": 0x11111111,
                                     "media_ssrc": 0x22222222}]


def test_fir():
    data = rtcp.fir(1, 0xABCDEF01, 7)
    assert data == bytes.fromhex("84ce0004" "00000001" "00000000" "abcdef01" "07000000")
    [packet] = RtcpPacket.parse(data)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc, packet.fci) == (4, 1, 0, bytes.fromhex("abcdef0107000000"))
    assert check_compound(data)[0]["fir_ssrc"] == 0xABCDEF01



def test_remb():
    # 5 Mbps does not fit the 18-bit mantissa: 156250 * 2**5, sent as exponent 5, mantissa 0x2625A.
    data = rtcp.remb(0x11111111, 5_000_000, [0xAAAAAAAA, 0xBBBBBBBB])
    assert data == bytes.fromhex("8fce0006" "11111111" "00000000" "52454d42" "02" "16" "625a" "aaaaaaaa" "bbbbbbbb")
    [packet] = RtcpPacket.parse(data)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc) == (15, 0x11111111, 0)
    assert unpack_remb_fci(packet.fci) == (5_000_000, [0xAAAAAAAA, 0xBBBBBBBB])
    assert check_compound(data) == [{"type": 206, "count": 15, "length": 28, "sender_ssrc": 0x11111111,
                                     "media_ssrc": 0}]


@settings(max_examples=300)
@given(sender=u32, bitrate=st.integers(0, 2**64 - 1), ssrcs=st.lists(u32, max_size=20))
def test_remb_layout(sender, bitrate, ssrcs):
    # draft-alvestrand-rmcat-remb 2.2: PSFB fmt 15, media SSRC 0, then the FCI "REMB", Num SSRC, BR Exp (6 bits),
    # BR Mantissa (18 bits) and the SSRC list; the mantissa is as large as fits, dropping low bits of the rate.
    data = rtcp.remb(sender, bitrate, ssrcs)
    [packet] = RtcpPacket.parse(data)
    assert (packet.fmt, packet.ssrc, packet.media_ssrc) == (15, sender, 0)
    fci = packet.fci
    assert len(fci) == 8 + 4 * len(ssrcs)
    assert fci[:4] == b"REMB" and fci[4] == len(ssrcs)
    exponent, mantissa = fci[5] >> 2, ((fci[5] & 0x3) << 16) | struct.unpack("!H", fci[6:8])[0]
    assert mantissa << exponent <= bitrate < (mantissa + 1) << exponent
    assert exponent == 0 or mantissa >= 1 << 17
    assert list(struct.unpack(f"!{len(ssrcs)}I", fci[8:])) == ssrcs


def test_remb_limits():
    assert len(rtcp.remb(1, 10**6)) == 20                       # no SSRCs: an estimate for the whole session
    assert len(rtcp.remb(1, 10**6, range(255))) == 20 + 4 * 255
    with pytest.raises(ValueError):
        rtcp.remb(1, 10**6, range(256))                          # Num SSRC is 8 bits
    with pytest.raises(OverflowError):
        rtcp.remb(1, -1)
    with pytest.raises(ValueError):
        rtcp.remb(1, 10**6, [7], cap=23)
    assert len(rtcp.remb(1, 10**6, [7], cap=24)) == 24

def test_nack_groups_into_pid_and_blp():
    data = rtcp.nack(1, 2, [100, 101, 116, 117, 300])         # 117 is 17 past 100: a new pair
    assert data[12:] == struct.pack("!HHHHHH", 100, 0x8001, 117, 0, 300, 0)
    assert RtcpPacket.parse(data)[0].lost == [100, 101, 116, 117, 300]


def test_nack_unsorted_duplicates_and_wraparound():
    data = rtcp.nack(1, 2, [1, 65534, 0, 65535, 1, 65534])
    assert data[12:] == struct.pack("!HH", 65534, 0b111)      # one run across the wrap
    assert check_compound(data)[0]["nack"] == [65534, 65535, 0, 1]


def test_nack_keeps_at_most_256_seqs():
    seqs = list(range(0, 300 * 20, 20))                       # no two share a pair
    assert len(rtcp.nack(1, 2, seqs)) == 12 + 4 * 256
    assert check_compound(rtcp.nack(1, 2, seqs))[0]["nack"] == seqs[:256]


def test_builders_check_cap():
    with pytest.raises(ValueError):
        rtcp.pli(1, 2, cap=11)
    with pytest.raises(ValueError):
        rtcp.fir(1, 2, 3, cap=19)
    with pytest.raises(ValueError):
        rtcp.nack(1, 2, [1, 100], cap=19)
    assert len(rtcp.nack(1, 2, [1, 100], cap=20)) == 20
    with pytest.raises(ValueError):
        rtcp.rr(1, [block()], cap=31)
    with pytest.raises(ValueError):
        rtcp.sr(dict(ssrc=1, ntp_time=0, rtp_time=0, packet_count=0, octet_count=0), cap=27)
    with pytest.raises(ValueError):
        rtcp.sdes_cname(1, "abc", cap=15)
    assert len(rtcp.sdes_cname(1, "abc", cap=16)) == 16


def test_builders_reject_bad_arguments():
    with pytest.raises(ValueError):
        rtcp.nack(1, 2, [])
    with pytest.raises(ValueError):
        rtcp.rr(1, [block()] * 32)
    with pytest.raises(ValueError):
        rtcp.sdes_cname(1, "x" * 256)


def test_cumulative_lost_is_clamped_to_24_bits():
    data = rtcp.rr(1, [block(cumulative_lost=-(1 << 30)), block(cumulative_lost=1 << 30), block(cumulative_lost=-1)])
    assert [b.packets_lost for b in RtcpPacket.parse(data)[0].reports] == [-(1 << 23), (1 << 23) - 1, -1]
    assert data[8 + 5:8 + 8] == b"\x80\x00\x00"


@pytest.mark.parametrize("cname", ["", "a", "ab", "abc", "abcd", "{6e5f}-user@host", "é" * 127])
def test_sdes_cname(cname):
    data = rtcp.sdes_cname(0x1234, cname)
    assert len(data) % 4 == 0
    [packet] = RtcpPacket.parse(data)
    assert packet == RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=0x1234, items=[(1, cname.encode())])])
    assert data[10 + len(cname.encode())] == 0                # the item list ends with a zero octet


@settings(max_examples=200)
@given(ssrc=u32, blocks=st.lists(report_blocks, max_size=31))
def test_rr_round_trip(ssrc, blocks):
    data = rtcp.rr(ssrc, blocks)
    assert RtcpPacket.parse(data) == [RtcpRrPacket(ssrc=ssrc, reports=[as_aiortc(b) for b in blocks])]
    assert check_compound(data) == [{"type": 201, "count": len(blocks), "length": 8 + 24 * len(blocks),
                                     "ssrc": ssrc, "reports": blocks}]


@settings(max_examples=200)
@given(info=sender_infos, blocks=st.lists(report_blocks, max_size=31))
def test_sr_round_trip(info, blocks):
    data = rtcp.sr(info, blocks)
    assert RtcpPacket.parse(data) == [RtcpSrPacket(
        ssrc=info["ssrc"], reports=[as_aiortc(b) for b in blocks],
        sender_info=RtcpSenderInfo(ntp_timestamp=info["ntp_time"], rtp_timestamp=info["rtp_time"],
                                   packet_count=info["packet_count"], octet_count=info["octet_count"]))]
    [parsed] = check_compound(data)
    assert (parsed["sender_info"], parsed["reports"]) == (info, blocks)


@settings(max_examples=300)
@given(sender=u32, media=u32, seqs=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=300))
def test_nack_round_trip(sender, media, seqs):
    data = rtcp.nack(sender, media, seqs)
    wanted = set(seqs[:256])
    [theirs] = RtcpPacket.parse(data)
    assert (theirs.fmt, theirs.ssrc, theirs.media_ssrc) == (1, sender, media)
    assert {seq % 65536 for seq in theirs.lost} == wanted
    [ours] = check_compound(data)
    assert sorted(ours["nack"]) == sorted(wanted)             # each sequence number exactly once
    assert len(data) <= 12 + 4 * len(wanted)


@settings(max_examples=100)
@given(start=st.integers(0, 0xFFFF), span=st.integers(1, 18))
def test_nack_run_across_wrap_uses_minimal_pairs(start, span):
    seqs = [(start + i) % 65536 for i in range(span)]
    assert len(rtcp.nack(1, 2, seqs[::-1])) == 12 + 4 * (1 if span <= 17 else 2)


# ---- parsing what aiortc builds ----

def test_parses_aiortc_compound():
    rr = RtcpRrPacket(ssrc=5, reports=[as_aiortc(block(ssrc=9, fraction_lost=12, cumulative_lost=-3,
                                                       highest_sequence=70000, jitter=4, last_sr=5,
                                                       delay_since_last_sr=6))])
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=5, items=[(1, b"cname")])])
    nack = RtcpRtpfbPacket(fmt=1, ssrc=5, media_ssrc=9, lost=[3, 4, 19, 40])
    pli = RtcpPsfbPacket(fmt=1, ssrc=5, media_ssrc=9)
    bye = RtcpByePacket(sources=[5])
    data = b"".join(bytes(p) for p in (rr, sdes, nack, pli, bye))
    packets = check_compound(data)
    assert [p["type"] for p in packets] == [201, 202, 205, 206, 203]
    assert packets[0]["reports"] == [block(ssrc=9, fraction_lost=12, cumulative_lost=-3, highest_sequence=70000,
                                           jitter=4, last_sr=5, delay_since_last_sr=6)]
    assert packets[2]["nack"] == [3, 4, 19, 40]
    assert (packets[3]["sender_ssrc"], packets[3]["media_ssrc"]) == (5, 9)


@settings(max_examples=200)
@given(info=sender_infos, blocks=st.lists(report_blocks, max_size=5))
def test_parses_aiortc_sr(info, blocks):
    data = bytes(RtcpSrPacket(
        ssrc=info["ssrc"], reports=[as_aiortc(b) for b in blocks],
        sender_info=RtcpSenderInfo(ntp_timestamp=info["ntp_time"], rtp_timestamp=info["rtp_time"],
                                   packet_count=info["packet_count"], octet_count=info["octet_count"])))
    [parsed] = check_compound(data)
    assert (parsed["sender_info"], parsed["reports"]) == (info, blocks)


# ---- garbage and truncations ----

@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_garbage_never_breaks_parsers(data):
    check_compound(data)
    rtcp.is_rtcp_packet(data)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(["rr", "sr", "sdes", "pli", "fir", "nack", "remb"]), min_size=1, max_size=4),
       st.binary(min_size=4, max_size=4))
def test_garbage_after_valid_headers(kinds, noise):
    # Valid headers with lying type/count fields: flip the count/type of packets built correctly.
    built = {"rr": rtcp.rr(1, [block()]), "sr": rtcp.sr(dict(ssrc=1, ntp_time=2, rtp_time=3, packet_count=4,
                                                             octet_count=5)),
             "sdes": rtcp.sdes_cname(1, "c"), "pli": rtcp.pli(1, 2), "fir": rtcp.fir(1, 2, 3),
             "nack": rtcp.nack(1, 2, [5, 9]), "remb": rtcp.remb(1, 10**6, [2])}
    data = b"".join(bytes([0x80 | (noise[0] & 0x3F), 200 + noise[1] % 8]) + built[k][2:] for k in kinds)
    check_compound(data)


@settings(max_examples=100)
@given(st.lists(st.sampled_from(["rr", "sr", "sdes", "pli", "fir", "nack", "remb"]), min_size=1, max_size=4))
def test_truncations_of_valid_compounds(kinds):
    built = {"rr": rtcp.rr(1, [block(), block(ssrc=2)]),
             "sr": rtcp.sr(dict(ssrc=1, ntp_time=2, rtp_time=3, packet_count=4, octet_count=5), [block()]),
             "sdes": rtcp.sdes_cname(1, "cname"), "pli": rtcp.pli(1, 2), "fir": rtcp.fir(1, 2, 3),
             "nack": rtcp.nack(1, 2, [5, 9, 100]), "remb": rtcp.remb(1, 10**7, [2, 3])}
    packets = [built[k] for k in kinds]
    data = b"".join(packets)
    boundaries = {sum(len(p) for p in packets[:i]) for i in range(len(packets) + 1)}
    whole = check_compound(data)
    assert len(whole) == len(packets)
    for cut in range(len(data)):
        parsed = check_compound(data[:cut])
        if cut in boundaries:
            assert parsed == whole[:len([b for b in boundaries if 0 < b <= cut])]
        else:
            assert parsed is None
