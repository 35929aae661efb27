"""The `tern` command: runs the server (default), mints access tokens (`tern token`), drives a server's
RoomService (`tern room`, `tern participant`, `tern send-data`), lists agent workers and drives AgentDispatchService
(`tern agents list`, `tern dispatch`), and runs load tests (`tern load-test`).
This module only parses; signaling.clients.operator runs the API commands."""
from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import sys
from collections.abc import Callable
from functools import partial

from livekit import api
from livekit.protocol import models

from .clients import operator
# auth also silences pyjwt's warning on short secrets such as the dev secret "secret".
from .auth import PARTICIPANT_KINDS
from .config import Config, ConfigError, build_config
from .durations import parse_duration

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
    parser.add_argument("--node-ip", metavar="IP[,IPv6]",
                        help="address offered to clients for media; an IPv4 and an IPv6 one separated by a comma")
    parser.add_argument("--port", type=int, help="HTTP/WebSocket port (default 7880)")
    parser.add_argument("--udp-port", type=int, help="UDP media port (default 7882)")
    parser.add_argument("--tcp-port", type=int, help="ICE-TCP media port (default 7881, 0 = off)")
    parser.add_argument("--log-level", choices=["debug", "info", "warn", "warning", "error"])

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_token(commands)
    _add_rooms(commands)
    _add_participants(commands)
    _add_send_data(commands)
    _add_agents(commands)
    _add_nodes(commands)
    # Listed for --help only: main() hands its argv to signaling.clients.loadtest before parsing.
    commands.add_parser("load-test", add_help=False,
                        help="run a load test against a server (tern load-test --help)")
    return parser


