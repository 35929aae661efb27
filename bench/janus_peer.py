"""Janus (Debian's `janus` package, 1.1.x) as a peer in the benchmark: the same fanout load through its streaming
plugin, watched by the same load clients.

- JanusServer: `janus` started in the foreground with a config generated into a temporary directory (its own HTTP
  port, only the streaming plugin and the HTTP transport loaded, ICE-lite, no session timeout, `event_loops` = the
  cores it is pinned to), pinned with taskset like tern. Its RTP mountpoint MOUNTPOINT_ID takes SRTP
  (AES_CM_128_HMAC_SHA1_80, key FEED_KEY) on a video and an audio port, as tern takes a publisher's.
- JanusViewers: viewers joining through Janus's HTTP API (create a session, attach janus.plugin.streaming, `watch`,
  take Janus's offer, answer with the load client's subscriber SDP, `start`), then ICE (the client nominates; Janus
  is lite), DTLS (the client is active) and SRTP as against tern (signaling/clients/loadtest.MediaPath), media checked
  by loadgen's LoadReceiver; feed() sends the publisher's RTP to the mountpoint from loadgen's LoadSender.

Janus's host candidate is the machine's own address, not 127.0.0.1 (libnice gathers no loopback candidates); the
datagrams still never leave the host. `bench/run.py` installs nothing: without `janus` it says what to install.
"""
from __future__ import annotations

import asyncio
import base64
import glob
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
from pylibsrtp import Policy, Session

from signaling.clients import loadgen, loadtest
from signaling.peer import sdp
from signaling.peer.dtls import Certificate, session_pointer

INSTALL_HINT = "apt-get install -y janus"  # Debian/Ubuntu: Janus 1.1.x with the streaming plugin and HTTP transport
PLUGIN, TRANSPORT = "libjanus_streaming.so", "libjanus_http.so"
# Where distributions and `make install` put Janus's plugin folders (.../plugins/libjanus_streaming.so).
LIBRARY_GLOBS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus", "/opt/janus/lib/janus")
MOUNTPOINT_ID = 1
FEED_KEY = bytes(range(30))  # the mountpoint's SRTP master key (16) + salt (14), fixed like the baselines' keys
START_TIMEOUT = 15.0         # seconds for janus to answer HTTP
OFFER_TIMEOUT = 15.0         # seconds from `watch` to Janus's offer (long polls)
LOG_LEVEL = 4                # Janus's info level: a few lines per handle at join, nothing per packet


def library_dir() -> Path | None:
    """The folder holding Janus's plugins/ and transports/ with the two modules we load, or None."""
    for pattern in LIBRARY_GLOBS:
        for folder in sorted(glob.glob(pattern)):
            path = Path(folder)
            if (path / "plugins" / PLUGIN).exists() and (path / "transports" / TRANSPORT).exists():
                return path
    return None


