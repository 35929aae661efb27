"""Benchmark harness: tern's forwarding measured with real clients, side by side with a C ceiling and a
pure-Python forwarder on the same load.

    python bench/run.py                      # standard suite (a few minutes on 2 cores)
    python bench/run.py --quick              # about a minute
    python bench/run.py --scenario fanout --subscribers 1000 --json out.json
    python bench/run.py --quick --transport tcp turn turn-tls  # the fanout also over ICE-TCP and TURN, beside UDP
    python bench/run.py --quick --scenario fanout --server-cores 1 2  # the fanout with the server on 1, then 2 CPUs
    python bench/run.py --scenario ingest    # CPU per WHIP / RTMP publisher, per recorded track (bench/ingest.py)
    python bench/run.py --scenario svc       # VP9 SVC fanout beside VP8 simulcast, subscribers spread over layers

Everything runs on this host. The tern server (`python -m signaling --dev`) is pinned with taskset to the first N
usable CPUs (--server-cores N, default 1; with several N the fanout runs once per N, and tern gets `rtc.workers: N`
when it has worker threads), the load clients (this process: signaling in asyncio, media in
signaling/clients/loadgen.pyx's C threads) to the CPUs left (--client-cores M: the last M), or to all of them when the
server takes every one: the output then says the clients share the server's cores (bench/cores.py).
The clients join through /rtc with tokens and complete ICE, DTLS and SRTP like a browser
(signaling/clients/loadtest.py). The baselines (bench/forwarders.py: c-ceiling, pure-python) get the same media in
raw mode: fixed keys, no signaling. Janus (Debian's `janus` 1.1.x, if installed; otherwise the row is skipped with
what to apt-get) gets the same publisher's media on a streaming mountpoint and the same load clients as viewers
through its HTTP API, pinned to the same CPUs as tern (bench/janus_peer.py). Each forwarder's fanout is swept until
a step is not carried (loss, or under KEEP_UP of the offered packets delivered: queueing); the `capacity` figures give
each one's zero-loss size and subscribers per busy core, `scaling` tern's and Janus's per server core count, `janus`
tern ÷ Janus at the same sizes.

Which tern is measured: this checkout when its Cython modules are built in place (`pip install -e .` or
`python setup.py build_ext --inplace`), otherwise the tern installed in this Python (`pip install .`).

Scenarios: fanout (1 video publisher, 150 pps, to N subscribers, N swept until a step is not carried, with
transport-cc negotiated both ways as libwebrtc does, subscribers sending feedback every ~100 ms; then alternated
rounds at COMPARE_SUBSCRIBERS (bench/rounds.py: tern, tern without transport-cc, rows "tern-no-twcc", and the
c-ceiling, each turn on a fresh process, tern's two turns adjacent, in alternating order; ratio_c_ceiling is the
median of the rounds' ratios, printed with each round's, and so is twcc_cost, 1 - tern / tern-no-twcc; then turns:
tern with and without transport-cc both up, each with its own load clients, their publishers taking turns so that one
forwards at a time: twcc_cost_turns is the mean of the medians of the cycles where tern went first and those where it
went second, twcc_turns); with --transport tcp once more at the sizes the sweep carried with every load client on
ICE-TCP (RFC 4571 frames on a TCP connection to the server's passive candidate, as a client behind a UDP-blocking
firewall connects), rows "tern-tcp"; with --transport turn with every load client relayed through the server's
embedded TURN over UDP (ChannelData; turn.enabled), rows "tern-turn"; with --transport turn-tls relayed through its
TURN/TLS port, rows "tern-turn-tls": loadgen cannot speak TLS, so each client's datagrams are pumped through an
asyncio TLS connection in this process, which costs the clients' CPU, not the measured server's), meeting (P
participants each publishing audio + video, all subscribed to all), audio (many rooms of 4 talkers), hostile (the
fanout at about half its zero-loss size, measured without and then with a flood of 20,000 datagrams/s of junk STUN,
DTLS and RTP from other addresses, junk DTLS from live subscribers' own sockets and Binding requests to their ufrags,
sent by a second process on the clients' CPU), svc (a room of SVC_SUBSCRIBERS viewers of one camera spread over its
layers as in SVC_SPREAD, a quarter asking for low quality, a quarter medium, half high; first with the camera
published as VP8 simulcast, then, on a fresh server, as VP9 L3T3_KEY SVC as Chromium sends it (loadtest.SVC_PACKETS):
forwarded packets per CPU-second of each and ratio_svc_vp8; the layers each viewer got are counted, from the VP9
payload descriptor, or from its packet rate for simulcast, and printed), ingest (only when asked for: CPU per WHIP
publisher, per RTMP publisher with and without a video re-encode, per recorded track and per track in a room's audio
mix; bench/ingest.py). Server CPU is its process's CPU-time clock (every thread's, in ns) over each measurement window.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_PACKAGES = ("engine", "signaling")  # where setup.py finds the .pyx sources
BUILD_IN_PLACE = "`pip install -e .` or `python setup.py build_ext --inplace`"


def checkout_is_built() -> bool:
    """Whether this checkout's Cython modules are compiled next to their sources, so it can be imported.

    A plain `pip install .` (the README's quick start) builds into site-packages and leaves the checkout without
    extensions: importing it would fail on the first engine module, so then the installed tern is used. A checkout
    built only in part is stale, and measuring the installed copy instead would mislead: stop and say so."""
    sources = [path for package in EXTENSION_PACKAGES for path in sorted((ROOT / package).rglob("*.pyx"))]
    missing = [path for path in sources
               if not any(path.with_name(path.stem + suffix).exists() for suffix in EXTENSION_SUFFIXES)]
    if missing and len(missing) < len(sources):
        sys.exit(f"bench: this checkout is partly built ({', '.join(str(p.relative_to(ROOT)) for p in missing)} not "
                 f"compiled); in {ROOT} run {BUILD_IN_PLACE}")
    return not missing


USE_CHECKOUT = checkout_is_built()
if USE_CHECKOUT:
    sys.path.insert(0, str(ROOT))  # before any installed tern, which may be an older copy

try:  # pylibsrtp too: it comes with tern
    from pylibsrtp import Policy, Session

    from livekit.protocol import models, rtc as lk_rtc

    from signaling.auth import create_token
    from signaling.clients import loadgen, loadtest
    from signaling.config import RtcConfig
    from signaling.peer.dtls import session_pointer

    import cores  # bench/, beside this script
    import ingest
    import janus_peer
    import redis_server
    import rounds
    from websockets.asyncio.client import connect as ws_connect
except ModuleNotFoundError as exc:
    sys.exit(f"bench: cannot import tern ({exc}). Install it into this Python ({sys.executable}) from {ROOT} with "
             f"`pip install .` (the README's quick start), or build the checkout in place: {BUILD_IN_PLACE}")

API_KEY, API_SECRET = "devkey", "secret"
RAW_KEY = bytes(range(28))  # the baselines' fixed AEAD_AES_128_GCM master key + salt (bench/forwarders.py)
BASELINES = ("c-ceiling", "pure-python")
COMPARE_SUBSCRIBERS = 500   # the fanout size at which tern and the baselines are compared: forwarding, not the
                            # control plane's fixed cost (pings, timers of 500 participants), dominates there
NO_TWCC = "tern-no-twcc"    # the forwarder name of fanout rows measured without transport-cc
ROUNDS = "rounds"           # the scenario of the alternated rounds' rows (compare_rounds)
JANUS = "janus"             # the forwarder name of fanout rows through Janus's streaming plugin (bench/janus_peer.py)
OFFERED_PPS = loadtest.VIDEO_FPS * loadtest.VIDEO_PACKETS_PER_FRAME  # the fanout publisher's packets per second
KEEP_UP = 0.98              # the share of the offered packets (subscribers x OFFERED_PPS) a fanout step must deliver
                            # in its window to count as carried: below it the forwarder is queueing, its latency
                            # growing without bound, before it drops anything
# --transport: the forwarder names of fanout rows whose load clients use ICE-TCP, or relay through TURN/UDP or TURN/TLS
OVER = {"tcp": "tern-tcp", "turn": "tern-turn", "turn-tls": "tern-turn-tls"}
# svc: the viewers' qualities (UpdateTrackSettings), in shares of the room: thumbnails, a medium tile, the speaker big
SVC_SPREAD = ((models.VideoQuality.LOW, 1), (models.VideoQuality.MEDIUM, 1), (models.VideoQuality.HIGH, 2))
SVC_SUBSCRIBERS = (500, 200)  # the svc room's viewers (standard, --quick): sizes where forwarding, not each
                              # viewer's fixed control-plane cost, dominates the server's CPU
SVC_SETTLE = 2.0            # seconds after the last viewer's first packet before measuring: each reaches its layer
                            # (an up-switch waits for a keyframe: the load publisher sends one every 2 s)
COMPARE_WINDOWS = 3         # windows a sweep measures at COMPARE_SUBSCRIBERS, the median kept (tcp_cost, turn_cost)
COMPARE_ROUNDS = (4, 2)     # alternated rounds of tern, tern-no-twcc and the c-ceiling at COMPARE_SUBSCRIBERS
                            # (standard, --quick; bench/rounds.py): ratio_c_ceiling is their median.
                            # A window of one server varies ±4 % (5 s), but fresh servers and the machine's drift
                            # over minutes vary more: rounds, not longer windows, make the median steady
TURNS = "turns"             # the scenario of the turns' rows (twcc_turns)
TURN_PAIRS = (3, 1)         # pairs of servers (standard, --quick) measuring transport-cc's cost by turns, ...
TURN_CYCLES = 4             # ... each over this many cycles of a turn of each (a fresh pair of processes reads a
                            # few % apart from another: several pairs, not more cycles, steady the median), ...
TURN_SETTLE_S = 2.5         # ... each turn's window after this long forwarding again
QUIET = 0.08                # a window is disturbed when others' work or the hypervisor took more of a CPU than this
                            # (others_load reads ±0.04 on an idle machine: /proc/stat counts in ticks)
RETRIES = 2                 # a disturbed turn of the rounds is measured again, at most this many times (printed)
TWCC_COST_TARGET = 0.10     # issue 11: transport-cc may cost at most this share of forwarded packets per CPU-second
C_CEILING_TARGET = 0.7      # ratio_c_ceiling at least
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    forwarder: str
    scenario: str
    clients: str                # what was connected, e.g. "1 pub -> 500 sub"
    pps: float                  # forwarded packets per second, as received by the clients
    mbps: float
    cpu_ns_per_packet: float    # server CPU (user + system) per forwarded packet
    packets_per_cpu_second: float
    cpu_load: float             # server CPU seconds per wall second (1.0 = one core busy)
    lost: int
    p50_ms: float | None
    p99_ms: float | None
    rss_kib: int | None
    server_cores: int = 1       # CPUs the server process was pinned to (--server-cores)
    others_load: float | None = None  # CPU seconds per wall second the machine spent on other work than the server
                                      # and the load clients: others' tests, and ksoftirqd, which past ~1,000
                                      # subscribers delivers our own loopback traffic too
    steal_load: float | None = None   # CPU seconds per wall second the hypervisor gave to other guests


# ---- measuring a process ----------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, all its threads (exited ones included): its CPU-time clock, whose id is what
    clock_getcpuclockid(3) returns on Linux. The scheduler's runtime in ns, where /proc's utime and stime count 10 ms
    ticks: a light server's one-second window (the svc test's 8 viewers) can take less than one. ProcessLookupError
    once the process is gone."""
    try:
        return time.clock_gettime((~pid << 3) | 2)  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError as error:
        raise ProcessLookupError(pid) from error


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot: busy is user, nice, system, irq and softirq time
    of every CPU; stolen the time the hypervisor ran something else while a CPU wanted to run."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLOCK_TICKS, f[7] / CLOCK_TICKS


def others(before: tuple[float, float, float], measured_cpu: float, elapsed: float) -> tuple[float, float]:
    """(others_load, steal_load) since `before` (machine_cpu() and this process's CPU then): the machine's busy time
    less `measured_cpu` (the forwarder's) and this process's (the load clients'), and the time stolen, per second."""
    busy, stolen = machine_cpu()
    own = cpu_seconds(os.getpid())
    return (busy - before[0] - measured_cpu - (own - before[2])) / elapsed, (stolen - before[1]) / elapsed


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def has_workers() -> bool:
    """Whether the tern under test forwards on worker threads (config rtc.workers; an older tern refuses the key)."""
    return "workers" in {f.name for f in dataclasses.fields(RtcConfig)}


def server_config(turn: str, workers: int | None, extra: dict | None = None) -> str:
    """The server's --config-body (JSON is YAML): the embedded TURN server on one port alone (`turn` "udp" or
    "tls"), `workers` forwarding threads, and `extra` sections; "" when none."""
    body: dict = dict(extra or {})
    if turn:
        body["turn"] = {"enabled": True, "udp_port": free_port(socket.SOCK_DGRAM) if turn == "udp" else 0,
                        "tls_port": free_port() if turn == "tls" else 0}
    if workers is not None:
        body["rtc"] = {"workers": workers}
    return json.dumps(body) if body else ""


class TernServer:
    def __init__(self, log: Path, cpus: list[int], turn: str = "", config: dict | None = None) -> None:
        """Pinned to `cpus`, with as many forwarding workers when this tern has them; `turn`: "" (no TURN), "udp"
        or "tls": the embedded TURN server on that port alone; `config`: more config sections."""
        # --log-level: --dev alone logs at debug (websockets logs every signal frame, ~400 a second at 500
        # subscribers), which a config body's `logging.level` does not override.
        # The server must run the same tern as these clients. -P keeps `python -m` from putting its working
        # directory (the checkout) first on sys.path; the checkout is on PYTHONPATH only when it is what we measure.
        env = dict(os.environ)
        if USE_CHECKOUT:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.http_port = free_port()
        self.udp_port = udp_port = free_port(socket.SOCK_DGRAM)
        self.tcp_port = free_port()  # ICE-TCP: a free one, not 7881, which another tern may hold
        self.log = open(log, "w")
        body = server_config(turn, len(cpus) if has_workers() else None, config)
        self.process = subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-P", "-m", "signaling", "--dev", "--port",
             str(self.http_port), "--udp-port", str(udp_port), "--tcp-port", str(self.tcp_port),
             "--log-level", "warn"] + (["--config-body", body] if body else []),
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tern exited with {self.process.returncode}; see {log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tern did not start; see {log}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def measure(name: str, scenario: str, receiver: loadgen.LoadReceiver, pid: int | list[int], window: float,
                  label: str, server_cores: int) -> Row:
    """One window of steady load: what the clients received and what the server (its processes: `pid`) spent."""
    pids = [pid] if isinstance(pid, int) else pid
    before, latency_before = receiver.totals(), receiver.latency_snapshot()
    cpu_before = sum(map(cpu_seconds, pids))
    machine_before = (*machine_cpu(), cpu_seconds(os.getpid()))
    started = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - started
    after, latency_after, cpu_after = receiver.totals(), receiver.latency_snapshot(), sum(map(cpu_seconds, pids))
    packets, size = after["packets"] - before["packets"], after["bytes"] - before["bytes"]
    cpu = cpu_after - cpu_before
    p50, p99 = loadgen.latency_percentiles(latency_before, latency_after, [50, 99])
    return Row(name, scenario, label, packets / elapsed, size * 8 / elapsed / 1e6,
               cpu * 1e9 / packets if packets else 0.0, packets / cpu if cpu else 0.0, cpu / elapsed,
               after["lost"] - before["lost"], p50, p99, sum(map(rss_kib, pids)), server_cores,
               *others(machine_before, cpu, elapsed))


# ---- scenarios against tern ---------------------------------------------------------------------------------------

async def fanout(steps: list[int], window: float, log: Path, rows: list[Row], cpus: list[int],
                 transport_cc: bool = True, transport: str = "udp", scenario: str = "fanout",
                 windows: int = COMPARE_WINDOWS, retries: int = 0) -> dict:
    """The fanout sweep with the server on `cpus`; without `transport_cc` the clients leave it out of their SDP (the
    server neither stamps nor estimates) and the rows are named NO_TWCC; with `transport` "tcp", "turn" or
    "turn-tls" they connect over ICE-TCP or through the server's TURN relay over UDP or TLS (then enabled), rows
    OVER[transport]. Rows of `scenario`, `windows` measured at COMPARE_SUBSCRIBERS, `retries` (see measure_step)."""
    server = TernServer(log, cpus, turn={"turn": "udp", "turn-tls": "tls"}.get(transport, ""))
    clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET, transport_cc=transport_cc, transport=transport)
    name = NO_TWCC if not transport_cc else OVER.get(transport, "tern")
    summary: dict = {"max_zero_loss_subscribers": 0}
    try:
        await clients.add("fanout", 1, publish=loadtest.MediaPlan(video=True, audio=False), subscribe=False)
        base_rss = rss_kib(server.process.pid)
        subscribers: list = []
        for n in steps:
            subscribers += await clients.add("fanout", n - len(subscribers), hidden=True, concurrency=32)
            await clients.wait_for_media(subscribers, 15)
            await asyncio.sleep(1)  # let joins settle
            row = await measure_step(name, clients.load_receiver, server.process.pid, window, n, len(cpus),
                                     scenario, windows, retries)
            rows.append(row)
            print(_format(row), flush=True)
            if not carried(row) or clients.errors():
                break
            summary["max_zero_loss_subscribers"] = n
            summary["rss_per_subscriber_kib"] = (row.rss_kib - base_rss) / n
        joins = clients.join_ms()
        summary["join_ms"] = statistics.median(joins) if joins else None
        summary["errors"] = clients.errors()[:10]
    finally:
        await clients.close()
        server.stop()
    return summary


