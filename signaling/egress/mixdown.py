"""An audio-only room composite's file: every participant's Opus decoded with PyAV, mixed on one sample timeline
(mixer.py), encoded once into Ogg Opus, MP4 (AAC) or MP3. Tracks come and go while it records (participants joining,
leaving, muting); the file runs in real time from its first frame, silence where nobody sounds. Runs on the
recorder's thread, never on the event loop."""
from __future__ import annotations

import fractions
from collections import Counter
from dataclasses import dataclass, field

import av
import numpy as np

from .depacketize import Frame
from .mixer import RATE, AudioMixer, TrackTimeline

# Seconds the mix waits behind real time before a block leaves: a track's frames may come this late (the jitter
# buffer holds up to 300 ms) and still be mixed.
MIX_DELAY = 0.5
BLOCK = RATE // 50  # samples per encoded block (20 ms)
TIME_BASE = fractions.Fraction(1, RATE)


@dataclass(frozen=True)
class AudioOutput:
    extension: str
    format: str
    codec: str
    options: dict[str, str] = field(default_factory=dict)


OGG_OPUS = AudioOutput(".ogg", "ogg", "libopus")
# Fragments of 1 s, so a crash leaves a playable file (as the passthrough MP4s).
MP4_AAC = AudioOutput(".mp4", "mp4", "aac", {"movflags": "empty_moov+default_base_moof", "frag_duration": "1000000"})
MP3 = AudioOutput(".mp3", "mp3", "libmp3lame")


@dataclass
class _Track:
    decoder: av.AudioCodecContext
    timeline: TrackTimeline = field(default_factory=TrackTimeline)
    frames: int = 0


class MixedAudioFile:
    """The recorder's sink for a mix: `write(index, frame, arrival)` per Opus frame of track `index` (tracks are
    added with `add_track`), `tick(now)` as time passes; the file opens at the first frame."""

    def __init__(self, path: str, output: AudioOutput) -> None:
        self.path = path
        self.output = output
        self.tracks: list[_Track] = []
        self.started = False
        self._mixer = AudioMixer()
        self._origin = 0.0  # arrival (monotonic s) of the first frame: sample position 0
        self._end = 0       # past the last sample any track placed
        self._container: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        self.undecodable = 0

    def add_track(self, codec: str, clock_rate: int) -> None:
        if (codec, clock_rate) != ("opus", RATE):
            raise ValueError(f"the audio mix takes 48 kHz Opus, not {codec} at {clock_rate} Hz")
        decoder = av.CodecContext.create("opus", "r")
        decoder.layout, decoder.sample_rate = "stereo", RATE
        self.tracks.append(_Track(decoder))

    def write(self, index: int, frame: Frame, arrival: float) -> None:
        if not self.started:
            self._open(arrival)
        track = self.tracks[index]
        try:
            decoded = track.decoder.decode(av.Packet(frame.data))
        except av.FFmpegError:
            self.undecodable += 1
            return
        position = track.timeline.position(frame.timestamp, round((arrival - self._origin) * RATE))
        for pcm_frame in decoded:
            pcm = pcm_frame.to_ndarray()
            self._mixer.add(position, pcm)
            position += pcm.shape[1]
            self._end = max(self._end, position)
        track.frames += 1
        self.tick(arrival)

    def tick(self, now: float) -> None:
        """Encodes the mix up to MIX_DELAY behind `now`, in whole blocks."""
        if self.started:
            until = round((now - self._origin - MIX_DELAY) * RATE)
            self._encode(self._mixer.emitted + (until - self._mixer.emitted) // BLOCK * BLOCK)

    def duration(self) -> float:
        return self._mixer.emitted / RATE

    def close(self) -> None:
        """Encodes what is left (up to the last placed sample), flushes the encoder, writes the trailer."""
        if self._container is None:
            return
        try:
            self._encode(max(self._end, self._mixer.emitted))
            assert self._stream is not None
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def count(self, counters: Counter[str]) -> None:
        counters["egress_frames_written"] += sum(t.frames for t in self.tracks)
        counters["egress_mix_late_samples"] += self._mixer.late_samples
        counters["egress_mix_dropped_samples"] += self._mixer.dropped_samples
        counters["egress_timestamp_discontinuities"] += sum(t.timeline.reanchors for t in self.tracks)
        counters["egress_drop_malformed_payload"] += self.undecodable

    def _open(self, arrival: float) -> None:
        container = av.open(self.path, "w", format=self.output.format, options=self.output.options)
        try:
            self._stream = container.add_stream(self.output.codec, rate=RATE, layout="stereo")
        except Exception:
            container.close()
            raise
        self._container = container
        self._origin = arrival
        self.started = True

    def _encode(self, until: int) -> None:
        assert self._container is not None and self._stream is not None
        start = self._mixer.emitted
        if until <= start:
            return
        pcm = self._mixer.pop(until)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = RATE, start, TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
