"""Webhooks: LiveKit's signed event POSTs to the operator's URLs, delivered in the background.

Each URL has its own bounded queue and delivery task, so events reach each URL in order and a
slow or dead receiver delays only its own events: `notify` is O(1), synchronous and never waits.
A failed POST is retried with exponential backoff until it has failed for `retry_for` seconds;
then, like events that found the queue full, it is dropped, counted, and reported to the receiver
in the next event's `numDropped`.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
import jwt
from google.protobuf import json_format
from livekit.protocol import agent, ingress, models, webhook
from livekit.protocol import egress as egress_proto

from .auth import ALGORITHM
from .rtc.ids import new_id

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/webhook+json"
USER_AGENT = "tern"
TOKEN_TTL = 5 * 60  # LiveKit's: a receiver refuses a replayed event after this
# Seconds queued events (room_finished among them) get to be delivered when the server stops; the rest are dropped,
# counted (webhook_dropped) and logged.
SHUTDOWN_DRAIN_TIME = 2.0


@dataclass(eq=False)
class _Sink:
    """One receiver URL: its queue, and what its delivery task reports in logs and numDropped."""

    url: str
    queue: asyncio.Queue[webhook.WebhookEvent]
    name: str = ""        # the URL without credentials, for logs
    dropped: int = 0      # since the last event handed to this receiver
    overflowing: bool = False
    failing: bool = False
    in_flight: bool = False
    task: asyncio.Task | None = field(default=None, repr=False)


def _display_name(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class WebhookNotifier:
    def __init__(
        self,
        api_key: str,
        api_secret: str,
        urls: list[str],
        counters: Counter[str],
        *,
        queue_size: int = 1000,
        post_timeout: float = 5.0,
        retry_initial: float = 0.5,
        retry_max: float = 10.0,
        retry_for: float = 60.0,
    ) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self._counters = counters
        self._sinks = [_Sink(url, asyncio.Queue(queue_size), _display_name(url)) for url in urls]
        self._post_timeout = post_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._retry_for = retry_for
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def start(self) -> None:
        """Starts one delivery task per URL; call on the running event loop."""
        loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._post_timeout), headers={"User-Agent": USER_AGENT})
        for sink in self._sinks:
            sink.task = loop.create_task(self._deliver(sink), name=f"webhook {sink.name}")

    def notify(
        self,
        event: str,
        *,
        room: models.Room | None = None,
        participant: models.ParticipantInfo | None = None,
        track: models.TrackInfo | None = None,
        job: agent.Job | None = None,
        ingress_info: ingress.IngressInfo | None = None,
        egress: egress_proto.EgressInfo | None = None,
    ) -> None:
        """Queues `event` for every URL. The messages are copied now: callers go on mutating theirs."""
        if self._closed:
            return
        try:
            message = webhook.WebhookEvent(event=event, id=new_id("EV_"), created_at=int(time.time()))
            if room is not None:
                message.room.CopyFrom(room)
            if participant is not None:
                message.participant.CopyFrom(participant)
            if track is not None:
                message.track.CopyFrom(track)
            if job is not None:
                message.job.CopyFrom(job)
            if ingress_info is not None:
                message.ingress_info.CopyFrom(ingress_info)
            if egress is not None:
                message.egress_info.CopyFrom(egress)
        except (TypeError, ValueError):  # a caller's bug must not break the room operation it reports
            log.exception("webhook event %r not sent", event)
            for sink in self._sinks:
                self._drop(sink)
            return
        for sink in self._sinks:
            try:
                sink.queue.put_nowait(message)
                sink.overflowing = False
            except asyncio.QueueFull:
                self._drop(sink)
                if not sink.overflowing:
                    sink.overflowing = True
                    log.warning("webhook queue for %s is full: dropping events until it drains", sink.name)

    async def close(self, timeout: float = SHUTDOWN_DRAIN_TIME) -> None:
        """Gives queued events up to `timeout` seconds to be delivered, then stops; the rest are dropped."""
        self._closed = True
        tasks = [sink.task for sink in self._sinks if sink.task is not None]
        if tasks:
            try:
                await asyncio.wait_for(asyncio.gather(*(sink.queue.join() for sink in self._sinks)), timeout)
            except asyncio.TimeoutError:
                unsent = sum(sink.queue.qsize() + int(sink.in_flight) for sink in self._sinks)
                self._counters["webhook_dropped"] += unsent
                log.warning("%d webhook events not delivered within %g s of shutdown: dropped", unsent, timeout)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _drop(self, sink: _Sink) -> None:
        sink.dropped += 1
        self._counters["webhook_dropped"] += 1

    async def _deliver(self, sink: _Sink) -> None:
        while True:
            message = await sink.queue.get()
            sink.in_flight = True
            if sink.dropped:
                # The queued message is shared by every URL; numDropped is this receiver's own.
                own = webhook.WebhookEvent()
                own.CopyFrom(message)
                own.num_dropped, sink.dropped = sink.dropped, 0
                message = own
            # ASCII-only JSON: the signed hash then holds whatever charset the receiver decodes with.
            body = json_format.MessageToJson(message, indent=None, ensure_ascii=True).encode()
            await self._send(sink, body, message.event)
            sink.in_flight = False
            sink.queue.task_done()

    async def _send(self, sink: _Sink, body: bytes, event: str) -> None:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._retry_for
        delay = self._retry_initial
        while True:
            error = await self._post(sink.url, body)
            if error is None:
                self._counters["webhook_sent"] += 1
                if sink.failing:
                    sink.failing = False
                    log.info("webhook receiver %s is answering again", sink.name)
                return
            self._counters["webhook_failed_attempts"] += 1
            if not sink.failing:
                sink.failing = True
                log.warning("webhook POST to %s failed (%s); retrying with backoff", sink.name, error)
            if loop.time() + delay > give_up_at:
                self._drop(sink)
                log.warning("webhook %s to %s dropped after %.0f s of failures (%s)",
                            event, sink.name, self._retry_for, error)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _post(self, url: str, body: bytes) -> str | None:
        """POSTs one signed event; None when the receiver accepted it, else why not."""
        assert self._session is not None, "start() first"
        headers = {"Authorization": self._sign(body), "Content-Type": CONTENT_TYPE}
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except asyncio.TimeoutError:
            return f"no answer within {self._post_timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return str(exc) or type(exc).__name__

    def _sign(self, body: bytes) -> str:
        """LiveKit's webhook token: the API key as issuer and the body's SHA-256 as the `sha256` claim."""
        now = int(time.time())
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        claims = {"iss": self._api_key, "nbf": now, "exp": now + TOKEN_TTL, "sha256": digest}
        return jwt.encode(claims, self._api_secret, algorithm=ALGORITHM)
