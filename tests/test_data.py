"""Data between LiveKit Python SDK participants through tern: packets, RPC, text and byte streams."""
from __future__ import annotations

import asyncio
import os

import pytest
from livekit import rtc

from test_session import connect, remote, until


@pytest.fixture
async def trio(server):
    rooms = [await connect(server, identity, "data-room") for identity in ("ann", "ben", "cid")]
    await until(lambda: all(len(r.remote_participants) == 2 for r in rooms))
    yield rooms
    for room in rooms:
        await room.disconnect()


def collect(room: rtc.Room) -> list[tuple[bytes, str | None, str, int]]:
    received: list[tuple[bytes, str | None, str, int]] = []
    room.on("data_received", lambda p: received.append(
        (p.data, p.participant.identity if p.participant else None, p.topic, p.kind)))
    return received


async def test_reliable_and_lossy_packets_to_all_and_to_one(trio):
    ann, ben, cid = trio
    to_ben, to_cid, to_ann = collect(ben), collect(cid), collect(ann)
    await ann.local_participant.publish_data(b"to everyone", reliable=True, topic="chat")
    await ann.local_participant.publish_data(b"only ben", reliable=True, destination_identities=["ben"])
    for i in range(5):  # lossy on loopback does not lose: all arrive, marked lossy
        await ann.local_participant.publish_data(b"lossy %d" % i, reliable=False, topic="pos")
    await until(lambda: len(to_ben) == 7 and len(to_cid) == 6)
    assert to_ben[0] == (b"to everyone", "ann", "chat", rtc.DataPacketKind.KIND_RELIABLE)
    assert to_ben[1][:2] == (b"only ben", "ann")
    assert [p[0] for p in to_cid] == [b"to everyone"] + [b"lossy %d" % i for i in range(5)]
    assert {p[3] for p in to_cid[1:]} == {rtc.DataPacketKind.KIND_LOSSY}
    await asyncio.sleep(0.3)
    assert to_ann == [], "never echoed to the sender"


async def test_rpc_round_trip_with_result_and_error(trio):
    ann, ben, _ = trio

    @ben.local_participant.register_rpc_method("greet")
    async def greet(data: rtc.RpcInvocationData) -> str:
        return f"hello {data.caller_identity}, you said {data.payload}"

    @ben.local_participant.register_rpc_method("fail")
    async def fail(data: rtc.RpcInvocationData) -> str:
        raise rtc.RpcError(1500, "nope", "details")

    answer = await ann.local_participant.perform_rpc(destination_identity="ben", method="greet", payload="hi")
    assert answer == "hello ann, you said hi"
    with pytest.raises(rtc.RpcError) as error:
        await ann.local_participant.perform_rpc(destination_identity="ben", method="fail", payload="")
    assert (error.value.code, error.value.message, error.value.data) == (1500, "nope", "details")


async def test_text_and_byte_streams_arrive_intact(trio):
    ann, ben, cid = trio
    texts: list[tuple[str, str]] = []
    blobs: list[tuple[bytes, str, str]] = []

    async def read_text(reader: rtc.TextStreamReader, identity: str) -> None:
        texts.append((await reader.read_all(), identity))

    async def read_bytes(reader: rtc.ByteStreamReader, identity: str) -> None:
        blobs.append((b"".join([chunk async for chunk in reader]), identity, reader.info.name))

    ben.register_text_stream_handler("notes", lambda r, i: asyncio.create_task(read_text(r, i)))
    ben.register_byte_stream_handler("files", lambda r, i: asyncio.create_task(read_bytes(r, i)))
    text = "tern " * 20000  # 100 kB of text
    blob = os.urandom(300 * 1024)
    await ann.local_participant.send_text(text, topic="notes")
    writer = await ann.local_participant.stream_bytes("blob.bin", total_size=len(blob), topic="files",
                                                      destination_identities=["ben"])
    for offset in range(0, len(blob), 50_000):
        await writer.write(blob[offset:offset + 50_000])
    await writer.aclose()
    await until(lambda: texts and blobs, timeout=30)
    assert texts == [(text, "ann")]
    assert blobs == [(blob, "ann", "blob.bin")]


async def test_data_needs_can_publish_data(server, trio):
    ann, ben, cid = trio
    muted_room = await connect(server, "dan", "data-room", can_publish_data=False)
    to_ann = collect(ann)
    try:
        await until(lambda: remote(ann, "dan") is not None)
        before = server.counters().get("data_not_allowed", 0)
        # The SDK still sends (it has no way to know); the server drops it.
        await muted_room.local_participant.publish_data(b"not allowed", reliable=True)
        await until(lambda: server.counters().get("data_not_allowed", 0) > before)
        await ben.local_participant.publish_data(b"allowed", reliable=True)
        await until(lambda: to_ann)
        assert [p[0] for p in to_ann] == [b"allowed"]
    finally:
        await muted_room.disconnect()
