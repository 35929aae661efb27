"""/agent: one agent worker's WebSocket (authenticated before the upgrade, in app.py). The worker registers within
REGISTER_TIMEOUT and is then a Worker of the dispatcher until the connection ends. A worker that sends what is not a
WorkerMessage, floods, goes silent or stops reading is closed; the others never notice."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from google.protobuf.message import DecodeError
from livekit.protocol import agent, models
from starlette.websockets import WebSocket

from .dispatcher import AgentDispatcher
from .worker import AGENT_PROTOCOL, RegistrationError, Worker, check_registration, pong

log = logging.getLogger(__name__)

REGISTER_TIMEOUT = 10.0  # LiveKit's RegisterTimeout: seconds from the upgrade to the register request
# A registered worker that sends nothing for this long is gone (the Python SDK reports its status every 2.5 s).
WORKER_SILENCE_TIMEOUT = 60.0
# Messages a worker may send: a sustained rate and a burst (the Python SDK sends one status every 2.5 s and one answer
# per job offered; tern's).
WORKER_MESSAGE_RATE = 50.0  # per second
WORKER_MESSAGE_BURST = 200
# Messages waiting to be written to a worker that does not read: past it the worker is closed.
MAX_WORKER_OUTBOX = 256
# After the session ends, how long the closing handshake may take.
CLOSE_TIMEOUT = 2.0

# WebSocket close codes (RFC 6455): what the worker did wrong.
_CLOSE_INVALID = 1007  # not a WorkerMessage, or a register refused
_CLOSE_POLICY = 1008  # flooding, silence, or not reading
_CLOSE_TRY_LATER = 1013  # this node has as many workers as it takes


class _Closed(Exception):
    """Ends a worker's session with a close code and a reason."""

    def __init__(self, code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.counter = counter


class _Rate:
    """A token bucket: WORKER_MESSAGE_BURST messages at once, WORKER_MESSAGE_RATE per second after."""

    def __init__(self) -> None:
        self.tokens = float(WORKER_MESSAGE_BURST)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(WORKER_MESSAGE_BURST, self.tokens + (now - self.at) * WORKER_MESSAGE_RATE)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Outbox:
    """ServerMessages for the connection's writer; None ends it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.overflowed = asyncio.Event()

    def send(self, message: agent.ServerMessage) -> None:
        if self.overflowed.is_set():
            return
        if self.queue.qsize() >= MAX_WORKER_OUTBOX:
            self.overflowed.set()
            return
        self.queue.put_nowait(message.SerializeToString())

    async def write(self, websocket: WebSocket) -> None:
        while (data := await self.queue.get()) is not None:
            await websocket.send_bytes(data)


async def serve(websocket: WebSocket, api_key: str, dispatcher: AgentDispatcher, server_info: models.ServerInfo,
                counters: Counter[str]) -> None:
    """Runs an authenticated worker's connection from the upgrade to its end."""
    await websocket.accept()
    outbox = _Outbox()
    writer = asyncio.create_task(outbox.write(websocket))
    rate = _Rate()
    worker: Worker | None = None
    code, reason = 1000, ""
    try:
        request = await _receive_register(websocket, outbox, rate)
        try:
            check_registration(request)
        except RegistrationError as error:
            raise _Closed(_CLOSE_INVALID, str(error), "agent_worker_refused") from None
        if dispatcher.full:
            raise _Closed(_CLOSE_TRY_LATER, "too many workers", "agent_worker_refused")
        worker = Worker(api_key, request, outbox.send, dispatcher, counters)
        info = models.ServerInfo()
        info.CopyFrom(server_info)
        info.agent_protocol = AGENT_PROTOCOL
        # The worker reads this as the first message after its register: nothing is sent before it.
        outbox.send(agent.ServerMessage(register=agent.RegisterWorkerResponse(worker_id=worker.id, server_info=info)))
        dispatcher.register(worker)
        counters["agent_workers_registered"] += 1
        await _serve_registered(websocket, worker, outbox, rate, counters)
    except _Closed as closed:
        counters[closed.counter] += 1
        code, reason = closed.code, closed.reason
        log.info("agent worker %s closed: %s", worker.id if worker else "(unregistered)", closed.reason)
    finally:
        if worker is not None:
            dispatcher.unregister(worker)
        outbox.queue.put_nowait(None)
        await asyncio.wait({writer}, timeout=CLOSE_TIMEOUT)
        writer.cancel()
        with contextlib.suppress(Exception):  # a worker that reads nothing never completes the closing handshake
            await asyncio.wait_for(websocket.close(code, reason), CLOSE_TIMEOUT)


async def _receive(websocket: WebSocket, rate: _Rate, timeout: float) -> agent.WorkerMessage | None:
    """The next WorkerMessage, or None once the connection has ended."""
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout)
    except TimeoutError:
        raise _Closed(_CLOSE_POLICY, f"nothing received for {timeout:g} s", "agent_worker_timeouts") from None
    if message["type"] == "websocket.disconnect":
        if message.get("code") == 1009:  # uvicorn closed it: a message over the server's WebSocket limit
            raise _Closed(1009, "message too big", "agent_worker_message_too_big")
        return None
    if not rate.take():
        raise _Closed(_CLOSE_POLICY, "too many messages", "agent_worker_flooding")
    data = message.get("bytes")
    if data is None:
        raise _Closed(_CLOSE_INVALID, "text frame: WorkerMessages are binary", "agent_worker_malformed")
    try:
        return agent.WorkerMessage.FromString(data)
    except DecodeError:
        raise _Closed(_CLOSE_INVALID, "not a WorkerMessage", "agent_worker_malformed") from None


async def _receive_register(websocket: WebSocket, outbox: _Outbox, rate: _Rate) -> agent.RegisterWorkerRequest:
    """Reads until the register request (pings are answered meanwhile), within REGISTER_TIMEOUT."""
    deadline = time.monotonic() + REGISTER_TIMEOUT
    while True:
        message = await _receive(websocket, rate, max(0.0, deadline - time.monotonic()))
        if message is None:
            raise _Closed(1000, "closed before registering", "agent_worker_unregistered")
        kind = message.WhichOneof("message")
        if kind == "register":
            return message.register
        if kind != "ping":
            raise _Closed(_CLOSE_INVALID, f"{kind} before register", "agent_worker_malformed")
        outbox.send(pong(message.ping))


async def _serve_registered(websocket: WebSocket, worker: Worker, outbox: _Outbox, rate: _Rate,
                            counters: Counter[str]) -> None:
    overflow = asyncio.create_task(outbox.overflowed.wait())
    try:
        while True:
            reader = asyncio.create_task(_receive(websocket, rate, WORKER_SILENCE_TIMEOUT))
            done, _ = await asyncio.wait({reader, overflow}, return_when=asyncio.FIRST_COMPLETED)
            if overflow in done:
                reader.cancel()
                raise _Closed(_CLOSE_POLICY, "not reading", "agent_worker_outbox_overflow")
            message = reader.result()
            if message is None:
                return
            _handle(worker, message, counters)
    finally:
        overflow.cancel()


def _handle(worker: Worker, message: agent.WorkerMessage, counters: Counter[str]) -> None:
    try:
        worker.handle(message)
    except Exception:  # a bug handling one message must not take down the worker's session or the server
        counters["agent_worker_handler_errors"] += 1
        log.exception("error handling %s from agent worker %s", message.WhichOneof("message"), worker.id)
