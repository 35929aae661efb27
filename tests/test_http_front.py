"""The HTTP front against hostile clients: on a real server process, oversized and unauthorised Twirp bodies,
slowloris heads, tokens in logs, what token refusals reveal; in process, the connection cap and head deadline."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from pathlib import Path

import jwt
import pytest
import uvicorn
from livekit import api
from livekit.protocol import rtc as signal
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from conftest import API_KEY, API_SECRET, Server, free_port
from signal_client import SignalClient
from signaling import httpfront
from signaling.httpfront import HEAD_TIMEOUT, MAX_PENDING_HEADS_PER_ADDRESS, UNREAD_BODY_TIME
from signaling.roomservice import BODY_TIMEOUT, MAX_BODY_SIZE

UPDATE_METADATA = "/twirp/livekit.RoomService/UpdateRoomMetadata"
BIG = 2 * 1024 * 1024


def admin_token(room: str = "front-room") -> str:
    grants = api.VideoGrants(room_admin=True, room=room, room_join=True)
    return api.AccessToken(API_KEY, API_SECRET).with_identity("op").with_grants(grants).to_jwt()


def rss(server: Server) -> int:
    """The server process's resident memory in bytes."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def exchange(server: Server, head: bytes, body_chunks: list[bytes] = (), timeout: float = 10,
                   closed_within: float | None = None) -> tuple[int, dict, bytes]:
    """Sends `head` and then `body_chunks` while reading the answer, as a client that does not wait for the
    server before sending its body. Returns the status, headers and body of the answer; with `closed_within`,
    also checks that the server then closes the connection within that many seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)

    async def send_body() -> None:
        try:
            for chunk in body_chunks:
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:  # the server answered and closed without reading the rest: what we test
            pass

    writer.write(head)
    sender = asyncio.create_task(send_body())
    try:
        answer = b""
        async with asyncio.timeout(timeout):
            while b"\r\n\r\n" not in answer:
                data = await reader.read(65536)
                assert data, f"connection closed without an answer: {answer!r}"
                answer += data
            head_text, _, rest = answer.partition(b"\r\n\r\n")
            lines = head_text.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                data = await reader.read(65536)
                assert data, "connection closed in the answer's body"
                rest += data
        if closed_within is not None:
            async with asyncio.timeout(closed_within):
                while await reader.read(65536):
                    pass
        return int(lines[0].split()[1]), headers, rest[:length]
    finally:
        sender.cancel()
        writer.close()


def twirp_head(token: str, length: int | None, content_type: str = "application/json") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {UPDATE_METADATA} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\n\r\n").encode()


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    pieces = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return pieces + [b"0\r\n\r\n"]


async def test_oversized_twirp_bodies_get_413_and_memory_stays_bounded(server: Server):
    token = admin_token()
    body = json.dumps({"room": "front-room", "metadata": "x" * BIG}).encode()
    before = rss(server)
    for _ in range(5):
        # Declared too long: refused on the head. Chunked, with no length to trust: refused after cap + 1 bytes.
        for head, chunks in ((twirp_head(token, len(body)), [body]), (twirp_head(token, None), chunked(body))):
            # The whole body is sent before the answer is read (as most clients do): the answer still arrives.
            status, headers, answer = await exchange(server, head, chunks)
            assert status == 413, answer
            assert json.loads(answer)["code"] == "resource_exhausted"
    # What LiveKit's server SDK (aiohttp, body first) shows its caller.
    async with api.LiveKitAPI(server.http, API_KEY, API_SECRET) as lkapi:
        with pytest.raises(api.ServerError) as error:
            await lkapi.room.update_room_metadata(api.UpdateRoomMetadataRequest(room="front-room", metadata="m" * BIG))
    assert (error.value.status, error.value.code) == (413, "resource_exhausted")
    assert rss(server) - before < 50 * 1024 * 1024
    # Just under the cap is served (the room does not exist: a Twirp not_found, after the body was read and parsed).
    fits = json.dumps({"room": "front-room", "metadata": "x" * (MAX_BODY_SIZE - 100)}).encode()
    status, _, answer = await exchange(server, twirp_head(token, len(fits)), [fits])
    assert status == 404 and json.loads(answer)["code"] == "not_found", answer


@pytest.mark.parametrize("token, status", [
    (lambda server: server.token("joiner", "front-room"), 403),  # a join token: no roomAdmin
    (lambda server: "not-a-token", 401),
    (lambda server: admin_token("another-room").replace(".", ".x", 1), 401),  # tampered
], ids=["join-token", "garbage", "tampered"])
async def test_refused_callers_bodies_are_never_read(server: Server, token, status):
    """A 1 GiB declared body that never comes: the answer can only arrive if the server did not wait for it, and
    the server does not wait for the body afterwards either."""
    closed = server.counters().get("http_unread_body_closed", 0)
    answer_status, headers, answer = await exchange(server, twirp_head(token(server), 1 << 30), timeout=5,
                                                    closed_within=UNREAD_BODY_TIME + 3)
    assert answer_status == status, answer
    assert json.loads(answer)["code"] in ("permission_denied", "unauthenticated")
    assert server.counters()["http_unread_body_closed"] == closed + 1


async def test_a_body_that_does_not_arrive_is_a_408(server: Server):
    """A caller with the grant who announces a body and sends only part of it."""
    head = twirp_head(admin_token(), 100)
    status, _, answer = await exchange(server, head, [b'{"room": '], timeout=BODY_TIMEOUT + 5)
    assert status == 408 and json.loads(answer)["code"] == "deadline_exceeded", answer


async def _slowloris(server: Server, address: str, count: int) -> list[socket.socket]:
    """`count` connections from `address` that have sent the first bytes of a request head (non-blocking)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((address, 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.http_port))
        sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    return sockets


