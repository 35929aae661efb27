"""The cluster's Redis connection (redis-py's asyncio client) and the names of everything tern keeps there."""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from ..config import RedisConfig

PREFIX = "tern:"
NODES = PREFIX + "nodes"            # set of node ids that registered (stale ones are pruned by any node)
ROOM_NODE = PREFIX + "room_node"    # hash room name -> owning node id (LiveKit's room_node_map)
ROOMS = PREFIX + "rooms"            # hash room name -> models.Room (the owner's view, for ListRooms on any node)
ROOM_COUNTS = PREFIX + "room_counts"  # hash node id -> rooms ROOM_NODE gives it (kept by the claim/release scripts)

SOCKET_TIMEOUT_S = 5.0   # a command that gets no answer this long fails (LiveKit's read/write timeout is 3 s)
CONNECT_TIMEOUT_S = 2.0  # LiveKit's dial timeout is 5 s; a local Redis answers at once or is down
HEALTH_CHECK_S = 10      # a pooled connection idle this long is PINGed before use, so a restarted Redis is noticed
RETRIES = 3              # a command is retried on a dropped connection with an exponential backoff
MAX_CONNECTIONS = 100    # pooled connections (redis-py's default, made explicit: past it a command fails at once)


def node_key(node_id: str) -> str:
    """The node's registration: expires unless refreshed, which is what liveness means."""
    return f"{PREFIX}node:{node_id}"


def bus_channel(node_id: str) -> str:
    """The pub/sub channel on which a node receives relayed signal streams and RoomService calls."""
    return f"{PREFIX}bus:{node_id}"


def connect(config: RedisConfig) -> aioredis.Redis:
    """A client for `redis.address`, or for the master the Sentinels name (asked again on each new connection, so
    after a failover the next command or resubscription reaches the new master); connects lazily, so a node starts
    while Redis is down and joins it later."""
    options = dict(
        db=config.db, username=config.username or None, password=config.password or None, ssl=config.use_tls,
        socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_S, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        max_connections=MAX_CONNECTIONS, decode_responses=False,
    )
    if config.sentinel_master_name:
        sentinels = Sentinel(
            [_host_port(address) for address in config.sentinel_addresses], socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            sentinel_kwargs={"username": config.sentinel_username or None,
                             "password": config.sentinel_password or None, "socket_timeout": SOCKET_TIMEOUT_S,
                             "socket_connect_timeout": CONNECT_TIMEOUT_S})
        return sentinels.master_for(config.sentinel_master_name, redis_class=aioredis.Redis, **options)
    host, port = _host_port(config.address)
    return aioredis.Redis(host=host, port=port, **options)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