async def measure_step(name: str, receiver: loadgen.LoadReceiver, pid: int, window: float, subscribers: int,
                       server_cores: int, scenario: str = "fanout", windows: int = COMPARE_WINDOWS,
                       retries: int = 0) -> Row:
    """A fanout step's row: the median of `windows` windows at COMPARE_SUBSCRIBERS, else one window; each measured
    again while disturbed (see disturbed), up to `retries` times."""
    measured = []
    for _ in range(windows if subscribers == COMPARE_SUBSCRIBERS else 1):
        for attempt in range(1 + retries):
            row = await measure(name, scenario, receiver, pid, window, f"1 pub -> {subscribers} sub", server_cores)
            if not disturbed(row) or attempt == retries:
                break
            print(_format(row) + "  disturbed: measured again", flush=True)
        measured.append(row)
    return sorted(measured, key=lambda r: r.packets_per_cpu_second)[len(measured) // 2]


def disturbed(row: Row) -> bool:
    """Whether the rest of the machine (others' work, the hypervisor) took more than QUIET of a CPU in the window."""
    return (row.others_load or 0.0) > QUIET or (row.steal_load or 0.0) > QUIET


async def janus_fanout(steps: list[int], window: float, log: Path, rows: list[Row], cpus: list[int]) -> dict:
    """The fanout sweep through Janus's streaming plugin on `cpus` (bench/janus_peer.py): the publisher's video to
    its mountpoint, the same load clients as viewers; rows JANUS."""
    server = janus_peer.JanusServer(log, cpus)
    viewers = janus_peer.JanusViewers(server)
    summary: dict = {"max_zero_loss_subscribers": 0}
    try:
        viewers.feed(loadtest.MediaPlan(video=True, audio=False))
        asked = 0
        for n in steps:
            await viewers.add(n - asked)
            asked = n
            await viewers.wait_for_media(15)
            await asyncio.sleep(1)
            row = await measure_step(JANUS, viewers.load_receiver, server.process.pid, window, n, len(cpus))
            rows.append(row)
            print(_format(row), flush=True)
            if not carried(row) or viewers.errors():
                break
            summary["max_zero_loss_subscribers"] = n
        summary["errors"] = viewers.errors()[:10]
    finally:
        await viewers.close()
        server.stop()
    return summary


COMPARED = ("tern", NO_TWCC, "c-ceiling")  # the forwarders of a round, in its first turn order (rounds.paired_order)


def compare_rounds(count: int, subscribers: int, window: float, logs: Path, rows: list[Row],
                   cpus: list[int]) -> list[dict[str, float]]:
    """`count` alternated rounds at `subscribers` (bench/rounds.py): in each, tern, tern without transport-cc and
    the c-ceiling take a turn of one `window` on a fresh process (rounds.paired_order). Per round, each forwarder's
    packets per CPU-second, or 0 for a turn that did not carry its load (loss, queueing, a client's error) or was
    still disturbed after RETRIES more windows (bench/rounds.py leaves its round out)."""
    out = []
    for index in range(count):
        figures = {}
        for name in rounds.paired_order(COMPARED[:2], COMPARED[2], index):
            if name == "c-ceiling":
                row = baseline_fanout(name, subscribers, window, cpus, RETRIES, ROUNDS)
                if row is None:
                    print(f"{name:<13} rounds   unavailable (bench/forwarders.py missing or failed)")
                    continue
                rows.append(row)
                print(_format(row), flush=True)
                figures[name] = row.packets_per_cpu_second if carried(row) and not disturbed(row) else 0.0
            else:
                turn = asyncio.run(fanout([subscribers], window, logs / f"tern-bench-rounds-{name}.log", rows, cpus,
                                          transport_cc=name == "tern", scenario=ROUNDS, windows=1, retries=RETRIES))
                clean = (turn["max_zero_loss_subscribers"] == subscribers and not turn["errors"]
                         and not disturbed(rows[-1]))
                figures[name] = rows[-1].packets_per_cpu_second if clean else 0.0
        out.append(figures)
    return out


async def twcc_turns(subscribers: int, window: float, logs: Path, rows: list[Row],
                     cpus: list[int]) -> list[tuple[str, float | None]]:
    """transport-cc's cost by turns: tern with transport-cc and tern without are both up on `cpus`, each with its own
    publisher and `subscribers`, and their publishers take turns, so one server forwards at a time, measured alone,
    and turns of the two are seconds apart: whatever the host does to our CPUs over minutes (turns minutes apart
    differed by 20 % and more) weighs on both alike, and neither server's working set competes with the other's for
    the cache. Per cycle (TURN_CYCLES, the order rotating) 1 - tern / tern-no-twcc, None when either turn did not
    carry its load or the rest of the machine disturbed it; returned with the name of the cycle's first turn."""
    label = f"1 pub -> {subscribers} sub"
    servers: dict[str, TernServer] = {}
    clients: dict[str, loadtest.LoadClients] = {}
    try:
        for name in ("tern", NO_TWCC):
            servers[name] = TernServer(logs / f"tern-bench-turns-{name}.log", cpus)
            clients[name] = loadtest.LoadClients(servers[name].url, API_KEY, API_SECRET, transport_cc=name == "tern")
            await clients[name].add("fanout", 1, publish=loadtest.MediaPlan(video=True, audio=False), subscribe=False)
            joined = await clients[name].add("fanout", subscribers, hidden=True, concurrency=32)
            await clients[name].wait_for_media(joined, 15)
            clients[name].load_sender.stop()
        costs: list[tuple[str, float | None]] = []
        for cycle in range(TURN_CYCLES):
            order = rounds.turn_order(("tern", NO_TWCC), cycle)
            turn: dict[str, Row] = {}
            for name in order:
                idle = servers[NO_TWCC if name == "tern" else "tern"].process.pid
                clients[name].load_sender.start()  # resumes its pace from now (no burst of the frames it missed)
                await asyncio.sleep(TURN_SETTLE_S)
                idle_before = cpu_seconds(idle)
                row = await measure(name, TURNS, clients[name].load_receiver, servers[name].process.pid, window, label,
                                    len(cpus))
                clients[name].load_sender.stop()
                # the idle server's timers (consent, RTCP, the allocator) are not other work
                turn[name] = dataclasses.replace(row, others_load=row.others_load - (cpu_seconds(idle) - idle_before)
                                                 / window)
                rows.append(turn[name])
                print(_format(turn[name]), flush=True)
            counted = all(carried(row) and not disturbed(row) for row in turn.values()) and not any(
                c.errors() for c in clients.values())
            costs.append((order[0], 1 - turn["tern"].packets_per_cpu_second / turn[NO_TWCC].packets_per_cpu_second
                          if counted else None))
        return costs
    finally:
        for c in clients.values():
            await c.close()
        for server in servers.values():
            server.stop()


def turns_figures(costs: list[tuple[str, float | None]], pairs: int, label: str, window: float) -> dict:
    """twcc_cost_turns from the turns' cycles (bench/rounds.py both_orders), with its spread and each cycle's cost."""
    cost = rounds.both_orders(costs)
    return {"turns": {"compared_at": label, "pairs": pairs, "cycles": costs, "window_s": window, "twcc_cost": cost},
            "twcc_cost_turns": cost["median"] if cost else None,
            "twcc_cost_turns_range": [cost["min"], cost["max"]] if cost else None,
            "twcc_cost_turns_interval": cost["interval"] if cost else None}


def print_turns(figures: dict) -> None:
    t, cost = figures["turns"], figures["turns"]["twcc_cost"]
    counted = sum(c is not None for _, c in t["cycles"])
    print(f"\nturns at {t['compared_at']}: {t['pairs']} pairs of tern and {NO_TWCC} both up, their publishers taking "
          f"turns of {TURN_SETTLE_S:g} s to settle and a {t['window_s']:g} s window, {len(t['cycles'])} cycles "
          f"({counted} counted: both carried, undisturbed)")
    if cost is None:
        return
    cycles = ", ".join("-" if c is None else f"{c:.3f}" for _, c in t["cycles"])
    orders = ", ".join(f"{first} first {median:.3f}" for first, median in cost["by_first"].items())
    print(f"{'twcc_cost_turns':<28} {cost['median']:.3f} (the mean of each order's median: {orders}; cycles {cycles}; "
          f"target <= {TWCC_COST_TARGET}: {rounds.verdict(cost, TWCC_COST_TARGET, True, 'cycles')})")


def rounds_figures(measured: list[dict[str, float]], label: str, window: float) -> dict:
    """The tracked comparisons from the rounds (bench/rounds.py): medians as the figures, spreads beside them."""
    compared = rounds.compare(measured, "tern", NO_TWCC, "c-ceiling")
    each = compared["pkt_per_cpu_s"]
    out = {"rounds": {"compared_at": label, "rounds": len(measured), "window_s": window, **compared},
           "twcc_compared_at": label,
           "pps_per_core_twcc": each["tern"]["median"] if each else None,
           "pps_per_core_no_twcc": each[NO_TWCC]["median"] if each else None}
    for key in ("twcc_cost", "ratio_c_ceiling", "ratio_c_ceiling_no_twcc"):
        out[key] = compared[key]["median"] if compared[key] else None
        out[f"{key}_range"] = [compared[key]["min"], compared[key]["max"]] if compared[key] else None
        out[f"{key}_interval"] = compared[key]["interval"] if compared[key] else None
    return out


def print_rounds(figures: dict) -> None:
    r = figures["rounds"]
    print(f"\nrounds at {r['compared_at']}: {r['rounds']} alternated rounds of tern, {NO_TWCC} and c-ceiling, one "
          f"{r['window_s']:g} s window each on a fresh process ({r['rounds_whole']} whole: every turn carried, none "
          f"disturbed by other work)")
    if not r["pkt_per_cpu_s"]:
        return
    print(f"{'forwarder':<13} {'median pkt/CPU-s':>16} {'min':>10} {'max':>10}")
    for name, s in r["pkt_per_cpu_s"].items():
        print(f"{name:<13} {s['median']:>16,.0f} {s['min']:>10,.0f} {s['max']:>10,.0f}")
    for key, target, at_most in (("twcc_cost", TWCC_COST_TARGET, True), ("ratio_c_ceiling", C_CEILING_TARGET, False),
                                 ("ratio_c_ceiling_no_twcc", None, False)):
        s = r[key]
        goal = (f"; target {'<=' if at_most else '>='} {target}: {rounds.verdict(s, target, at_most)}"
                if target else "")
        print(f"{key:<28} {s['median']:.3f} (rounds {', '.join(f'{v:.3f}' for v in s['each'])}{goal})")


async def meeting(participants: int, window: float, log: Path, rows: list[Row], cpus: list[int]) -> None:
    await _rooms("meeting", 1, participants, loadtest.MediaPlan(video=True, audio=True), window, log, rows, cpus)


async def audio_rooms(rooms: int, window: float, log: Path, rows: list[Row], cpus: list[int]) -> None:
    await _rooms("audio", rooms, 4, loadtest.MediaPlan(video=False, audio=True), window, log, rows, cpus)


async def _rooms(scenario: str, rooms: int, size: int, plan: loadtest.MediaPlan, window: float, log: Path,
                 rows: list[Row], cpus: list[int]) -> None:
    """`rooms` rooms of `size` participants, each publishing `plan` and subscribed to the others."""
    server = TernServer(log, cpus)
    clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET)
    try:
        joined = [p for r in range(rooms)
                  for p in await clients.add(f"{scenario}-{r}", size, publish=plan, subscribe=True)]
        await clients.wait_for_media(joined, 15)
        await asyncio.sleep(2)
        row = await measure("tern", scenario, clients.load_receiver, server.process.pid, window,
                            f"{rooms} room(s) x {size} pub+sub", len(cpus))
        rows.append(row)
        print(_format(row), flush=True)
    finally:
        await clients.close()
        server.stop()


