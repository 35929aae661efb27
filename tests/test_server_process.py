"""The server as an operator runs it: config file, CLI tokens, room lifetime, shutdown on SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys

from livekit import rtc

from conftest import ROOT, free_port, start_server, stop_server


def gauge(server, name: str) -> float:
    return next(value for sample, labels, value in server.metrics() if sample == name)


async def test_config_file_cli_token_room_lifetime_and_sigterm(tmp_path):
    config = tmp_path / "config.yaml"
    metrics_port = free_port()
    config.write_text(
        "keys:\n  opskey: a-long-enough-secret-for-production-use-0123\n"
        f"prometheus_port: {metrics_port}\n"
        "room:\n  departure_timeout: 1\n  empty_timeout: 1\n"
        "log_level: info\n"
    )
    server = start_server(tmp_path, "--config", str(config), metrics_port=metrics_port)
    try:
        token = subprocess.run(
            [sys.executable, "-m", "signaling", "token", "--room", "ops-room", "--identity", "op",
             "--key", "opskey", "--secret", "a-long-enough-secret-for-production-use-0123"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()
        first = rtc.Room()
        await first.connect(server.url, token)
        assert gauge(server, "tern_rooms") == 1
        await first.disconnect()
        await _until(lambda: gauge(server, "tern_rooms") == 0, timeout=5)  # closed after departure_timeout

        client = rtc.Room()
        reasons: list[int] = []
        client.on("disconnected", reasons.append)
        await client.connect(server.url, token)
        server.process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, as systemd expects of a SIGTERM'd service.
        assert server.process.wait(10) in (0, -signal.SIGTERM)
        assert "Finished server process" in server.log()
        await _until(lambda: reasons, timeout=5)
        assert reasons == [rtc.DisconnectReason.SERVER_SHUTDOWN]
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()


async def _until(predicate, timeout: float) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), timeout)
