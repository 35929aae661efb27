"""LiveKit's Egress service over Twirp (`POST /twirp/livekit.Egress/<Method>`, the roomRecord grant), answered by the
node's built-in egress (manager.py): passthrough track recordings and audio-only room mixes. What needs a compositor
(video) or a browser is Twirp `unimplemented`."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import egress as proto

from ..roomservice import TwirpError, TwirpMethod, TwirpService
from .manager import EgressManager, EgressNotFound, EgressStateError, Unsupported

PREFIX = "/twirp/livekit.Egress/"
SUPPORTED = ("tern records tracks to local files without transcoding: StartTrackEgress, and StartTrackCompositeEgress"
             " or StartParticipantEgress with one Opus and/or one VP8/VP9/H.264 track; and a room's audio mixed into"
             " one file: StartRoomCompositeEgress with audio_only")


class EgressService(TwirpService):
    prefix = PREFIX

    @property
    def manager(self) -> EgressManager:
        return self.node.egress

    def start_track(self, request: proto.TrackEgressRequest) -> proto.EgressInfo:
        return _answer(self.manager.start_track, request)

    def start_track_composite(self, request: proto.TrackCompositeEgressRequest) -> proto.EgressInfo:
        return _answer(self.manager.start_track_composite, request)

    def start_participant(self, request: proto.ParticipantEgressRequest) -> proto.EgressInfo:
        return _answer(self.manager.start_participant, request)

    def start_room_composite(self, request: proto.RoomCompositeEgressRequest) -> proto.EgressInfo:
        return _answer(self.manager.start_room_composite, request)

    def list_egress(self, request: proto.ListEgressRequest) -> proto.ListEgressResponse:
        return self.manager.list(request)

    def stop_egress(self, request: proto.StopEgressRequest) -> proto.EgressInfo:
        return _answer(self.manager.stop, request.egress_id)

    def unimplemented(self, request: Message) -> Message:
        what = {
            proto.WebEgressRequest: "web egress (it needs a browser)",
            proto.StartEgressRequest: "StartEgress",
            proto.UpdateLayoutRequest: "UpdateLayout (there is no layout)",
            proto.UpdateStreamRequest: "UpdateStream (there are no stream outputs)",
        }[type(request)]
        raise TwirpError("unimplemented", f"{what} is not supported; {SUPPORTED}")


def _answer(call: Callable[[Any], Message], argument: Any) -> Message:
    """The manager's answer, its refusals as Twirp errors."""
    try:
        return call(argument)
    except Unsupported as error:
        raise TwirpError("unimplemented", f"{error}; {SUPPORTED}") from None
    except EgressNotFound as error:
        raise TwirpError("not_found", str(error)) from None
    except EgressStateError as error:
        raise TwirpError("failed_precondition", str(error)) from None
    except FileExistsError as error:
        raise TwirpError("already_exists", str(error)) from None
    except OSError as error:  # the output directory cannot be written (the operator's to fix)
        raise TwirpError("internal", f"cannot record to the egress output directory: {error}") from None
    except OverflowError as error:
        raise TwirpError("resource_exhausted", str(error)) from None
    except ValueError as error:
        raise TwirpError("invalid_argument", str(error)) from None


EgressService.methods = {
    "StartTrackEgress": TwirpMethod(proto.TrackEgressRequest, "record", EgressService.start_track),
    "StartTrackCompositeEgress": TwirpMethod(proto.TrackCompositeEgressRequest, "record",
                                             EgressService.start_track_composite),
    "StartParticipantEgress": TwirpMethod(proto.ParticipantEgressRequest, "record", EgressService.start_participant),
    "ListEgress": TwirpMethod(proto.ListEgressRequest, "record", EgressService.list_egress),
    "StopEgress": TwirpMethod(proto.StopEgressRequest, "record", EgressService.stop_egress),
    "StartRoomCompositeEgress": TwirpMethod(proto.RoomCompositeEgressRequest, "record",
                                            EgressService.start_room_composite),
    "StartWebEgress": TwirpMethod(proto.WebEgressRequest, "record", EgressService.unimplemented),
    "StartEgress": TwirpMethod(proto.StartEgressRequest, "record", EgressService.unimplemented),
    "UpdateLayout": TwirpMethod(proto.UpdateLayoutRequest, "record", EgressService.unimplemented),
    "UpdateStream": TwirpMethod(proto.UpdateStreamRequest, "record", EgressService.unimplemented),
}
