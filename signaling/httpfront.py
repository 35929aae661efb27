"""The HTTP front's own limits, around uvicorn's h11 protocol: a connection cap, a deadline for the request head
(uvicorn has none: a client may dribble a header forever), a cap on unfinished heads per client address (slowloris),
a bounded lingering close for bodies answered unread, and an access log that never shows an access token."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

# Open connections (HTTP and WebSocket, so roughly participants + API calls). Past it a new connection is closed at
# once, and uvicorn answers 503 to a request while this many connections or running requests exist
# (limit_concurrency). tools/tern.service raises the file limit to 65536 to leave room for it.
MAX_CONNECTIONS = 4096
# Seconds a client has to send a complete request head, from connecting or from the end of its previous response.
# Go's http.Server has ReadHeaderTimeout, nginx client_header_timeout (60 s); SDKs send their head in one packet.
HEAD_TIMEOUT = 10.0
# Connections from one address that have not finished their request head yet: a slowloris from one address holds
# at most this many; a reverse proxy, which sends whole heads, never comes near it.
MAX_PENDING_HEADS_PER_ADDRESS = 64
# An IPv6 client is given a whole /64 (RFC 6177) and can use any address in it: one /64 counts as one address above.
IPV6_CLIENT_PREFIX = 64
# Bytes of request line + headers (h11's max incomplete event size; its default is 16 KiB). A join token in the
# query can carry metadata; the WebSocket handshake below it allows 8 KiB per line anyway.
MAX_HEAD_SIZE = 32 * 1024
# Seconds an idle keep-alive connection stays open after a response (uvicorn's default).
KEEP_ALIVE_TIMEOUT = 5
# Seconds a client may go on sending a body the server answered without reading (a refused or too large request),
# the rest being discarded; then the connection is closed. Closing at once would reset the connection under a client
# still writing, which then may never see the answer (nginx calls this lingering close; its lingering_time is 30 s).
UNREAD_BODY_TIME = 2.0


def client_address(host: str) -> str:
    """The address a per-address limit counts a client under: its IPv4 address (also when a dual-stack socket names it
    ::ffff:a.b.c.d), or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:  # not an IP (a Unix socket's name): as it is
        return host
    if ip.version == 4:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/{IPV6_CLIENT_PREFIX}", strict=False))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the connection cap and two deadlines: one for each request head, and one for a body
    the application answered without reading (refused, or too large). Made per server by `protocol_class`, which gives
    it the node's counters and the table of unfinished first heads per address."""

    counters: Counter[str]
    pending_heads: Counter[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._lingering_cycle: object | None = None  # the answered request whose body is being discarded
        self._pending_address: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            self.counters["http_connection_refused"] += 1
            transport.abort()
            return
        address = client_address(self.client[0]) if self.client else ""
        if self.pending_heads[address] >= MAX_PENDING_HEADS_PER_ADDRESS:
            self.counters["http_pending_heads_refused"] += 1
            transport.abort()
            return
        self.pending_heads[address] += 1
        self._pending_address = address
        self._set_deadline(HEAD_TIMEOUT, "http_head_timeout")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if self._lingering_cycle is not None:
            if self.cycle is not self._lingering_cycle:  # the unread body ended and the next request began
                self._lingering_cycle = None
                self._clear_deadline()
            elif state is h11.IDLE:  # the unread body ended: wait for the next head as after any response
                self._lingering_cycle = None
                self._set_deadline(HEAD_TIMEOUT, "http_head_timeout")
        elif state is not h11.IDLE:
            # h11 leaves IDLE once a whole head is parsed (a WebSocket upgrade has then already taken the transport).
            self._clear_deadline()
            self._release_address()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing() or self.cycle is None or not self.cycle.response_complete:
            return  # closed, or already serving a pipelined request
        if self.conn.their_state is h11.SEND_BODY:
            # Answered before the body was read: discard what still comes for a while, so that a client writing its
            # whole body before reading sees the answer rather than a reset, then close.
            self._lingering_cycle = self.cycle
            self._set_deadline(UNREAD_BODY_TIME, "http_unread_body_closed")
        elif self.conn.their_state is h11.IDLE:
            # Keep-alive: the next head gets its own deadline (uvicorn's keep-alive timer stops at its first byte).
            self._set_deadline(HEAD_TIMEOUT, "http_head_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._clear_deadline()
        self._release_address()

    def _set_deadline(self, delay: float, counter: str) -> None:
        self._clear_deadline()
        self._deadline = self.loop.call_later(delay, self._deadline_passed, counter)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self, counter: str) -> None:
        self._deadline = None
        self.counters[counter] += 1
        self.transport.abort()  # connection_lost follows and releases the address's slot

    def _release_address(self) -> None:
        address, self._pending_address = self._pending_address, None
        if address is not None:
            self.pending_heads[address] -= 1
            if self.pending_heads[address] <= 0:
                del self.pending_heads[address]


def protocol_class(counters: Counter[str]) -> type[GuardedH11Protocol]:
    """A GuardedH11Protocol for one server: its drops land in `counters` (exported as tern_events_total)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"counters": counters, "pending_heads": Counter()})


# A token in a query (`access_token=`, also percent-encoded as Starlette decodes it) or an Authorization header; and
# /rtc/v1's `join_request=`, which holds the client's SDP (its ICE password) in some 2 KB of base64.
_TOKEN = re.compile(r"(access(?:_|%5[fF])token=|join(?:_|%5[fF])request=|[Bb]earer )[^&\s\"']+")
REDACTED = "[redacted]"


class RedactTokens(logging.Filter):
    """Browsers send their access token in the /rtc query, which uvicorn logs with every request line (HTTP on
    uvicorn.access, WebSocket on uvicorn.error), and at debug level the WebSocket handshake logs every header,
    Authorization included: a token in a log is a credential for whoever reads the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Argument by argument: uvicorn's access formatter unpacks the arguments it logged.
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


def redact(text: str) -> str:
    return _TOKEN.sub(r"\1" + REDACTED, text) if "oken=" in text or "equest=" in text or "earer " in text else text


def redact_access_logs() -> None:
    """Installs RedactTokens on the loggers uvicorn writes request lines to (once: uvicorn configures them anew
    per server, keeping filters)."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactTokens) for existing in logger.filters):
            logger.addFilter(RedactTokens())
