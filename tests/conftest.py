"""Shared fixtures: a real tern server process on free ports, and tokens for it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from livekit import api
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
API_KEY, API_SECRET = "devkey", "secret"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    http_port: int
    udp_port: int
    metrics_port: int
    log_path: Path
    host: str = "127.0.0.1"
    tcp_port: int = 0  # ICE-TCP

    @property
    def url(self) -> str:
        return f"ws://{self._netloc_host}:{self.http_port}"

    @property
    def http(self) -> str:
        return f"http://{self._netloc_host}:{self.http_port}"

    @property
    def _netloc_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in a URL is bracketed

    def token(self, identity: str, room: str = "test-room", **grants: object) -> str:
        video = api.VideoGrants(room_join=True, room=room, **grants)
        return api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_name(identity).with_grants(video).to_jwt()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The server's Prometheus samples: (name, labels, value)."""
        with urllib.request.urlopen(f"http://{self._netloc_host}:{self.metrics_port}/metrics", timeout=5) as response:
            families = text_string_to_metric_families(response.read().decode())
            return [(sample.name, sample.labels, sample.value) for family in families for sample in family.samples]

    def counters(self) -> dict[str, float]:
        """The server's `tern_events` counters by name."""
        return {labels["name"]: value for name, labels, value in self.metrics() if name == "tern_events_total"}

    def layer_packets(self, track_sid: str) -> dict[str, float]:
        """Packets received per simulcast rid of one published track."""
        return {labels["rid"]: value for name, labels, value in self.metrics()
                if name == "tern_track_layer_packets_total" and labels["track"] == track_sid}


def start_server(tmp_path: Path, *extra: str, config: str = "", metrics_port: int | None = None,
                 host: str = "127.0.0.1", dev: bool = True, http_port: int = 0) -> Server:
    """Starts `tern --dev` on free ports, with `config` (YAML) added to its config body. With `--config FILE`
    in `extra` instead, the file must set `prometheus_port: metrics_port`. With `host`, it listens and offers
    media candidates there (a lab's veth address) instead of on loopback. Without `dev`, it runs outside
    development mode with the same key and secret. `http_port` reuses a port (one a stopped server had)."""
    http_port, udp_port, tcp_port = http_port or free_port(), free_port(socket.SOCK_DGRAM), free_port()
    if metrics_port is None:
        metrics_port = free_port()
        extra = ("--config-body", f"prometheus_port: {metrics_port}\n{config}", *extra)
    if host != "127.0.0.1":
        extra = ("--bind", host, "--node-ip", host, *extra)
    log_path = tmp_path / "tern.log"
    log_file = open(log_path, "w")
    mode = ["--dev"] if dev else ["--keys", f"{API_KEY}: {API_SECRET}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "signaling", *mode, "--port", str(http_port), "--udp-port", str(udp_port),
         "--tcp-port", str(tcp_port), *extra],
        cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    server = Server(process, http_port, udp_port, metrics_port, log_path, host, tcp_port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tern exited with {process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.http + "/", timeout=1) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"tern did not start:\n{server.log()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    server = start_server(tmp_path_factory.mktemp("tern"))
    yield server
    stop_server(server)
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture
def lab_server(tmp_path: Path):
    """A network lab (tests/netlab.py: a namespace behind a veth pair) and a server on the host end of it, so
    clients in the namespace reach it through the shaped link; skipped with the reason where the lab cannot run."""
    from netlab import NetLab, lab_unavailable
    reason = lab_unavailable()
    if reason is not None:
        print(f"network lab unavailable: {reason}")
        pytest.skip(reason)
    with NetLab() as lab:
        server = start_server(tmp_path, host=lab.host_ip)
        try:
            yield lab, server
        finally:
            stop_server(server)
        assert "Traceback" not in server.log(), server.log()
