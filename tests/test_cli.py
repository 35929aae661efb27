"""The operator CLI (`tern token create`, `tern room`, `tern participant`, `tern send-data`) against a running
server, its effects checked from LiveKit SDK clients in the rooms."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
from livekit import rtc
from livekit.protocol import models

from clients import connect, remote, until
from conftest import API_KEY, API_SECRET, ROOT, free_port
from media import Publisher, wait_for_tracks
from signaling import cli
from signaling.auth import TokenVerifier

# The dev secret is short; pytest resets the filter signaling/auth.py installs for pyjwt's warning about it.
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@pytest.fixture
def tern(server, capsys, monkeypatch):
    """Runs `tern ARGS...` in-process (in a thread: the CLI runs its own event loop) against the server, with
    the credentials in LiveKit's environment variables."""
    monkeypatch.setenv("LIVEKIT_URL", server.url)
    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", API_SECRET)

    async def run(*argv: str) -> Run:
        capsys.readouterr()
        code = await asyncio.to_thread(cli.main, list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Run(code, out, err)
    return run


async def test_rooms_are_created_listed_updated_and_deleted(server, tern):
    created = await tern("room", "create", "cli-room", "--empty-timeout", "40", "--departure-timeout", "7",
                         "--max-participants", "5", "--metadata", "first", "--json")
    assert created.code == 0, created.err
    room = created.json()
    assert (room["name"], room["emptyTimeout"], room["departureTimeout"], room["maxParticipants"],
            room["metadata"]) == ("cli-room", 40, 7, 5, "first")

    alice = await connect(server, "alice", "cli-room")
    changed = asyncio.Event()
    alice.on("room_metadata_changed", lambda old, new: changed.set())
    reasons: list[int] = []
    alice.on("disconnected", reasons.append)
    try:
        listed = await tern("room", "list")
        assert listed.code == 0
        header, *rows = listed.out.splitlines()
        assert header.split() == ["SID", "NAME", "PARTICIPANTS", "PUBLISHERS", "CREATED", "METADATA"]
        row = next(line.split() for line in rows if line.split()[1] == "cli-room")
        assert (row[0], row[2], row[-1]) == (room["sid"], "1", "first")
        assert (await tern("room", "list", "elsewhere")).out.strip() == "no rooms"

        updated = await tern("room", "update-metadata", "cli-room", "second")
        assert updated.code == 0 and "metadata     second" in updated.out
        await asyncio.wait_for(changed.wait(), 10)
        assert alice.metadata == "second"

        deleted = await tern("room", "delete", "cli-room")
        assert (deleted.code, deleted.out.strip()) == (0, "deleted room cli-room")
        await until(lambda: reasons)
        assert reasons == [models.DisconnectReason.ROOM_DELETED]
        assert (await tern("room", "list", "cli-room", "--json")).json() == {}
    finally:
        await alice.disconnect()


async def test_participants_are_listed_updated_and_removed(server, tern):
    alice = await connect(server, "alice", "cli-people")
    bob = await connect(server, "bob", "cli-people")
    try:
        listed = await tern("participant", "list", "cli-people")
        assert listed.code == 0
        assert sorted(line.split()[1] for line in listed.out.splitlines()[1:]) == ["alice", "bob"]
        info = (await tern("participant", "get", "cli-people", "alice", "--json")).json()
        assert (info["sid"], info["identity"]) == (alice.local_participant.sid, "alice")

        updated = await tern("participant", "update", "cli-people", "alice", "--name", "Alice", "--metadata", "m1",
                             "--attribute", "role=host", "--can-publish", "false")
        assert updated.code == 0, updated.err
        assert "name        Alice" in updated.out and "publish=no subscribe=yes" in updated.out
        await until(lambda: (remote(bob, "alice").name, remote(bob, "alice").metadata,
                             remote(bob, "alice").attributes) == ("Alice", "m1", {"role": "host"}))
        info = (await tern("participant", "get", "cli-people", "alice", "--json")).json()
        # Only the flag given changed: the rest of the permission is what alice had.
        assert info["permission"].get("canPublish", False) is False
        assert info["permission"]["canSubscribe"] and info["permission"]["canPublishData"]

        reasons: list[int] = []
        alice.on("disconnected", reasons.append)
        removed = await tern("participant", "remove", "cli-people", "alice")
        assert (removed.code, removed.out.strip()) == (0, "removed alice from cli-people")
        await until(lambda: reasons and remote(bob, "alice") is None)
        assert reasons == [models.DisconnectReason.PARTICIPANT_REMOVED]

        missing = await tern("participant", "get", "cli-people", "alice")
        assert missing.code == 1 and missing.err.startswith("tern: not_found: ")
        assert len(missing.err.splitlines()) == 1
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_mute_and_subscriptions(server, tern):
    alice = await connect(server, "alice", "cli-mute")
    publisher = Publisher(alice, video=False)
    bob = await connect(server, "bob", "cli-mute", auto_subscribe=False)
    try:
        await publisher.start()
        local = next(iter(alice.local_participant.track_publications.values()))
        await until(lambda: remote(bob, "alice") and remote(bob, "alice").track_publications)

        subscribed = await tern("participant", "subscribe", "cli-mute", "bob", local.sid)
        assert subscribed.code == 0, subscribed.err
        await wait_for_tracks(bob, 1)
        unsubscribed = await tern("participant", "unsubscribe", "cli-mute", "bob", local.sid)
        assert (unsubscribed.code, unsubscribed.out.strip()) == (0, f"unsubscribed bob in cli-mute from {local.sid}")

        muted = await tern("participant", "mute", "cli-mute", "alice", local.sid)
        assert muted.code == 0 and muted.out.startswith(f"muted {local.sid} (AUDIO MICROPHONE")
        await until(lambda: local.muted)  # the publisher's SDK muted its track
        await until(lambda: next(iter(remote(bob, "alice").track_publications.values())).muted)
        shown = await tern("participant", "get", "cli-mute", "alice")
        assert f"{local.sid} (AUDIO MICROPHONE" in shown.out and shown.out.rstrip().endswith("muted")

        refused = await tern("participant", "mute", "cli-mute", "alice", local.sid, "--unmute")
        assert refused.code == 1 and refused.err.startswith("tern: failed_precondition: ")
    finally:
        await publisher.stop()
        await alice.disconnect()
        await bob.disconnect()


async def test_send_data_reaches_everyone_or_the_named(server, tern):
    alice = await connect(server, "alice", "cli-data")
    bob = await connect(server, "bob", "cli-data")
    received: dict[str, list[rtc.DataPacket]] = {"alice": [], "bob": []}
    alice.on("data_received", received["alice"].append)
    bob.on("data_received", received["bob"].append)
    try:
        sent = await tern("send-data", "cli-data", "hello all", "--topic", "news")
        assert (sent.code, sent.out.strip()) == (0, "sent 9 bytes to everyone in cli-data on topic news")
        await until(lambda: received["alice"] and received["bob"])
        packet = received["bob"][0]
        assert (packet.data, packet.topic, packet.participant) == (b"hello all", "news", None)
        assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE

        assert (await tern("send-data", "cli-data", "just bob", "--identity", "bob", "--lossy")).code == 0
        await until(lambda: len(received["bob"]) == 2)
        assert (received["bob"][1].data, received["bob"][1].kind) == (b"just bob", rtc.DataPacketKind.KIND_LOSSY)
        # A later packet to everyone arrives at alice after anything sent before it would have.
        assert (await tern("send-data", "cli-data", "last")).code == 0
        await until(lambda: len(received["alice"]) == 2)
        assert [p.data for p in received["alice"]] == [b"hello all", b"last"]
    finally:
        await alice.disconnect()
        await bob.disconnect()


async def test_refusals_and_usage_errors_are_one_line(server, tern, monkeypatch):
    wrong = await tern("room", "list", "--api-secret", "not-the-secret")
    assert wrong.code == 1 and wrong.err.startswith("tern: unauthenticated: ") and len(wrong.err.splitlines()) == 1
    assert (await tern("room", "delete", "no-such-room")).err.startswith("tern: not_found: ")
    single = await tern("nodes", "list")  # no redis.address: not a cluster
    assert single.code == 1 and single.err.startswith("tern: not_found: not a cluster")

    # Flags override the environment; a ws:// URL works as livekit-api converts it.
    monkeypatch.setenv("LIVEKIT_API_KEY", "other")
    assert (await tern("room", "list")).err.startswith("tern: unauthenticated: ")
    assert (await tern("room", "list", "--api-key", API_KEY, "--url", server.url)).code == 0

    monkeypatch.delenv("LIVEKIT_API_KEY")
    missing = await tern("room", "list")
    assert missing.code == 2 and "--api-key or LIVEKIT_API_KEY" in missing.err
    assert "LIVEKIT_API_SECRET" not in missing.err
    monkeypatch.setenv("LIVEKIT_API_KEY", API_KEY)
    for url in ("ftp://host", "http://", "http://[::1", "http://host:port"):
        assert (await tern("room", "list", "--url", url)).code == 2
    assert (await tern("room", "create")).code == 2  # no NAME
    assert (await tern("participant", "update", "r", "alice")).code == 2  # nothing to update
    assert (await tern("participant", "update", "r", "alice", "--can-publish", "maybe")).code == 2


def test_unreachable_server_is_one_line_without_traceback():
    port = free_port()  # nothing listens there
    env = {**os.environ, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET}
    result = subprocess.run([sys.executable, "-m", "signaling", "participant", "list", "room",
                             "--url", f"http://127.0.0.1:{port}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith(f"tern: cannot reach http://127.0.0.1:{port}: ")
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""


def test_token_create_carries_the_grants(capsys, monkeypatch):
    monkeypatch.setenv("LIVEKIT_API_KEY", "opkey")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s" * 32)
    assert cli.main(["token", "create", "--room", "r", "--identity", "ivy", "--name", "Ivy", "--metadata", "m",
                     "--attribute", "team=blue", "--attribute", "seat=3", "--valid-for", "30m", "--hidden",
                     "--can-update-metadata", "--no-publish-data", "--can-publish-sources", "microphone",
                     "--kind", "agent"]) == 0
    claims, room = TokenVerifier({"opkey": "s" * 32}).verify_join(capsys.readouterr().out.strip())
    assert (room, claims.identity, claims.name, claims.metadata, claims.kind) == ("r", "ivy", "Ivy", "m", "agent")
    assert claims.attributes == {"team": "blue", "seat": "3"}
    assert claims.video.hidden and claims.video.can_update_own_metadata and not claims.video.can_publish_data
    assert claims.video.can_publish_sources == ("microphone",) and not claims.video.room_admin
    assert 1700 < claims.expires_at - time.time() <= 1800

    # An operator token without a room: no join, only the room grants asked for.
    assert cli.main(["token", "create", "--room-list", "--room-create"]) == 0
    claims = TokenVerifier({"opkey": "s" * 32}).verify(capsys.readouterr().out.strip())
    assert claims.video.room_list and claims.video.room_create and not claims.video.room_join

    assert cli.main(["token", "create"]) == 2  # nothing to grant
    assert cli.main(["token", "create", "--room", "r"]) == 2  # joining needs an identity
    assert cli.main(["token", "create", "--room-list", "--admin"]) == 2  # roomAdmin of which room?
    assert cli.main(["token", "create", "--room", "r", "--identity", "i", "--can-publish-sources", "radio"]) == 2
    monkeypatch.delenv("LIVEKIT_API_SECRET")
    assert cli.main(["token", "create", "--room", "r", "--identity", "i"]) == 2
    assert "LIVEKIT_API_SECRET" in capsys.readouterr().err


def test_load_test_receives_its_arguments_untouched(monkeypatch):
    seen: list[list[str]] = []
    module = type(sys)("signaling.clients.loadtest")
    module.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "signaling.clients.loadtest", module)
    assert cli.main(["load-test", "--rooms", "3", "--url", "x", "-h"]) == 7
    assert seen == [["--rooms", "3", "--url", "x", "-h"]]
