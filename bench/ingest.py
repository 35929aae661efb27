"""The ingest scenario (`bench/run.py --scenario ingest`): what media in and out costs the server, so operators can
size machines. Against a tern started with an RTMP listener and an egress directory, it measures the server's CPU
(its process and its children: the RTMP workers) over a window, idle and then with N streams of each kind:

- WHIP publishers (FFmpeg's WHIP muxer through PyAV, tests/whip_publisher.py: H.264 640x360 30 fps + Opus, forwarded
  unchanged), on WHIP ingresses;
- recorded tracks: a track egress on each of those publishers' audio and video (passthrough to .ogg and .mp4);
- a room's audio mix: one audio-only room composite over the N publishers' audio (decode, mix, encode Opus);
- RTMP publishers (PyAV's FLV over RTMP, tests/rtmp_publisher.py) with H.264 baseline: video passed through, AAC
  transcoded to Opus; and with H.264 High with B-frames: video re-encoded with libx264 too.

Each kind's cost is (CPU load with N streams − idle load) / N, in cores (1.0 = one core busy); the figures also give
the ratios between kinds. The publishers run on the clients' CPUs; the server and its workers on the server's."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from livekit import api
from livekit.protocol import egress as egress_proto

TESTS = Path(__file__).resolve().parent.parent / "tests"  # the third-party publishers the test suite uses too
ROOM = "ingest-bench"
SETTLE = 1.0       # s after streams are up before a window (keyframes, the workers' probing)
UP_TIMEOUT = 30.0  # s for N publishers to reach PUBLISHING (each RTMP worker probes for ~2.5 s)
Status = api.IngressState.Status


def process_tree_cpu(pid: int, cpu_seconds: Callable[[int], float]) -> dict[int, float]:
    """CPU seconds of the process and each of its live descendants, by pid."""
    seen: dict[int, float] = {}
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            seen[current] = cpu_seconds(current)
            tasks = Path(f"/proc/{current}/task")
            for task in tasks.iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
    return seen


async def load(pid: int, window: float, cpu_seconds: Callable[[int], float]) -> tuple[float, float]:
    """(the server process's, its descendants') CPU seconds per wall second over `window`, counting descendants
    alive at both ends."""
    before, started = process_tree_cpu(pid, cpu_seconds), time.monotonic()
    await asyncio.sleep(window)
    after, elapsed = process_tree_cpu(pid, cpu_seconds), time.monotonic() - started
    children = sum(after[p] - before[p] for p in after if p in before and p != pid)
    return (after[pid] - before[pid]) / elapsed, children / elapsed


@contextmanager
def publishers(commands: list[list[str]], cpus: list[int]) -> Iterator[list[subprocess.Popen]]:
    """Publisher processes pinned to the clients' CPUs; each stops (closing its stream) when its stdin closes."""
    processes = [subprocess.Popen(["taskset", "-c", ",".join(map(str, cpus)), sys.executable, *command],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  cwd=TESTS, text=True) for command in commands]
    try:
        yield processes
    finally:
        for process in processes:
            process.stdin.close()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def ingresses(lkapi: api.LiveKitAPI, kind: int, count: int, name: str) -> list[api.IngressInfo]:
    return [await lkapi.ingress.create_ingress(api.CreateIngressRequest(
        input_type=kind, name=name, room_name=ROOM, participant_identity=f"{name}-{index}"))
        for index in range(count)]


async def publishing(lkapi: api.LiveKitAPI, infos: list[api.IngressInfo], processes: list[subprocess.Popen]
                     ) -> list[api.IngressInfo]:
    """The ingresses once all are PUBLISHING with their tracks (raises if a publisher process died)."""
    ids = {info.ingress_id for info in infos}
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a publisher exited: {process.stderr.read()[-2000:]}")
        listed = [i for i in (await lkapi.ingress.list_ingress(api.ListIngressRequest(room_name=ROOM))).items
                  if i.ingress_id in ids]
        if all(i.state.status == Status.ENDPOINT_PUBLISHING and len(i.state.tracks) == 2 for i in listed):
            return listed
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{len(infos)} publishers did not all reach PUBLISHING in {UP_TIMEOUT:g} s")


async def egresses_active(lkapi: api.LiveKitAPI, ids: list[str]) -> None:
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        items = (await lkapi.egress.list_egress(api.ListEgressRequest(room_name=ROOM, active=True))).items
        if sum(1 for i in items if i.egress_id in ids and i.status == egress_proto.EgressStatus.EGRESS_ACTIVE) \
                == len(ids):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{len(ids)} egresses did not all become active in {UP_TIMEOUT:g} s")


