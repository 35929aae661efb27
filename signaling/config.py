"""Server configuration: LiveKit-style YAML keys, command-line overrides and environment.

A LiveKit config.yaml should load unchanged: keys from LiveKit's schema that tern does not
implement are ignored with a warning, while keys from no schema at all (typos) are errors.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

log = logging.getLogger(__name__)

DEV_KEYS = {"devkey": "secret"}
LOG_LEVELS = ("debug", "info", "warning", "error")
MIN_SECRET_LENGTH = 32  # LiveKit's minimum outside development mode (it logs an error and starts, as tern does)
# The secret tools/config.example.yaml ships: a copied example must not start a server anyone can mint tokens for.
PLACEHOLDER_SECRET = "REPLACE-ME: openssl rand -base64 33"
MAX_WORKERS = 64  # engine/state.pxd MAX_WORKERS

# Keys of LiveKit's schema that tern accepts but does not act on (yet).
_LIVEKIT_TOP_LEVEL = frozenset({
    "prometheus", "debug_handler", "audio", "video",
    "sip", "key_file", "signal_relay", "psrpc",
    "logging", "limit", "agents", "metric", "trace", "node_stats", "enable_data_tracks",
    "enable_participant_data_blob", "api",
})
_LIVEKIT_RTC = frozenset({
    "port_range_start", "port_range_end", "use_external_ip", "use_ice_lite", "stun_servers",
    "turn_servers", "interfaces", "ips", "enable_loopback_candidate", "use_mdns",
    "congestion_control", "allow_tcp_fallback", "packet_buffer_size",
    "packet_buffer_size_video", "packet_buffer_size_audio", "strict_acks",
    "reconnect_on_publication_error", "reconnect_on_subscription_error",
    "reconnect_on_data_channel_error", "batch_io", "forward_stats", "pli_throttle",
    "min_playout_delay", "max_playout_delay",
})
_LIVEKIT_ROOM = frozenset({
    "auto_create", "enabled_codecs", "enable_remote_unmute", "playout_delay", "sync_streams",
    "max_metadata_size", "create_room_enabled", "create_room_timeout", "create_room_attempts",
})
_LIVEKIT_WEBHOOK = frozenset({"url_notifier", "filter_params"})
_LIVEKIT_REDIS = frozenset({
    "cluster_addresses",
    "dial_timeout", "read_timeout", "write_timeout", "max_redirects", "pool_size", "tls",
})
_LIVEKIT_NODE_SELECTOR = frozenset({"kind", "sort_by", "algorithm", "cpu_load_limit", "regions"})
_LIVEKIT_TURN = frozenset({
    "external_tls", "relay_range_start", "relay_range_end", "bind_addresses", "ttl_seconds",
    "per_user_relay_allocation_limit", "allow_restricted_peer_cidrs", "deny_peer_cidrs",
})

# Documentation addresses (RFC 5737, RFC 3849): connecting a UDP socket to one only consults the
# routing table, so it reveals the default-route interface of that family without sending a packet.
_ROUTE_PROBE_ADDRESSES = {4: "192.0.2.1", 6: "2001:db8::1"}


class ConfigError(ValueError):
    """The configuration is unusable; the message names the offending key."""


@dataclass
class RtcConfig:
    udp_port: int = 7882
    tcp_port: int = 7881  # ICE-TCP; 0 = off (as in LiveKit)
    # LiveKit's form: "ipv4", "ipv6" or "ipv4,ipv6" (at most one of each); "" = derive (see Config.node_ips)
    node_ip: str = ""
    use_ipv6: bool = False  # dual-stack media sockets on a wildcard bind (LiveKit's default: off)
    force_relay: bool = False  # clients are told to use relay candidates only (ClientConfiguration.force_relay)
    workers: int = 0  # forwarding threads (engine/workers.pxd); 0 = the usable cores (Config.media_workers)


@dataclass
class RoomConfig:
    empty_timeout: float = 300
    departure_timeout: float = 20
    max_participants: int = 0  # 0 = unlimited


@dataclass
class WebhookConfig:
    api_key: str = ""  # signs the events; must be one of Config.keys
    urls: list[str] = field(default_factory=list)


@dataclass
class TurnConfig:
    """The embedded TURN server (signaling/peer/turn.py): relays only to this node's media address."""
    enabled: bool = False
    udp_port: int = 3478   # 0 = no TURN/UDP
    tls_port: int = 5349   # 0 = no TURN/TLS
    tcp_port: int = 0      # TURN over plain TCP (LiveKit has none; networks that allow only TCP ask for it); 0 = off
    domain: str = ""       # the turns: URL's host, which the certificate must name; "" = the node's IP
    cert_file: str = ""    # PEM; without them, development mode makes a self-signed certificate at start
    key_file: str = ""


