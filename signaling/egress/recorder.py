"""A recording's worker thread: it reads the plain RTP the engine sends to its loopback socket (a plain transport's
DownTracks), reorders each stream, depacketizes and muxes it, so none of that runs on the event loop. The socket's
receive buffer is the bounded queue between the engine and the thread: what overflows it the kernel drops, and the
thread counts (SO_RXQ_OVFL). Reports to the control plane go through `report`, which the owner makes thread-safe."""
from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .depacketize import DEPACKETIZERS, Depacketizer, Frame
from .jitter import JitterBuffer, RtpError, is_rtcp, parse_rtp

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes the kernel queues for the thread: ~10 s of a 3 Mbit/s video
POLL_INTERVAL = 0.05       # s: how often the thread looks at its stop flag and at gaps waiting in jitter buffers
DRAIN_TIME = 0.5           # s: at stop, packets already sent are read this long before the file is closed
KEYFRAME_RETRY = 1.0       # s between keyframe requests of a stream waiting for one (the engine also limits PLIs)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)  # Linux: each datagram carries the socket's drop count
DATAGRAM_MAX = 2048        # bytes: the engine's send buffer (state.pxd SEND_BUF) is smaller


@dataclass(frozen=True)
class TrackSpec:
    ssrc: int                  # the SSRC the engine's DownTrack writes
    codec: str                 # opus, vp8, vp9, h264
    clock_rate: int


class Sink(Protocol):
    """Where a recording's frames go: a passthrough Muxer, or a MixedAudioFile."""

    path: str
    started: bool  # frames are in the file

    def write(self, index: int, frame: Frame, arrival: float) -> None: ...
    def tick(self, now: float) -> None: ...
    def add_track(self, codec: str, clock_rate: int) -> None: ...
    def close(self) -> None: ...
    def duration(self) -> float: ...
    def count(self, counters: Counter[str]) -> None: ...


class Recorder:
    """`report(kind, value)` gets, from the thread: ("active", None) when the first frame is in the file,
    ("keyframe", ssrc) when a video stream needs a keyframe, ("done", None | Exception) when the file is closed.
    A mix's tracks may be added while it records (`add_track`)."""

    def __init__(self, sink: Sink, tracks: list[TrackSpec], engine_port: int, loopback: str,
                 report: Callable[[str, object], None]) -> None:
        self.tracks: list[TrackSpec] = []
        self.muxer = sink
        self.counters: Counter[str] = Counter()  # written by the thread only; read once it is done
        self._by_ssrc: dict[int, int] = {}
        self._jitter: list[JitterBuffer] = []
        self._depacketizers: list[Depacketizer] = []
        self._keyframe_asked: list[float] = []
        self._added: queue.SimpleQueue[TrackSpec] = queue.SimpleQueue()  # from the loop thread
        for spec in tracks:
            self._add(spec)
        self._engine_port = engine_port
        self._report = report
        self._stop = threading.Event()
        family = socket.AF_INET6 if ":" in loopback else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._sock.bind((loopback, 0))
            self._sock.settimeout(POLL_INTERVAL)
        except OSError:
            self._sock.close()
            raise
        self.address: tuple[str, int] = self._sock.getsockname()[:2]
        self._kernel_drops = 0
        self._thread = threading.Thread(target=self._run, name=f"egress {sink.path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add_track(self, spec: TrackSpec) -> None:
        """A track joins the recording (thread-safe: the thread takes it in at its next packet or poll)."""
        self._added.put(spec)

    def _add(self, spec: TrackSpec) -> None:
        self._by_ssrc[spec.ssrc] = len(self.tracks)
        self.tracks.append(spec)
        self._jitter.append(JitterBuffer())
        self._depacketizers.append(DEPACKETIZERS[spec.codec]())
        self._keyframe_asked.append(0.0)
        self.muxer.add_track(spec.codec, spec.clock_rate)

    def stop(self) -> None:
        """Asks the thread to finish: it reads what is already queued, then closes the file and reports "done"."""
        self._stop.set()

    def discard(self) -> None:
        """Closes the socket of a recorder whose thread was never started."""
        self._sock.close()

    def _run(self) -> None:
        error: Exception | None = None
        try:
            self._receive_until_stopped()
            self._flush()
        except Exception as exc:  # a codec or file error ends this recording only
            log.exception("egress %s failed", self.muxer.path)
            error = exc
        finally:
            try:
                self.muxer.close()
            except Exception as exc:
                error = error or exc
            self._sock.close()
            self._count_totals()
            self._report("done", error)

    def _receive_until_stopped(self) -> None:
        cmsg_space = socket.CMSG_SPACE(4)
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if drain_until is None and self._stop.is_set():
                drain_until = now + DRAIN_TIME
            if drain_until is not None and now >= drain_until:
                return
            try:
                data, ancillary, _, source = self._sock.recvmsg(DATAGRAM_MAX, cmsg_space)
            except socket.timeout:
                self._deliver(time.monotonic())
                if drain_until is not None:
                    return  # nothing more queued
                continue
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                    self._kernel_drops = struct.unpack("=I", value[:4])[0]
            self._receive(data, source, time.monotonic())

    def _receive(self, data: bytes, source: tuple, now: float) -> None:
        while not self._added.empty():
            self._add(self._added.get())
        if source[1] != self._engine_port:  # only the engine's socket sends here
            self.counters["egress_drop_foreign"] += 1
            return
        if is_rtcp(data):  # our sender reports: the track's clock is taken from arrival times instead
            return
        try:
            packet = parse_rtp(data)
        except RtpError:
            self.counters["egress_drop_malformed"] += 1
            return
        index = self._by_ssrc.get(packet.ssrc)
        if index is None:
            self.counters["egress_drop_unknown_ssrc"] += 1
            return
        self._jitter[index].push(packet, now)
        self._deliver(now, index)

    def _deliver(self, now: float, only: int | None = None, flush: bool = False) -> None:
        self.muxer.tick(now)
        for index, jitter in enumerate(self._jitter):
            if only is not None and index != only:
                continue
            depacketizer = self._depacketizers[index]
            for packet, lost_before in jitter.pop(now, flush):
                frame = depacketizer.push(packet, lost_before)
                if frame is not None:
                    started = self.muxer.started
                    self.muxer.write(index, frame, now)
                    if not started and self.muxer.started:
                        self._report("active", None)
            if depacketizer.want_keyframe and now - self._keyframe_asked[index] >= KEYFRAME_RETRY:
                self._keyframe_asked[index] = now
                self.counters["egress_keyframe_requests"] += 1
                self._report("keyframe", self.tracks[index].ssrc)

    def _flush(self) -> None:
        self._deliver(time.monotonic(), flush=True)

    def _count_totals(self) -> None:
        self.counters["egress_drop_queue_full"] += self._kernel_drops
        for jitter, depacketizer in zip(self._jitter, self._depacketizers):
            self.counters["egress_packets_lost"] += jitter.lost
            self.counters["egress_drop_late"] += jitter.late
            self.counters["egress_drop_duplicate"] += jitter.duplicates
            self.counters["egress_frames_dropped"] += depacketizer.dropped_frames
            self.counters["egress_drop_malformed_payload"] += depacketizer.malformed
        self.muxer.count(self.counters)