async def cluster(rooms: int, size: int, window: float, logs: Path, rows: list[Row], cpus: list[int]) -> dict:
    """The same rooms (1 video publisher + `size` subscribers each) on one node, then on two nodes sharing a private
    redis-server, both on `cpus`. In the cluster each room's publisher joins through the first node (placing the room
    by load) and its subscribers through the node that does not host it, so every subscriber's signal goes through
    the relay. Server CPU is the nodes' and Redis's. Ratios are cluster ÷ single node."""
    figures: dict = {}
    single = TernServer(logs / "tern-bench-cluster-single.log", cpus)
    try:
        figures["single"] = await _cluster_load("1 node", rooms, size, window, {"": single}, None, rows, cpus)
    finally:
        single.stop()
    store = redis_server.RedisServer(Path(tempfile.mkdtemp(prefix="tern-bench-redis-")), free_port())
    store.start()
    nodes: list[TernServer] = []
    try:
        ids = []
        for i in range(2):  # one at a time, so each node's id is the registration that appears
            nodes.append(TernServer(logs / f"tern-bench-cluster-node{i}.log", cpus,
                                     config={"redis": {"address": store.address}}))
            ids.append(await _registered(store, ids))
        figures["cluster"] = await _cluster_load("2 nodes", rooms, size, window, dict(zip(ids, nodes)), store, rows,
                                                 cpus)
    finally:
        for node in nodes:
            node.stop()
        store.stop()
        shutil.rmtree(store.directory, ignore_errors=True)
    one, two = figures["single"], figures["cluster"]
    figures["join_ratio"] = _quotient(two["join_ms"], one["join_ms"])
    figures["relay_rtt_ratio"] = _quotient(two["signal_rtt_relayed_ms"], two["signal_rtt_ms"])
    figures["relay_rtt_added_ms"] = two["signal_rtt_relayed_ms"] - two["signal_rtt_ms"]
    figures["packets_per_cpu_second_ratio"] = _quotient(two["packets_per_cpu_second"], one["packets_per_cpu_second"])
    return {"cluster": figures}


