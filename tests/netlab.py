"""A network lab for tests: a network namespace joined to the host by a veth pair, bandwidth shaped with `tc … tbf`
(changeable mid-test), and LiveKit SDK clients run inside the namespace (`ip netns exec`) that report what they
decoded as JSON. Also a 1280x720 video with real detail, so encoders spend the bitrate a camera would.

Only names and addresses this module makes itself are touched, and everything it makes is removed again, also when
a test fails. Where namespaces are unavailable (not root, no `ip`, no `tbf`), `lab_unavailable()` says why."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from livekit import rtc

from media import CARD_COLOURS, card_quadrants

HERE = Path(__file__).resolve().parent
# A /30 per lab from 10.213.0.0/16 (private, unlikely to collide with the machine's own networks), chosen at random.
SUBNET_PREFIX = "10.213"
# tbf burst and queue: a burst of 16 kB lets a 1200-byte RTP packet through without rounding losses at low rates;
# 200 ms of queue at the shaped rate is what a home router's buffer holds (beyond it, packets are dropped).
TBF_BURST_BYTES = 16_000
TBF_LATENCY_MS = 200
# A client subprocess that has not reported within its run time plus this is killed.
CLIENT_GRACE_S = 30

WIDTH, HEIGHT = 1280, 720
# The detailed video: random 16x16-pixel blocks panning 4 pixels a frame. Every block differs (the encoder spends
# the bitrate of a camera's detail: ~3 Mbit/s at 720p), yet the motion is a camera pan that motion search finds, so
# the SDK's one encoder thread keeps all three layers at full rate on a 2-core machine (8-pixel blocks panning 8
# pixels left the 720p layer at 1-3 fps and the publisher's estimate ramping for 20 s).
BLOCK = 16
PAN_PX = 4
# DetailedVideo's `card` picture: the texture's contrast around each quadrant's colour (half: the card's colours lie
# 25-30 from 0 or 255).
CARD_TEXTURE = 0.5


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=20)


@functools.cache
def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the network lab needs `{tool}` (iproute2)"
    try:
        with NetLab() as probe:
            probe.shape(1000)
    except (subprocess.CalledProcessError, OSError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        return f"network namespaces, veth or tbf unavailable: {detail.strip()}"
    return None


class NetLab:
    """One namespace behind one veth pair: the host side `host_ip`, the namespace side `ns_ip`.
    `shape(kbit)` limits what the host sends toward the namespace (and with `uplink=True` also the reverse),
    `unshape()` lifts it. Use as a context manager: everything is removed on exit."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.namespace = f"tern-lab-{tag}"
        self.host_if, self.ns_if = f"tl{tag}h", f"tl{tag}n"  # interface names are at most 15 bytes
        block = int(tag[:4], 16) % 16384  # one of 16384 /30s in the /16
        base = f"{SUBNET_PREFIX}.{block >> 6}.{(block & 63) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self.host_ip, self.ns_ip = f"{prefix}.{last + 1}", f"{prefix}.{last + 2}"
        self._made = False

    def __enter__(self) -> NetLab:
        try:
            _run("ip", "netns", "add", self.namespace)
            self._made = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.namespace)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            self.ns("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            self.ns("ip", "link", "set", self.ns_if, "up")
            self.ns("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Removes the veth pair (both ends go with either) and the namespace; safe to call twice."""
        _run("ip", "link", "del", self.host_if, check=False)
        if self._made:
            _run("ip", "netns", "del", self.namespace, check=False)
            self._made = False

    def ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs a command inside the namespace."""
        return _run("ip", "netns", "exec", self.namespace, *args, check=check)

    def shape(self, kbit: int, uplink: bool = False) -> None:
        """Limits host -> namespace to `kbit` kbit/s (a token bucket, excess queued then dropped); with `uplink`,
        namespace -> host as well."""
        tbf = ["tbf", "rate", f"{kbit}kbit", "burst", str(TBF_BURST_BYTES), "latency", f"{TBF_LATENCY_MS}ms"]
        _run("tc", "qdisc", "replace", "dev", self.host_if, "root", *tbf)
        if uplink:
            self.ns("tc", "qdisc", "replace", "dev", self.ns_if, "root", *tbf)

    def block_udp(self) -> None:
        """A corporate firewall: UDP from the namespace (except on loopback) is unreachable; TCP still goes."""
        self.ns("ip", "rule", "add", "ipproto", "udp", "table", "100")
        self.ns("ip", "route", "add", "unreachable", "default", "table", "100")

    def block_tcp(self, port: int) -> None:
        """The firewall also refuses TCP from the namespace to `port` (a non-web port such as ICE-TCP's)."""
        self.ns("ip", "rule", "add", "ipproto", "tcp", "dport", str(port), "table", "100")
        self.ns("ip", "route", "replace", "unreachable", "default", "table", "100")

    def unshape(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.host_if, "root", check=False)
        self.ns("tc", "qdisc", "del", "dev", self.ns_if, "root", check=False)

    def set_link(self, up: bool) -> None:
        """Brings the namespace's end of the link down (everything to and from it is lost) or up again."""
        self.ns("ip", "link", "set", self.ns_if, "up" if up else "down")

    def drop_tcp(self, port: int, server_side: bool = False) -> None:
        """Aborts the namespace's TCP connections to `port` on the host (the kernel destroys the sockets and resets
        the connections), as a network change does to a client's connections; with `server_side`, the host's end of
        them instead (the server loses the connection; while the link is down, the client does not hear of it)."""
        if server_side:
            _run("ss", "-K", "dst", self.ns_ip, "sport", "=", f":{port}")
        else:
            self.ns("ss", "-K", "dport", "=", f":{port}")

    def qdisc_drops(self) -> int:
        """Packets the shaper dropped toward the namespace (the bottleneck's loss)."""
        out = _run("tc", "-s", "qdisc", "show", "dev", self.host_if).stdout
        for line in out.splitlines():
            if "dropped" in line:
                return int(line.split("dropped", 1)[1].split(",")[0].strip())
        return 0

    async def run_client(self, *args: str, timeout: float, script: str = "lab_client.py",
                         inside: bool = True) -> dict:
        """Runs tests/`script` (the lab's subscriber unless told) with `args` inside the namespace (or, `inside=False`,
        on the host beside the server: an unconstrained client); returns the JSON it printed last."""
        where = ("ip", "netns", "exec", self.namespace) if inside else ()
        process = await asyncio.create_subprocess_exec(
            *where, sys.executable, str(HERE / script), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])})
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout + CLIENT_GRACE_S)
        except BaseException:
            process.kill()
            await process.wait()
            raise
        lines = [line for line in stdout.decode().splitlines() if line.startswith("{")]
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"lab client failed ({process.returncode}):\n{stderr.decode()[-3000:]}")
        return json.loads(lines[-1])


