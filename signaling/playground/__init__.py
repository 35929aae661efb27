"""The development playground: a call page at `GET /` and the token endpoint it joins with.

Both exist only in development mode on a loopback bind (`playground_allow_remote` lifts the bind rule): the token
endpoint mints a join token for any room to whoever asks, which is what the dev keys allow anyway, but only the
person at this machine should be asked. Requests must also name a loopback host, so a web page elsewhere cannot
reach them through DNS rebinding. The page is static files beside this module (plain ES modules, no build step);
LiveKit's JS SDK comes from a CDN, pinned to a version with a subresource-integrity hash in index.html."""
from __future__ import annotations

import ipaddress
import logging
import re
import secrets
from collections import Counter
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..auth import create_token
from ..config import Config
from ..rtc.limits import MAX_NAME_LENGTH, MAX_ROOM_NAME_LENGTH, utf8_size

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
TOKEN_PATH = "/playground/token"
TOKEN_TTL = 6 * 3600
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# A development page: every reload gets the files as they are on disk now.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def refusal(config: Config) -> str | None:
    """Why this server does not serve the playground, in words for the page; None when it does."""
    if not config.development:
        return ("the playground is off: this tern server is not in development mode"
                " (start it with `tern --dev`, or set `development: true`)")
    remote = [address for address in config.bind_addresses if not ipaddress.ip_address(address).is_loopback]
    if remote and not config.playground_allow_remote:
        return (f"the playground is off: tern listens on {', '.join(remote)}, not only on loopback, and its token"
                " endpoint would let anyone who reaches the port join any room (set `playground_allow_remote: true`"
                " to serve it there anyway)")
    return None


def _loopback_host(host_header: str) -> bool:
    """Whether a Host header names this machine: localhost or a loopback address, with or without a port."""
    host = host_header.rsplit("]", 1)[0].lstrip("[") if host_header.startswith("[") else host_header.split(":")[0]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):  # RFC 6761: always loopback
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _identity(name: str) -> str:
    """A fresh identity for a display name: two tabs with the same name must not replace each other."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "guest"
    return f"{slug}-{secrets.token_hex(3)}"


class Playground:
    def __init__(self, config: Config, counters: Counter[str]) -> None:
        self.config = config
        self.counters = counters
        self.off = refusal(config)
        # A handful of small files, read once: names come from this directory, never from the request's path.
        self.files = {} if self.off else {path.name: path.read_bytes() for path in STATIC_DIR.iterdir()
                                          if path.suffix in _MEDIA_TYPES}

    def _refused(self, request: Request) -> str | None:
        if self.off:
            return self.off
        host = request.headers.get("host", "")
        if not self.config.playground_allow_remote and not _loopback_host(host):
            return (f"the playground answers only requests to localhost or a loopback address, not {host!r}"
                    " (set `playground_allow_remote: true` to lift this)")
        return None

    def serves_page(self, request: Request) -> bool:
        """`GET /` is the page for a browser (it asks for HTML); health checks (curl, probes) keep getting OK."""
        return self._refused(request) is None and "text/html" in request.headers.get("accept", "")

    def page(self) -> Response:
        return self._file("index.html")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if self._refused(request) is not None or name not in self.files:
            return Response("not found", status_code=404, media_type="text/plain")
        return self._file(name)

    def _file(self, name: str) -> Response:
        return Response(self.files[name], media_type=_MEDIA_TYPES[Path(name).suffix], headers=_HEADERS)

    async def token(self, request: Request) -> Response:
        """`GET /playground/token?room=R&name=N`: a join token for R under a new identity, named N."""
        refused = self._refused(request)
        if refused is not None:
            self.counters["playground_token_refused"] += 1
            return JSONResponse({"error": refused}, status_code=403, headers=_HEADERS)
        room = request.query_params.get("room", "").strip()
        name = request.query_params.get("name", "").strip() or "guest"
        problem = None
        if not room:
            problem = "give the room a name"
        elif utf8_size(room) > MAX_ROOM_NAME_LENGTH:
            problem = f"the room name is longer than {MAX_ROOM_NAME_LENGTH} bytes"
        elif utf8_size(name) > MAX_NAME_LENGTH:
            problem = f"the display name is longer than {MAX_NAME_LENGTH} bytes"
        if problem is not None:
            self.counters["playground_token_invalid"] += 1
            return JSONResponse({"error": problem}, status_code=400, headers=_HEADERS)
        api_key, secret = next(iter(self.config.keys.items()))
        identity = _identity(name)
        token = create_token(api_key, secret, identity, room, TOKEN_TTL, name)
        self.counters["playground_tokens"] += 1
        return JSONResponse({"token": token, "identity": identity, "room": room, "name": name}, headers=_HEADERS)

    def routes(self) -> list[Route]:
        return [Route(TOKEN_PATH, self.token), Route("/playground/{name}", self.static)]