async def _registered(store: redis_server.RedisServer, known: list[str]) -> str:
    """The id of the node that registers with `store` besides `known`."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ids = {key.decode().removeprefix("tern:node:") for key in store.client().keys("tern:node:*")} - set(known)
        if ids:
            return ids.pop()
        await asyncio.sleep(0.1)
    raise RuntimeError("a cluster node did not register with Redis")


async def _cluster_load(label: str, rooms: int, size: int, window: float, nodes: dict[str, TernServer],
                        store: redis_server.RedisServer | None, rows: list[Row], cpus: list[int]) -> dict:
    """The rooms' load on `nodes` (by id; one node without `store`): its row and figures."""
    first = next(iter(nodes.values()))
    clients = loadtest.LoadClients(first.url, API_KEY, API_SECRET)
    try:
        subscribers, hosts = [], {}
        for r in range(rooms):
            room = f"cluster-{r}"
            clients.url = first.url
            await clients.add(room, 1, publish=loadtest.MediaPlan(video=True, audio=False), subscribe=False)
            if store is not None:  # the subscribers go through the node that does not host the room
                hosts[room] = (store.client().hget("tern:room_node", room) or b"").decode()
                clients.url = next(node.url for node_id, node in nodes.items() if node_id != hosts[room])
            subscribers += await clients.add(room, size, hidden=True, concurrency=16)
        await clients.wait_for_media(subscribers, 20)
        await asyncio.sleep(1)
        processes = {f"node {node_id}" if node_id else "node": node.process.pid for node_id, node in nodes.items()}
        if store is not None:
            processes["redis"] = store.process.pid
        pids = list(processes.values())
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        started = time.monotonic()
        row = await measure("tern", "cluster", clients.load_receiver, pids, window,
                            f"{label}: {rooms} x (1 pub -> {size} sub)", len(cpus))
        rows.append(row)
        print(_format(row), flush=True)
        elapsed = time.monotonic() - started
        joins = clients.join_ms()
        owner = nodes[hosts["cluster-0"]] if store is not None else first
        result = {
            "join_ms": statistics.median(joins) if joins else None,
            "packets_per_cpu_second": row.packets_per_cpu_second, "lost": row.lost, "errors": clients.errors()[:10],
            "cpu_load_by_process": {name: round((cpu_seconds(pid) - cpu_before[name]) / elapsed, 3)
                                    for name, pid in processes.items()},
            "signal_rtt_ms": await signal_rtt(owner.url, "cluster-0"),
        }
        if store is not None:
            result["rooms_per_node"] = sorted(Counter(hosts.values()).values())
            other = next(node for node in nodes.values() if node is not owner)
            result["signal_rtt_relayed_ms"] = await signal_rtt(other.url, "cluster-0")
        return result
    finally:
        await clients.close()


