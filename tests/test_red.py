"""RED audio (RFC 2198, `audio/red` carrying Opus) in the engine: forwarded as it is to a subscriber that has RED,
stripped to its primary Opus blocks for one that does not, with packets lost upstream recovered from the redundant
blocks. Real UDP and SRTP, as tests/test_engine.py (whose peers these are); the parser under hypothesis."""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.codecs.red import red_blocks
from test_engine import AUDIO_SSRC, OPUS_PT, SUB_OPUS_PT, parse, rtp, setup  # noqa: F401

RED_PT, SUB_RED_PT = 63, 100
DOWN_RED_SSRC, DOWN_PLAIN_SSRC = 0xB101, 0xB102
FRAME = 960  # 20 ms of Opus at 48 kHz


def red(primary: bytes, redundant: list[tuple[int, bytes]], pt: int = OPUS_PT) -> bytes:
    """A RED payload: `redundant` as (timestamp offset, data), oldest first, then the primary block."""
    headers = b"".join(struct.pack("!BBBB", 0x80 | pt, offset >> 6, ((offset & 0x3F) << 2) | (len(data) >> 8),
                                   len(data) & 0xFF) for offset, data in redundant)
    return headers + bytes([pt]) + b"".join(data for _, data in redundant) + primary


def opus(n: int) -> bytes:
    return f"opus frame {n}".encode()


def red_packet(n: int, depth: int = 2) -> bytes:
    """Packet n (timestamp n * FRAME) of a RED stream repeating the `depth` frames before it."""
    redundant = [(k * FRAME, opus(n - k)) for k in range(min(depth, n - 1), 0, -1)]
    return rtp(RED_PT, n, n * FRAME, AUDIO_SSRC, red(opus(n), redundant))


def test_red_blocks() -> None:
    payload = red(b"primary", [(1920, b"two back"), (960, b"one back")])
    assert red_blocks(payload) == [(OPUS_PT, 1920, b"two back"), (OPUS_PT, 960, b"one back"), (OPUS_PT, 0, b"primary")]
    # Only the two blocks nearest the primary are kept (what recovery uses).
    deep = red(b"p", [(2880, b"c"), (1920, b"b"), (960, b"a")])
    assert red_blocks(deep) == [(OPUS_PT, 1920, b"b"), (OPUS_PT, 960, b"a"), (OPUS_PT, 0, b"p")]
    assert red_blocks(bytes([OPUS_PT]) + b"alone") == [(OPUS_PT, 0, b"alone")]
    assert red_blocks(b"") is None
    assert red_blocks(red(b"", [(960, b"longer than what follows")])[:-5]) is None
    assert red_blocks(b"\x80" * 100) is None  # headers without end


@given(st.binary(max_size=300))
def test_red_parser_takes_any_bytes(data: bytes) -> None:
    blocks = red_blocks(data)
    if blocks is not None:
        assert sum(len(b[2]) for b in blocks) <= len(data)


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=6), st.binary(max_size=80))
def test_red_round_trip(redundant: list[tuple[int, bytes]], primary: bytes) -> None:
    assert red_blocks(red(primary, redundant)) == [(OPUS_PT, o, d) for o, d in redundant[-2:]] + [(OPUS_PT, 0, primary)]


def add_red_track(eng, publisher, subscriber) -> tuple[int, int, int]:
    receiver = eng.add_receiver(publisher.transport, "0", "audio", "opus", OPUS_PT, 0, 48000, [], [AUDIO_SSRC], [],
                                {}, red_payload_type=RED_PT)
    with_red = eng.add_downtrack(receiver, subscriber.transport, DOWN_RED_SSRC, 0, SUB_OPUS_PT, 0, {},
                                 red_payload_type=SUB_RED_PT)
    plain = eng.add_downtrack(receiver, subscriber.transport, DOWN_PLAIN_SSRC, 0, SUB_OPUS_PT, 0, {})
    return receiver, with_red, plain


