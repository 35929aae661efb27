"""Configuration: LiveKit-style YAML, flags and environment, defaults, and one-line errors for bad keys."""
import logging
import os
import socket
import sys
import types
from pathlib import Path

import pytest

from signaling import cli
from signaling.config import (
    RedisConfig,
    PLACEHOLDER_SECRET, Config, ConfigError, RoomConfig, RtcConfig, TurnConfig, WebhookConfig, build_config, from_yaml,
    parse_keys,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "tools" / "config.example.yaml"
NO_ENV: dict[str, str] = {}


def test_defaults_are_livekits():
    config = Config()
    assert config.port == 7880
    assert config.rtc == RtcConfig(udp_port=7882, tcp_port=7881, node_ip="")
    assert config.room == RoomConfig(empty_timeout=300, departure_timeout=20, max_participants=0)
    assert config.bind_addresses == ["127.0.0.1"] and config.keys == {}
    assert config.log_level == "info" and not config.development


def test_from_yaml_reads_every_key():
    config = from_yaml("""
port: 9000
bind_addresses: ["0.0.0.0", "::"]
keys:
  key1: secret1
  key2: secret2
rtc:
  udp_port: 9002
  tcp_port: 9001
  node_ip: 203.0.113.7
room:
  empty_timeout: 60
  departure_timeout: 2.5
  max_participants: 10
log_level: WARN
development: true
playground_allow_remote: true
""")
    assert config.port == 9000
    assert config.bind_addresses == ["0.0.0.0", "::"]
    assert config.keys == {"key1": "secret1", "key2": "secret2"}
    assert config.rtc == RtcConfig(udp_port=9002, tcp_port=9001, node_ip="203.0.113.7")
    assert config.room == RoomConfig(empty_timeout=60, departure_timeout=2.5, max_participants=10)
    assert config.log_level == "warning" and config.development and config.playground_allow_remote


def test_empty_yaml_is_defaults():
    assert from_yaml("") == Config()
    assert from_yaml("rtc:\nroom:\n") == Config()


def test_livekit_keys_ignored_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = from_yaml("""
port: 7880
redis: {address: "localhost:6379", pool_size: 10}
turn: {enabled: false, relay_range_start: 30000}
rtc: {port_range_start: 50000, use_external_ip: true, udp_port: 7882}
room: {auto_create: true, enabled_codecs: [{mime: audio/opus}]}
""")
    assert config.rtc.udp_port == 7882
    assert config.redis.address == "localhost:6379"
    for key in ("redis.pool_size", "turn.relay_range_start", "rtc.port_range_start", "rtc.use_external_ip",
                "room.auto_create", "room.enabled_codecs"):
        assert key in caplog.text


def test_turn_section_parses_and_needs_a_certificate_for_tls_outside_development():
    config = from_yaml("turn: {enabled: true, udp_port: 3478, tls_port: 5349, tcp_port: 3479, domain: turn.example.org,"
                       " cert_file: /c.pem, key_file: /k.pem}\nrtc: {force_relay: true}")
    assert (config.turn.enabled, config.turn.udp_port, config.turn.tls_port, config.turn.tcp_port) == (
        True, 3478, 5349, 3479)
    assert (config.turn.domain, config.turn.cert_file, config.turn.key_file) == ("turn.example.org", "/c.pem", "/k.pem")
    assert config.rtc.force_relay
    assert from_yaml("").turn == TurnConfig()  # off, LiveKit's ports
    with pytest.raises(ConfigError, match="turn.cert_file"):
        from_yaml("turn: {cert_file: /c.pem}")
    with pytest.raises(ConfigError, match="turn.cert_file"):
        build_config("turn: {enabled: true}", keys="k: " + "s" * 40)
    assert build_config("turn: {enabled: true}", dev=True).turn.enabled  # a self-signed certificate at start
    assert not build_config("turn: {enabled: true, tls_port: 0}", keys="k: " + "s" * 40).turn.tls_port


def test_redis_section_turns_on_cluster_mode():
    assert from_yaml("").redis == RedisConfig()  # no section: a single node, rooms in memory
    config = from_yaml("redis: {address: '[::1]:6380', username: u, password: p, db: 2, use_tls: true}\nregion: eu")
    assert config.redis == RedisConfig("[::1]:6380", "u", "p", 2, True) and config.region == "eu"
    for text in ("redis: {address: localhost}", "redis: {address: 'a:b'}", "redis: {db: 1}", "redis: {db: -1,"
                 " address: 'h:1'}", "redis: {address: 'h:1', use_tls: yes-please}",
                 "redis: {sentinel_master_name: m}", "redis: {sentinel_addresses: ['h:1']}",
                 "redis: {sentinel_master_name: m, sentinel_addresses: 'h:1'}",
                 "redis: {sentinel_master_name: m, sentinel_addresses: ['h']}"):
        with pytest.raises(ConfigError, match=r"redis\."):
            from_yaml(text)
    sentinels = from_yaml("redis: {sentinel_master_name: m, sentinel_addresses: ['a:26379', 'b:26379'], "
                          "sentinel_password: s}").redis
    assert sentinels.configured and not sentinels.address and sentinels.sentinel_addresses == ["a:26379", "b:26379"]
    assert sentinels.where == "master m of Sentinels a:26379, b:26379" and sentinels.sentinel_password == "s"


def test_node_selector_takes_livekits_sysload_limit():
    assert from_yaml("").node_selector.sysload_limit == 0.9  # LiveKit's default
    assert from_yaml("node_selector: {kind: sysload, sysload_limit: 2}").node_selector.sysload_limit == 2.0
    for text in ("node_selector: {sysload_limit: 0}", "node_selector: {sysload_limit: high}", "node_selector: 1"):
        with pytest.raises(ConfigError, match="node_selector"):
            from_yaml(text)


@pytest.mark.parametrize("text, key", [
    ("prot: 7880", "prot"),
    ("rtc: {udp_prot: 1}", "rtc.udp_prot"),
    ("room: {empty_timout: 1}", "room.empty_timout"),
])
def test_unknown_keys_are_errors(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_yaml(text)


@pytest.mark.parametrize("text, key", [
    ("port: abc", "port"),
    ("port: true", "port"),
    ("port: 70000", "port"),
    ("port: -1", "port"),
    ("bind_addresses: [localhost]", "bind_addresses"),
    ("bind_addresses: 5", "bind_addresses"),
    ("keys: [a, b]", "keys"),
    ("keys: {k: 12345}", "keys.k"),
    ("rtc: 5", "rtc"),
    ("rtc: {udp_port: '7882'}", "rtc.udp_port"),
    ("rtc: {tcp_port: 1.5}", "rtc.tcp_port"),
    ("rtc: {node_ip: not-an-ip}", "rtc.node_ip"),
    ("rtc: {workers: -1}", "rtc.workers"),
    ("rtc: {workers: 65}", "rtc.workers"),
    ("rtc: {workers: true}", "rtc.workers"),
    ("room: {empty_timeout: soon}", "room.empty_timeout"),
    ("room: {departure_timeout: -1}", "room.departure_timeout"),
    ("room: {max_participants: 2.5}", "room.max_participants"),
    ("log_level: loud", "log_level"),
    ("development: 1", "development"),
    ("playground_allow_remote: yes please", "playground_allow_remote"),
    ("[1, 2]", "config"),
    ("port: [", "YAML"),
])
def test_wrong_types_name_the_key(text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_yaml(text)


def test_workers_default_to_the_usable_cores():
    assert from_yaml("rtc: {workers: 3}").media_workers() == 3
    assert from_yaml("rtc: {workers: 0}").media_workers() == len(os.sched_getaffinity(0))
    assert from_yaml("port: 7880").media_workers() == len(os.sched_getaffinity(0))


def test_webhook_section():
    config = build_config("""
keys: {k1: s1, k2: s2}
webhook:
  api_key: k2
  urls: ["http://127.0.0.1:9000/hook", "https://hooks.example.com/livekit?x=1"]
""", environ=NO_ENV)
    assert config.webhook == WebhookConfig(api_key="k2", urls=["http://127.0.0.1:9000/hook",
                                                               "https://hooks.example.com/livekit?x=1"])
    assert Config().webhook == WebhookConfig() and not Config().webhook.urls
    # The dev key may sign webhooks too.
    assert build_config("webhook: {api_key: devkey, urls: [http://h/]}", dev=True, environ=NO_ENV).webhook.api_key == "devkey"


def test_webhook_livekit_sub_keys_ignored_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        config = from_yaml("webhook: {api_key: k, urls: [http://h/], url_notifier: {max_attempts: 3},"
                           " filter_params: {included_events: [room_started]}}")
    assert config.webhook.urls == ["http://h/"]
    assert "webhook.url_notifier" in caplog.text and "webhook.filter_params" in caplog.text


@pytest.mark.parametrize("text, key", [
    ("webhook: [http://h/]", "webhook"),
    ("webhook: {api_key: k, url: [http://h/]}", r"webhook\.url:"),
    ("webhook: {api_key: k, urls: http://h/}", r"webhook\.urls"),
    ("webhook: {api_key: k, urls: [ftp://h/]}", r"webhook\.urls\[0\]"),
    ("webhook: {api_key: k, urls: [http://h/, 'http://user:pw@:1/']}", r"webhook\.urls\[1\]"),
    ("webhook: {api_key: k, urls: ['http://h:port/']}", r"webhook\.urls\[0\]"),
    ("webhook: {api_key: k, urls: [5]}", r"webhook\.urls\[0\]"),
    ("webhook: {api_key: [k], urls: [http://h/]}", r"webhook\.api_key"),
    ("webhook: {urls: [http://h/]}", r"webhook\.api_key: required"),
])
def test_webhook_errors_name_the_key(text, key):
    with pytest.raises(ConfigError, match=key) as error:
        from_yaml(text)
    assert "pw@" not in str(error.value)  # URLs may carry credentials: never echoed


def test_webhook_api_key_must_be_configured():
    body = "keys: {k1: topsecret}\nwebhook: {api_key: other, urls: [http://h/]}"
    with pytest.raises(ConfigError, match=r"webhook\.api_key: 'other' is not one of the configured") as error:
        build_config(body, environ=NO_ENV)
    assert "topsecret" not in str(error.value)
    # Checked against the final keys: --keys replaces the file's.
    assert build_config(body, keys="other: s", environ=NO_ENV).webhook.api_key == "other"
    with pytest.raises(ConfigError, match=r"webhook\.api_key"):
        build_config("webhook: {api_key: k1, urls: [http://h/]}", dev=True, environ=NO_ENV)
    # A key without URLs sends nothing, as in LiveKit.
    assert build_config("keys: {k1: s}\nwebhook: {api_key: k1}", environ=NO_ENV).webhook.urls == []


def test_empty_bind_address_means_all_interfaces():
    assert from_yaml('bind_addresses: [""]').bind_addresses == ["0.0.0.0"]


def test_parse_keys_string_form():
    assert parse_keys("devkey: secret") == {"devkey": "secret"}
    assert parse_keys("a: one\nb: two") == {"a": "one", "b": "two"}
    for bad in ("just-a-key", "a: [1]", "a: "):
        with pytest.raises(ConfigError):
            parse_keys(bad)


def test_no_keys_is_an_error():
    with pytest.raises(ConfigError, match="no API keys configured"):
        build_config(environ=NO_ENV)


def test_dev_defaults():
    config = build_config(dev=True, environ=NO_ENV)
    assert config.keys == {"devkey": "secret"}
    assert config.bind_addresses == ["127.0.0.1"]
    assert config.log_level == "debug" and config.development


def test_dev_keeps_given_keys_bind_and_level():
    config = build_config("bind_addresses: [0.0.0.0]\nkeys: {k: s}", dev=True,
                          bind=["10.1.2.3"], log_level="error", environ=NO_ENV)
    assert config.keys == {"k": "s"}
    assert config.bind_addresses == ["10.1.2.3"]
    assert config.log_level == "error"


def test_dev_binds_loopback_over_config_file():
    config = build_config("bind_addresses: [0.0.0.0]", dev=True, environ=NO_ENV)
    assert config.bind_addresses == ["127.0.0.1"]


def test_command_line_overrides_body():
    body = "port: 1000\nkeys: {file: s}\nrtc: {udp_port: 1001, node_ip: 10.0.0.1}"
    config = build_config(body, keys="cli: secret", port=2000, udp_port=2001,
                          node_ip="10.0.0.2", environ=NO_ENV)
    assert config.keys == {"cli": "secret"}
    assert (config.port, config.rtc.udp_port, config.rtc.node_ip) == (2000, 2001, "10.0.0.2")


def test_environment():
    env = {"LIVEKIT_CONFIG": "port: 1234", "LIVEKIT_KEYS": "envkey: envsecret"}
    config = build_config(environ=env)
    assert config.port == 1234 and config.keys == {"envkey": "envsecret"}
    # Explicit values beat the environment.
    config = build_config("port: 5", keys="k: s", environ=env)
    assert config.port == 5 and config.keys == {"k": "s"}


@pytest.mark.parametrize("kwargs, key", [
    ({"bind": ["nowhere"]}, "--bind"),
    ({"node_ip": "x"}, "--node-ip"),
    ({"port": 99999}, "--port"),
    ({"udp_port": -5}, "--udp-port"),
    ({"keys": "nonsense"}, "--keys"),
    ({"log_level": "chatty"}, "--log-level"),
])
def test_bad_overrides_name_the_flag(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        build_config(dev=True, environ=NO_ENV, **kwargs)


def test_short_secret_logs_an_error_outside_dev(caplog):
    # LiveKit's rule: a secret under 32 characters is logged as an error, and the server still starts.
    with caplog.at_level(logging.WARNING):
        build_config(keys="k: short", environ=NO_ENV)
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and "shorter than 32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_config(dev=True, environ=NO_ENV)
    assert "shorter" not in caplog.text


def test_node_ip_explicit():
    config = Config(rtc=RtcConfig(node_ip="198.51.100.4"), bind_addresses=["10.0.0.1"])
    assert config.node_ip() == "198.51.100.4"


def test_node_ip_from_concrete_bind_address():
    assert Config(bind_addresses=["10.0.0.1", "0.0.0.0"]).node_ip() == "10.0.0.1"
    assert Config().node_ip() == "127.0.0.1"


class RouteProbe:
    """Stands in for socket.socket in the default-route probe: records connects, answers with `address`,
    or fails like an offline machine when `address` is None."""

    address: str | None = None
    probes: list = []

    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def connect(self, address):
        if self.address is None:
            raise OSError("Network is unreachable")
        self.probes.append(address)

    def getsockname(self):
        return (self.address, 40000)


def test_node_ip_from_default_route(monkeypatch):
    monkeypatch.setattr(RouteProbe, "address", "192.0.2.55")
    monkeypatch.setattr(RouteProbe, "probes", [])
    monkeypatch.setattr(socket, "socket", RouteProbe)
    assert Config(bind_addresses=["0.0.0.0"]).node_ip() == "192.0.2.55"
    assert RouteProbe.probes and RouteProbe.probes[0][0] == "192.0.2.1"


def test_node_ip_falls_back_to_loopback_without_route(monkeypatch):
    monkeypatch.setattr(socket, "socket", RouteProbe)  # address None: no route
    assert Config(bind_addresses=["::"]).node_ip() == "127.0.0.1"


def test_example_config_parses_but_does_not_start_until_its_secret_is_replaced():
    config = from_yaml(EXAMPLE.read_text())
    assert config.port == 7880 and config.rtc.udp_port == 7882
    with pytest.raises(ConfigError) as error:
        build_config(EXAMPLE.read_text(), environ=NO_ENV)
    message = str(error.value)
    assert "\n" not in message and "placeholder" in message and "openssl rand" in message
    secret = "x" * 40
    replaced = EXAMPLE.read_text().replace(PLACEHOLDER_SECRET, secret)
    assert build_config(replaced, environ=NO_ENV).keys == {"APIchangeme": secret}


def test_cli_refuses_the_example_config(captured_run, capsys):
    assert cli.main(["--config", str(EXAMPLE)]) == 2
    assert not captured_run
    assert "placeholder" in capsys.readouterr().err


@pytest.mark.parametrize("bind, loud", [(["0.0.0.0"], True), (["192.0.2.7"], True), (["127.0.0.1"], False),
                                        (["::1"], False)])
def test_dev_on_a_reachable_address_warns_that_the_dev_secret_is_public(caplog, bind, loud):
    with caplog.at_level(logging.WARNING):
        build_config(dev=True, bind=bind, environ=NO_ENV)
    warned = "DEVELOPMENT MODE ON A NON-LOOPBACK ADDRESS" in caplog.text
    assert warned == loud
    if loud:
        assert "devkey/secret" in caplog.text


# -- command line -----------------------------------------------------------------------------

@pytest.fixture
def captured_run(monkeypatch):
    """Replaces the server entry point so cli.main returns once the config is built."""
    runs: list[Config] = []
    fake = types.ModuleType("signaling.server")
    fake.run = runs.append
    monkeypatch.setitem(sys.modules, "signaling.server", fake)
    monkeypatch.delenv("LIVEKIT_KEYS", raising=False)
    monkeypatch.delenv("LIVEKIT_CONFIG", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # main() sets the configured level
    return runs


def test_cli_dev_runs_server(captured_run):
    assert cli.main(["--dev"]) == 0
    (config,) = captured_run
    assert config.keys == {"devkey": "secret"} and config.development


def test_cli_flags(captured_run, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("keys: {k: s}\nport: 1\n")
    assert cli.main(["--config", str(path), "--bind", "10.0.0.1", "--bind", "10.0.0.2",
                     "--port", "8000", "--udp-port", "8002", "--node-ip", "10.0.0.9",
                     "--log-level", "warn"]) == 0
    (config,) = captured_run
    assert config.bind_addresses == ["10.0.0.1", "10.0.0.2"]
    assert (config.port, config.rtc.udp_port, config.rtc.node_ip) == (8000, 8002, "10.0.0.9")
    assert config.log_level == "warning"


def test_cli_config_body_and_keys(captured_run):
    assert cli.main(["--config-body", "port: 4000", "--keys", "a: b"]) == 0
    assert captured_run[0].port == 4000 and captured_run[0].keys == {"a": "b"}


@pytest.mark.parametrize("argv", [
    [],
    ["--config", "/nonexistent/tern.yaml"],
    ["--config-body", "port: nope", "--dev"],
    ["--dev", "--bind", "localhost"],
])
def test_cli_bad_config_exits_2_without_traceback(captured_run, capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    assert not captured_run


def test_cli_bad_flag_exits_2(captured_run, capsys):
    assert cli.main(["--port", "eighty"]) == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The HMAC key")  # pytest resets auth.py's filter per test
def test_cli_token(capsys):
    from signaling.auth import TokenVerifier

    assert cli.main(["token", "--room", "my-room", "--identity", "alice", "--name", "Alice",
                     "--ttl", "30m", "--no-publish", "--admin"]) == 0
    token = capsys.readouterr().out.strip()
    claims, room = TokenVerifier({"devkey": "secret"}).verify_join(token)
    assert (room, claims.identity, claims.name) == ("my-room", "alice", "Alice")
    assert not claims.video.can_publish and claims.video.can_subscribe
    assert claims.video.room_admin


def test_cli_token_key_and_bad_ttl(capsys):
    from signaling.auth import TokenVerifier

    assert cli.main(["token", "--room", "r", "--identity", "i", "--key", "k",
                     "--secret", "s" * 32, "--no-subscribe"]) == 0
    claims = TokenVerifier({"k": "s" * 32}).verify(capsys.readouterr().out.strip())
    assert not claims.video.can_subscribe
    assert cli.main(["token", "--room", "r", "--identity", "i", "--ttl", "forever"]) == 2
    assert cli.main(["token", "--room", "r", "--identity", ""]) == 2