@dataclass
class IngressConfig:
    """Where encoders reach this node's ingresses, as IngressInfo.url tells them (LiveKit's keys, e.g. behind a TLS
    proxy: https://media.example.com/w); "" = this node's address and port."""
    rtmp_base_url: str = ""
    whip_base_url: str = ""
    rtmp_port: int = 0  # the RTMP ingest listener's TCP port (LiveKit Ingress's is 1935); 0 = no RTMP ingest


@dataclass
class EgressConfig:
    """The built-in egress (signaling/egress/): recordings are files under output_dir (created when needed)."""
    output_dir: str = "recordings"  # relative paths are taken from the server's working directory


@dataclass
class RedisConfig:
    """The cluster's Redis (signaling/cluster/): its address, or the Sentinels that name its master (LiveKit's keys);
    neither = a single node with its rooms in memory."""
    address: str = ""  # host:port
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_addresses: list[str] = field(default_factory=list)  # host:port of each Sentinel
    sentinel_username: str = ""
    sentinel_password: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.address or self.sentinel_master_name)

    @property
    def where(self) -> str:
        """Where the cluster's Redis is, for logs."""
        if self.sentinel_master_name:
            return f"master {self.sentinel_master_name} of Sentinels {', '.join(self.sentinel_addresses)}"
        return self.address


@dataclass
class NodeSelectorConfig:
    """Which nodes take new rooms (cluster mode; signaling/cluster/placement.py)."""
    # Nodes whose 1-minute load average per core is at or above this take new rooms only when every node is
    # (LiveKit's sysload selector and default).
    sysload_limit: float = 0.9


@dataclass
class Config:
    port: int = 7880
    bind_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    keys: dict[str, str] = field(default_factory=dict)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    ingress: IngressConfig = field(default_factory=IngressConfig)
    egress: EgressConfig = field(default_factory=EgressConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    node_selector: NodeSelectorConfig = field(default_factory=NodeSelectorConfig)
    region: str = ""  # this node's region: new rooms prefer nodes of the same region (cluster mode)
    log_level: str = "info"
    development: bool = False
    # Development mode serves the playground (signaling/playground) only on loopback binds unless this is set.
    playground_allow_remote: bool = False
    prometheus_port: int = 0  # 0 = no metrics endpoint

    def node_ip(self) -> str:
        """The primary address offered to clients (the IPv4 one when there is one)."""
        return self.node_ips()[0]

    def node_ips(self) -> list[str]:
        """The addresses offered to clients as host candidates, IPv4 ones (the primary) first: rtc.node_ip when set;
        else the concrete bind addresses (link-local ones only when nothing else is bound, without their scope,
        which means nothing to a client); else (a wildcard bind) the default route's IPv4 address, and its IPv6 one
        when the media sockets are dual-stack."""
        if self.rtc.node_ip:
            return self.rtc.node_ip.split(",")
        concrete = [a for a in self.bind_addresses if _is_concrete_ip(a)]
        offered = ([a for a in concrete if not ipaddress.ip_address(a).is_link_local]
                   or [a.partition("%")[0] for a in concrete])
        if offered:
            return sorted(dict.fromkeys(offered), key=lambda a: ":" in a)
        addresses = [_default_route_address(4) or "127.0.0.1"]
        if ":" in self.media_host() and (v6 := _default_route_address(6)):
            addresses.append(v6)
        return addresses

    def media_workers(self) -> int:
        """rtc.workers, or when 0 the CPUs this process may run on (its affinity: taskset, cgroup cpusets)."""
        return self.rtc.workers or min(MAX_WORKERS, len(os.sched_getaffinity(0)))

    def media_host(self) -> str:
        """Where the engine's UDP and ICE-TCP sockets listen: the bind address when it is one concrete address of the
        family of every node_ip; else the wildcard, `::` (dual-stack: IPv4 peers arrive as IPv4-mapped) when IPv6 is
        wanted (rtc.use_ipv6, an IPv6 bind address or node_ip), `0.0.0.0` otherwise. The engine has one socket per
        protocol, so several bind addresses mean the wildcard."""
        explicit = self.rtc.node_ip.split(",") if self.rtc.node_ip else []
        if len(self.bind_addresses) == 1 and _is_concrete_ip(host := self.bind_addresses[0]):
            if all((":" in a) == (":" in host) for a in explicit):
                return host
        ipv6 = self.rtc.use_ipv6 or any(":" in a for a in [*self.bind_addresses, *explicit])
        return "::" if ipv6 else "0.0.0.0"


def _is_concrete_ip(address: str) -> bool:
    try:
        return not ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _default_route_address(version: int) -> str | None:
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_ROUTE_PROBE_ADDRESSES[version], 9))
            address = probe.getsockname()[0]
    except OSError:  # no route of that family (offline machine, no IPv6)
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    # A link-local address needs a scope the client cannot know: not worth offering.
    return address if ip.version == version and not ip.is_unspecified and not ip.is_link_local else None