async def test_red_forwarded_or_stripped_with_loss_recovered(setup) -> None:  # noqa: F811
    eng, publisher, subscriber, _ = setup
    _, with_red, plain = add_red_track(eng, publisher, subscriber)
    # 4 is lost upstream and arrives late, after 5; 7 and 8 are lost for good (5's and 9's two blocks repeat them).
    for n in (1, 2, 3, 5, 4, 6, 9, 10):
        publisher.send_rtp(red_packet(n))
    await subscriber.collect()
    packets = subscriber.take_rtp()

    stripped = [p for p in packets if p.ssrc == DOWN_PLAIN_SSRC]
    assert [(p.seq, p.ts, p.payload) for p in stripped] == [(n, n * FRAME, opus(n)) for n in range(1, 11)]
    assert {p.pt for p in stripped} == {SUB_OPUS_PT}
    assert eng.downtrack_stats(plain)["red_recovered"] == 3  # 4 (its late original is not sent again), 7, 8
    assert eng.stats()["red_recovered"] == 3

    forwarded = [p for p in packets if p.ssrc == DOWN_RED_SSRC]
    assert [p.seq for p in forwarded] == [1, 2, 3, 5, 4, 6, 9, 10]  # as they came: the subscriber repairs
    assert {p.pt for p in forwarded} == {SUB_RED_PT}
    # The blocks carry the subscriber's Opus payload type.
    assert forwarded[-1].payload == red(opus(10), [(2 * FRAME, opus(8)), (FRAME, opus(9))], pt=SUB_OPUS_PT)
    assert red_blocks(forwarded[0].payload) == [(SUB_OPUS_PT, 0, opus(1))]


async def test_plain_opus_and_malformed_red_from_a_red_publisher(setup) -> None:  # noqa: F811
    eng, publisher, subscriber, _ = setup
    add_red_track(eng, publisher, subscriber)
    publisher.send_rtp(red_packet(1))
    publisher.send_rtp(rtp(OPUS_PT, 2, 2 * FRAME, AUDIO_SSRC, opus(2)))  # a plain Opus packet passes to both
    publisher.send_rtp(rtp(RED_PT, 3, 3 * FRAME, AUDIO_SSRC, b"\x80\x01"))  # headers cut short: dropped, counted
    publisher.send_rtp(red_packet(4, depth=0))
    await subscriber.collect()
    packets = subscriber.take_rtp()
    stripped = [(p.seq, p.pt, p.payload) for p in packets if p.ssrc == DOWN_PLAIN_SSRC]
    assert stripped == [(1, SUB_OPUS_PT, opus(1)), (2, SUB_OPUS_PT, opus(2)), (4, SUB_OPUS_PT, opus(4))]
    forwarded = [(p.seq, p.pt) for p in packets if p.ssrc == DOWN_RED_SSRC]
    assert forwarded == [(1, SUB_RED_PT), (2, SUB_OPUS_PT), (4, SUB_RED_PT)]
    assert eng.stats()["drop_malformed"] == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stripping_under_random_loss_and_reordering(setup, seed: int) -> None:  # noqa: F811
    """10 % of a RED stream lost upstream, some packets a place or two late: the stripped stream has every packet
    that arrived, or that one of the next two (arriving first) carried, once each, with its own timestamp and
    payload."""
    eng, publisher, subscriber, _ = setup
    _, _, plain = add_red_track(eng, publisher, subscriber)
    rng = random.Random(seed)
    sent = [n for n in range(1, 301) if n < 3 or rng.random() > 0.1]
    for i in range(len(sent) - 1):
        if sent[i] > 3 and rng.random() < 0.05:
            sent[i], sent[i + 1] = sent[i + 1], sent[i]
    for start in range(0, len(sent), 40):  # in bursts the engine reads as they come
        for n in sent[start:start + 40]:
            publisher.send_rtp(red_packet(n))
        await subscriber.collect(0.02)
    await subscriber.collect()
    stripped = [p for p in subscriber.take_rtp() if p.ssrc == DOWN_PLAIN_SSRC]
    expected, recovered, highest = [], 0, 0
    for n in sent:  # what the stripping should do, packet by packet
        for m in (n - 2, n - 1) if expected else ():
            if m > highest:  # lost (or not here yet): rebuilt from n's blocks
                expected.append(m)
                recovered += 1
                highest = m
        if n > highest or n not in expected:  # new; or late and never rebuilt
            expected.append(n)
            highest = max(highest, n)
    assert [(p.seq, p.ts, p.payload) for p in stripped] == [(n, n * FRAME, opus(n)) for n in expected]
    assert len(set(expected)) == len(expected) and recovered >= 0.08 * 300
    assert eng.downtrack_stats(plain)["red_recovered"] == recovered
