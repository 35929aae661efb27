"""The `tern` command: runs the server (default) or mints an access token (`tern token`)."""
from __future__ import annotations

import argparse
import logging
import re
import sys

from .auth import create_token
from .config import Config, ConfigError, build_config

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_duration(text: str) -> int:
    """Seconds in `90`, `90s`, `15m`, `6h` or `1d`."""
    match = _DURATION.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 3600, 30m, 6h, 1d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tern",
        description="A WebRTC SFU speaking LiveKit's protocol. Without a command, runs the server.",
    )
    parser.add_argument("--dev", action="store_true",
                        help="development mode: key devkey/secret if none given, bind 127.0.0.1,"
                             " debug logging")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="path to a LiveKit-style config.yaml")
    source.add_argument("--config-body", metavar="YAML",
                        help="config as a YAML string (default: env LIVEKIT_CONFIG)")
    parser.add_argument("--keys", metavar='"KEY: SECRET"',
                        help="API keys as YAML pairs (default: env LIVEKIT_KEYS)")
    parser.add_argument("--bind", action="append", metavar="IP",
                        help="address to listen on (repeatable)")
    parser.add_argument("--node-ip", metavar="IP", help="IP address offered to clients for media")
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 7880)")
    parser.add_argument("--udp-port", type=int, help="UDP media port (default 7882)")
    parser.add_argument("--log-level", choices=["debug", "info", "warn", "warning", "error"])

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    token = commands.add_parser("token", help="print an access token for joining a room")
    token.add_argument("--room", required=True)
    token.add_argument("--identity", required=True)
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--key", default="devkey", help="API key (default devkey)")
    token.add_argument("--secret", default="secret", help="API secret (default secret)")
    token.add_argument("--ttl", type=parse_duration, default="6h",
                       help="validity, e.g. 3600, 30m, 6h, 1d (default 6h)")
    token.add_argument("--no-publish", action="store_true", help="deny publishing")
    token.add_argument("--no-subscribe", action="store_true", help="deny subscribing")
    token.add_argument("--admin", action="store_true", help="grant roomAdmin for the room")
    return parser


def _load(args: argparse.Namespace) -> Config:
    body = args.config_body
    if args.config is not None:
        try:
            with open(args.config, encoding="utf-8") as file:
                body = file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc.strerror}") from None
    return build_config(
        body, keys=args.keys, dev=args.dev, bind=args.bind, node_ip=args.node_ip,
        port=args.port, udp_port=args.udp_port, log_level=args.log_level,
    )


def _token(args: argparse.Namespace) -> int:
    try:
        jwt = create_token(
            args.key, args.secret, args.identity, args.room, ttl=args.ttl, name=args.name,
            can_publish=not args.no_publish, can_subscribe=not args.no_subscribe,
            room_admin=args.admin,
        )
    except ValueError as exc:
        print(f"tern token: error: {exc}", file=sys.stderr)
        return 2
    print(jwt)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Configure logging first so warnings raised while reading the config are formatted.
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"tern: config error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger().setLevel(config.log_level.upper())

    from .server import run  # lazy: the token command and config tests need no server stack

    try:
        run(config)
    except OSError as exc:  # typically a port already in use or an address not on this host
        print(f"tern: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has already printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "token":
        return _token(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
