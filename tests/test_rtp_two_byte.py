"""RFC 8285 two-byte header extensions in the per-subscriber rewrite (engine/rtp.pyx rewrite_header).

A Dependency Descriptor carrying its template structure is longer than 16 bytes, so it only travels in the
two-byte form. Per packet, as libwebrtc's sender: the one-byte form when every kept element fits it, else, for a
subscriber that negotiated a=extmap-allow-mixed, the two-byte form; without it the element is stripped. aiortc's
RTP code is the independent oracle; `rtp.rewrite` raises when the writer touches bytes past its promised room."""
from aiortc.rtp import RtpPacket, pack_header_extensions, unpack_header_extensions
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rtp_parsers import ONE_BYTE, TWO_BYTE, check_consistent, rtp_packet

from engine import rtp
from engine.harness import DownTrackHarness

REWRITE_GROWTH = 16  # rtp.pxd: the rewritten header is at most this much longer than the input's
DD = bytes(range(0x40, 0x40 + 30))  # a 30-byte element: a Dependency Descriptor with its structure, say


def block_of(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """The profile and elements of `data`'s extension block (aiortc parses it), (0, []) without one."""
    h = check_consistent(data)
    if not data[0] & 0x10:
        return 0, []
    assert h["ext_length"] % 4 == 0
    return h["ext_profile"], unpack_header_extensions(
        h["ext_profile"] & 0xFFF0 if h["ext_profile"] != ONE_BYTE else ONE_BYTE,
        data[h["ext_offset"]:h["ext_offset"] + h["ext_length"]])


def two_byte_packet(elements: list[tuple[int, bytes]], profile: int = TWO_BYTE, **fields) -> bytes:
    ext = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    return rtp_packet(profile=profile, ext=ext + bytes(-len(ext) % 4), **fields)


def test_long_element_keeps_the_two_byte_form_with_allow_mixed():
    data = two_byte_packet([(3, b"ab"), (9, DD), (4, b"")], profile=0x1005, payload=b"media", padding=4)
    out = rtp.rewrite(data, {3: 2, 9: 11, 4: 4}, extra_id=5, extra=b"\xbe\xef", mixed=True)
    assert block_of(out) == (0x1005, [(2, b"ab"), (11, DD), (4, b""), (5, b"\xbe\xef")])  # appbits kept
    assert RtpPacket.parse(out).payload == b"media" and not out[0] & 0x20


def test_without_allow_mixed_what_needs_two_bytes_is_stripped():
    data = two_byte_packet([(3, b"ab"), (9, DD), (4, b"")], payload=b"media")
    out = rtp.rewrite(data, {3: 2, 9: 11, 4: 4}, extra_id=5, extra=b"\xbe\xef")
    assert block_of(out) == (ONE_BYTE, [(2, b"ab"), (5, b"\xbe\xef")])


def test_two_byte_input_that_fits_leaves_in_the_one_byte_form():
    data = two_byte_packet([(3, b"ab"), (200, b"gone"), (9, bytes(16))], payload=b"media")
    out = rtp.rewrite(data, {3: 2, 9: 11}, mixed=True)   # the element that needed two bytes is stripped
    assert block_of(out) == (ONE_BYTE, [(2, b"ab"), (11, bytes(16))])
    assert len(out) < len(data)


def test_one_byte_input_renumbered_over_14_takes_the_two_byte_form():
    data = rtp_packet(profile=ONE_BYTE, ext=b"\x10\xaa\x21bb\x00\x00\x00", payload=b"media")
    out = rtp.rewrite(data, {1: 20, 2: 3}, extra_id=7, extra=b"\x01\x02\x03", mixed=True)
    assert block_of(out) == (TWO_BYTE, [(20, b"\xaa"), (3, b"bb"), (7, b"\x01\x02\x03")])
    assert block_of(rtp.rewrite(data, {1: 20, 2: 3})) == (ONE_BYTE, [(3, b"bb")])


def test_growth_into_the_two_byte_form_is_bounded():
    # Fourteen one-byte elements of one byte packed into 28 bytes: in the two-byte form each needs a byte more, which
    # would take the header past its room, so the last ones are dropped instead of written out of bounds.
    ext = b"".join(bytes([(i << 4), i]) for i in range(1, 15))
    data = rtp_packet(profile=ONE_BYTE, ext=ext, payload=b"media")
    out = rtp.rewrite(data, {i: 100 + i for i in range(1, 15)}, extra_id=1, extra=b"\xff\xff", mixed=True)
    profile, elements = block_of(out)
    assert profile == TWO_BYTE and elements[-1] == (1, b"\xff\xff")
    assert elements[:-1] == [(100 + i, bytes([i])) for i in range(1, len(elements))]
    assert len(elements) - 1 == (len(ext) + REWRITE_GROWTH - 4) // 3
    assert check_consistent(out)["header_length"] <= check_consistent(data)["header_length"] + REWRITE_GROWTH


def test_downtrack_writes_the_two_byte_form_for_an_allow_mixed_subscriber():
    """Through a DownTrack (as fanout sends): renumbered, our transport-cc added, the form chosen per packet."""
    large = two_byte_packet([(9, DD), (2, b"m")], payload=b"opus", sequence=1, ssrc=5)
    small = two_byte_packet([(9, b"\x80\x01\x02"), (2, b"m")], payload=b"opus", sequence=2, ssrc=5)
    mixed = DownTrackHarness(codec="opus", video=False, clock_rate=48000, transport_cc_id=3,
                             extmap={9: 21, 2: 4}, extmap_allow_mixed=True)
    assert block_of(mixed.push(large, 0, 1.0)) == (TWO_BYTE, [(21, DD), (4, b"m"), (3, b"\x00\x00")])
    assert block_of(mixed.push(small, 0, 1.02)) == (TWO_BYTE, [(21, b"\x80\x01\x02"), (4, b"m"), (3, b"\x00\x00")])
    plain = DownTrackHarness(codec="opus", video=False, clock_rate=48000, transport_cc_id=3,
                             extmap={9: 11, 2: 4})
    assert block_of(plain.push(large, 0, 1.0)) == (ONE_BYTE, [(4, b"m"), (3, b"\x00\x00")])
    assert block_of(plain.push(small, 0, 1.02)) == (ONE_BYTE, [(11, b"\x80\x01\x02"), (4, b"m"), (3, b"\x00\x00")])
    ignored = DownTrackHarness(codec="opus", video=False, clock_rate=48000, extmap={9: 21, 2: 4})
    assert block_of(ignored.push(large, 0, 1.0)) == (ONE_BYTE, [(4, b"m")])   # id 21 needs allow-mixed


# ---- hypothesis: random, garbage and truncated blocks ----

def expected(elements: list[tuple[int, bytes]], ext_length: int, id_map: dict, extra: tuple[int, bytes] | None,
             mixed: bool) -> tuple[int, list[tuple[int, bytes]]]:
    """What the rewrite must produce for a well-formed input block of `ext_length` bytes."""
    kept = [(id_map[i], v) for i, v in elements if id_map.get(i, 0)]
    own = [extra] if extra else []
    fits = [(i, v) for i, v in kept if i <= 14 and 1 <= len(v) <= 16]
    if not mixed or len(fits) == len(kept):
        return (ONE_BYTE if fits + own else 0), fits + own
    room, written, out = ext_length + REWRITE_GROWTH - (2 + len(extra[1]) if extra else 0), 0, []
    for i, v in kept:
        if written + 2 + len(v) <= room:
            out.append((i, v))
            written += 2 + len(v)
    return TWO_BYTE, out + own


extensions = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=8)
id_maps = st.dictionaries(st.integers(1, 255), st.integers(0, 255))
extras = st.one_of(st.none(), st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=3)))