async def signal_rtt(url: str, room: str, pings: int = 200) -> float:
    """The median signal round trip (ping_req -> pong_resp) of a hidden participant joining `room` through `url`."""
    token = create_token(API_KEY, API_SECRET, "rtt-probe", room, can_publish=False, can_subscribe=False,
                                  hidden=True)
    async with ws_connect(f"{url}/rtc?protocol=16&auto_subscribe=0", max_size=None,
                          additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        samples = []
        for i in range(pings):
            started = time.perf_counter()
            await ws.send(lk_rtc.SignalRequest(ping_req=lk_rtc.Ping(timestamp=i)).SerializeToString())
            while lk_rtc.SignalResponse.FromString(await ws.recv()).WhichOneof("message") != "pong_resp":
                pass
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _quotient(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# The hostile scenario's flood: a tight sender in its own process (on the clients' CPU, inherited), at a fixed rate.
# Per 10 datagrams: 5 of junk from FLOOD_SOURCES unbound ports (cycling through a 2 KB cookie-valid Binding request
# with 500 attributes, a bare 20-byte STUN header, a Binding request to an unknown ufrag, a DTLS record and an RTP-
# looking datagram, and three of random bytes); 3 DTLS records of junk sent from FLOOD_PARTICIPANTS live subscribers'
# own sockets (their bound addresses: each within its 1,000/s DTLS bucket, together past the engine-wide event
# budget); 2 Binding requests to those participants' ufrags from the unbound ports (MESSAGE-INTEGRITY that cannot
# verify: 100/s each reach Python).
FLOOD_RATE = 20_000
FLOOD_SOURCES = 16
FLOOD_PARTICIPANTS = 8
FLOODER = r"""
import os, socket, struct, sys, time
port, rate, seconds, sources = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ufrags, fds = sys.argv[5].split(","), [int(fd) for fd in sys.argv[6].split(",")]
def stun(body):
    return struct.pack("!HHI", 1, len(body), 0x2112A442) + os.urandom(12) + body
def to_ufrag(ufrag):
    username = (ufrag + ":attacker").encode()
    return stun(struct.pack("!HH", 6, len(username)) + username + bytes(-len(username) % 4)
                + struct.pack("!HH", 8, 20) + os.urandom(20))
username = b"nobodyhere:attacker\x00"
junk = [stun(struct.pack("!HH", 0x25, 0) * 500), stun(b""), stun(struct.pack("!HH", 6, 19) + username),
        b"\x16\xfe\xfd" + os.urandom(97), b"\x80\x60" + os.urandom(998)] + [os.urandom(n) for n in (40, 300, 1200)]
live = [to_ufrag(ufrag) for ufrag in ufrags]
dtls = b"\x17\xfe\xfd" + os.urandom(97)
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sources)]
bound = [socket.socket(fileno=fd) for fd in fds]  # connected to the server
start, sent, total = time.monotonic(), 0, int(rate * seconds)
while sent < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while sent < due:
        kind, n = sent % 10, sent // 10
        try:
            if kind < 5:
                socks[sent % sources].sendto(junk[n % len(junk)], ("127.0.0.1", port))
            elif kind < 8:
                bound[(3 * n + kind) % len(bound)].send(dtls)
            else:
                socks[sent % sources].sendto(live[(2 * n + kind) % len(live)], ("127.0.0.1", port))
        except OSError:
            pass
        sent += 1
    time.sleep(0.001)
print(sent, round(time.monotonic() - start, 3))
"""


async def hostile(subscribers: int, window: float, log: Path, rows: list[Row], cpus: list[int]) -> dict:
    """The fanout load to `subscribers`, measured quiet and then under the flood; the second row's label says so."""
    server = TernServer(log, cpus)
    clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET)
    summary: dict = {}
    try:
        await clients.add("hostile", 1, publish=loadtest.MediaPlan(video=True, audio=False), subscribe=False)
        joined = await clients.add("hostile", subscribers, hidden=True, concurrency=32)
        await clients.wait_for_media(joined, 15)
        await asyncio.sleep(1)
        label = f"1 pub -> {subscribers} sub"
        quiet = await measure("tern", "hostile", clients.load_receiver, server.process.pid, window, label,
                              len(cpus))
        rows.append(quiet)
        print(_format(quiet), flush=True)
        targets = joined[:FLOOD_PARTICIPANTS]
        fds = [p.subscriber_path.sock.fileno() for p in targets]
        flood = subprocess.Popen([sys.executable, "-c", FLOODER, str(server.udp_port), str(FLOOD_RATE),
                                  str(window + 1.0), str(FLOOD_SOURCES),
                                  ",".join(p.subscriber_path._section.ice_ufrag for p in targets),
                                  ",".join(map(str, fds))], stdout=subprocess.PIPE, text=True, pass_fds=fds)
        await asyncio.sleep(0.5)
        flooded = await measure("tern", "hostile", clients.load_receiver, server.process.pid, window,
                                label + " + flood", len(cpus))
        sent, seconds = (await asyncio.to_thread(flood.communicate))[0].split()
        rows.append(flooded)
        print(_format(flooded), flush=True)
        summary["hostile"] = {
            "subscribers": subscribers, "flood_datagrams_per_second": int(sent) / float(seconds),
            "pps": [quiet.pps, flooded.pps], "lost": [quiet.lost, flooded.lost], "p99_ms": [quiet.p99_ms, flooded.p99_ms],
            "pps_ratio": flooded.pps / quiet.pps if quiet.pps else None,
            "p99_ratio": flooded.p99_ms / quiet.p99_ms if quiet.p99_ms and flooded.p99_ms else None,
            "errors": clients.errors()[:10],
        }
    finally:
        await clients.close()
        server.stop()
    return summary


async def svc(subscribers: int, window: float, logs: Path, rows: list[Row], cpus: list[int]) -> dict:
    """The svc scenario (see the module's docstring): the same room as VP8 simulcast, then as VP9 SVC."""
    figures: dict = {"subscribers": subscribers}
    for key, plan in (("vp8_simulcast", loadtest.MediaPlan(video=True, simulcast=True)),
                      ("vp9_svc", loadtest.MediaPlan(video=True, codec="vp9"))):
        server = TernServer(logs / f"tern-bench-svc-{key}.log", cpus)
        clients = loadtest.LoadClients(server.url, API_KEY, API_SECRET)
        try:
            await clients.add("svc", 1, publish=plan, subscribe=False)
            shares = sum(share for _, share in SVC_SPREAD)
            groups = {quality: await clients.add("svc", subscribers * share // shares, hidden=True, concurrency=32,
                                                 quality=quality) for quality, share in SVC_SPREAD}
            viewers = [p for group in groups.values() for p in group]
            await clients.wait_for_media(viewers, 15)
            await asyncio.sleep(SVC_SETTLE)
            before = {p.identity: _viewer_stats(clients, p) for p in viewers}
            row = await measure("tern", key.replace("_simulcast", "-sim").replace("_", "-"), clients.load_receiver,
                                server.process.pid, window, f"1 pub -> {len(viewers)} sub", len(cpus))
            rows.append(row)
            print(_format(row), flush=True)
            figures[key] = {"packets_per_cpu_second": row.packets_per_cpu_second, "pps": row.pps, "lost": row.lost,
                            "errors": clients.errors()[:10],
                            "by_quality": {models.VideoQuality.Name(quality): _group_layers(
                                clients, group, before, window, plan.codec == "vp9", quality)
                                for quality, group in groups.items()}}
        finally:
            await clients.close()
            server.stop()
    vp8, vp9 = figures["vp8_simulcast"], figures["vp9_svc"]
    figures["ratio_svc_vp8"] = _quotient(vp9["packets_per_cpu_second"], vp8["packets_per_cpu_second"])
    figures["layers_as_asked"] = all(group["as_asked"] == group["subscribers"] > 0
                                     for side in (vp8, vp9) for group in side["by_quality"].values())
    return {"svc": figures, "ratio_svc_vp8": figures["ratio_svc_vp8"]}


def _viewer_stats(clients: loadtest.LoadClients, viewer: loadtest.LoadParticipant) -> dict:
    if viewer.load_receiver_index is None:
        return {"packets": 0, "layers": {}}
    return clients.load_receiver.socket_stats(viewer.load_receiver_index)


def _group_layers(clients: loadtest.LoadClients, group: list[loadtest.LoadParticipant], before: dict, window: float,
                  svc_stream: bool, quality: int) -> dict:
    """What the viewers that asked for `quality` received over the window: packets a second each (median), the
    VP9 (spatial, temporal) layers they got, and how many got what they asked for: with SVC, exactly the spatial
    layers up to the quality and every temporal layer; with simulcast, the rate of that quality's stream (its packets
    a frame x 30 fps, within 20 %: the layers' rates differ 2 to 5 fold)."""
    rates, layers, as_asked = [], Counter(), 0
    expected_spatial = set(range(quality + 1))
    expected_pps = loadtest.SIMULCAST_LAYERS[quality][2] * loadtest.VIDEO_FPS
    for viewer in group:
        now, then = _viewer_stats(clients, viewer), before[viewer.identity]
        rate = (now["packets"] - then["packets"]) / window
        got = Counter({layer: n - then["layers"].get(layer, 0) for layer, n in now["layers"].items()})
        got = +got  # the layers that arrived in the window
        rates.append(rate)
        layers.update(got)
        if svc_stream:
            as_asked += {sid for sid, _ in got} == expected_spatial and {tid for _, tid in got} == {0, 1, 2}
        else:
            as_asked += abs(rate - expected_pps) <= 0.2 * expected_pps
    return {"subscribers": len(group), "as_asked": as_asked, "pps_each": statistics.median(rates) if rates else 0.0,
            "layers_pps": {f"S{sid}T{tid}": n / window / max(1, len(group)) for (sid, tid), n in sorted(layers.items())}}


def _layer_span(layers: dict[str, float]) -> str:
    """"S0-1 T0-2" for the layers named "S<sid>T<tid>" that arrived."""
    spatial, temporal = ({int(name[i]) for name in layers} for i in (1, 3))
    return f"S{min(spatial)}-{max(spatial)} T{min(temporal)}-{max(temporal)}"


def print_svc(figures: dict) -> None:
    vp8, vp9 = figures["vp8_simulcast"], figures["vp9_svc"]
    shares = sum(share for _, share in SVC_SPREAD)
    spread = ", ".join(f"{share}/{shares} {models.VideoQuality.Name(q).lower()}" for q, share in SVC_SPREAD)
    print(f"\nsvc: one 720p camera to {figures['subscribers']} viewers ({spread}), as VP8 simulcast and as VP9 "
          f"L3T3_KEY SVC")
    print(f"{'stream':<14} {'pkt/CPU-s':>10} {'lost':>5}  per quality: viewers with the layers asked for, pps each")
    for name, side in (("vp8-simulcast", vp8), ("vp9-svc", vp9)):
        groups = "; ".join(f"{quality.lower()} {g['as_asked']}/{g['subscribers']} {g['pps_each']:,.0f}"
                           + (f" ({_layer_span(g['layers_pps'])})" if g["layers_pps"] else "")
                           for quality, g in side["by_quality"].items())
        print(f"{name:<14} {side['packets_per_cpu_second']:>10,.0f} {side['lost']:>5}  {groups}")
    print(f"{'ratio_svc_vp8':<28} {_ratio(figures['ratio_svc_vp8'])} (VP9 SVC / VP8 simulcast pkt/CPU-s; target >= "
          f"0.85); layers as asked: {'all' if figures['layers_as_asked'] else 'NOT ALL'}")


# ---- baselines (raw mode: fixed keys, no signaling) ----------------------------------------------------------------

def raw_session(inbound: bool) -> Session:
    policy = Policy(key=RAW_KEY, ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
                    srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM)
    policy.window_size = 1024
    policy.allow_repeat_tx = True
    return Session(policy)


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, loadtest.SOCKET_BUFFER)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def baseline_sweep(kind: str, steps: list[int], window: float, rows: list[Row], cpus: list[int]) -> None:
    """baseline_fanout at each of `steps` until loss appears."""
    for n in steps:
        row = baseline_fanout(kind, n, window, cpus)
        if row is None:
            print(f"{kind:<13} fanout   unavailable (bench/forwarders.py missing or failed)")
            return
        rows.append(row)
        print(_format(row), flush=True)
        if not carried(row):
            return


def baseline_fanout(kind: str, subscribers: int, window: float, cpus: list[int], retries: int = 0,
                    scenario: str = "fanout") -> Row | None:
    """The fanout load (one 150 pps video publisher) through bench/forwarders.py KIND on `cpus`, measured again
    while disturbed (see disturbed), up to `retries` times; a row of `scenario`, or None if unavailable."""
    for attempt in range(1 + retries):
        row = _baseline_once(kind, subscribers, window, cpus, scenario)
        if row is None or not disturbed(row) or attempt == retries:
            break
        print(_format(row) + "  disturbed: measured again", flush=True)
    return row


