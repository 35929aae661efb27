"""Frames into a file with PyAV, without transcoding: the container follows the codecs (LiveKit's track egress
mapping: Opus alone -> Ogg, VP8/VP9 (+ Opus) -> WebM, H.264 (+ Opus) -> fragmented MP4, so a file cut short by a crash
still plays up to its last fragment). Runs on the recorder's thread, never on the event loop."""
from __future__ import annotations

import fractions
from collections import Counter
from dataclasses import dataclass, field

import av

from .depacketize import Frame

# Frames held while waiting for every track's first frame (a video's first keyframe can take a PLI round trip):
# 20 s of 20 ms Opus. Past it, newer frames are dropped and counted.
MAX_PENDING_FRAMES = 1000
# A timestamp this far (s) past the track's previous frame is a discontinuity (the publisher restarted its encoder),
# not a pause: the track continues one frame interval after its previous frame.
MAX_TIMESTAMP_JUMP = 10.0
# fMP4: a fragment at each keyframe, the header (moov) first and empty, each fragment standalone (crash-safe).
MP4_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


@dataclass(frozen=True)
class Container:
    extension: str
    format: str
    options: dict[str, str] = field(default_factory=dict)


OGG = Container(".ogg", "ogg")
WEBM = Container(".webm", "webm")
MP4 = Container(".mp4", "mp4", {"movflags": MP4_FLAGS})


def container_for(codecs: list[str]) -> Container:
    """The container for these codecs (lower-case names: opus, vp8, vp9, h264); ValueError for a mix none takes."""
    video = [c for c in codecs if c != "opus"]
    if any(c not in ("opus", "vp8", "vp9", "h264") for c in codecs) or len(video) > 1 or len(codecs) - len(video) > 1:
        raise ValueError(f"no passthrough container for {'+'.join(codecs)}: "
                         "one Opus and/or one VP8, VP9 or H.264 track")
    if not video:
        return OGG
    return MP4 if video[0] == "h264" else WEBM


@dataclass
class TrackState:
    codec: str
    clock_rate: int
    stream: av.stream.Stream | None = None
    seen: bool = False                  # a first frame (video: a keyframe) arrived
    first_timestamp: int | None = None  # unwrapped RTP timestamp of its first frame in the file
    offset: int = 0                     # that frame's pts (clock units): its arrival after the recording's start
    last_timestamp: int = 0             # unwrapped
    last_pts: int = -1
    frame_interval: int = 0             # the last step between frames, for discontinuities
    frames: int = 0


