"""Cluster mode through Redis Sentinel (redis.sentinel_master_name, redis.sentinel_addresses): a tern node finds the
master through a real Sentinel (Debian's redis-server in sentinel mode), and when the master is killed and the
Sentinel promotes the replica, the node registers on the new master and places new rooms there."""
from __future__ import annotations

import json
import time

import pytest
from livekit import api

from bench.redis_server import RedisSentinel, RedisServer
from conftest import API_KEY, API_SECRET, free_port, start_server, stop_server
from signal_client import SignalClient

pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")
MASTER_NAME = "tern-master"


@pytest.fixture
def sentinel(tmp_path):
    """A master, its replica (in sync) and a Sentinel watching them."""
    master = RedisServer(tmp_path / "master", free_port())
    replica = RedisServer(tmp_path / "replica", free_port())
    watcher = RedisSentinel(tmp_path / "sentinel", free_port(), MASTER_NAME, master)
    servers = [master, replica, watcher]
    for server in servers:
        server.directory.mkdir()
    try:
        master.start("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")  # the replica syncs at once
        replica.start("--replicaof", "127.0.0.1", str(master.port))
        _wait(lambda: replica.client().info("replication")["master_link_status"] == "up", "replication")
        watcher.start()  # after the replica is up: the Sentinel learns of it from the master's first INFO
        yield master, replica, watcher
    finally:
        for server in servers:
            server.stop()


def _wait(predicate, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # a server mid-failover: ask again
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _registered_after(client, moment: float) -> bool:
    values = [client.get(key) for key in client.keys("tern:node:*")]
    return any(json.loads(value)["updated_at"] > moment for value in values if value)


async def test_a_node_follows_the_master_through_a_sentinel_failover(sentinel, tmp_path):
    master, replica, watcher = sentinel
    (tmp_path / "tern").mkdir()
    server = start_server(tmp_path / "tern", config=(
        f"redis: {{sentinel_master_name: {MASTER_NAME}, sentinel_addresses: ['{watcher.address}']}}\n"))
    try:
        _wait(lambda: master.client().keys("tern:node:*"), "the node's registration on the master")
        assert f"master {MASTER_NAME} of Sentinels {watcher.address}" in server.log()
        token = lambda room: api.AccessToken(API_KEY, API_SECRET).with_identity("joiner").with_grants(
            api.VideoGrants(room_join=True, room=room)).to_jwt()
        client, join = await SignalClient.join(server.url, token("before"))
        await client.connection.close()
        assert master.client().hget("tern:room_node", "before") == join.server_info.node_id.encode()
        _wait(lambda: watcher.client().execute_command("SENTINEL", "REPLICAS", MASTER_NAME), "the replica's discovery")
        master.stop()  # kill -9: Sentinel promotes the replica after a second of silence
        killed = time.monotonic()
        _wait(lambda: replica.client().info("replication")["role"] == "master", "the replica's promotion")
        promoted = time.time()
        _wait(lambda: _registered_after(replica.client(), promoted), "the node's registration on the new master")
        print(f"the node registered on the new master {time.monotonic() - killed:.1f} s after the master's kill")
        client, join = await SignalClient.join(server.url, token("after"))
        await client.connection.close()
        assert replica.client().hget("tern:room_node", "after") == join.server_info.node_id.encode()
    finally:
        stop_server(server)
    assert "Traceback" not in server.log(), server.log()