# -- typed readers: each names the key it rejects -------------------------------------------

def _section(raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(raw).__name__}")
    return raw


def _port(value: Any, key: str) -> int:
    # bool is an int subclass; `port: yes` is a mistake, not port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected a port number, got {value!r}")
    if not 0 <= value <= 65535:
        raise ConfigError(f"{key}: port {value} is out of range 0-65535")
    return value


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def _workers(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ConfigError(f"{key}: expected 0 (the usable cores) or a number of threads 1-{MAX_WORKERS}, got {value!r}")
    return value


def _seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ConfigError(f"{key}: expected a non-negative number of seconds, got {value!r}")
    return float(value)


def _load(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ConfigError(f"{key}: expected a positive load per core, got {value!r}")
    return float(value)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _ip(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an IP address, got {value!r}")
    if value == "":  # LiveKit's spelling of "all interfaces"
        return "0.0.0.0"
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IP address") from None


def parse_node_ip(value: Any, key: str = "rtc.node_ip") -> str:
    """LiveKit's node_ip: one address, or "ipv4,ipv6" (a YAML list too), at most one of each family; normalised to
    "ipv4,ipv6" order (the IPv4 one is primary)."""
    if value == "":  # unset, as in LiveKit
        return ""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{key}: expected an IP address, or an IPv4 and an IPv6 address separated by a comma")
    addresses = []
    for item in items:
        address = _ip(item.strip() if isinstance(item, str) else item, key)
        if not _is_concrete_ip(address):
            raise ConfigError(f"{key}: {address} is not an address clients can reach")
        addresses.append(address)
    by_family = sorted(addresses, key=lambda a: ":" in a)
    if len(by_family) > 2 or len({":" in a for a in by_family}) != len(by_family):
        raise ConfigError(f"{key}: at most one IPv4 and one IPv6 address, got {value!r}")
    return ",".join(by_family)


def parse_bind_addresses(value: Any, key: str = "bind_addresses") -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a list of IP addresses")
    return [_ip(item, key) for item in value]


def parse_log_level(value: Any, key: str = "log_level") -> str:
    level = value.lower() if isinstance(value, str) else value
    level = "warning" if level == "warn" else level
    if level not in LOG_LEVELS:
        raise ConfigError(f"{key}: expected one of debug, info, warn, error, got {value!r}")
    return level


def parse_keys(value: Any, key: str = "keys") -> dict[str, str]:
    """Reads API keys from a mapping, or from LiveKit's `"key: secret"` string form."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f'{key}: expected "key: secret" pairs') from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f'{key}: expected "key: secret" pairs')
    keys: dict[str, str] = {}
    for api_key, secret in value.items():
        if not isinstance(api_key, str) or not api_key:
            raise ConfigError(f"{key}: API key {api_key!r} must be a non-empty string")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{key}.{api_key}: secret must be a non-empty string (quote it)")
        keys[api_key] = secret
    return keys


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def _redis_address(value: Any, key: str) -> str:
    """host:port, as LiveKit writes it ([v6]:port for an IPv6 host)."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.query or parts.username:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return value


def _redis_addresses(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a list of host:port, got {value!r}")
    return [_redis_address(item, key) for item in value]


def _api_key(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected an API key (a string), got {type(value).__name__}")
    return value


def _webhook_urls(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of http(s) URLs")
    for index, url in enumerate(value):
        if not _is_http_url(url):
            # A URL may carry credentials: name its position, not its text.
            raise ConfigError(f"{key}[{index}]: expected an http:// or https:// URL")
    return list(value)


def _base_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or not urlsplit(value).scheme or not urlsplit(value).netloc:
        raise ConfigError(f"{key}: expected a URL (scheme://host[:port]/path)")
    return value.rstrip("/")


def _is_http_url(url: Any) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a malformed port ("http://host:x/")
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _apply(target: Any, raw: dict[str, Any], readers: dict[str, Any], ignored: frozenset[str],
           prefix: str, sections: frozenset[str] = frozenset()) -> None:
    for name, value in raw.items():
        key = f"{prefix}{name}"
        if name in readers:
            if value is not None:
                setattr(target, name, readers[name](value, key))
        elif name in ignored:
            log.warning("config key %s is not supported by tern and is ignored", key)
        elif name not in sections:
            raise ConfigError(f"{key}: unknown config key")


def from_yaml(text: str) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config is not valid YAML: {exc}") from None
    config = Config()
    top = _section(raw, "config")
    rtc = _section(top.get("rtc"), "rtc")
    room = _section(top.get("room"), "room")
    webhook = _section(top.get("webhook"), "webhook")
    turn = _section(top.get("turn"), "turn")
    ingress = _section(top.get("ingress"), "ingress")
    egress = _section(top.get("egress"), "egress")
    redis = _section(top.get("redis"), "redis")
    node_selector = _section(top.get("node_selector"), "node_selector")
    top_readers = {
        "port": _port, "bind_addresses": parse_bind_addresses, "keys": parse_keys,
        "log_level": parse_log_level, "development": _flag, "prometheus_port": _port, "region": _text,
        "playground_allow_remote": _flag,
    }
    _apply(config, top, top_readers, _LIVEKIT_TOP_LEVEL, "",
           frozenset({"rtc", "room", "webhook", "turn", "ingress", "egress", "redis", "node_selector"}))
    _apply(config.rtc, rtc, {"udp_port": _port, "tcp_port": _port, "node_ip": parse_node_ip, "use_ipv6": _flag,
                             "force_relay": _flag, "workers": _workers},
           _LIVEKIT_RTC, "rtc.")
    _apply(config.room, room, {"empty_timeout": _seconds, "departure_timeout": _seconds,
                               "max_participants": _count}, _LIVEKIT_ROOM, "room.")
    _apply(config.webhook, webhook, {"api_key": _api_key, "urls": _webhook_urls},
           _LIVEKIT_WEBHOOK, "webhook.")
    _apply(config.turn, turn, {"enabled": _flag, "udp_port": _port, "tls_port": _port, "tcp_port": _port,
                               "domain": _text, "cert_file": _text, "key_file": _text}, _LIVEKIT_TURN, "turn.")
    _apply(config.ingress, ingress, {"rtmp_base_url": _base_url, "whip_base_url": _base_url,
                                       "rtmp_port": _port}, frozenset(), "ingress.")
    _apply(config.egress, egress, {"output_dir": _text}, frozenset(), "egress.")
    _apply(config.redis, redis, {"address": _redis_address, "username": _text, "password": _text, "db": _count,
                                 "use_tls": _flag, "sentinel_master_name": _text,
                                 "sentinel_addresses": _redis_addresses, "sentinel_username": _text,
                                 "sentinel_password": _text}, _LIVEKIT_REDIS, "redis.")
    _apply(config.node_selector, node_selector, {"sysload_limit": _load}, _LIVEKIT_NODE_SELECTOR, "node_selector.")
    if redis and not config.redis.configured:
        raise ConfigError("redis.address: required in a redis section (host:port), unless sentinel_master_name and "
                          "sentinel_addresses name the master")
    if config.redis.sentinel_master_name and not config.redis.sentinel_addresses:
        raise ConfigError("redis.sentinel_addresses: required with sentinel_master_name (a list of host:port)")
    if config.redis.sentinel_addresses and not config.redis.sentinel_master_name:
        raise ConfigError("redis.sentinel_master_name: required with sentinel_addresses")
    if config.webhook.urls and not config.webhook.api_key:
        raise ConfigError("webhook.api_key: required to sign events sent to webhook.urls")
    if bool(config.turn.cert_file) != bool(config.turn.key_file):
        raise ConfigError("turn.cert_file and turn.key_file: give both or neither")
    return config


def build_config(
    body: str | None = None,
    *,
    keys: str | None = None,
    dev: bool = False,
    bind: list[str] | None = None,
    node_ip: str | None = None,
    port: int | None = None,
    udp_port: int | None = None,
    tcp_port: int | None = None,
    log_level: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Combines a config body with command-line overrides, as LiveKit's server does.

    Precedence: command-line value, then environment (LIVEKIT_CONFIG, LIVEKIT_KEYS), then the
    config body, then defaults.
    """
    if body is None:
        body = environ.get("LIVEKIT_CONFIG")
    config = from_yaml(body) if body else Config()
    if keys is None:
        keys = environ.get("LIVEKIT_KEYS")
    if keys is not None:
        config.keys = parse_keys(keys, "--keys")
    if bind:
        config.bind_addresses = parse_bind_addresses(bind, "--bind")
    if node_ip is not None:
        config.rtc.node_ip = parse_node_ip(node_ip, "--node-ip")
    if port is not None:
        config.port = _port(port, "--port")
    if udp_port is not None:
        config.rtc.udp_port = _port(udp_port, "--udp-port")
    if tcp_port is not None:
        config.rtc.tcp_port = _port(tcp_port, "--tcp-port")
    if dev:
        config.development = True
        if not bind:
            config.bind_addresses = ["127.0.0.1"]
        if log_level is None:
            config.log_level = "debug"
    if config.development and not config.keys:
        config.keys = dict(DEV_KEYS)
    if log_level is not None:
        config.log_level = parse_log_level(log_level, "--log-level")
    if not config.keys:
        raise ConfigError(
            "no API keys configured: set `keys` in the config file, pass --keys \"key: secret\""
            " (or LIVEKIT_KEYS), or run with --dev"
        )
    if config.webhook.api_key and config.webhook.api_key not in config.keys:
        # Checked once the keys are final: --keys and the environment may replace the file's.
        raise ConfigError(f"webhook.api_key: {config.webhook.api_key!r} is not one of the configured API keys")
    for api_key, secret in config.keys.items():
        if secret == PLACEHOLDER_SECRET:
            raise ConfigError(f"keys.{api_key}: still the example's placeholder secret; replace it with a random one"
                              " (openssl rand -base64 33)")
        if not config.development and len(secret) < MIN_SECRET_LENGTH:
            log.error("secret of API key %s is shorter than %d characters: anyone who guesses it can mint tokens;"
                      " use a random one (openssl rand -base64 33)", api_key, MIN_SECRET_LENGTH)
    if config.turn.enabled and config.turn.tls_port and not config.turn.cert_file and not config.development:
        raise ConfigError("turn.cert_file and turn.key_file: TURN/TLS needs a certificate for turn.domain (--dev makes"
                          " a self-signed one); or set turn.tls_port: 0")
    if config.development:
        _warn_public_dev(config)
    return config


def _warn_public_dev(config: Config) -> None:
    """Development mode allows short secrets (and defaults to devkey/secret, printed in every LiveKit guide):
    reachable from other machines, anyone can mint tokens for it."""
    public = [address for address in config.bind_addresses if not ipaddress.ip_address(address).is_loopback]
    if not public:
        return
    dev_keys = [key for key, secret in config.keys.items() if DEV_KEYS.get(key) == secret]
    what = f"the public dev key {'/'.join(dev_keys)}/secret" if dev_keys else "the development keys"
    log.warning("DEVELOPMENT MODE ON A NON-LOOPBACK ADDRESS (%s): anyone who can reach this port can mint tokens"
                " with %s and join any room. Use --dev only on 127.0.0.1, or configure keys with secrets of at"
                " least %d characters and drop --dev.", ", ".join(public), what, MIN_SECRET_LENGTH)
