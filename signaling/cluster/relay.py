"""Signal relay: a client's signal WebSocket accepted by one node (the signal node) is served by the node hosting its
room (the room's node), as in LiveKit. The signal node authenticates the client, then relays the stream both ways
over Redis pub/sub; the room's node runs its ordinary /rtc or /rtc/v1 endpoint on a WebSocket whose frames come
from and go to the relay, so its JoinResponse carries its own media candidates and TURN URLs, and leaves, resumes
and token refreshes are those of a direct connection.

A link is one relayed connection as one end sees it. Frames carry a sequence number: pub/sub from one publisher
arrives in order, so a gap means frames were lost (Redis dropped the subscription) and the link ends (the client
resumes). Each end has at most RELAY_WINDOW frames unacknowledged in flight and the receiver acknowledges what its
consumer took: a slow client slows its session's writer instead of queueing without bound."""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from .bus import Bus

log = logging.getLogger(__name__)

RELAY_WINDOW = 64            # frames in flight per direction before the sender waits for an acknowledgement
ACK_TIMEOUT_S = 10.0         # a sender waiting this long for an acknowledgement takes the link for dead
START_TIMEOUT_S = 5.0        # LiveKit's signal node waits 3-5 s per attempt for the room's node's first answer
# A room's node not subscribed to its channel may be resubscribing after a Redis restart (bus.RESUBSCRIBE_BACKOFF_S),
# while the registry already lists it again: the first frame is published again this often, for this long, before
# the client is refused.
START_RETRY_S = 0.2
START_RETRY_FOR_S = 3.0
MAX_START_SIZE = 64 * 1024   # a START frame's JSON (the request's path, query and a few headers)
RELAYED_PATHS = ("/rtc", "/rtc/v1")
# Request headers the room's node needs to serve the connection as the signal node received it.
RELAYED_HEADERS = (b"authorization", b"user-agent", b"x-forwarded-for")
SCOPE_FLAG = "tern.relayed"  # set in a relayed connection's ASGI scope: the room's node serves it, never relays again

_HEADER = struct.Struct("!B16sI")  # kind, connection id, sequence number
START, ACCEPT, DENY, DATA, CLOSE, ACK = range(1, 7)
_ORDERED = frozenset({START, ACCEPT, DENY, DATA, CLOSE})


class LinkClosed(Exception):
    pass


class RelayLost(OSError):
    """What the app sees when a relayed connection's link is gone: an OSError, which Starlette takes for the
    client's disconnect."""


class Link:
    """One relayed connection at one end: ordered, acknowledged frames to and from `peer`."""

    def __init__(self, bus: Bus, conn_id: bytes, peer: str, counters: dict[str, int],
                 on_end: Callable[[Link], None]) -> None:
        self.bus = bus
        self.conn_id = conn_id
        self.peer = peer
        self.counters = counters
        self._on_end = on_end
        self._sent = 0       # sequence number of the last ordered frame sent
        self._acked = 0      # highest sequence number the peer has taken
        self._received = 0   # sequence number of the last ordered frame received
        self._taken = 0      # ...and of the last one our consumer took
        self._acked_taken = 0
        self._inbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._send_lock = asyncio.Lock()
        self._window = asyncio.Event()
        self._window.set()
        self.closed = False

    async def send(self, kind: int, payload: bytes = b"") -> None:
        """Sends an ordered frame, waiting while RELAY_WINDOW frames are unacknowledged. Raises LinkClosed."""
        async with self._send_lock:
            while self._sent - self._acked >= RELAY_WINDOW:
                self._window.clear()
                if self.closed:
                    raise LinkClosed
                try:
                    await asyncio.wait_for(self._window.wait(), ACK_TIMEOUT_S)
                except asyncio.TimeoutError:
                    self.counters["relay_ack_timeouts"] += 1
                    self.end()
            if self.closed:
                raise LinkClosed
            self._sent += 1
            await self._publish(kind, self._sent, payload)

    async def open(self, payload: bytes) -> None:
        """Sends the START frame, again while nobody listens on the peer's channel, for up to START_RETRY_FOR_S.
        Raises LinkClosed."""
        async with self._send_lock:
            self._sent = 1
            frame = _HEADER.pack(START, self.conn_id, 1) + payload
            deadline = asyncio.get_running_loop().time() + START_RETRY_FOR_S
            while not await self.bus.send(self.peer, frame):
                if self.closed or asyncio.get_running_loop().time() >= deadline:
                    raise LinkClosed
                self.counters["relay_start_retries"] += 1
                await asyncio.sleep(START_RETRY_S)

    async def receive(self) -> tuple[int, bytes]:
        """The next ordered frame (kind, payload); (CLOSE, b"") once the link has ended."""
        kind, payload = await self._inbox.get()
        if kind in _ORDERED:
            self._taken += 1
            if self._taken - self._acked_taken >= RELAY_WINDOW // 2:
                self._acked_taken = self._taken
                try:
                    await self._publish(ACK, self._taken, b"")
                except (RedisError, OSError):
                    self.end()
        return kind, payload

    def deliver(self, kind: int, seq: int, payload: bytes) -> None:
        if kind == ACK:
            if self._acked < seq <= self._sent:
                self._acked = seq
                self._window.set()
            return
        if seq != self._received + 1:  # lost frames: the stream cannot be repaired
            self.counters["relay_sequence_gaps"] += 1
            self.end()
            return
        self._received = seq
        if self._received - self._taken > RELAY_WINDOW:  # the peer ignores the window
            self.counters["relay_window_overruns"] += 1
            self.end()
            return
        self._inbox.put_nowait((kind, payload))
        if kind in (CLOSE, DENY):  # the peer's last frame
            self.end()

    def end(self) -> None:
        """Ends the link at this end: a waiting receiver gets CLOSE, a waiting sender LinkClosed."""
        if self.closed:
            return
        self.closed = True
        self._window.set()
        self._inbox.put_nowait((CLOSE, b""))
        self._on_end(self)

    async def _publish(self, kind: int, seq: int, payload: bytes) -> None:
        if not await self.bus.send(self.peer, _HEADER.pack(kind, self.conn_id, seq) + payload):
            raise LinkClosed  # nobody listens on the peer's channel


