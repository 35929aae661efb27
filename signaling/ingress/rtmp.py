"""RTMP ingest (`rtmp://host:<ingress.rtmp_port>/live/{stream_key}`): an asyncio listener speaks RTMP as far as
`publish`, checks the stream key against the ingress store, then relays the publisher's audio and video as an FLV
byte stream to a worker process (ingress/rtmp_worker.py) that transcodes with PyAV (AAC → Opus; H.264 passed
through unless it has B-frames) and publishes into the ingress's room over WHIP on loopback (`/w/{stream_key}`,
authorised by a per-connection relay secret). The worker's pipe is the only buffer: a slow worker stops our reads,
and TCP pushes back on the encoder."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from livekit.protocol import ingress

from . import rtmp_protocol as proto
from .sessions import IngressSessions

log = logging.getLogger(__name__)

# Seconds for a publisher to get from TCP connect to `publish` (handshake, connect, createStream).
NEGOTIATE_TIMEOUT = 10.0
# Seconds without a byte from a publishing encoder before it is dropped (encoders send media continuously).
READ_TIMEOUT = 20.0
# Seconds the worker gets to finish (its WHIP DELETE) after the encoder ends, before it is killed.
WORKER_EXIT_TIMEOUT = 5.0
READ_SIZE = 65536
# Seconds between checks that the publisher's session still runs (in a cluster, a read of Redis).
LIVE_CHECK_INTERVAL = 1.0
# Concurrent RTMP connections (each publishing one costs a worker process of up to a core when transcoding video).
MAX_CONNECTIONS = 16
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where `python -m signaling.…` finds the worker


class RtmpListener:
    def __init__(self, sessions: IngressSessions, counters: Counter[str], whip_base: str) -> None:
        self._sessions = sessions
        self._counters = counters
        self._whip_base = whip_base  # where the worker reaches our WHIP ingest, e.g. http://127.0.0.1:7880/w
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, host, port)
        log.info("RTMP ingest on %s:%d", host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            self._counters["rtmp_too_many_connections"] += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._counters["rtmp_connections"] += 1
        try:
            await self._serve(reader, writer)
        except proto.RtmpError as error:
            log.info("RTMP: %s", error)
            self._counters[error.counter] += 1
        except (ConnectionError, asyncio.IncompleteReadError):
            self._counters["rtmp_disconnected"] += 1
        except TimeoutError:
            self._counters["rtmp_timeout"] += 1
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        chunks = proto.ChunkReader()
        async with asyncio.timeout(NEGOTIATE_TIMEOUT):
            writer.write(proto.handshake_reply(await reader.readexactly(1 + proto.HANDSHAKE_SIZE)))
            await reader.readexactly(proto.HANDSHAKE_SIZE)  # C2: nothing in it we need
            stream_id, stream_key = await _negotiate(reader, writer, chunks)
        info = await self._sessions.store.by_stream_key(stream_key)
        if info is None or info.input_type != ingress.IngressInput.RTMP_INPUT:
            writer.write(proto.on_status(stream_id, "error", "NetStream.Publish.BadName", "unknown stream key"))
            await writer.drain()
            raise proto.RtmpError("publish with an unknown stream key", "rtmp_unknown_stream_key")
        secret = self._sessions.relay(stream_key)
        if secret is None:
            writer.write(proto.on_status(stream_id, "error", "NetStream.Publish.BadName", "stream key in use"))
            await writer.drain()
            raise proto.RtmpError("publish on a stream key in use", "rtmp_stream_key_busy")
        try:
            await self._relay(reader, writer, chunks, stream_id, stream_key, info.ingress_id, secret)
        finally:
            self._sessions.unrelay(stream_key)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: proto.ChunkReader,
                     stream_id: int, stream_key: str, ingress_id: str, secret: str) -> None:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signaling.ingress.rtmp_worker", f"{self._whip_base}/{stream_key}",
            stdin=asyncio.subprocess.PIPE, cwd=_PACKAGE_ROOT, env={**os.environ, "TERN_RELAY_SECRET": secret})
        assert worker.stdin is not None
        worker.stdin.write(proto.FLV_HEADER)
        log.info("RTMP: publishing on stream key %s…, worker pid %d", stream_key[:4], worker.pid)
        try:
            writer.write(proto.on_status(stream_id, "status", "NetStream.Publish.Start", "publishing"))
            went_live = False
            checked = 0.0
            while worker.returncode is None:
                if time.monotonic() - checked >= LIVE_CHECK_INTERVAL:  # the session may run on another node
                    checked = time.monotonic()
                    live = await self._sessions.live(ingress_id)
                    if went_live and not live:  # its session ended (DeleteIngress, room closed): the encoder goes
                        self._counters["rtmp_session_ended"] += 1
                        return
                    went_live = went_live or live
                async with asyncio.timeout(READ_TIMEOUT):
                    data = await reader.read(READ_SIZE)
                if not data:
                    break
                tags = []
                for item in chunks.feed(data):
                    if item.type in proto.MEDIA_TYPES:
                        tags.append(proto.flv_tag(item))
                    elif item.type == proto.COMMAND_AMF0 and _command(item)[0] == "deleteStream":
                        return
                try:
                    worker.stdin.write(b"".join(tags))
                    await worker.stdin.drain()  # bounded: the pipe, then our socket's reads wait
                except ConnectionError as error:
                    raise _WorkerGone() from error
        except _WorkerGone:
            pass  # counted below by its exit status
        finally:
            worker.stdin.close()
            try:
                await asyncio.wait_for(worker.wait(), WORKER_EXIT_TIMEOUT)
            except TimeoutError:
                worker.kill()
                await worker.wait()
            if worker.returncode:
                self._counters["rtmp_worker_failed"] += 1
            self._counters["rtmp_ended"] += 1


class _WorkerGone(Exception):
    """The worker's stdin closed: it exited (its WHIP session failed or ended)."""


def _command(item: proto.Message) -> list:
    payload = item.payload[1:] if item.type == proto.COMMAND_AMF3 else item.payload  # AMF3 commands: a 0 byte first
    values = proto.amf_decode(payload)
    if not values or not isinstance(values[0], str):
        raise proto.RtmpError("a command without a name")
    return values


async def _negotiate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     chunks: proto.ChunkReader) -> tuple[int, str]:
    """Answers connect and createStream until `publish`: its message stream id and stream key."""
    connected = False
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionResetError("the publisher left before publishing")
        for item in chunks.feed(data):
            if item.type not in (proto.COMMAND_AMF0, proto.COMMAND_AMF3):
                continue
            values = _command(item)
            name, transaction = values[0], values[1] if len(values) > 1 else 0
            if not isinstance(transaction, float):
                transaction = 0.0
            if name == "connect":
                writer.write(proto.connect_replies(transaction))
                connected = True
            elif name == "createStream":
                writer.write(proto.result(transaction, 1))
            elif name == "publish":
                if not connected:
                    raise proto.RtmpError("publish before connect")
                key = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
                return item.stream_id, key.split("?", 1)[0]  # OBS may append ?query to the key
            elif name in ("play", "play2"):
                raise proto.RtmpError("this server takes publishers only", "rtmp_play_refused")
        await writer.drain()
