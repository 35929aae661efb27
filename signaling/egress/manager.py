"""The node's built-in egress: recordings of published tracks to local files, passthrough (no transcoding).

An egress is a plain transport of the engine (unencrypted RTP to a loopback socket, engine.add_plain_transport) with
one DownTrack per recorded track, and a Recorder thread that reads that socket and writes the file. Its EgressInfo goes
STARTING -> ACTIVE (first frame in the file) -> ENDING (stopped, or its source left) -> COMPLETE, or FAILED / ABORTED
(stopped before any media); each change is an egress webhook (LiveKit's: egress_started, egress_updated,
egress_ended)."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from livekit.protocol import egress as proto
from livekit.protocol import models

from ..rtc.ids import new_id
from .mixdown import MP3, MP4_AAC, OGG_OPUS, AudioOutput, MixedAudioFile
from .muxer import Container, Muxer, container_for
from .recorder import Recorder, Sink, TrackSpec

if TYPE_CHECKING:
    from ..rtc.publication import TrackPublication
    from ..rtc.room import Room

log = logging.getLogger(__name__)

# Recordings at once on this node: each is a thread and a socket; passthrough costs little CPU (see the benchmark),
# but the threads share the control plane's interpreter.
MAX_ACTIVE_EGRESSES = 16
# Tracks one room audio mix takes in over its life (each keeps a decoder and a jitter buffer on the recording's
# thread until the end, also after its participant left).
MAX_MIX_TRACKS = 64
# Ended egresses ListEgress still reports (the oldest are forgotten first).
MAX_ENDED_EGRESSES = 1000
# Bytes of a request's filepath (and so, roughly, of the file's name under the output directory).
MAX_FILEPATH = 1024
# Seconds the node waits at shutdown for recordings to close their files.
SHUTDOWN_TIME = 5.0
CODECS = ("opus", "vp8", "vp9", "h264")
END_STOPPED = "StopEgress API"      # LiveKit's end reasons (EgressInfo.details)
END_SOURCE_CLOSED = "Source closed"
END_SHUTDOWN = "Server shutdown"


class Unsupported(Exception):
    """A request this egress cannot do (it needs a compositor, a transcoder or an upload)."""


class EgressNotFound(LookupError):
    pass


class EgressStateError(Exception):
    """The egress is in no state for the request (LiveKit's failed_precondition)."""


@dataclass(eq=False)
class Egress:
    info: proto.EgressInfo
    room: Room
    publications: list[TrackPublication]
    path: str
    recorder: Recorder
    transport_id: int | None = None
    downtracks: dict[int, int] = field(default_factory=dict)   # DownTrack SSRC -> engine DownTrack id
    receivers: dict[int, int] = field(default_factory=dict)    # DownTrack SSRC -> publication's receiver id
    active_at_ns: int = 0
    mix: bool = False  # a room's audio mix: tracks join as they are published
    done: asyncio.Future | None = None


def now_ns() -> int:
    return time.time_ns()


class EgressManager:
    """`engine()` is the node's Engine (made when the node starts), `rooms(name)` its store's lookup;
    `notify(event, room=, egress=)` sends webhooks; `counters` are the node's."""

    def __init__(self, engine: Callable[[], Any], rooms: Callable[[str], Room | None], output_dir: str,
                 loopback: str, notify: Callable[..., None], counters: Counter[str]) -> None:
        self._engine = engine
        self._rooms = rooms
        self.output_dir = os.path.abspath(output_dir)
        self._loopback = loopback
        self._notify = notify
        self._counters = counters
        self.active: dict[str, Egress] = {}
        self.ended: OrderedDict[str, proto.EgressInfo] = OrderedDict()

    # -- starting
    def start_track(self, request: proto.TrackEgressRequest) -> proto.EgressInfo:
        if request.WhichOneof("output") != "file":
            raise Unsupported("track egress writes files only (file.filepath): websocket_url is not supported")
        _local_only(request.file)
        room = self._room(request.room_name)
        publication = self._publication(room, request.track_id)
        info = proto.EgressInfo(track=request)
        template = request.file.filepath or "{room_name}-{track_id}-{time}"
        return self._start_passthrough(info, room, [publication], template, None)

    def start_track_composite(self, request: proto.TrackCompositeEgressRequest) -> proto.EgressInfo:
        output = _file_output(request)
        room = self._room(request.room_name)
        ids = [sid for sid in (request.audio_track_id, request.video_track_id) if sid]
        if not ids:
            raise ValueError("audio_track_id or video_track_id is required")
        publications = [self._publication(room, sid) for sid in ids]
        if request.audio_track_id and publications[0].kind != "audio":
            raise ValueError(f"{request.audio_track_id} is not an audio track")
        if request.video_track_id and publications[-1].kind != "video":
            raise ValueError(f"{request.video_track_id} is not a video track")
        info = proto.EgressInfo(track_composite=request)
        template = output.filepath or "{room_name}-{publisher_identity}-{time}"
        return self._start_passthrough(info, room, publications, template, output.file_type)

    def start_participant(self, request: proto.ParticipantEgressRequest) -> proto.EgressInfo:
        output = _file_output(request)
        room = self._room(request.room_name)
        participant = room.participants.get(request.identity)
        if participant is None:
            raise EgressNotFound(f"participant {request.identity!r} not found in room {request.room_name!r}")
        sources = ((models.TrackSource.SCREEN_SHARE_AUDIO, models.TrackSource.SCREEN_SHARE) if request.screen_share
                   else (models.TrackSource.MICROPHONE, models.TrackSource.CAMERA))
        publications = []
        for source in sources:
            found = [p for p in participant.publications.values()
                     if p.published and p.info.source == source and p.receiver_id is not None]
            publications += found[:1]
        if not publications:
            raise EgressNotFound(f"participant {request.identity!r} publishes no "
                                 f"{'screen share' if request.screen_share else 'microphone or camera'} track")
        info = proto.EgressInfo(participant=request)
        template = output.filepath or "{room_name}-{publisher_identity}-{time}"
        return self._start_passthrough(info, room, publications, template, output.file_type)

    def start_room_composite(self, request: proto.RoomCompositeEgressRequest) -> proto.EgressInfo:
        """Audio only: every participant's microphone (and other Opus tracks), decoded, mixed and encoded into one
        file; tracks published later join the mix. Video needs a compositor."""
        if not request.audio_only:
            raise Unsupported("room composite with video needs a compositor: only audio_only=true is supported")
        if request.audio_mixing != proto.AudioMixing.DEFAULT_MIXING:
            raise Unsupported("audio_mixing: only DEFAULT_MIXING (everyone in one mix) is supported")
        output = _file_output(request)
        audio_output = _audio_output(output.file_type)
        room = self._room(request.room_name)
        publications = [p for p in room.tracks.values() if _mixable(p)][:MAX_MIX_TRACKS]
        info = proto.EgressInfo(room_composite=request)
        path = self._path(output.filepath or "{room_name}-{time}", audio_output.extension, room, publications)
        return self._start(info, room, publications, MixedAudioFile(path, audio_output), mix=True)

    def _start_passthrough(self, info: proto.EgressInfo, room: Room, publications: list[TrackPublication],
                           template: str, file_type: int | None) -> proto.EgressInfo:
        codecs = [_codec(p) for p in publications]
        container = container_for(codecs)
        _check_file_type(file_type, container)
        path = self._path(template, container.extension, room, publications)
        return self._start(info, room, publications, Muxer(path, container))

    def _start(self, info: proto.EgressInfo, room: Room, publications: list[TrackPublication], sink: Sink,
               mix: bool = False) -> proto.EgressInfo:
        if len(self.active) >= MAX_ACTIVE_EGRESSES:
            raise OverflowError(f"{MAX_ACTIVE_EGRESSES} egresses are recording on this node already")
        path = sink.path
        engine = self._engine()
        info.egress_id = new_id("EG_")
        info.room_id, info.room_name = room.sid, room.name
        info.source_type = proto.EgressSourceType.EGRESS_SOURCE_TYPE_SDK
        info.status = proto.EgressStatus.EGRESS_STARTING
        info.started_at = info.updated_at = now_ns()
        ssrcs = _distinct_ssrcs(len(publications))
        tracks = [TrackSpec(ssrc, _codec(p), p.codec.clock_rate) for ssrc, p in zip(ssrcs, publications)]
        loop = asyncio.get_running_loop()
        egress: Egress | None = None

        def report(kind: str, value: object) -> None:  # from the recorder's thread
            try:
                loop.call_soon_threadsafe(self._on_report, egress, kind, value)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        os.makedirs(os.path.dirname(path), exist_ok=True)
        recorder = Recorder(sink, tracks, engine.port, self._loopback, report)
        egress = Egress(info, room, publications, path, recorder, mix=mix, done=loop.create_future())
        try:
            egress.transport_id = engine.add_plain_transport(*recorder.address)
            for spec, publication in zip(tracks, publications):
                self._add_downtrack(egress, spec.ssrc, publication)
        except Exception:
            self._release(egress)
            recorder.discard()
            raise
        self.active[info.egress_id] = egress
        room.set_recording(True)
        recorder.start()
        for receiver_id in egress.receivers.values():
            engine.request_keyframe(receiver_id)  # start the file at once, not at the publisher's next keyframe
        self._counters["egress_started"] += 1
        log.info("egress %s: recording %s of room %s to %s", info.egress_id,
                 "+".join(p.sid for p in publications), room.name, path)
        self._announce(egress, "egress_started")
        return _copy(info)

    def _add_downtrack(self, egress: Egress, ssrc: int, publication: TrackPublication) -> None:
        assert publication.codec is not None and publication.receiver_id is not None
        egress.downtracks[ssrc] = self._engine().add_downtrack(
            publication.receiver_id, egress.transport_id, ssrc, 0, publication.codec.payload_type, 0, {})
        egress.receivers[ssrc] = publication.receiver_id

    def _join_mix(self, egress: Egress, publication: TrackPublication) -> None:
        """A track published while a room's audio is mixed joins the mix."""
        if publication in egress.publications or egress.transport_id is None:
            return
        if len(egress.publications) >= MAX_MIX_TRACKS:
            self._counters["egress_mix_tracks_refused"] += 1
            log.warning("egress %s: %d tracks mixed already, %s is left out", egress.info.egress_id,
                        MAX_MIX_TRACKS, publication.sid)
            return
        ssrc = next(s for s in _distinct_ssrcs(len(egress.downtracks) + 1) if s not in egress.downtracks)
        try:
            self._add_downtrack(egress, ssrc, publication)
        except KeyError:  # its receiver went meanwhile
            return
        egress.publications.append(publication)
        egress.recorder.add_track(TrackSpec(ssrc, "opus", publication.codec.clock_rate))
        log.info("egress %s: %s joins the mix", egress.info.egress_id, publication.sid)

    # -- listing, stopping
    def list(self, request: proto.ListEgressRequest) -> proto.ListEgressResponse:
        infos = [e.info for e in self.active.values()]
        if not request.active:
            infos += list(self.ended.values())
        return proto.ListEgressResponse(items=[
            _copy(info) for info in infos
            if (not request.room_name or info.room_name == request.room_name)
            and (not request.egress_id or info.egress_id == request.egress_id)])

    def stop(self, egress_id: str) -> proto.EgressInfo:
        egress = self.active.get(egress_id)
        if egress is None:
            ended = self.ended.get(egress_id)
            if ended is None:
                raise EgressNotFound("egress not found")
            raise EgressStateError(f"egress with status {proto.EgressStatus.Name(ended.status)} cannot be stopped")
        if egress.info.status == proto.EgressStatus.EGRESS_ENDING:
            raise EgressStateError("egress with status EGRESS_ENDING cannot be stopped")
        self._end(egress, END_STOPPED)
        return _copy(egress.info)

    def on_event(self, event: str, room: models.Room | None, participant: models.ParticipantInfo | None,
                 track: models.TrackInfo | None) -> None:
        """A room event: an egress whose track was unpublished (or whose room closed) ends ("Source closed"); a room
        mix takes in the room's newly published audio (its tracks that go only fall silent)."""
        for egress in list(self.active.values()):
            if egress.info.status == proto.EgressStatus.EGRESS_ENDING:
                continue
            in_room = room is not None and room.sid == egress.info.room_id
            if event == "room_finished" and in_room:
                self._end(egress, END_SOURCE_CLOSED)
            elif egress.mix:
                publication = egress.room.tracks.get(track.sid) if track is not None else None
                if event == "track_published" and in_room and publication is not None and _mixable(publication):
                    self._join_mix(egress, publication)
            elif event == "track_unpublished" and track is not None \
                    and any(p.sid == track.sid for p in egress.publications):
                self._end(egress, END_SOURCE_CLOSED)

    async def close(self) -> None:
        """Ends every recording and waits (up to SHUTDOWN_TIME) for their files to be closed."""
        waiting = [e.done for e in self.active.values() if e.done is not None]
        for egress in list(self.active.values()):
            if egress.info.status != proto.EgressStatus.EGRESS_ENDING:
                self._end(egress, END_SHUTDOWN)
        if waiting:
            done, pending = await asyncio.wait(waiting, timeout=SHUTDOWN_TIME)
            if pending:
                log.warning("%d recordings did not close their files within %g s", len(pending), SHUTDOWN_TIME)

    # -- lifecycle
    def _end(self, egress: Egress, reason: str) -> None:
        egress.info.status = proto.EgressStatus.EGRESS_ENDING
        egress.info.details = f"End reason: {reason}"
        egress.info.updated_at = now_ns()
        self._release(egress)  # the engine sends no more; the thread reads what is queued and closes the file
        egress.recorder.stop()
        self._announce(egress, "egress_updated")

    def _release(self, egress: Egress) -> None:
        engine = self._engine()
        for downtrack_id in egress.downtracks.values():
            engine.remove_downtrack(downtrack_id)  # a no-op once the track's receiver is gone
        egress.downtracks.clear()
        if egress.transport_id is not None:
            engine.remove_transport(egress.transport_id)
            egress.transport_id = None

    def _on_report(self, egress: Egress | None, kind: str, value: object) -> None:
        if egress is None or self.active.get(egress.info.egress_id) is not egress:
            return
        info = egress.info
        if kind == "keyframe":
            receiver_id = egress.receivers.get(value)  # type: ignore[arg-type]
            if receiver_id is not None and egress.downtracks:
                try:
                    self._engine().request_keyframe(receiver_id)
                except KeyError:  # the track is gone; its egress ends with it
                    pass
        elif kind == "active" and info.status == proto.EgressStatus.EGRESS_STARTING:
            info.status = proto.EgressStatus.EGRESS_ACTIVE
            info.updated_at = egress.active_at_ns = now_ns()
            self._announce(egress, "egress_updated")
        elif kind == "done":
            self._finish(egress, value if isinstance(value, Exception) else None)

    def _finish(self, egress: Egress, error: Exception | None) -> None:
        info = egress.info
        self._release(egress)
        for name, count in egress.recorder.counters.items():
            self._counters[name] += count
        info.ended_at = info.updated_at = now_ns()
        muxer = egress.recorder.muxer
        if error is not None:
            info.status = proto.EgressStatus.EGRESS_FAILED
            info.error, info.error_code = f"recording failed: {error}", 500
            self._counters["egress_failed"] += 1
        elif not muxer.started:
            info.status = proto.EgressStatus.EGRESS_ABORTED
            info.error, info.error_code = "egress ended before any media was received", 412
            self._counters["egress_aborted"] += 1
        else:
            info.status = proto.EgressStatus.EGRESS_COMPLETE
            self._counters["egress_completed"] += 1
        if muxer.started and os.path.exists(egress.path):
            info.file_results.add(
                filename=os.path.relpath(egress.path, self.output_dir), location=egress.path,
                size=os.path.getsize(egress.path), duration=int(muxer.duration() * 1e9),
                started_at=egress.active_at_ns or info.started_at, ended_at=info.ended_at)
        del self.active[info.egress_id]
        egress.room.set_recording(any(e.room is egress.room for e in self.active.values()))
        self.ended[info.egress_id] = info
        while len(self.ended) > MAX_ENDED_EGRESSES:
            self.ended.popitem(last=False)
        log.info("egress %s: %s (%s)", info.egress_id, proto.EgressStatus.Name(info.status),
                 info.error or info.details)
        self._announce(egress, "egress_ended")
        if egress.done is not None and not egress.done.done():
            egress.done.set_result(None)

    def _announce(self, egress: Egress, event: str) -> None:
        self._notify(event, room=models.Room(sid=egress.info.room_id, name=egress.info.room_name),
                     egress=_copy(egress.info))

    # -- lookups
    def _room(self, name: str) -> Room:
        room = self._rooms(name)
        if room is None:
            raise EgressNotFound(f"room {name!r} not found")
        return room

    @staticmethod
    def _publication(room: Room, track_id: str) -> TrackPublication:
        publication = room.tracks.get(track_id)
        if publication is None:
            raise EgressNotFound(f"track {track_id!r} not found in room {room.name!r}")
        if publication.receiver_id is None or publication.codec is None:
            raise EgressStateError(f"track {track_id!r} has no media yet")
        return publication

    def _path(self, template: str, suffix: str, room: Room, publications: list[TrackPublication]) -> str:
        if len(template.encode()) > MAX_FILEPATH:
            raise ValueError(f"filepath exceeds {MAX_FILEPATH} bytes")
        if template.endswith("/"):
            template += "{room_name}-{time}"
        now = time.time()
        fields = {
            "room_name": room.name, "room_id": room.sid,
            "time": time.strftime("%Y-%m-%dT%H%M%S", time.gmtime(now)),
            "utc": time.strftime("%Y%m%d%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}",
        }
        if publications and len({p.participant.identity for p in publications}) == 1:  # not for a room's mix
            first = publications[0]
            fields.update({"publisher_identity": first.participant.identity, "track_id": first.sid,
                           "track_type": models.TrackType.Name(first.info.type),
                           "track_source": models.TrackSource.Name(first.info.source)})
        # Substituted values are names chosen by clients: they may not add directories.
        name = re.sub(r"\{(\w+)\}", lambda m: re.sub(r"[/\\\x00]", "_", fields.get(m[1], m[0])), template)
        base, extension = os.path.splitext(name)
        if extension.lower() in (".ogg", ".webm", ".mp4", ".mkv", ".ivf", ".mp3", ".m4a", ".h264"):
            name = base  # the container follows the codecs: the extension is made to match (as LiveKit does)
        path = os.path.normpath(os.path.join(self.output_dir, name.lstrip("/") + suffix))
        if "\x00" in path or os.path.commonpath([path, self.output_dir]) != self.output_dir:
            raise ValueError("filepath must stay inside the egress output directory")
        if os.path.exists(path):
            raise FileExistsError(f"{os.path.relpath(path, self.output_dir)} exists already")
        return path


def _codec(publication: TrackPublication) -> str:
    assert publication.codec is not None
    name = publication.codec.name.lower()
    if name not in CODECS:
        raise Unsupported(f"passthrough egress records Opus, VP8, VP9 and H.264 tracks, not {publication.codec.name}")
    return name


def _mixable(publication: TrackPublication) -> bool:
    """Whether a track goes into a room's audio mix: published Opus audio."""
    return publication.published and publication.receiver_id is not None and publication.codec is not None \
        and publication.kind == "audio" and publication.codec.name.lower() == "opus"


def _audio_output(file_type: int) -> AudioOutput:
    """The audio-only file for a requested type: Ogg Opus by default (as LiveKit's audio-only default, OGG)."""
    return {proto.EncodedFileType.MP4: MP4_AAC, proto.EncodedFileType.MP3: MP3}.get(file_type, OGG_OPUS)


def _local_only(output: proto.DirectFileOutput | proto.EncodedFileOutput) -> None:
    if output.WhichOneof("output") is not None:
        raise Unsupported("uploads (s3, gcp, azure, aliOSS) are not supported: files stay in egress.output_dir")


def _file_output(request: proto.TrackCompositeEgressRequest | proto.ParticipantEgressRequest
                 ) -> proto.EncodedFileOutput:
    """The one local file output of a composite request; what needs more than a remux is Unsupported."""
    if request.stream_outputs or request.segment_outputs or request.image_outputs or \
            (hasattr(request, "stream") and (request.HasField("stream") or request.HasField("segments"))):
        raise Unsupported("passthrough egress writes files only: stream (RTMP/SRT), segment (HLS) and image outputs"
                          " need a transcoder")
    outputs = list(request.file_outputs)
    if hasattr(request, "file") and request.HasField("file"):
        outputs.append(request.file)
    if len(outputs) != 1:
        raise ValueError("exactly one file output is required")
    _local_only(outputs[0])
    return outputs[0]


def _check_file_type(file_type: int | None, container: Container) -> None:
    wanted = {proto.EncodedFileType.MP4: ".mp4", proto.EncodedFileType.OGG: ".ogg"}.get(file_type or 0)
    if file_type == proto.EncodedFileType.MP3:
        raise Unsupported("MP3 needs a transcoder: passthrough egress writes Opus to .ogg")
    if wanted is not None and wanted != container.extension:
        raise Unsupported(f"passthrough egress writes these codecs to {container.extension}, not {wanted}")


def _distinct_ssrcs(count: int) -> list[int]:
    ssrcs: set[int] = set()
    while len(ssrcs) < count:
        ssrcs.add(secrets.randbits(32) or 1)
    return list(ssrcs)


def _copy(info: proto.EgressInfo) -> proto.EgressInfo:
    out = proto.EgressInfo()
    out.CopyFrom(info)
    return out