# Track sources as tokens name them (lowercase) and as ParticipantPermission carries them (TrackSource).
_SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _attribute(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid attribute {text!r} (expected key=value)")
    return key, value


def _flag(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (expected true or false)")


def _sources(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in _SOURCES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"invalid sources {text!r} (comma-separated: {', '.join(_SOURCES)})")
    return names


def _add_token(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser(
        "token", help="print an access token",
        description="Prints an access token. `tern token create` reads the API key and secret from flags or"
                    " LIVEKIT_API_KEY/LIVEKIT_API_SECRET; the plain `tern token --room R --identity I` form"
                    " mints a join token with devkey/secret unless --api-key/--api-secret are given.")
    token.add_argument("action", nargs="?", choices=["create"], help="create a token (see above)")
    token.add_argument("--room", help="room to join (grants roomJoin)")
    token.add_argument("--identity", help="participant identity")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--metadata", default="", help="participant metadata")
    token.add_argument("--attribute", type=_attribute, action="append", default=[], metavar="KEY=VALUE",
                       help="participant attribute (repeatable)")
    token.add_argument("--kind", choices=sorted(PARTICIPANT_KINDS), help="participant kind (default standard)")
    token.add_argument("--api-key", "--key", dest="api_key", help="API key")
    token.add_argument("--api-secret", "--secret", dest="api_secret", help="API secret")
    token.add_argument("--valid-for", "--ttl", dest="valid_for", type=parse_duration, default="6h",
                       help="validity, e.g. 3600, 30m, 6h, 1d (default 6h)")
    grants = token.add_argument_group("grants")
    grants.add_argument("--admin", action="store_true", help="roomAdmin for the room")
    grants.add_argument("--no-publish", action="store_true", help="deny publishing")
    grants.add_argument("--no-subscribe", action="store_true", help="deny subscribing")
    grants.add_argument("--no-publish-data", action="store_true", help="deny sending data")
    grants.add_argument("--can-publish-sources", type=_sources, metavar="LIST",
                        help=f"only these sources may be published ({','.join(_SOURCES)})")
    grants.add_argument("--can-update-metadata", action="store_true",
                        help="may update its own name, metadata and attributes")
    grants.add_argument("--hidden", action="store_true", help="invisible to other participants")
    grants.add_argument("--room-create", action="store_true", help="may create and delete rooms")
    grants.add_argument("--room-list", action="store_true", help="may list rooms")


def _api_flags() -> argparse.ArgumentParser:
    """Flags every RoomService command takes."""
    common = argparse.ArgumentParser(add_help=False)
    server = common.add_argument_group("server")
    server.add_argument("--url", help="server URL, http(s):// or ws(s):// (default: env LIVEKIT_URL, else"
                                      f" {operator.DEFAULT_URL})")
    server.add_argument("--api-key", help="API key (default: env LIVEKIT_API_KEY)")
    server.add_argument("--api-secret", help="API secret (default: env LIVEKIT_API_SECRET)")
    server.add_argument("--json", action="store_true", help="print the response as protobuf JSON")
    return common


# Each API command's parser sets `build`: the parsed arguments -> the operator command to run.
Build = Callable[[argparse.Namespace], operator.Command]


def _command(actions: argparse._SubParsersAction, name: str, help: str, build: Build,
             service: str = "room") -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                                parents=[_api_flags()])
    parser.set_defaults(build=build, service=service)
    return parser


def _add_rooms(commands: argparse._SubParsersAction) -> None:
    rooms = commands.add_parser("room", help="list, create, delete and update rooms")
    actions = rooms.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = _command(actions, "list", "list rooms (all, or those named)",
                       lambda a: partial(operator.room_list, names=a.names))
    listing.add_argument("names", nargs="*", metavar="NAME")
    create = _command(actions, "create", "create a room (an existing room is returned unchanged)",
                      lambda a: partial(operator.room_create, name=a.name, empty_timeout=a.empty_timeout,
                                        departure_timeout=a.departure_timeout,
                                        max_participants=a.max_participants, metadata=a.metadata))
    create.add_argument("name", metavar="NAME")
    create.add_argument("--empty-timeout", type=int, metavar="SECONDS",
                        help="close the room this long after it was created or last left empty")
    create.add_argument("--departure-timeout", type=int, metavar="SECONDS",
                        help="close the room this long after the last participant left")
    create.add_argument("--max-participants", type=int, metavar="N")
    create.add_argument("--metadata", default="")
    delete = _command(actions, "delete", "delete a room, disconnecting everyone in it",
                      lambda a: partial(operator.room_delete, name=a.name))
    delete.add_argument("name", metavar="NAME")
    update = _command(actions, "update-metadata", "replace a room's metadata",
                      lambda a: partial(operator.room_update_metadata, name=a.name, metadata=a.metadata))
    update.add_argument("name", metavar="NAME")
    update.add_argument("metadata", metavar="METADATA")


def _participant_update(args: argparse.Namespace) -> operator.Command:
    permission: dict[str, object] = {
        field: getattr(args, field)
        for field in ("can_publish", "can_subscribe", "can_publish_data", "can_update_metadata", "hidden")
        if getattr(args, field) is not None
    }
    if args.can_publish_sources is not None:
        permission["can_publish_sources"] = [models.TrackSource.Value(name.upper())
                                             for name in args.can_publish_sources]
    if args.name is None and args.metadata is None and not args.attribute and not permission:
        raise operator.UsageError("nothing to update: give --name, --metadata, --attribute or a permission flag")
    return partial(operator.participant_update, room=args.room, identity=args.identity, name=args.name,
                   metadata=args.metadata, attributes=dict(args.attribute), permission=permission)


def _add_participants(commands: argparse._SubParsersAction) -> None:
    participants = commands.add_parser("participant", help="list, inspect, moderate and update participants")
    actions = participants.add_subparsers(dest="action", metavar="ACTION", required=True)

    def command(name: str, help: str, build: Build) -> argparse.ArgumentParser:
        parser = _command(actions, name, help, build)
        parser.add_argument("room", metavar="ROOM")
        if name != "list":
            parser.add_argument("identity", metavar="IDENTITY")
        return parser

    command("list", "list the participants of a room", lambda a: partial(operator.participant_list, room=a.room))
    command("get", "show one participant and its tracks",
            lambda a: partial(operator.participant_get, room=a.room, identity=a.identity))
    command("remove", "disconnect a participant from its room",
            lambda a: partial(operator.participant_remove, room=a.room, identity=a.identity))
    mute = command("mute", "mute (or unmute) a participant's published track",
                   lambda a: partial(operator.participant_mute, room=a.room, identity=a.identity,
                                     track_sid=a.track_sid, muted=not a.unmute))
    mute.add_argument("track_sid", metavar="TRACK_SID")
    mute.add_argument("--unmute", action="store_true", help="unmute instead")
    update = command("update", "update a participant's name, metadata, attributes or permission",
                     _participant_update)
    update.add_argument("--name")
    update.add_argument("--metadata")
    update.add_argument("--attribute", type=_attribute, action="append", default=[], metavar="KEY=VALUE",
                        help="set an attribute; an empty value removes it (repeatable)")
    permission = update.add_argument_group("permission (changed over the current one)")
    for flag in ("can-publish", "can-subscribe", "can-publish-data", "can-update-metadata", "hidden"):
        permission.add_argument(f"--{flag}", type=_flag, metavar="true|false")
    permission.add_argument("--can-publish-sources", type=_sources, metavar="LIST",
                            help=f"only these sources may be published ({','.join(_SOURCES)})")
    for subscribe in (True, False):
        verb = "subscribe" if subscribe else "unsubscribe"
        parser = command(verb, f"{verb} a participant {'to' if subscribe else 'from'} tracks",
                         lambda a, subscribe=subscribe: partial(
                             operator.participant_subscription, room=a.room, identity=a.identity,
                             track_sids=a.track_sids, subscribe=subscribe))
        parser.add_argument("track_sids", nargs="+", metavar="TRACK_SID")


def _add_send_data(commands: argparse._SubParsersAction) -> None:
    send = _command(commands, "send-data", "send a data packet to a room's participants",
                    lambda a: partial(operator.send_data, room=a.room, data=a.data.encode(), topic=a.topic,
                                      destinations=a.destinations, reliable=a.reliable))
    send.add_argument("room", metavar="ROOM")
    send.add_argument("data", metavar="DATA", help="payload (sent as UTF-8)")
    send.add_argument("--topic", default="")
    send.add_argument("--identity", dest="destinations", action="append", default=[], metavar="IDENTITY",
                      help="send only to this participant (repeatable; default everyone)")
    delivery = send.add_mutually_exclusive_group()
    delivery.add_argument("--reliable", dest="reliable", action="store_true", default=True,
                          help="ordered, retransmitted delivery (default)")
    delivery.add_argument("--lossy", dest="reliable", action="store_false", help="unordered, unretransmitted")


def _add_agents(commands: argparse._SubParsersAction) -> None:
    agents = commands.add_parser("agents", help="list the agent workers registered with the server")
    actions = agents.add_subparsers(dest="action", metavar="ACTION", required=True)
    _command(actions, "list", "list the registered agent workers", lambda a: operator.agents_list, service="target")

    dispatch = commands.add_parser("dispatch", help="create, list and delete agent dispatches (AgentDispatchService)")
    actions = dispatch.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _command(actions, "create", "dispatch an agent to a room (creating the room if it is not open)",
                      lambda a: partial(operator.dispatch_create, room=a.room, agent_name=a.agent_name,
                                        metadata=a.metadata), service="agent_dispatch")
    create.add_argument("room", metavar="ROOM")
    create.add_argument("--agent-name", default="", help="the workers' agent_name (default: the automatic ones)")
    create.add_argument("--metadata", default="", help="job metadata handed to the agent")
    listing = _command(actions, "list", "list a room's agent dispatches and their jobs",
                       lambda a: partial(operator.dispatch_list, room=a.room), service="agent_dispatch")
    listing.add_argument("room", metavar="ROOM")
    delete = _command(actions, "delete", "delete a dispatch, ending its jobs",
                      lambda a: partial(operator.dispatch_delete, room=a.room, dispatch_id=a.dispatch_id),
                      service="agent_dispatch")
    delete.add_argument("room", metavar="ROOM")
    delete.add_argument("dispatch_id", metavar="DISPATCH_ID")


def _add_nodes(commands: argparse._SubParsersAction) -> None:
    nodes = commands.add_parser("nodes", help="list the nodes of a cluster (redis.address configured)")
    actions = nodes.add_subparsers(dest="action", metavar="ACTION", required=True)
    _command(actions, "list", "list the cluster's live nodes and their load", lambda a: operator.nodes_list,
             service="target")


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
        port=args.port, udp_port=args.udp_port, tcp_port=args.tcp_port, log_level=args.log_level,
    )


def _token(args: argparse.Namespace) -> int:
    try:
        if args.action is None:  # the original form: a join token, devkey/secret unless told otherwise
            if not args.room or not args.identity:
                raise operator.UsageError("--room and --identity are required (or use `tern token create`)")
            key, secret = args.api_key or "devkey", args.api_secret or "secret"
        else:
            key, secret = operator.resolve_credentials(args.api_key, args.api_secret)
            if not (args.room or args.room_create or args.room_list):
                raise operator.UsageError("nothing to grant: give --room, --room-create or --room-list")
        if args.admin and not args.room:
            raise operator.UsageError("--admin needs --room")
        grants = api.VideoGrants(
            room_join=bool(args.room), room=args.room or "", room_admin=args.admin or None,
            room_create=args.room_create or None, room_list=args.room_list or None,
            can_publish=not args.no_publish, can_subscribe=not args.no_subscribe,
            can_publish_data=not args.no_publish_data, can_publish_sources=args.can_publish_sources,
            can_update_own_metadata=args.can_update_metadata or None, hidden=args.hidden or None,
        )
        token = api.AccessToken(key, secret)
        if args.kind:
            token.with_kind(args.kind)
        jwt = (token.with_identity(args.identity or "").with_name(args.name)
               .with_metadata(args.metadata).with_attributes(dict(args.attribute) or None)
               .with_ttl(datetime.timedelta(seconds=args.valid_for)).with_grants(grants).to_jwt())
    except (operator.UsageError, ValueError) as exc:
        print(f"tern token: error: {exc}", file=sys.stderr)
        return 2
    print(jwt)
    return 0


def _operate(args: argparse.Namespace) -> int:
    try:
        target = operator.resolve_target(args.url, args.api_key, args.api_secret)
        command = args.build(args)
    except operator.UsageError as exc:
        print(f"tern: error: {exc}", file=sys.stderr)
        return 2
    try:
        return operator.execute(target, command, args.json, args.service)
    except KeyboardInterrupt:
        return 130


def _load_test(argv: list[str]) -> int:
    try:  # lazy: only load tests need its client stack
        loadtest = importlib.import_module(f"{__package__}.clients.loadtest")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.clients.loadtest":
            raise
        print("tern load-test: not available in this installation", file=sys.stderr)
        return 2
    return loadtest.main(argv)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["load-test"]:  # its own parser owns everything after the command name
        return _load_test(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has already printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "token":
        return _token(args)
    if "build" in args:
        return _operate(args)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