@settings(max_examples=400)
@given(extensions=extensions, id_map=id_maps, extra=extras, mixed=st.booleans(), payload=st.binary(max_size=24),
       padding=st.integers(0, 12))
def test_rewrite_round_trips_through_aiortc(extensions, id_map, extra, mixed, payload, padding):
    profile, value = pack_header_extensions(extensions)
    data = rtp_packet(profile=profile if value else None, ext=value + bytes(-len(value) % 4), sequence=77,
                      csrcs=(9,), payload=payload, padding=padding)
    extra_id, extra_bytes = extra or (0, b"")
    out = rtp.rewrite(data, id_map, extra_id, extra_bytes, mixed)
    assert block_of(out) == expected(extensions, -(-len(value) // 4) * 4, id_map, extra, mixed)
    theirs = RtpPacket.parse(out)
    assert (theirs.payload, theirs.sequence_number, theirs.csrc, theirs.padding_size) == (payload, 77, [9], 0)
    # Ours reads back every element we wrote, whichever form (the first of an id, as a receiver would).
    written = block_of(out)[1]
    for ext_id in {i for i, _ in written}:
        assert rtp.extension(out, ext_id) == next(v for i, v in written if i == ext_id)


@settings(max_examples=400)
@given(block=st.binary(max_size=64), profile=st.sampled_from([ONE_BYTE, TWO_BYTE, 0x100F, 0x1234]),
       id_map=id_maps, extra=extras, mixed=st.booleans(), payload=st.binary(max_size=8), cut=st.integers(0, 80))
def test_garbage_and_truncated_blocks_never_break_the_rewrite(block, profile, id_map, extra, mixed, payload, cut):
    # Random element bytes (lying lengths, stop ids, zero padding), then the datagram cut anywhere: `rewrite`
    # raises RuntimeError if the writer overruns its room, and whatever it writes must parse.
    data = rtp_packet(profile=profile, ext=block + bytes(-len(block) % 4), payload=payload)
    for packet in (data, data[:cut]):
        h = check_consistent(packet)
        if h is None:
            continue
        out = rtp.rewrite(packet, id_map, *(extra or (0, b"")), mixed)
        out_h = check_consistent(out)
        assert out_h["header_length"] <= h["header_length"] + REWRITE_GROWTH
        assert out[out_h["header_length"]:] == packet[h["header_length"]:h["header_length"] + h["payload_length"]]
        out_profile, elements = block_of(out)
        assert out_profile in (0, ONE_BYTE, TWO_BYTE, profile)
        assert len(elements) <= (len(block) + 3) // 4 * 2 + 1  # an element takes 2 bytes at least (the padding's too)


@settings(max_examples=400)
@given(extensions=extensions.filter(bool), id_map=id_maps, extra=extras, mixed=st.booleans(), which=st.integers(0, 7),
       growth=st.integers(-3, 5), fill=st.integers(0, 255))
def test_a_replaced_element_is_written_in_the_form_it_needs(extensions, id_map, extra, mixed, which, growth, fill):
    """A subscriber's own value for one element (a rewritten Dependency Descriptor, up to 5 bytes longer): written
    in place of the publisher's, in the two-byte form when it outgrows the one-byte form and the subscriber allows
    it, never past the room."""
    replace_id, value = extensions[which % len(extensions)]
    replacement = bytes([fill]) * max(1, min(255, len(value) + growth))
    profile, block = pack_header_extensions(extensions)
    data = rtp_packet(profile=profile, ext=block + bytes(-len(block) % 4), payload=b"media")
    extra_id, extra_bytes = extra or (0, b"")
    if rtp.extension(data, replace_id) != value:
        return   # an earlier element of that id: the replacement must fit the first one's value
    out = rtp.rewrite(data, id_map, extra_id, extra_bytes, mixed, replace_id, replacement)
    replaced = [(i, replacement if i == replace_id else v) for i, v in extensions]
    assert block_of(out) == expected(replaced, -(-len(block) // 4) * 4, id_map, extra, mixed)
    assert out.endswith(b"media")
