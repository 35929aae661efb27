"""Calls between nodes over the bus: a request that needs a room's node (a RoomService mutation, a participant
listing, an agent dispatch, a WHIP or WHEP offer) is made there and answered back, as LiveKit routes them over psrpc.
The calling node has authorised the request; the other node runs it as if it had arrived over HTTP. A call names
`<service>/<method>`; each service registers one handler for its calls."""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import Awaitable, Callable

from .bus import Bus

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 3.0  # psrpc's default timeout for a call to another node
REQUEST, RESPONSE = 10, 11  # frame kinds (the relay's are below 10)
_HEADER = struct.Struct("!B16s")  # kind, call id
OK, FAILED = 0, 1


class CallFailed(Exception):
    """The room's node refused the call (`code`, `msg`: a Twirp error) or never answered (code "unavailable")."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


# Runs a call on this node: (method name, request bytes) -> reply bytes; raises CallFailed for a refused call.
Handler = Callable[[str, bytes], Awaitable[bytes]]
MAX_NAME = 255  # a call's `<service>/<method>` travels with a one-byte length


class Rpc:
    def __init__(self, node_id: str, counters: dict[str, int]) -> None:
        self.node_id = node_id
        self.counters = counters
        self.bus: Bus
        self.handlers: dict[str, Handler] = {}  # service name -> its handler (registered by the service)
        self._calls: dict[bytes, asyncio.Future[tuple[int, bytes]]] = {}
        self._answers: set[asyncio.Task] = set()

    async def call(self, node_id: str, service: str, method: str, request: bytes,
                   timeout: float = CALL_TIMEOUT_S) -> bytes:
        """Runs `service`'s `method` on `node_id`; its reply bytes. Raises CallFailed."""
        call_id = uuid.uuid4().hex[:16].encode()
        origin, name = self.node_id.encode(), f"{service}/{method}".encode()
        assert len(name) <= MAX_NAME
        frame = _HEADER.pack(REQUEST, call_id) + bytes([len(origin)]) + origin + bytes([len(name)]) + name + request
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            if not await self.bus.send(node_id, frame):
                raise CallFailed("unavailable", "the room's node is not reachable")
            status, payload = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            self.counters["rpc_timeouts"] += 1
            raise CallFailed("unavailable", "the room's node did not answer") from None
        finally:
            self._calls.pop(call_id, None)
        if status != OK:
            error = json.loads(payload)
            raise CallFailed(error["code"], error["msg"])
        return payload

    def on_frame(self, frame: bytes) -> None:
        try:
            kind, call_id = _HEADER.unpack_from(frame)
            rest = frame[_HEADER.size:]
            if kind == RESPONSE:
                future = self._calls.get(call_id)
                if future is not None and not future.done():
                    future.set_result((rest[0], rest[1:]))
                return
            origin_length = rest[0]
            origin = rest[1:1 + origin_length].decode()
            name_length = rest[1 + origin_length]
            name = rest[2 + origin_length:2 + origin_length + name_length].decode()
            request = rest[2 + origin_length + name_length:]
        except (struct.error, IndexError, UnicodeDecodeError):
            self.counters["rpc_frames_malformed"] += 1
            return
        service, _, method = name.partition("/")
        if not origin:
            self.counters["rpc_frames_malformed"] += 1
            return
        task = asyncio.get_running_loop().create_task(self._answer(origin, call_id, service, method, request))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _answer(self, origin: str, call_id: bytes, service: str, method: str, request: bytes) -> None:
        handler = self.handlers.get(service)
        try:
            if handler is None:
                raise CallFailed("bad_route", f"no such service on this node: {service}")
            reply = bytes([OK]) + await handler(method, request)
        except CallFailed as error:
            reply = bytes([FAILED]) + json.dumps({"code": error.code, "msg": error.msg}).encode()
        except Exception:  # a bug must answer, not leave the caller to time out
            log.exception("routed call %s/%s failed", service, method)
            reply = bytes([FAILED]) + json.dumps({"code": "internal", "msg": "internal error"}).encode()
        try:
            await self.bus.send(origin, _HEADER.pack(RESPONSE, call_id) + reply)
        except Exception as error:  # Redis down: the caller times out
            self.counters["rpc_answers_lost"] += 1
            log.debug("cannot answer %s: %s", origin, error)