def card_bands(picture: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Per quadrant of the test card (tests/media.py CARD_COLOURS, in its order): its rows and columns, and the rows
    of `picture` (the texture) at CARD_TEXTURE of their contrast around the quadrant's colour, full width (the pan
    moves the texture across the quadrant's edge, not the colour). Clipping at 0 and 255 moves a quadrant's mean
    by less than 10, well within matches_card's tolerance."""
    bands = []
    for colour, (rows, cols) in zip(CARD_COLOURS, card_quadrants(WIDTH, HEIGHT)):
        band = picture[rows].copy()
        band[..., :3] = np.clip(colour + (picture[rows, :, :3].astype(np.int16) - 128) * CARD_TEXTURE, 0, 255)
        bands.append(((rows, cols), band))
    return bands


class DetailedVideo:
    """A 1280x720 camera publisher whose picture is random texture panning sideways (BLOCK, PAN_PX): every frame
    differs and has detail everywhere, so the encoder spends its full bitrate on each layer. VP8 simulcast unless
    told a `codec` (rtc.VideoCodec) and its `scalability_mode` (an SVC codec's layers in one stream, e.g. VP9
    "L3T3_KEY"). With `card`, the texture varies around the test card's colours (tests/media.py), each quadrant
    around its own, so what a subscriber decodes can be checked with `matches_card`."""

    def __init__(self, room: rtc.Room, fps: int = 30, codec: rtc.VideoCodec | None = None,
                 scalability_mode: str | None = None, card: bool = False) -> None:
        self.room = room
        self.fps = fps
        self.codec, self.scalability_mode, self.card = codec, scalability_mode, card
        self.source = rtc.VideoSource(WIDTH, HEIGHT)
        self.track = rtc.LocalVideoTrack.create_video_track("camera", self.source)
        self.publication: rtc.LocalTrackPublication | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> rtc.LocalTrackPublication:
        self._task = asyncio.create_task(self._frames())
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=True)
        if self.codec is not None:
            options.video_codec = self.codec
        if self.scalability_mode is not None:
            options.scalability_mode = self.scalability_mode
        self.publication = await self.room.local_participant.publish_track(self.track, options)
        return self.publication

    async def _frames(self) -> None:
        texture = np.random.default_rng(7).integers(0, 256, (HEIGHT // BLOCK, WIDTH // BLOCK, 4), dtype=np.uint8)
        texture[..., 3] = 255
        picture = np.repeat(np.repeat(texture, BLOCK, axis=0), BLOCK, axis=1)
        bands = card_bands(picture) if self.card else None
        step = 0
        while True:
            if bands is None:
                frame = np.roll(picture, step * PAN_PX, axis=1)
            else:
                frame = np.empty_like(picture)
                for (rows, cols), band in bands:  # each quadrant: its own colour's texture, panned alike
                    frame[rows, cols] = np.roll(band, step * PAN_PX, axis=1)[:, cols]
            self.source.capture_frame(rtc.VideoFrame(WIDTH, HEIGHT, rtc.VideoBufferType.RGBA, frame.tobytes()))
            step += 1
            await asyncio.sleep(1 / self.fps)

    async def steady(self, timeout: float = 20.0) -> float:
        """Waits (at most `timeout` s) until the top layer is encoded at >= 2/3 of the frame rate: the publisher's own
        start (its send-side estimate ramping, its encoder warming up) is over. Returns the seconds it took."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        previous = None
        while loop.time() - start < timeout:
            await asyncio.sleep(1)
            frames = max((s.outbound_rtp.outbound.frames_encoded for s in await self.track.get_stats()
                          if s.HasField("outbound_rtp") and s.outbound_rtp.outbound.frame_width == WIDTH), default=0)
            if previous is not None and frames - previous >= self.fps * 2 / 3:
                break
            previous = frames
        return loop.time() - start

    async def layer_bytes(self) -> dict[str, int]:
        """Bytes sent so far per simulcast rid (the publisher's outbound-rtp stats)."""
        return {s.outbound_rtp.outbound.rid: s.outbound_rtp.sent.bytes_sent for s in await self.track.get_stats()
                if s.HasField("outbound_rtp")}

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
