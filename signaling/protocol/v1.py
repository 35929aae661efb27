"""LiveKit's signal protocol v1 (`/rtc/v1`, one peer connection). The join's parameters arrive as one protobuf in the
`join_request` query parameter, and may carry the client's AddTrackRequests and its first offer; after that the
connection speaks the SignalRequests and SignalResponses of v0 (v0.py runs it), and the participant negotiates its
single peer connection (peer/negotiation.py SinglePC)."""
from __future__ import annotations

import base64
import binascii
import zlib
from collections import Counter

from google.protobuf.message import DecodeError
from livekit.protocol import rtc

from ..rtc.participant import Participant
from . import v0

# Characters of the join_request parameter. It rides in the request line, which the HTTP front caps at 32 KiB
# (httpfront.py); a Rust SDK's, gzipped with its first offer, is ~2 KB.
MAX_JOIN_REQUEST_PARAM = 32 * 1024
# Bytes of the JoinRequest once inflated (LiveKit's limit): the offer of a client with many m-lines fits.
MAX_JOIN_REQUEST_SIZE = 1024 * 1024


class JoinRequestError(ValueError):
    """A join_request that is not one: the message says why (an HTTP 400 before the upgrade)."""


def decode_join_request(param: str) -> rtc.JoinRequest:
    """The JoinRequest in a join_request parameter: URL-safe base64 (padded or not; JS and Rust differ) of a
    WrappedJoinRequest whose JoinRequest is plain or gzipped. Raises JoinRequestError."""
    if len(param) > MAX_JOIN_REQUEST_PARAM:
        raise JoinRequestError(f"join_request longer than {MAX_JOIN_REQUEST_PARAM} characters")
    try:
        text = param.strip().rstrip("=").encode("ascii")
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as error:
        raise JoinRequestError(f"join_request is not URL-safe base64: {error}") from None
    try:
        wrapped = rtc.WrappedJoinRequest.FromString(raw)
    except DecodeError:
        raise JoinRequestError("join_request is not a WrappedJoinRequest") from None
    if wrapped.compression == rtc.WrappedJoinRequest.Compression.GZIP:
        data = _gunzip(wrapped.join_request)
    elif wrapped.compression == rtc.WrappedJoinRequest.Compression.NONE:
        data = wrapped.join_request
    else:
        raise JoinRequestError(f"join_request compression {wrapped.compression} is unknown")
    try:
        return rtc.JoinRequest.FromString(data)
    except DecodeError:
        raise JoinRequestError("join_request holds no JoinRequest") from None


def _gunzip(data: bytes) -> bytes:
    """Inflates at most MAX_JOIN_REQUEST_SIZE bytes: a small bomb costs no more than that."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_JOIN_REQUEST_SIZE + 1)
    except zlib.error as error:
        raise JoinRequestError(f"join_request is not gzip: {error}") from None
    if len(out) > MAX_JOIN_REQUEST_SIZE:
        raise JoinRequestError(f"join_request larger than {MAX_JOIN_REQUEST_SIZE} bytes inflated")
    if not inflater.eof:
        raise JoinRequestError("join_request gzip stream is truncated")
    return out


class SignalSession(v0.SignalSession):
    """A v1 signal connection: a v0 one that, once joined (or resumed), acts on what the JoinRequest carried."""

    def __init__(self, participant: Participant, counters: Counter[str], join: rtc.JoinRequest) -> None:
        super().__init__(participant, counters)
        self.join = join

    def start(self, resume: bool) -> None:
        super().start(resume)
        for request in self.join.add_track_requests:  # each is bounded like any AddTrackRequest (participant.py)
            self.participant.add_track(request)
        if self.join.HasField("publisher_offer"):
            self.participant.handle_offer(self.join.publisher_offer)
        self.join = rtc.JoinRequest()  # done with: not kept for the connection's life