def _baseline_once(kind: str, subscribers: int, window: float, cpus: list[int], scenario: str) -> Row | None:
    script = ROOT / "bench" / "forwarders.py"
    if not script.exists():
        return None
    sinks = [udp_socket() for _ in range(subscribers)]
    port = free_port(socket.SOCK_DGRAM)  # after the sinks: a port free_port released may go to one of them
    child = subprocess.Popen(
        ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, str(script), kind, "--port", str(port),
         "--subscribers", ",".join(str(s.getsockname()[1]) for s in sinks)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if child.stdout.readline().strip() != "ready":
        child.kill()
        return None
    sender = loadgen.LoadSender(4)
    receiver = loadgen.LoadReceiver(subscribers + 1)
    sessions = [raw_session(True) for _ in sinks]
    for sink, session in zip(sinks, sessions):
        sink.connect(("127.0.0.1", port))
        receiver.add_socket(sink.fileno(), session_pointer(session))
    source, tx = udp_socket(), raw_session(False)
    source.connect(("127.0.0.1", port))
    receiver.start()
    sender.add_stream(source.fileno(), session_pointer(tx), 0x1234, loadtest.VP8_PT, True,
                      packets_per_frame=loadtest.VIDEO_PACKETS_PER_FRAME, frames_per_second=loadtest.VIDEO_FPS,
                      payload_size=loadtest.VIDEO_PAYLOAD, clock_rate=90000,
                      keyframe_frames=loadtest.KEYFRAME_FRAMES)
    latency_before = receiver.latency_snapshot()
    machine_before = (*machine_cpu(), cpu_seconds(os.getpid()))
    started = time.monotonic()
    sender.start()
    time.sleep(window)
    sender.stop()
    sending = time.monotonic() - started  # the rates' time base: every packet was sent in it
    time.sleep(0.3)  # the last packets drain
    elapsed = time.monotonic() - started
    out, _ = child.communicate("", timeout=30)
    receiver.stop()
    usage = json.loads(out.strip().splitlines()[-1])
    load = others(machine_before, usage["user"] + usage["system"], time.monotonic() - started)
    totals = receiver.totals()
    p50, p99 = loadgen.latency_percentiles(latency_before, receiver.latency_snapshot(), [50, 99])
    for sock in [source, *sinks]:
        sock.close()
    cpu = usage["user"] + usage["system"]
    packets = totals["packets"]
    lost = subscribers * sender.stats()["packets"] - packets
    return Row(kind, scenario, f"1 pub -> {subscribers} sub", packets / sending, totals["bytes"] * 8 / sending / 1e6,
               cpu * 1e9 / packets if packets else 0.0, packets / cpu if cpu else 0.0, cpu / elapsed, lost, p50, p99,
               usage["maxrss_kib"], len(cpus), *load)


# ---- output ---------------------------------------------------------------------------------------------------------

HEADER = (f"{'forwarder':<13} {'cores':>5} {'scenario':<8} {'clients':<26} {'pps out':>9} {'Mbps':>7} {'ns/pkt':>7} "
          f"{'pkt/CPU-s':>10} {'CPU':>5} {'lost':>6} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'others':>6} "
          f"{'steal':>5}")
CAPACITY_FORWARDERS = ("tern", "c-ceiling", "pure-python", JANUS)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _format(row: Row) -> str:
    ms = _ms
    return (f"{row.forwarder:<13} {row.server_cores:>5} {row.scenario:<8} {row.clients:<26} {row.pps:>9,.0f} "
            f"{row.mbps:>7.1f} {row.cpu_ns_per_packet:>7,.0f} {row.packets_per_cpu_second:>10,.0f} "
            f"{row.cpu_load:>5.0%} {row.lost:>6} {ms(row.p50_ms):>7} {ms(row.p99_ms):>7} "
            f"{(row.rss_kib or 0) / 1024:>8.1f} {_share(row.others_load):>6} {_share(row.steal_load):>5}")


def _share(load: float | None) -> str:
    return "-" if load is None else f"{load:.0%}"


def machine(placements: list[tuple[list[int], list[int]]]) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    before = machine_cpu()
    time.sleep(1)
    busy, stolen = (now - then for now, then in zip(machine_cpu(), before))
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "worker_threads": has_workers(),
            # others' work before the run: CPUs busy and stolen over its last second, and the load averages
            "busy_before": round(busy, 2), "steal_before": round(stolen, 2),
            "load_average_before": [round(v, 2) for v in os.getloadavg()],
            "placements": [{"server_cores": len(server), "server_cpus": server, "client_cpus": client,
                            "shared_cpus": cores.shared(server, client)} for server, client in placements]}