async def measure_ingest(http: str, api_key: str, api_secret: str, pid: int, streams: int, window: float,
                         client_cpus: list[int], cpu_seconds: Callable[[int], float]) -> dict:
    """The scenario against a running server; the figures for the JSON."""
    lkapi = api.LiveKitAPI(http, api_key, api_secret)
    loads: dict[str, tuple[float, float]] = {}

    async def measured(name: str) -> None:
        await asyncio.sleep(SETTLE)
        loads[name] = await load(pid, window, cpu_seconds)
        print(f"  {name:<22} server {loads[name][0]:.3f} cores, workers {loads[name][1]:.3f} cores", flush=True)

    try:
        await measured("idle")
        whip = await ingresses(lkapi, api.IngressInput.WHIP_INPUT, streams, "whip")
        with publishers([["whip_publisher.py", f"{i.url}/{i.stream_key}", "-"] for i in whip], client_cpus) as up:
            live = await publishing(lkapi, whip, up)
            await measured("whip")
            tracks = [track.sid for info in live for track in info.state.tracks]
            recordings = [(await lkapi.egress.start_track_egress(api.TrackEgressRequest(
                room_name=ROOM, track_id=sid, file=egress_proto.DirectFileOutput(filepath=f"bench/{sid}")))).egress_id
                for sid in tracks]
            await egresses_active(lkapi, recordings)
            await measured("whip+recorded")
            for egress_id in recordings:
                await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=egress_id))
            mix = (await lkapi.egress.start_room_composite_egress(api.RoomCompositeEgressRequest(
                room_name=ROOM, audio_only=True,
                file_outputs=[egress_proto.EncodedFileOutput(filepath="bench/mix")]))).egress_id
            await egresses_active(lkapi, [mix])
            await measured("whip+mix")
            await lkapi.egress.stop_egress(api.StopEgressRequest(egress_id=mix))
        for mode in ("passthrough", "transcode"):
            rtmp = await ingresses(lkapi, api.IngressInput.RTMP_INPUT, streams, f"rtmp-{mode}")
            arguments = ["bframes"] if mode == "transcode" else []
            with publishers([["rtmp_publisher.py", f"{i.url}/{i.stream_key}", *arguments] for i in rtmp],
                            client_cpus) as up:
                await publishing(lkapi, rtmp, up)
                await measured(f"rtmp-{mode}")
    finally:
        await lkapi.aclose()
    return figures(loads, streams, len(tracks))


def figures(loads: dict[str, tuple[float, float]], streams: int, recorded_tracks: int) -> dict:
    """Cost per stream of each kind, in cores, and the ratios between kinds."""
    idle = sum(loads["idle"])

    def total(name: str) -> float:
        return sum(loads[name])

    whip = (total("whip") - idle) / streams
    recorded = (total("whip+recorded") - total("whip")) / recorded_tracks
    mixed = (total("whip+mix") - total("whip")) / streams
    rtmp = {mode: (total(f"rtmp-{mode}") - idle) / streams for mode in ("passthrough", "transcode")}
    workers = {mode: loads[f"rtmp-{mode}"][1] / streams for mode in ("passthrough", "transcode")}

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {
        "streams": streams,
        "idle_cores": idle,
        "cores_per_whip_publisher": whip,
        "cores_per_recorded_track": recorded,
        "cores_per_mixed_audio_track": mixed,
        "cores_per_rtmp_publisher_passthrough": rtmp["passthrough"],
        "cores_per_rtmp_publisher_transcode": rtmp["transcode"],
        "rtmp_worker_cores_passthrough": workers["passthrough"],
        "rtmp_worker_cores_transcode": workers["transcode"],
        "ratio_rtmp_passthrough_to_whip": ratio(rtmp["passthrough"], whip),
        "ratio_rtmp_transcode_to_passthrough": ratio(rtmp["transcode"], rtmp["passthrough"]),
        "ratio_recorded_track_to_whip_publisher": ratio(recorded, whip),
        "loads": {name: {"server": server, "workers": children} for name, (server, children) in loads.items()},
    }


def print_figures(result: dict) -> None:
    n = result["streams"]
    print(f"\ningest ({n} stream{'s' if n > 1 else ''} per kind; cores = CPU s per s, 1.0 = one core busy)")
    for key, label in (("cores_per_whip_publisher", "per WHIP publisher (passthrough)"),
                       ("cores_per_recorded_track", "per recorded track (egress)"),
                       ("cores_per_mixed_audio_track", "per track in a room audio mix"),
                       ("cores_per_rtmp_publisher_passthrough", "per RTMP publisher (AAC->Opus)"),
                       ("cores_per_rtmp_publisher_transcode", "per RTMP publisher (+ H.264 re-encode)")):
        print(f"  {label:<40} {result[key]:.3f} cores")
    for key in ("ratio_rtmp_passthrough_to_whip", "ratio_rtmp_transcode_to_passthrough",
                "ratio_recorded_track_to_whip_publisher"):
        value = result[key]
        print(f"  {key:<40} {'unavailable' if value is None else f'{value:.2f}'}")