def missing() -> str | None:
    """Why Janus cannot run here (with what to install), or None."""
    if shutil.which("janus") is None:
        return f"janus is not installed ({INSTALL_HINT})"
    if library_dir() is None:
        return f"janus's {PLUGIN} or {TRANSPORT} not found under {', '.join(LIBRARY_GLOBS)} ({INSTALL_HINT})"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, library: Path, http_port: int, video_port: int, audio_port: int,
                 event_loops: int) -> Path:
    """Janus's configuration in `folder` (its configs folder); returns janus.jcfg. Only the streaming plugin and the
    HTTP transport are linked into the plugin and transport folders Janus scans."""
    for kind, module in (("plugins", PLUGIN), ("transports", TRANSPORT)):
        (folder / kind).mkdir()
        (folder / kind / module).symlink_to(library / kind / module)
    for kind in ("events", "loggers"):
        (folder / kind).mkdir()
    (folder / "janus.jcfg").write_text(f"""general: {{
  configs_folder = "{folder}"
  plugins_folder = "{folder / 'plugins'}"
  transports_folder = "{folder / 'transports'}"
  events_folder = "{folder / 'events'}"
  loggers_folder = "{folder / 'loggers'}"
  debug_level = {LOG_LEVEL}
  session_timeout = 0
  event_loops = {event_loops}
}}
media: {{
  no_media_timer = 0
}}
nat: {{
  ice_lite = true
  ignore_mdns = true
}}
""")
    (folder / "janus.transport.http.jcfg").write_text(f"""general: {{
  json = "compact"
  base_path = "/janus"
  http = true
  port = {http_port}
  ip = "127.0.0.1"
  https = false
}}
admin: {{
  admin_http = false
  admin_https = false
}}
""")
    # Payload types and codecs of loadtest's publishers (VP8 96, Opus 111); the SSRC is whatever arrives.
    (folder / "janus.plugin.streaming.jcfg").write_text(f"""general: {{
  events = false
}}
bench: {{
  type = "rtp"
  id = {MOUNTPOINT_ID}
  description = "tern bench feed"
  srtpsuite = 80
  srtpcrypto = "{base64.b64encode(FEED_KEY).decode()}"
  media = (
    {{ type = "video", mid = "v", label = "video", port = {video_port}, pt = {loadtest.VP8_PT}, codec = "vp8" }},
    {{ type = "audio", mid = "a", label = "audio", port = {audio_port}, pt = {loadtest.OPUS_PT}, codec = "opus" }}
  )
}}
""")
    return folder / "janus.jcfg"