def _open(sock: socket.socket) -> bool:
    """False once the server has closed (EOF or reset) this connection."""
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def test_slowloris_does_not_stop_joins_and_is_cut_at_the_head_deadline(server: Server):
    started = time.monotonic()
    # One address with more dribbling connections than it may hold, and the joining client's own address with some.
    flood = await _slowloris(server, "127.0.0.2", MAX_PENDING_HEADS_PER_ADDRESS + 100)
    local = await _slowloris(server, "127.0.0.1", MAX_PENDING_HEADS_PER_ADDRESS // 2)

    async def dribble() -> None:
        while True:
            await asyncio.sleep(1)
            for sock in flood + local:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    dribbler = asyncio.create_task(dribble())
    try:
        await asyncio.sleep(1.5)
        assert sum(map(_open, flood)) <= MAX_PENDING_HEADS_PER_ADDRESS  # the rest were closed at once
        for attempt in range(3):  # joins and leaves during the flood, each well within the flood's lifetime
            client, join = await asyncio.wait_for(SignalClient.join(server.url, server.token(f"u{attempt}", "loris")), 5)
            assert join.participant.identity == f"u{attempt}"
            await client.connection.close()
        assert time.monotonic() - started < HEAD_TIMEOUT  # the flood was still there during those joins
        # Past the head deadline every dribbling connection is gone.
        async with asyncio.timeout(HEAD_TIMEOUT + 5):
            while any(map(_open, flood + local)):
                await asyncio.sleep(0.2)
    finally:
        dribbler.cancel()
        for sock in flood + local:
            sock.close()
    counters = server.counters()
    assert counters["http_pending_heads_refused"] >= 100, counters
    assert counters["http_head_timeout"] >= MAX_PENDING_HEADS_PER_ADDRESS + len(local), counters


async def test_access_tokens_are_redacted_from_the_log(server: Server):
    token = server.token("browser", "log-room")
    async with connect(f"{server.url}/rtc?access_token={token}&protocol=16") as connection:
        first = signal.SignalResponse.FromString(await asyncio.wait_for(connection.recv(), 10))
        assert first.WhichOneof("message") == "join"
    status, _, _ = await exchange(server, f"GET /rtc/validate?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 200
    # SDKs that send `Authorization: Bearer`: the dev server logs the WebSocket handshake's headers at debug level.
    sdk_token = server.token("sdk", "log-room")
    client, _ = await SignalClient.join(server.url, sdk_token)
    await client.connection.close()
    await asyncio.sleep(0.5)
    log = server.log()
    for secret in (token, sdk_token):
        assert secret.split(".")[2] not in log  # not even the signature
    assert "access_token=[redacted]" in log and "Bearer [redacted]" in log


async def test_validate_does_not_reveal_which_api_keys_exist(server: Server):
    answers = []
    for key, secret in ((API_KEY, "a-wrong-secret-that-is-long-enough-0000"), ("nokey", API_SECRET)):
        token = api.AccessToken(key, secret).with_identity("x").with_grants(
            api.VideoGrants(room_join=True, room="r")).to_jwt()
        answers.append(await exchange(server, f"GET /rtc/validate?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
    (status, _, body), (other_status, _, other_body) = answers
    assert status == other_status == 401 and body == other_body, answers


@pytest.mark.parametrize("exp", ["tomorrow", [1], float("nan"), 1e999, 1.5])
async def test_non_integer_exp_is_a_clean_401(server: Server, exp):
    token = jwt.encode({"iss": API_KEY, "sub": "x", "exp": exp, "video": {"roomJoin": True, "room": "r"}},
                       API_SECRET, algorithm="HS256")
    status, _, body = await exchange(server, f"GET /rtc/validate?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 401 and (body.startswith(b"invalid token") or body == b"token expired"), body
    assert "Traceback" not in server.log()


# -- the protocol's limits in process, with small values ------------------------------------------------------------

@pytest.fixture
async def front(monkeypatch):
    """A uvicorn server with the guarded protocol and a one-route app; yields (port, counters)."""
    monkeypatch.setattr(httpfront, "MAX_CONNECTIONS", 5)
    monkeypatch.setattr(httpfront, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(httpfront, "UNREAD_BODY_TIME", 0.5)
    counters: Counter[str] = Counter()
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("OK"), methods=["GET", "POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning",
                                           http=httpfront.protocol_class(counters)))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield port, counters
    server.should_exit = True
    await task


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1024), within) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_connections_past_the_cap_are_closed_at_once(front):
    port, counters = front
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    reader, _ = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_by_server(reader, 2)
    assert counters["http_connection_refused"] == 1
    for _, writer in held:
        writer.close()


async def test_heads_must_complete_within_the_deadline_also_on_keep_alive(front):
    port, counters = front
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # in time: answered, connection kept
    assert (await reader.readuntil(b"\r\n\r\nOK")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET / HTTP/1.1\r\n")  # the next head, never finished, a byte at a time
    for _ in range(20):
        await asyncio.sleep(0.1)
        if writer.is_closing():
            break
        writer.write(b"X")
    assert await _closed_by_server(reader, 2)
    assert counters["http_head_timeout"] == 1


async def test_a_body_answered_unread_is_discarded_for_a_bounded_time(front):
    port, counters = front
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\nOK")).startswith(b"HTTP/1.1 200")  # answered before the body
    writer.write(b"x" * 100000 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the body in time, then a next request
    assert (await reader.readuntil(b"\r\n\r\nOK")).startswith(b"HTTP/1.1 200")
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\nOK")).startswith(b"HTTP/1.1 200")
    assert await _closed_by_server(reader, 2)  # the body never came
    assert counters["http_unread_body_closed"] == 1 and not counters["http_head_timeout"]