class Muxer:
    """Opens the file once every track has its first frame (the first keyframe of video), so the streams are all
    known. The recording starts at the video's first keyframe (audio that came before it is left out, so sound and
    picture start together), or at the first audio frame without video; each track's timeline begins at its first
    frame's arrival after that start (arrival times, not RTCP sender reports, align the tracks)."""

    def __init__(self, path: str, container: Container) -> None:
        self.path = path
        self.container = container
        self.tracks: list[TrackState] = []  # added before the first frame (add_track)
        self._output: av.container.OutputContainer | None = None
        self._pending: list[tuple[int, Frame, float]] = []
        self._origin = 0.0  # arrival time (monotonic s) of the recording's start
        self.started = False  # the file was opened: frames are in it
        self.pending_dropped = 0
        self.discontinuities = 0
        self.non_monotonic = 0

    def add_track(self, codec: str, clock_rate: int) -> None:
        if self._output is not None:
            raise ValueError("a passthrough file's tracks are fixed once it is open")
        self.tracks.append(TrackState(codec, clock_rate))

    def tick(self, now: float) -> None:
        """Nothing waits on time here: frames go into the file as they come."""

    def count(self, counters: Counter[str]) -> None:
        counters["egress_frames_written"] += sum(t.frames for t in self.tracks)
        counters["egress_drop_pending_full"] += self.pending_dropped
        counters["egress_timestamp_discontinuities"] += self.discontinuities
        counters["egress_drop_non_monotonic"] += self.non_monotonic

    def write(self, index: int, frame: Frame, arrival: float) -> None:
        if self._output is not None:
            self._mux(index, frame, arrival)
            return
        if len(self._pending) >= MAX_PENDING_FRAMES:
            self.pending_dropped += 1
            return
        self.tracks[index].seen = True
        self._pending.append((index, frame, arrival))
        if all(t.seen for t in self.tracks):
            self._open()

    def duration(self) -> float:
        """Seconds from the recording's start to the end of its last frame."""
        return max((t.last_pts + t.frame_interval) / t.clock_rate for t in self.tracks if t.frames) \
            if any(t.frames for t in self.tracks) else 0.0

    def close(self) -> None:
        """Writes the trailer; a recording that never started leaves no file."""
        if self._output is not None:
            self._output.close()
            self._output = None

    def _open(self) -> None:
        firsts = [next(a for i, _, a in self._pending if i == index) for index in range(len(self.tracks))]
        video = [a for a, t in zip(firsts, self.tracks) if t.codec != "opus"]
        self._origin = min(video or firsts)
        output = av.open(self.path, "w", format=self.container.format, options=self.container.options)
        try:
            for index, track in enumerate(self.tracks):
                track.stream = _add_stream(output, track, next(f for i, f, _ in self._pending if i == index))
        except Exception:
            output.close()
            raise
        self._output = output
        self.started = True
        pending, self._pending = self._pending, []
        for index, frame, arrival in pending:
            if arrival >= self._origin or self.tracks[index].codec != "opus":  # video keeps its keyframe
                self._mux(index, frame, arrival)

    def _mux(self, index: int, frame: Frame, arrival: float) -> None:
        track = self.tracks[index]
        assert self._output is not None and track.stream is not None
        if track.first_timestamp is None:
            track.first_timestamp = track.last_timestamp = frame.timestamp
            track.offset = max(0, round((arrival - self._origin) * track.clock_rate))
        step = (frame.timestamp - track.last_timestamp + 0x80000000) % 0x100000000 - 0x80000000  # RTP ts wrap
        if step > MAX_TIMESTAMP_JUMP * track.clock_rate or step < -MAX_TIMESTAMP_JUMP * track.clock_rate:
            self.discontinuities += 1
            track.first_timestamp += step - max(track.frame_interval, 1)
        timestamp = track.last_timestamp + step
        pts = timestamp - track.first_timestamp + track.offset
        if pts <= track.last_pts:  # after the jitter buffer only a publisher's clock going back does this
            self.non_monotonic += 1
            return
        if track.frames:
            track.frame_interval = pts - track.last_pts
        track.last_timestamp, track.last_pts = timestamp, pts
        packet = av.Packet(frame.data)
        packet.stream = track.stream
        packet.time_base = fractions.Fraction(1, track.clock_rate)
        packet.pts = packet.dts = pts
        packet.is_keyframe = frame.keyframe
        self._output.mux(packet)
        track.frames += 1


def _add_stream(output: av.container.OutputContainer, track: TrackState, first: Frame) -> av.stream.Stream:
    if track.codec == "opus":
        # An Opus stream needs its OpusHead (codec extradata), which only an opened encoder writes: the encoder is
        # opened for that and never fed. Two channels decode mono packets too.
        stream = output.add_stream("libopus", rate=48000, layout="stereo")
    else:
        width, height = _frame_size(track.codec, first.data)
        stream = output.add_mux_stream(track.codec, width=width, height=height)
    stream.time_base = fractions.Fraction(1, track.clock_rate)
    return stream


def _frame_size(codec: str, keyframe: bytes) -> tuple[int, int]:
    """The picture size, from decoding the first keyframe once (its headers differ by codec; a decoder reads all)."""
    decoder = av.CodecContext.create(codec, "r")
    try:
        frames = decoder.decode(av.Packet(keyframe)) + decoder.decode(None)
    except av.FFmpegError:
        frames = []
    if not frames:
        raise ValueError(f"the first {codec} keyframe does not decode")
    return frames[0].width, frames[0].height