class JanusServer:
    """A Janus process on its own ports, pinned to `cpus`; stop() ends it and removes its config."""

    def __init__(self, log: Path, cpus: list[int]) -> None:
        library = library_dir()
        if shutil.which("janus") is None or library is None:
            raise RuntimeError(missing())
        self.folder = Path(tempfile.mkdtemp(prefix="tern-bench-janus-"))
        self.http_port = free_port()
        self.video_port, self.audio_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
        config = write_config(self.folder, library, self.http_port, self.video_port, self.audio_port, len(cpus))
        self.log = open(log, "w")
        self.process = subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, cpus)), "janus", "--config", str(config),
             "--configs-folder", str(self.folder), "--disable-colors"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"janus exited with {self.process.returncode}; see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"janus did not start; see {log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/janus"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class JanusError(loadtest.LoadError):
    """Janus refused a request, or did not offer in time."""


class JanusApi:
    """Janus's HTTP API (the Janus protocol's JSON over REST): one session and handle per viewer."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url

    async def request(self, path: str, body: dict) -> dict:
        body = {**body, "transaction": secrets.token_hex(6)}
        async with self.http.post(f"{self.url}{path}", json=body) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"janus {body['janus']}: {reply['error'].get('reason')}")
        return reply

    async def session(self) -> int:
        return (await self.request("", {"janus": "create"}))["data"]["id"]

    async def attach(self, session: int, plugin: str) -> int:
        return (await self.request(f"/{session}", {"janus": "attach", "plugin": plugin}))["data"]["id"]

    async def message(self, session: int, handle: int, body: dict, jsep: dict | None = None) -> dict:
        return await self.request(f"/{session}/{handle}", {"janus": "message", "body": body,
                                                             **({"jsep": jsep} if jsep else {})})

    async def offer(self, session: int, handle: int) -> str:
        """The SDP offer of `handle`'s next event that carries one (long polls)."""
        deadline = time.monotonic() + OFFER_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            async with self.http.get(f"{self.url}/{session}?maxev=1",
                                     timeout=aiohttp.ClientTimeout(total=left)) as response:
                event = await response.json(content_type=None)
            data = (event.get("plugindata") or {}).get("data") or {}
            if "error" in data:
                raise JanusError(f"janus streaming: {data['error']}")
            if event.get("sender") == handle and (event.get("jsep") or {}).get("type") == "offer":
                return event["jsep"]["sdp"]
        raise JanusError("janus sent no offer")


class JanusViewers:
    """Viewers of MOUNTPOINT_ID, and the publisher's feed; what they receive is in `load_receiver`."""

    def __init__(self, server: JanusServer, capacity: int = 8192, concurrency: int = 32) -> None:
        self.server = server
        self.certificate = Certificate.generate()
        self.load_sender = loadgen.LoadSender(4)
        self.load_receiver = loadgen.LoadReceiver(capacity)
        self.paths: list[loadtest.MediaPath] = []
        self.viewers = 0  # viewers whose media path reached load_receiver (its socket indices 0..viewers-1)
        self.failed: list[str] = []
        self._feed: list[tuple[socket.socket, Session]] = []
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))
        self._api = JanusApi(self._http, server.url)
        self._gate = asyncio.Semaphore(concurrency)
        self.load_receiver.start()

    def feed(self, plan: loadtest.MediaPlan) -> None:
        """Starts the publisher's media (as loadtest's publisher sends it, without header extensions) to the
        mountpoint's ports."""
        for video, port in ((True, self.server.video_port), (False, self.server.audio_port)):
            if not (plan.video if video else plan.audio):
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(("127.0.0.1", port))
            session = Session(Policy(key=FEED_KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                     srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
            self._feed.append((sock, session))
            ssrc = secrets.randbits(32) or 1
            if video:
                self.load_sender.add_stream(sock.fileno(), session_pointer(session), ssrc, loadtest.VP8_PT, True,
                                            packets_per_frame=loadtest.VIDEO_PACKETS_PER_FRAME,
                                            frames_per_second=loadtest.VIDEO_FPS,
                                            payload_size=loadtest.VIDEO_PAYLOAD, clock_rate=90000,
                                            keyframe_frames=loadtest.KEYFRAME_FRAMES)
            else:
                self.load_sender.add_stream(sock.fileno(), session_pointer(session), ssrc, loadtest.OPUS_PT, False,
                                            packets_per_frame=1, frames_per_second=loadtest.AUDIO_PPS,
                                            payload_size=loadtest.AUDIO_PAYLOAD, clock_rate=48000)
        self.load_sender.start()

    async def add(self, count: int) -> None:
        """Joins `count` viewers, `concurrency` at a time; failures are recorded, not raised."""
        async def one() -> None:
            async with self._gate:
                try:
                    await self._watch()
                except (loadtest.LoadError, aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as error:
                    self.failed.append(f"viewer: {error or type(error).__name__}")
        await asyncio.gather(*(one() for _ in range(count)))

    async def _watch(self) -> None:
        api = self._api
        session = await api.session()
        handle = await api.attach(session, "janus.plugin.streaming")
        await api.message(session, handle, {"request": "watch", "id": MOUNTPOINT_ID})
        try:
            offer = sdp.parse(await api.offer(session, handle))
        except sdp.SdpError as error:
            raise JanusError(f"unusable janus offer: {error}") from None
        path = loadtest.MediaPath(self.certificate)
        self.paths.append(path)  # closed in close(), connected or not
        answer = loadtest.build_subscriber_answer(offer, path)
        await api.message(session, handle, {"request": "start"}, {"type": "answer", "sdp": answer})
        await path.connect(offer, [])
        # Janus's streaming offer names transport-cc in rtcp-fb but no transport-wide extension: no feedback to send.
        path.hand_over(self.load_receiver)
        self.viewers += 1

    def received(self) -> int:
        """How many viewers have received a packet."""
        return sum(1 for index in range(self.viewers) if self.load_receiver.socket_stats(index)["first_media_ns"])

    async def wait_for_media(self, timeout: float) -> None:
        """Until every connected viewer has received a packet, or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.received() < self.viewers:
            await asyncio.sleep(0.1)

    def errors(self) -> list[str]:
        return list(self.failed)

    async def close(self) -> None:
        self.load_sender.stop()
        self.load_receiver.stop()
        await self._http.close()
        for path in self.paths:
            path.close()
        for sock, _ in self._feed:
            sock.close()
