"""RTMP ingest (`rtmp://host:<ingress.rtmp_port>/live/{stream_key}`): an asyncio listener speaks RTMP as far as
`publish`, checks the stream key against the ingress store, then relays the publisher's audio and video as an FLV
byte stream to a worker process (ingress/rtmp_worker.py) that transcodes with PyAV (AAC → Opus; H.264 passed
through unless it has B-frames) and publishes into the ingress's room over WHIP on loopback (`/w/{stream_key}`,
authorised by a per-connection relay secret). The ingress is BUFFERING from `publish` on; a worker that fails (input it
cannot publish, a PyAV error, a crash) or an encoder sending no media makes it ENDPOINT_ERROR with the reason, which the
encoder also gets (onStatus NetStream.Failed) before its connection closes. The worker's pipe is the only buffer: a
slow worker stops our reads, and TCP pushes back on the encoder."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path

from livekit.protocol import ingress

from ..rtc.ids import new_id
from ..wish import Refused
from . import rtmp_protocol as proto
from .rtmp_worker import ERROR_PREFIX
from .sessions import IngressSessions

log = logging.getLogger(__name__)

# Seconds for a publisher to get from TCP connect to `publish` (handshake, connect, createStream).
NEGOTIATE_TIMEOUT = 10.0
# Seconds without a byte from a publishing encoder before it is dropped (encoders send media continuously).
READ_TIMEOUT = 20.0
# Seconds from `publish` to the encoder's first audio or video (its metadata alone keeps no worker busy). Tests shorten
# it with TERN_RTMP_MEDIA_TIMEOUT.
MEDIA_TIMEOUT = float(os.environ.get("TERN_RTMP_MEDIA_TIMEOUT", "10"))
# Seconds a failed session's connection stays open after its NetStream.Failed status, for the encoder to read it.
FAILURE_LINGER = 1.0
# Characters of a worker's output line kept (its error goes into IngressState.error).
MAX_REASON = 500
# Seconds the worker gets to finish (its WHIP DELETE) after the encoder ends, before it is killed.
WORKER_EXIT_TIMEOUT = 5.0
READ_SIZE = 65536
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
        try:  # the ingress is BUFFERING from here, as LiveKit's is once its encoder publishes
            info = await self._sessions.claim(stream_key, ingress.IngressInput.RTMP_INPUT, new_id("RT_"))
        except Refused as error:
            writer.write(proto.on_status(stream_id, "error", "NetStream.Publish.BadName", str(error)))
            await writer.drain()
            raise proto.RtmpError(f"publish refused: {error}", f"rtmp_{error.counter}") from None
        secret = self._sessions.relay(stream_key)
        error = "the RTMP listener failed"
        try:
            error = await self._relay(reader, writer, chunks, stream_id, stream_key, info.ingress_id, secret)
        finally:
            self._sessions.unrelay(stream_key)
            # A failure is the ingress's ENDPOINT_ERROR (and ingress_ended webhook) with its reason; the encoder hears
            # it too before its connection closes. A clean end leaves it INACTIVE (if the WHIP session has not yet).
            self._sessions.stop(info.ingress_id, error)
            if error:
                log.info("RTMP: ingress %s failed: %s", info.ingress_id, error)
                writer.write(proto.on_status(stream_id, "error", "NetStream.Failed", error))
                # Reading on for a moment lets the encoder take the status in: closing with its media unread would
                # reset the connection, and the status with it.
                with contextlib.suppress(ConnectionError, TimeoutError):
                    async with asyncio.timeout(FAILURE_LINGER):
                        await writer.drain()
                        while await reader.read(READ_SIZE):
                            pass

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: proto.ChunkReader,
                     stream_id: int, stream_key: str, ingress_id: str, secret: str) -> str:
        """Relays until the encoder or the session ends: "" when it ended well, else why it failed."""
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "signaling.ingress.rtmp_worker", f"{self._whip_base}/{stream_key}",
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=_PACKAGE_ROOT,
            env={**os.environ, "TERN_RELAY_SECRET": secret})
        assert worker.stdin is not None and worker.stderr is not None
        worker_said = asyncio.create_task(_worker_output(worker.stderr, worker.pid))
        worker.stdin.write(proto.FLV_HEADER)
        log.info("RTMP: publishing on stream key %s…, worker pid %d", stream_key[:4], worker.pid)
        error = ""
        try:
            writer.write(proto.on_status(stream_id, "status", "NetStream.Publish.Start", "publishing"))
            media_by = asyncio.get_running_loop().time() + MEDIA_TIMEOUT
            while worker.returncode is None:
                # its session ended (DeleteIngress, room closed, WHIP refused)
                if not await self._sessions.live(ingress_id):
                    self._counters["rtmp_session_ended"] += 1
                    info = await self._sessions.store.get(ingress_id)
                    # The worker's end follows from it: its exit status is no error of its own.
                    error = (info.state.error if info is not None else "") or "the ingress session ended"
                    return error
                async with asyncio.timeout(READ_TIMEOUT):
                    data = await reader.read(READ_SIZE)
                if not data:
                    break
                tags = []
                for item in chunks.feed(data):
                    if item.type in proto.MEDIA_TYPES:
                        tags.append(proto.flv_tag(item))
                        if item.type != proto.DATA_AMF0:
                            media_by = math.inf
                    elif item.type == proto.COMMAND_AMF0 and _command(item)[0] == "deleteStream":
                        return ""
                if asyncio.get_running_loop().time() > media_by:
                    self._counters["rtmp_no_media"] += 1
                    error = f"the encoder sent no audio or video in {MEDIA_TIMEOUT:g} s"
                    return error
                if worker.stdin.is_closing():  # the worker exited (uvloop raises on writing to it)
                    break
                try:
                    worker.stdin.write(b"".join(tags))
                    await worker.stdin.drain()  # bounded: the pipe, then our socket's reads wait
                except ConnectionError:
                    break  # the worker exited: its status says why, below
        except (ConnectionError, asyncio.IncompleteReadError):  # the encoder went
            self._counters["rtmp_disconnected"] += 1
        except TimeoutError:
            self._counters["rtmp_timeout"] += 1
            error = f"the encoder sent nothing for {READ_TIMEOUT:g} s"
        finally:
            worker.stdin.close()
            killed = False
            try:
                await asyncio.wait_for(worker.wait(), WORKER_EXIT_TIMEOUT)
            except TimeoutError:  # stuck finishing (its WHIP DELETE): the session is over all the same
                self._counters["rtmp_worker_killed"] += 1
                killed = True
                worker.kill()
                await worker.wait()
            reason = await worker_said
            if worker.returncode and not error and not killed:
                self._counters["rtmp_worker_failed"] += 1
                error = reason or (f"the RTMP worker was killed by signal {-worker.returncode}" if worker.returncode < 0
                                   else f"the RTMP worker failed with exit status {worker.returncode}")
            self._counters["rtmp_ended"] += 1
        return error


async def _worker_output(stderr: asyncio.StreamReader, pid: int) -> str:
    """Logs what the worker writes; its reason for failing (an `error: ` line), or ""."""
    reason = ""
    while True:
        try:
            line = await stderr.readline()
        except ValueError:  # a line over the reader's limit: skipped
            continue
        if not line:
            return reason
        text = line.decode(errors="replace").rstrip()[:MAX_REASON]
        log.info("RTMP worker %d: %s", pid, text)
        if text.startswith(ERROR_PREFIX):
            reason = text[len(ERROR_PREFIX):]


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
