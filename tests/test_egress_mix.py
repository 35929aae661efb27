"""Audio-only room composite egress: livekit-api's StartRoomCompositeEgress (audio_only) mixes every participant's
microphone into one file. Two LiveKit SDK participants publish tones of different frequencies, one joining after the
recording started and the other leaving before it ends; the file, decoded with PyAV, holds the first tone alone, then
both, then the second alone, and lasts as long as the recording. The mixer's timeline and each file type (Ogg Opus,
MP4 AAC, MP3) are checked alone too."""
from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api, rtc
from livekit.protocol import egress as proto

from clients import connect, until
from media import Publisher
from signaling.egress.depacketize import Frame
from signaling.egress.mixdown import MP3, MP4_AAC, OGG_OPUS, AudioOutput, MixedAudioFile
from signaling.egress.mixer import MAX_AHEAD, MAX_SKEW, AudioMixer, TrackTimeline
from test_egress import egress_server, stop_egress_server

ROOM = "mix-room"
LOW_HZ, HIGH_HZ = 440.0, 1000.0
PHASE_SECONDS = 2.0  # first tone alone, then both, then the second alone
STATUS = proto.EgressStatus


def _levels(samples: np.ndarray, rate: int) -> dict[float, float]:
    """Each tone's magnitude in the window, relative to the window's strongest frequency."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    frequencies = np.fft.rfftfreq(len(samples), 1 / rate)
    peak = spectrum.max() or 1.0
    return {hz: float(spectrum[np.abs(frequencies - hz) < 15].max() / peak) for hz in (LOW_HZ, HIGH_HZ)}


async def test_room_audio_mix_to_file(tmp_path) -> None:
    server, lkapi, receiver = await egress_server(tmp_path)
    publishers: list[Publisher] = []
    try:
        low = await connect(server, "low", ROOM)
        publishers.append(Publisher(low, video=False, frequency=LOW_HZ))
        await publishers[-1].start()
        await until(lambda: any(e.event == "track_published" for e in receiver.events))
        # Video still needs a compositor.
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
                room_name=ROOM, file_outputs=[proto.EncodedFileOutput(filepath="video")]))
        assert refused.value.code == "unimplemented" and "audio_only" in refused.value.message

        info = await lkapi.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
            room_name=ROOM, audio_only=True, file_outputs=[proto.EncodedFileOutput(filepath="{room_name}-mix")]))
        assert info.status == STATUS.EGRESS_STARTING and info.room_composite.audio_only
        await until(lambda: any(e.event == "egress_updated" and e.egress_info.status == STATUS.EGRESS_ACTIVE
                                for e in receiver.events))
        active_at = time.monotonic()
        await asyncio.sleep(PHASE_SECONDS)

        high = await connect(server, "high", ROOM)  # joins the mix while it records
        publishers.append(Publisher(high, video=False, frequency=HIGH_HZ))
        await publishers[-1].start()
        await asyncio.sleep(PHASE_SECONDS)
        await publishers[0].stop()
        await low.disconnect()  # leaves: its part of the mix falls silent, the recording goes on
        await asyncio.sleep(PHASE_SECONDS)

        stopped_at = time.monotonic()
        assert (await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=info.egress_id))).status \
            == STATUS.EGRESS_ENDING
        await until(lambda: any(e.event == "egress_ended" for e in receiver.events), timeout=10)
        ended = next(e.egress_info for e in receiver.events if e.event == "egress_ended")
        assert ended.status == STATUS.EGRESS_COMPLETE, ended.error
        result = ended.file_results[0]
        assert result.filename == f"{ROOM}-mix.ogg" and result.size > 0
        assert [e.event for e in receiver.events if e.event.startswith("egress")] == \
            ["egress_started", "egress_updated", "egress_updated", "egress_ended"]
    finally:
        for publisher in publishers:
            await publisher.stop()
        await stop_egress_server(server, lkapi, receiver)
    assert "Traceback" not in server.log(), server.log()
    assert not receiver.errors

    with av.open(result.location) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        rate = container.streams.audio[0].rate
        samples = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
    duration = len(samples) / rate
    expected = stopped_at - active_at
    assert abs(duration - expected) < 0.1 * expected, (duration, expected)
    assert abs(result.duration / 1e9 - duration) < 0.1
    second = rate  # one-second windows well inside each phase (joins take a moment to be heard)
    alone_low = _levels(samples[int(0.5 * second):int(1.5 * second)], rate)
    both = _levels(samples[int((PHASE_SECONDS + 0.9) * second):int((PHASE_SECONDS + 1.9) * second)], rate)
    alone_high = _levels(samples[-int(1.5 * second):-int(0.5 * second)], rate)
    print(f"mix: {duration:.2f} s in the file, {expected:.2f} s recorded; levels {alone_low} {both} {alone_high}")
    assert alone_low[LOW_HZ] == 1.0 and alone_low[HIGH_HZ] < 0.05, alone_low
    assert min(both.values()) > 0.3, both
    assert alone_high[HIGH_HZ] == 1.0 and alone_high[LOW_HZ] < 0.05, alone_high


def test_mixer_places_and_sums_samples_exactly() -> None:
    mixer = AudioMixer()
    one = np.full((1, 960), 0.25, dtype=np.float32)  # mono goes to both channels
    mixer.add(0, one)
    mixer.add(480, np.full((2, 960), 0.5, dtype=np.float32))
    mixed = mixer.pop(2000)
    assert mixed.shape == (2, 2000)
    assert np.all(mixed[:, :480] == 0.25) and np.all(mixed[:, 480:960] == 0.75) and np.all(mixed[:, 960:1440] == 0.5)
    assert np.all(mixed[:, 1440:] == 0)  # nobody: silence
    mixer.add(1990, one)  # too late for the first 10 samples
    assert mixer.late_samples == 10 and np.all(mixer.pop(3000)[:, :950] == 0.25)
    mixer.add(3000, np.full((2, 10), 4.0, dtype=np.float32))
    assert mixer.pop(3010).max() == 1.0  # clipped


def test_timeline_follows_rtp_timestamps_across_wrap_and_reanchors_on_jumps() -> None:
    timeline = TrackTimeline()
    start = 0xFFFFFFFF - 959
    assert timeline.position(start, 4800) == 4800
    assert timeline.position((start + 960) & 0xFFFFFFFF, 5000) == 5760  # wrapped, arrival jitter ignored
    assert timeline.position((start + 960 * 50) & 0xFFFFFFFF, 4800 + 48000) == 4800 + 48000  # after 1 s of DTX
    assert timeline.position(12345, 4800 + 96000) == 4800 + 96000 and timeline.reanchors == 1  # encoder restarted


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-MAX_SKEW * 20, MAX_SKEW * 20), st.integers(0, 3000), st.integers(1, 3)),
                max_size=30), st.integers(0, 20 * MAX_SKEW))
def test_mixer_takes_any_placement(pieces: list[tuple[int, int, int]], until: int) -> None:
    """Any positions, lengths and channel counts: nothing raises, the output has the asked length, stays in [-1, 1]."""
    mixer = AudioMixer()
    for position, length, channels in pieces:
        mixer.add(position, np.full((channels, length), 0.6, dtype=np.float32))
    out = mixer.pop(until)
    assert out.shape == (2, until) and np.abs(out).max(initial=0) <= 1.0


@pytest.mark.parametrize("output", [OGG_OPUS, MP4_AAC, MP3], ids=lambda o: o.extension)
def test_mixed_file_types(tmp_path, output: AudioOutput) -> None:
    """Two tracks' Opus frames (one with a lost stretch) mixed into each file type: the file lasts as long as the
    frames, and both tones are in it."""
    encoders = []
    for hz in (LOW_HZ, HIGH_HZ):
        encoder = av.CodecContext.create("libopus", "w")
        encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
        encoders.append((hz, encoder))
    mixed = MixedAudioFile(str(tmp_path / f"mix{output.extension}"), output)
    for _ in encoders:
        mixed.add_track("opus", 48000)
    for index in range(100):  # 2 s of 20 ms frames
        for track, (hz, encoder) in enumerate(encoders):
            t = np.arange(index * 960, (index + 1) * 960) / 48000
            frame = av.AudioFrame.from_ndarray((np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16).reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts = 48000, index * 960
            for packet in encoder.encode(frame):
                if track == 1 and 40 <= index < 50:
                    continue  # lost: silence in its place
                mixed.write(track, Frame(bytes(packet), 1000 + packet.pts, True), 100.0 + index * 0.02)
    mixed.close()
    with av.open(str(tmp_path / f"mix{output.extension}")) as container:
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
    assert abs(len(samples) / rate - 2.0) < 0.15 and abs(mixed.duration() - 2.0) < 0.05
    levels = _levels(samples[rate // 4:rate // 4 + rate // 2], rate)
    assert min(levels.values()) > 0.3, levels


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3 * MAX_AHEAD), st.integers(0, 2 * MAX_AHEAD // 3)),
                max_size=12))
def test_mixer_matches_a_plain_sum(steps: list[tuple[bool, int, int]]) -> None:
    """Adds and pops in any order (the ring wraps many times) give what summing into one long array gives."""
    mixer, reference, emitted = AudioMixer(), np.zeros((2, 4 * MAX_AHEAD), dtype=np.float32), 0
    rng = np.random.default_rng(len(steps))
    for is_pop, position, length in steps:
        if is_pop:
            until = min(position, reference.shape[1])
            got = mixer.pop(until)
            assert np.allclose(got, np.clip(reference[:, emitted:max(emitted, until)], -1, 1), atol=1e-5)
            emitted = max(emitted, until)
            continue
        pcm = rng.uniform(-0.1, 0.1, (2, length)).astype(np.float32)
        mixer.add(position, pcm)
        lo, hi = max(position, emitted), min(position + length, emitted + MAX_AHEAD)  # late / too far: dropped
        if hi > lo:
            reference[:, lo:hi] += pcm[:, lo - position:hi - position]