def placement_note(server: list[int], client: list[int]) -> str:
    workers = f", rtc.workers: {len(server)}" if has_workers() else ", one forwarding thread (no rtc.workers)"
    note = f"server on {cores.format_cpus(server)} (taskset{workers}); clients on {cores.format_cpus(client)}"
    shared = cores.shared(server, client)
    if shared:
        note += (f"; the clients share {cores.format_cpus(shared)} with the server: the server's CPU is still its "
                 f"own, but it competes with the load for those cores")
    return note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller suite of about a minute")
    parser.add_argument("--scenario", choices=["fanout", "meeting", "audio", "hostile", "svc", "ingest", "cluster",
                                               "all"],
                        default="all", help="ingest and cluster are run only when asked for (not part of all; cluster "
                        "needs redis-server)")
    parser.add_argument("--streams", type=int, help="ingest: streams of each kind (default 2, --quick 1)")
    parser.add_argument("--window", type=float, help="seconds of each measurement (default 5, --quick 3)")
    parser.add_argument("--rooms", type=int, help="cluster: this many rooms (default 4, --quick 2)")
    parser.add_argument("--room-size", type=int, help="cluster: subscribers per room (default 100, --quick 25)")
    parser.add_argument("--subscribers", type=int, help="fanout: sweep up to this many subscribers; svc: this "
                        f"many viewers (default {SVC_SUBSCRIBERS[0]}, --quick {SVC_SUBSCRIBERS[1]})")
    parser.add_argument("--transport", nargs="+", choices=["udp", *OVER], default=["udp"],
                        help="fanout: also measure load clients over ICE-TCP (tcp) and/or relayed by TURN/UDP (turn) "
                             "or TURN/TLS (turn-tls) beside UDP (rows tern-tcp, tern-turn, tern-turn-tls)")
    parser.add_argument("--server-cores", type=int, nargs="+", default=[1], metavar="N",
                        help="pin the server (tern, Janus, the baselines) to its first N usable CPUs; with several "
                             "N (e.g. 1 2) the fanout runs once per N (rows per N, `scaling` figures) and the other "
                             "scenarios use the first N. tern gets rtc.workers: N when it has worker threads")
    parser.add_argument("--client-cores", type=int, metavar="M",
                        help="pin the load clients to the last M usable CPUs (default: the CPUs the server does not "
                             "get, or all of them when it gets every one)")
    parser.add_argument("--rounds", type=int, help=f"fanout: alternated rounds of tern, {NO_TWCC} and c-ceiling at "
                        f"{COMPARE_SUBSCRIBERS} subscribers, each turn one --window on a fresh process (default "
                        f"{COMPARE_ROUNDS[0]}, --quick {COMPARE_ROUNDS[1]})")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()
    try:
        placements = [cores.choose(n, args.client_cores, sorted(os.sched_getaffinity(0))) for n in args.server_cores]
    except cores.CoreError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # two sockets per client, and the server's

    window = args.window or (3.0 if args.quick else 5.0)
    if args.scenario == "ingest":
        return run_ingest(args.streams or (1 if args.quick else 2), window, placements[0], args.json)
    top = args.subscribers or (500 if args.quick else 2000)
    steps = sorted({n for n in (50, COMPARE_SUBSCRIBERS, 500, 1000, 1500, 2000) if n < top} | {top})
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    print(f"SRTP AEAD_AES_128_GCM (Janus's mountpoint input: AES_CM_128_HMAC_SHA1_80); video 150 pps x ~1,150 B, "
          f"audio 50 pps x ~100 B; {window:.0f} s windows")
    tern = Path(loadtest.__file__).resolve().parents[2]
    print(f"tern under test: {tern} ({'this checkout' if USE_CHECKOUT else 'installed; this checkout is not built'})")
    janus_missing = janus_peer.missing() if args.scenario in ("fanout", "all") else None
    rows: list[Row] = []
    figures: dict = {"machine": machine(placements)}
    before = figures["machine"]
    print(f"before the run: {before['busy_before']:.0%} of a CPU busy and {before['steal_before']:.0%} stolen over "
          f"1 s, load average {before['load_average_before']} on {os.cpu_count()} CPUs (figures taken while other "
          f"work runs are not worth comparing: see each row's `others` and `steal`)")
    for index, (server_cpus, client_cpus) in enumerate(placements):
        first, n_cores = index == 0, len(server_cpus)
        os.sched_setaffinity(0, set(client_cpus))  # the loadgen threads inherit it
        print(f"\n{placement_note(server_cpus, client_cpus)}")
        print(HEADER, flush=True)
        if args.scenario in ("fanout", "all"):
            log = logs / f"tern-bench-fanout-{n_cores}c.log"
            sweep = asyncio.run(fanout(steps, window, log, rows, server_cpus))
            if first:
                figures.update(sweep)
                carried = [n for n in steps if n <= max(figures["max_zero_loss_subscribers"], steps[0])]
                for transport in (t for t in OVER if t in args.transport):
                    over = asyncio.run(fanout(carried, window, logs / f"tern-bench-fanout-{transport}.log", rows,
                                              server_cpus, transport=transport))
                    figures[f"{_key(transport)}_max_zero_loss_subscribers"] = over["max_zero_loss_subscribers"]
                    figures[f"{_key(transport)}_errors"] = over["errors"]
            else:
                figures[f"errors_{n_cores}_cores"] = sweep["errors"]
            for kind in BASELINES:
                baseline_sweep(kind, steps, window, rows, server_cpus)
            if janus_missing:
                print(f"{JANUS:<13} {n_cores:>5} fanout   skipped: {janus_missing}")
            else:
                janus = asyncio.run(janus_fanout(steps, window, logs / f"tern-bench-janus-{n_cores}c.log", rows,
                                                 server_cpus))
                figures[f"janus_errors_{n_cores}_cores"] = janus["errors"]
            if first:
                size = COMPARE_SUBSCRIBERS if COMPARE_SUBSCRIBERS in carried else carried[-1]
                measured = compare_rounds(args.rounds or COMPARE_ROUNDS[args.quick], size, window, logs, rows,
                                          server_cpus)
                figures.update(rounds_figures(measured, f"1 pub -> {size} sub", window))
                costs = [cost for _ in range(TURN_PAIRS[args.quick])
                         for cost in asyncio.run(twcc_turns(size, window, logs, rows, server_cpus))]
                figures.update(turns_figures(costs, TURN_PAIRS[args.quick], f"1 pub -> {size} sub", window))
        if not first:
            continue
        if args.scenario in ("meeting", "all"):
            asyncio.run(meeting(4 if args.quick else 8, window, logs / "tern-bench-meeting.log", rows, server_cpus))
        if args.scenario in ("audio", "all"):
            asyncio.run(audio_rooms(20 if args.quick else 100, window, logs / "tern-bench-audio.log", rows,
                                    server_cpus))
        if args.scenario == "cluster":
            figures.update(asyncio.run(cluster(args.rooms or (2 if args.quick else 4),
                                               args.room_size or (25 if args.quick else 100), window, logs, rows,
                                               server_cpus)))
        if args.scenario in ("svc", "all"):
            figures.update(asyncio.run(svc(args.subscribers or SVC_SUBSCRIBERS[args.quick], window, logs, rows,
                                           server_cpus)))
        if args.scenario in ("hostile", "all"):
            half = max(1, (figures.get("max_zero_loss_subscribers") or top) // 2)
            figures.update(asyncio.run(hostile(half, window, logs / "tern-bench-hostile.log", rows, server_cpus)))

    base = [r for r in rows if r.server_cores == args.server_cores[0]]
    figures.update(summarize(base, figures.get("max_zero_loss_subscribers", 0)))
    figures["capacity"] = capacity(rows, top)
    figures["scaling"] = scaling(rows, placements)
    figures["janus"] = {"skipped": janus_missing} if janus_missing else janus_comparison(
        rows, base, figures.get("pps_per_core_no_twcc"), figures.get("twcc_compared_at"))
    figures["rows"] = [asdict(row) for row in rows]
    print()
    transport_keys = [key for transport in OVER if transport in args.transport for key in
                      (f"pps_per_core_{_key(transport)}", f"{_key(transport)}_cost", f"{_key(transport)}_compared_at")]
    for key in ("pps_per_core", "pps_per_core_twcc", "pps_per_core_no_twcc", "twcc_cost", "twcc_cost_turns",
                "twcc_compared_at",
                "max_zero_loss_subscribers", "p99_added_latency_ms", "rss_per_subscriber_kib", "join_ms",
                "ratio_c_ceiling", "ratio_c_ceiling_no_twcc", *transport_keys):
        value = figures.get(key)
        print(f"{key:<28} {'unavailable' if value is None else round(value, 3) if isinstance(value, float) else value}")
    if "cluster" in figures:
        c = figures["cluster"]
        one, two = c["single"], c["cluster"]
        print(f"{'cluster (1 node -> 2 nodes)':<28} join {_ms(one['join_ms'])} -> {_ms(two['join_ms'])} ms "
              f"(x{_ratio(c['join_ratio'])}); signal round trip {two['signal_rtt_ms']:.2f} ms direct, "
              f"{two['signal_rtt_relayed_ms']:.2f} ms relayed (x{_ratio(c['relay_rtt_ratio'])}); pkt/CPU-s "
              f"{one['packets_per_cpu_second']:,.0f} -> {two['packets_per_cpu_second']:,.0f} "
              f"(x{_ratio(c['packets_per_cpu_second_ratio'])}); rooms per node {two['rooms_per_node']}")
    if "svc" in figures:
        print_svc(figures["svc"])
    if "hostile" in figures:
        h = figures["hostile"]
        print(f"{'hostile (quiet -> flooded)':<28} {h['subscribers']} sub, flood {h['flood_datagrams_per_second']:,.0f}/s: "
              f"pps {h['pps'][0]:,.0f} -> {h['pps'][1]:,.0f}, lost {h['lost'][0]} -> {h['lost'][1]}, "
              f"p99 {_ms(h['p99_ms'][0])} -> {_ms(h['p99_ms'][1])} ms")
    for transport, who in (("tcp", "over ICE-TCP"), ("turn", "relayed by TURN"), ("turn_tls", "by TURN/TLS")):
        if figures.get(f"{transport}_cost") is not None:
            print(f"{'a subscriber ' + who:<28} costs the server {1 / (1 - figures[f'{transport}_cost']):.2f}x the "
                  f"CPU per forwarded packet of one over UDP ({figures[f'{transport}_compared_at']})")
    if "rounds" in figures:
        print_rounds(figures)
    if "turns" in figures:
        print_turns(figures)
    print_capacity(figures["capacity"])
    print_scaling(figures["scaling"])
    print_janus(figures["janus"])
    args.json.write_text(json.dumps(figures, indent=2))
    print(f"figures written to {args.json}")
    return 0


def run_ingest(streams: int, window: float, placement: tuple[list[int], list[int]], out: Path) -> int:
    """The ingest scenario (bench/ingest.py) on its own: its figures are the JSON's `ingest`."""
    server_cpus, client_cpus = placement
    print(placement_note(server_cpus, client_cpus))
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "tern-bench-ingest.log"
    with tempfile.TemporaryDirectory(prefix="tern-bench-egress-") as recordings:
        server = TernServer(log, server_cpus, config={"ingress": {"rtmp_port": free_port()},
                                                      "egress": {"output_dir": recordings}})
        try:
            result = asyncio.run(ingest.measure_ingest(
                f"http://127.0.0.1:{server.http_port}", API_KEY, API_SECRET, server.process.pid, streams, window,
                client_cpus, cpu_seconds))
        finally:
            server.stop()
    ingest.print_figures(result)
    out.write_text(json.dumps({"machine": machine([placement]), "ingest": result}, indent=2))
    print(f"figures written to {out}")
    return 0


def subscribers(row: Row) -> int:
    """N of a fanout row's "1 pub -> N sub"."""
    return int(row.clients.split()[-2])


def carried(row: Row) -> bool:
    """Whether a fanout step was carried: no loss, and at least KEEP_UP of the offered packets delivered."""
    return row.lost == 0 and row.pps >= KEEP_UP * subscribers(row) * OFFERED_PPS


def sweep_rows(rows: list[Row], forwarder: str, server_cores: int) -> list[Row]:
    return [r for r in rows if r.forwarder == forwarder and r.scenario == "fanout" and r.server_cores == server_cores]


def capacity(rows: list[Row], top: int) -> list[dict]:
    """Per forwarder and server core count swept: the largest fanout carried (see carried), and subscribers per busy
    core (that N ÷ the server's CPU load there, in cores: what one fully busy core would carry if the cost per
    subscriber stayed the same). `limit_found` False: the sweep reached `top` carrying every step, N is a lower
    bound."""
    out = []
    counts = sorted({r.server_cores for r in rows})
    for forwarder in CAPACITY_FORWARDERS:
        for n_cores in counts:
            swept = sweep_rows(rows, forwarder, n_cores)
            if not swept:
                continue
            clean = [r for r in swept if carried(r)]
            best = clean[-1] if clean else None
            out.append({"forwarder": forwarder, "server_cores": n_cores,
                        "max_zero_loss_subscribers": subscribers(best) if best else 0,
                        "limit_found": len(clean) < len(swept), "swept_to": top,
                        "cpu_load": best.cpu_load if best else None,
                        "zero_loss_subscribers_per_core": subscribers(best) / best.cpu_load
                        if best and best.cpu_load else None})
    return out


def scaling(rows: list[Row], placements: list[tuple[list[int], list[int]]]) -> list[dict]:
    """tern and Janus per server core count: forwarded packets per CPU-second and p99 at COMPARE_SUBSCRIBERS (or the
    largest fanout carried), zero-loss capacity (see carried), and per-core efficiency against the first count
    (packets per CPU-second at the same fanout)."""
    out = []
    for forwarder in ("tern", JANUS):
        reference: dict[str, float] = {}
        for server, client in placements:
            clean = [r for r in sweep_rows(rows, forwarder, len(server)) if carried(r)]
            if not clean:
                continue
            at = next((r for r in clean if subscribers(r) == COMPARE_SUBSCRIBERS), clean[-1])
            if not reference:
                reference = {r.clients: r.packets_per_cpu_second for r in clean}
            workers = len(server) if forwarder == JANUS or has_workers() else 1  # Janus: event_loops
            out.append({"forwarder": forwarder, "server_cores": len(server), "workers": workers,
                        "clients_share_server_cores": bool(cores.shared(server, client)),
                        "compared_at": at.clients, "packets_per_cpu_second": at.packets_per_cpu_second,
                        "p99_ms": at.p99_ms, "max_zero_loss_subscribers": subscribers(clean[-1]),
                        "zero_loss_subscribers_per_core": subscribers(clean[-1]) / clean[-1].cpu_load
                        if clean[-1].cpu_load else None,
                        "efficiency_vs_first": at.packets_per_cpu_second / reference[at.clients]
                        if reference.get(at.clients) else None})
    return out


def janus_comparison(rows: list[Row], base: list[Row], no_twcc: float | None, no_twcc_at: str | None) -> dict:
    """tern ÷ Janus at every fanout both measured on the same cores (packets per CPU-second, p99), and the headline
    ratios on the first core count: against tern as measured (transport-cc both ways; see compared) and against
    tern without transport-cc (`no_twcc`: the rounds' median at `no_twcc_at`, when Janus carried that fanout
    without loss), like for like with Janus, whose streaming offer has no transport-wide extension (its viewers send
    no feedback)."""
    pairs = []
    for janus in (r for r in rows if r.forwarder == JANUS and r.scenario == "fanout"):
        tern = next((r for r in sweep_rows(rows, "tern", janus.server_cores) if r.clients == janus.clients), None)
        if tern is None:
            continue
        pairs.append({"server_cores": janus.server_cores, "subscribers": subscribers(janus),
                      "tern_packets_per_cpu_second": tern.packets_per_cpu_second,
                      "janus_packets_per_cpu_second": janus.packets_per_cpu_second,
                      "ratio": tern.packets_per_cpu_second / janus.packets_per_cpu_second
                      if janus.packets_per_cpu_second else None,
                      "tern_p99_ms": tern.p99_ms, "janus_p99_ms": janus.p99_ms,
                      "p99_ratio": tern.p99_ms / janus.p99_ms if tern.p99_ms and janus.p99_ms else None,
                      "tern_lost": tern.lost, "janus_lost": janus.lost})
    out: dict = {"compared": pairs}
    pair = compared(base, "tern", JANUS)
    out["ratio_janus"] = pair[1] / pair[2] if pair and pair[2] else None
    out["ratio_janus_compared_at"] = pair[0] if pair else None
    janus = next((r for r in base if r.forwarder == JANUS and r.scenario == "fanout" and r.lost == 0
                  and r.clients == no_twcc_at and r.packets_per_cpu_second), None)
    out["ratio_janus_no_twcc"] = no_twcc / janus.packets_per_cpu_second if janus and no_twcc else None
    out["ratio_janus_no_twcc_compared_at"] = no_twcc_at if out["ratio_janus_no_twcc"] else None
    clean = {name: [r for r in base if r.forwarder == name and r.scenario == "fanout" and carried(r)]
             for name in ("tern", JANUS)}
    tern_max, janus_max = (subscribers(clean[name][-1]) if clean[name] else 0 for name in ("tern", JANUS))
    out["janus_max_zero_loss_subscribers"] = janus_max
    out["ratio_janus_zero_loss"] = tern_max / janus_max if janus_max else None
    return out


def print_capacity(entries: list[dict]) -> None:
    if not entries:
        return
    print(f"\ncapacity: the largest fanout carried (no loss, >= {KEEP_UP:.0%} of the offered packets delivered; >= : "
          f"the sweep's top), and subscribers per busy core (that N / the server's CPU load there)")
    print(f"{'forwarder':<13} {'cores':>5} {'zero-loss N':>12} {'CPU':>6} {'per core':>9}")
    for e in entries:
        bound = "" if e["limit_found"] else ">="
        per_core = e["zero_loss_subscribers_per_core"]
        print(f"{e['forwarder']:<13} {e['server_cores']:>5} {bound + format(e['max_zero_loss_subscribers'], ','):>12} "
              f"{format(e['cpu_load'], '.0%') if e['cpu_load'] is not None else '-':>6} "
              f"{format(per_core, ',.0f') if per_core else '-':>9}")


def print_scaling(entries: list[dict]) -> None:
    if len({e["server_cores"] for e in entries}) < 2:
        return
    print("\nscaling: per server core count (clients share the server's cores where marked *)")
    print(f"{'forwarder':<13} {'cores':>5} {'workers':>7} {'at':<20} {'pkt/CPU-s':>10} {'vs first':>8} "
          f"{'p99 ms':>7} {'zero-loss N':>11}")
    for e in entries:
        efficiency = e["efficiency_vs_first"]
        print(f"{e['forwarder']:<13} {str(e['server_cores']) + ('*' if e['clients_share_server_cores'] else ''):>5} "
              f"{e['workers']:>7} {e['compared_at']:<20} {e['packets_per_cpu_second']:>10,.0f} "
              f"{format(efficiency, '.2f') if efficiency else '-':>8} {_ms(e['p99_ms']):>7} "
              f"{e['max_zero_loss_subscribers']:>11,}")


def print_janus(figures: dict) -> None:
    if "skipped" in figures:
        print(f"\ntern vs Janus: skipped ({figures['skipped']})")
        return
    print("\ntern vs Janus on the same load and cores (ratio: tern / Janus; Janus's viewers send no transport-cc "
          "feedback, tern's do)")
    print(f"{'cores':>5} {'subscribers':>11} {'tern pkt/CPU-s':>14} {'Janus pkt/CPU-s':>15} {'ratio':>6} "
          f"{'tern p99':>8} {'Janus p99':>9} {'p99 ratio':>9} {'lost tern/Janus':>15}")
    for p in figures["compared"]:
        print(f"{p['server_cores']:>5} {p['subscribers']:>11,} {p['tern_packets_per_cpu_second']:>14,.0f} "
              f"{p['janus_packets_per_cpu_second']:>15,.0f} {_ratio(p['ratio']):>6} {_ms(p['tern_p99_ms']):>8} "
              f"{_ms(p['janus_p99_ms']):>9} {_ratio(p['p99_ratio']):>9} {str(p['tern_lost']) + '/' + str(p['janus_lost']):>15}")
    for key in ("ratio_janus", "ratio_janus_no_twcc"):
        print(f"{key:<28} {_ratio(figures[key])} ({figures[f'{key}_compared_at'] or 'no common zero-loss fanout'})")
    print(f"{'ratio_janus_zero_loss':<28} {_ratio(figures['ratio_janus_zero_loss'])} (Janus carried "
          f"{figures['janus_max_zero_loss_subscribers']:,} without loss)")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summarize(rows: list[Row], max_zero_loss: int) -> dict:
    """The tracked figures of the sweep: tern's capacity per core, latency at half the zero-loss load, and the
    transports' costs (the comparisons at COMPARE_SUBSCRIBERS come from the rounds: rounds_figures)."""
    tern = [r for r in rows if r.forwarder == "tern" and r.scenario == "fanout"]
    clean = [r for r in tern if carried(r)]
    out: dict = {"pps_per_core": None, "p99_added_latency_ms": None, "p50_added_latency_ms": None}
    if clean:
        best = clean[-1]
        out["pps_per_core"] = best.packets_per_cpu_second
        out["forwarded_pps_at_max"] = best.pps
        half = min(clean, key=lambda r: abs(subscribers(r) - max_zero_loss / 2))
        out["p50_added_latency_ms"], out["p99_added_latency_ms"] = half.p50_ms, half.p99_ms
        out["latency_measured_at"] = half.clients
    for transport in OVER:
        out.update(transport_cost(rows, transport))
    return out


def compared(rows: list[Row], measured: str, reference: str) -> tuple[str, float, float] | None:
    """(the fanout label, forwarded packets per CPU-second of `measured`, of `reference`) at the largest fanout both
    carried without loss (COMPARE_SUBSCRIBERS when they did); None if there is none."""
    def clean(name: str) -> dict[str, Row]:
        return {r.clients: r for r in rows if r.forwarder == name and r.scenario == "fanout" and r.lost == 0}
    first, second = clean(measured), clean(reference)
    sizes = [label for label in first if label in second]
    if not sizes:
        return None
    label = next((l for l in sizes if l.endswith(f" {COMPARE_SUBSCRIBERS} sub")), sizes[-1])
    return label, first[label].packets_per_cpu_second, second[label].packets_per_cpu_second


def _key(transport: str) -> str:
    """A --transport choice as it appears in figure names ("turn-tls": "turn_tls")."""
    return transport.replace("-", "_")


def transport_cost(rows: list[Row], transport: str) -> dict:
    """Forwarded packets per CPU-second to subscribers over `transport` ("tcp": ICE-TCP, "turn", "turn-tls":
    relayed), and the share of capacity it costs against UDP (both with transport-cc; see compared); nothing without
    its rows."""
    name, key = OVER[transport], _key(transport)
    if not any(r.forwarder == name for r in rows):
        return {}
    pair = compared(rows, name, "tern")
    if pair is None:
        return {f"pps_per_core_{key}": None, f"{key}_cost": None}
    label, over, udp = pair
    return {f"pps_per_core_{key}": over, f"{key}_cost": 1 - over / udp if udp else None,
            f"{key}_compared_at": label}


if __name__ == "__main__":
    sys.exit(main())
