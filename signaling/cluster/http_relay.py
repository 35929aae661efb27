"""HTTP requests served by the room's node: a WHIP or WHEP request (an offer, or a DELETE of its resource) that
reaches a node not hosting its room is run by the room's node, through the bus, as if it had arrived there, and its
answer goes back to the client unchanged. The SDP answer so carries the room's node's candidates, and the media goes
straight there, as with a relayed signal connection; clients follow no redirect (RFC 9725 lets WHIP servers
redirect, but encoders' support varies: FFmpeg's muxer re-POSTs on none).

The signal node has read and bounded the request's body; the room's node trusts the bus (as it trusts relayed signal
connections) and serves the request with its own routes. Flags set by the signal node (e.g. that the request is the
RTMP listener's worker, which only the node that spawned it can tell) travel in the ASGI scope (FLAGS)."""
from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .relay import SCOPE_FLAG
from .rpc import CallFailed, Rpc

SERVICE = "http"
CALL_TIMEOUT_S = 5.0  # an offer is answered at once; the room's node may first claim an ingress in Redis
# Request headers the room's node needs to serve the request as the signal node received it (host and scheme:
# the Location it answers names the URL the client used).
RELAYED_HEADERS = (b"authorization", b"content-type", b"host", b"if-match", b"origin", b"user-agent",
                   b"x-forwarded-for", b"x-forwarded-proto")
RESPONSE_HEADERS = ("content-type", "location", "etag", "link", "allow", "accept-post")
_LENGTH = struct.Struct("!I")
FLAGS = "tern.flags"  # ASGI scope key: {name: value} the signal node set on a relayed request

App = Callable[[dict, Any, Any], Awaitable[None]]


def _pack(head: dict, body: bytes) -> bytes:
    encoded = json.dumps(head).encode()
    return _LENGTH.pack(len(encoded)) + encoded + body


def _unpack(data: bytes) -> tuple[dict, bytes]:
    (length,) = _LENGTH.unpack_from(data)
    head = json.loads(data[_LENGTH.size:_LENGTH.size + length])
    if not isinstance(head, dict):
        raise ValueError("not an object")
    return head, data[_LENGTH.size + length:]


async def forward(rpc: Rpc, owner: str, request: Request, body: bytes, flags: dict[str, str] | None = None) -> Response:
    """Serves `request` (whose body was read: `body`) on node `owner`, with `flags` in its scope; 503 if it does not
    answer."""
    scope = request.scope
    head = {
        "method": request.method, "path": scope["path"], "scheme": scope.get("scheme", "http"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope.get("headers", [])
                    if k.lower() in RELAYED_HEADERS],
        "flags": flags or {},
    }
    return await _call(rpc, owner, head, body)


async def delete(rpc: Rpc, owner: str, path: str) -> Response:
    """A DELETE of the resource at `path` served by node `owner` (a session this node handed over ends)."""
    return await _call(rpc, owner, {"method": "DELETE", "path": path, "scheme": "http", "query": "", "headers": [],
                                    "flags": {}}, b"")


async def _call(rpc: Rpc, owner: str, head: dict, body: bytes) -> Response:
    try:
        reply = await rpc.call(owner, SERVICE, "request", _pack(head, body), CALL_TIMEOUT_S)
        answer, content = _unpack(reply)
        response = Response(content, status_code=int(answer["status"]))
        for name, value in answer["headers"]:
            response.headers.append(name, value)
        return response
    except (CallFailed, RedisError, OSError, ValueError, KeyError, TypeError) as error:
        rpc.counters["relay_http_failed"] += 1
        return PlainTextResponse(f"the room's node did not answer: {error}", status_code=503,
                                 headers={"Access-Control-Allow-Origin": "*"})


def server(app: App) -> Callable[[str, bytes], Awaitable[bytes]]:
    """The rpc handler running relayed requests through `app`, this node's routes."""

    async def serve(method: str, data: bytes) -> bytes:
        try:
            head, body = _unpack(data)
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": str(head["method"]),
                "scheme": str(head["scheme"]), "path": str(head["path"]), "raw_path": str(head["path"]).encode(),
                "root_path": "", "query_string": str(head["query"]).encode("latin-1"), "client": None,
                "server": None, SCOPE_FLAG: True, FLAGS: _flags(head.get("flags", {})),
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in head["headers"]
                            if k.encode("latin-1").lower() in RELAYED_HEADERS],
            }
        except (ValueError, KeyError, TypeError, struct.error, AttributeError, UnicodeError):
            raise CallFailed("malformed", "not a relayed HTTP request") from None
        sent = False
        status, headers, content = 500, [], bytearray()

        async def receive() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])
                           if k.decode("latin-1").lower() in RESPONSE_HEADERS
                           or k.decode("latin-1").lower().startswith("access-control-")]
            elif message["type"] == "http.response.body":
                content.extend(message.get("body", b""))

        await app(scope, receive, send)
        return _pack({"status": status, "headers": headers}, bytes(content))

    return serve


def _flags(flags: object) -> dict[str, str]:
    if not isinstance(flags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in flags.items()):
        raise ValueError("flags are not names and values")
    return flags