async def _abandon(link: Link) -> None:
    """Ends a link whose connection ended at this end, telling the peer unless it was told already."""
    if not link.closed:
        try:
            await link.send(CLOSE, _close_payload(1011))
        except (LinkClosed, RedisError, OSError):
            pass
        link.end()


def _close_payload(code: int) -> bytes:
    return code.to_bytes(2, "big")


def _close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000


class Relay:
    """The relayed connections of this node, both as signal node (`forward`) and as room's node (START frames)."""

    def __init__(self, node_id: str, counters: dict[str, int]) -> None:
        self.node_id = node_id
        self.counters = counters
        self.bus: Bus
        self.app: Callable[[dict, Any, Any], Awaitable[None]] | None = None  # the node's ASGI app, set by create_app
        self.links: dict[bytes, Link] = {}
        self._tasks: set[asyncio.Task] = set()

    def _link(self, conn_id: bytes, peer: str) -> Link:
        link = Link(self.bus, conn_id, peer, self.counters, lambda ended: self.links.pop(ended.conn_id, None))
        self.links[conn_id] = link
        return link

    def on_frame(self, frame: bytes) -> None:
        """A frame from the bus (trusted peers, still checked: a malformed one is dropped and counted)."""
        if len(frame) < _HEADER.size:
            self.counters["relay_frames_malformed"] += 1
            return
        kind, conn_id, seq = _HEADER.unpack_from(frame)
        payload = frame[_HEADER.size:]
        link = self.links.get(conn_id)
        if kind == START and link is None and seq == 1:
            self._start(conn_id, payload)
        elif link is not None and kind in (ACCEPT, DENY, DATA, CLOSE, ACK):
            link.deliver(kind, seq, payload)
        elif kind in (ACCEPT, DENY, DATA, CLOSE, ACK):  # for a link that ended: frames crossing a close are normal
            self.counters["relay_frames_unrouted"] += 1
        else:
            self.counters["relay_frames_malformed"] += 1

    def end_links_to(self, dead: set[str]) -> None:
        """Ends the links whose peer node is gone: their clients see the connection drop and resume."""
        for link in [link for link in self.links.values() if link.peer in dead]:
            self.counters["relay_peer_lost"] += 1
            link.end()

    def peers(self) -> set[str]:
        return {link.peer for link in self.links.values()}

    # -- the signal node's end --------------------------------------------------------------------------------------

    async def forward(self, websocket: WebSocket, owner: str) -> None:
        """Serves a client's signal connection (not yet accepted) through the room's node `owner`."""
        self.counters["relay_connections_out"] += 1
        link = self._link(uuid.uuid4().hex[:16].encode(), owner)
        try:
            await self._forward(websocket, link)
        finally:
            await _abandon(link)

    async def _forward(self, websocket: WebSocket, link: Link) -> None:
        scope = websocket.scope
        start = {
            "from": self.node_id, "path": scope["path"], "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope.get("headers", [])
                        if k.lower() in RELAYED_HEADERS],
        }
        try:
            await link.open(json.dumps(start).encode())
            kind, payload = await asyncio.wait_for(link.receive(), START_TIMEOUT_S)
        except (LinkClosed, RedisError, OSError, asyncio.TimeoutError):
            kind, payload = CLOSE, b""
        if kind == DENY:
            status = int.from_bytes(payload[:2], "big")
            await websocket.send_denial_response(PlainTextResponse(payload[2:].decode(errors="replace"), status))
            return
        if kind != ACCEPT:
            self.counters["relay_start_failed"] += 1
            await websocket.send_denial_response(PlainTextResponse("the room's node did not answer", 503))
            return
        await websocket.accept()
        upstream = asyncio.create_task(self._client_to_room(websocket, link))
        try:
            while True:
                kind, payload = await link.receive()
                if kind != DATA:
                    code = _close_code(payload) if payload else 1001  # the room's node is gone: "going away"
                    await websocket.close(code)
                    return
                await websocket.send_bytes(payload)
        except (WebSocketDisconnect, RuntimeError, OSError):  # the client is gone: its half reports the close
            await asyncio.wait({upstream}, timeout=START_TIMEOUT_S)
        finally:
            upstream.cancel()

    async def _client_to_room(self, websocket: WebSocket, link: Link) -> None:
        code = 1000
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1000)
                    break
                data = message.get("bytes")
                if data is None:  # the signal protocol is binary; the room's node would count and skip it
                    self.counters["signal_text_frames"] += 1
                    continue
                await link.send(DATA, data)
        except (LinkClosed, RedisError, OSError, RuntimeError):
            link.end()
            return
        try:
            await link.send(CLOSE, _close_payload(code))
        except (LinkClosed, RedisError, OSError):
            pass
        link.end()

    # -- the room's node's end -------------------------------------------------------------------------------------

    def _start(self, conn_id: bytes, payload: bytes) -> None:
        try:
            if len(payload) > MAX_START_SIZE:
                raise ValueError("too large")
            start = json.loads(payload)
            peer, path, query = start["from"], start["path"], start["query"]
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in start["headers"]
                       if k.encode("latin-1").lower() in RELAYED_HEADERS]
            if not isinstance(peer, str) or path not in RELAYED_PATHS or not isinstance(query, str):
                raise ValueError("not a signal connection")
        except (ValueError, TypeError, KeyError, AttributeError):
            self.counters["relay_frames_malformed"] += 1
            return
        if self.app is None:
            return
        self.counters["relay_connections_in"] += 1
        link = self._link(conn_id, peer)
        link.deliver(START, 1, b"")  # taken by the ASGI connect below, so the window counts it
        scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": query.encode("latin-1"), "headers": headers, "client": None,
            "server": None, "subprotocols": [], "extensions": {"websocket.http.response": {}}, SCOPE_FLAG: True,
        }
        task = asyncio.get_running_loop().create_task(self._serve(scope, link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, scope: dict, link: Link) -> None:
        denial: list[bytes] = []
        status = 0

        async def receive() -> dict:
            kind, payload = await link.receive()
            if kind == START:
                return {"type": "websocket.connect"}
            if kind == DATA:
                return {"type": "websocket.receive", "bytes": payload}
            return {"type": "websocket.disconnect", "code": _close_code(payload) if payload else 1006}

        async def send(message: dict) -> None:
            nonlocal status
            kind = message["type"]
            try:
                if kind == "websocket.accept":
                    await link.send(ACCEPT)
                elif kind == "websocket.send":
                    data = message.get("bytes")
                    await link.send(DATA, data if data is not None else message["text"].encode())
                elif kind == "websocket.close":
                    await link.send(CLOSE, _close_payload(message.get("code", 1000)))
                    link.end()
                elif kind == "websocket.http.response.start":
                    status = message["status"]
                elif kind == "websocket.http.response.body":
                    denial.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        await link.send(DENY, status.to_bytes(2, "big") + b"".join(denial))
                        link.end()
            except (LinkClosed, RedisError, OSError):
                link.end()
                raise RelayLost("relay link closed") from None

        try:
            assert self.app is not None
            await self.app(scope, receive, send)
        except RelayLost:  # the link went (its node or Redis did) while the app was still sending: an expected end
            self.counters["relay_links_lost"] += 1
            log.debug("relayed connection ended: its relay link closed")
        except Exception:  # the connection's end, however it came: the link must not outlive it
            self.counters["relay_serve_errors"] += 1
            log.debug("relayed connection ended with an error", exc_info=True)
        finally:
            await _abandon(link)
