"""RTP payloads back into the codec's frames, as a muxer takes them: Opus (RFC 7587), VP8 (RFC 7741), VP9
(draft-ietf-payload-vp9: a picture's spatial layers joined into a superframe) and H.264 (RFC 6184: single NAL units,
STAP-A, FU-A; Annex B out). Sans-I/O. A frame with a packet missing is dropped, and so is every video frame after it
until a keyframe (a decoder cannot use them): `want_keyframe` then says a PLI is due."""
from __future__ import annotations

from dataclasses import dataclass

from .jitter import RtpPacket

# H.264 NAL unit types (RFC 6184 table 1).
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_STAP_A = 24
NAL_FU_A = 28
START_CODE = b"\x00\x00\x00\x01"
# Bytes one frame may reach while assembled (a 4K keyframe is ~1 MB): past it the frame is dropped as broken.
MAX_FRAME_SIZE = 4 * 1024 * 1024


class PayloadError(ValueError):
    """A payload the codec's RTP format does not allow."""


@dataclass(slots=True)
class Frame:
    data: bytes
    timestamp: int   # RTP timestamp
    keyframe: bool


class Depacketizer:
    """Assembles frames from in-order packets (a jitter buffer's output). Video frames end at the RTP marker."""

    video = True

    def __init__(self) -> None:
        self.want_keyframe = self.video  # nothing decodes before the first keyframe
        self.dropped_frames = 0
        self.malformed = 0
        self._reset()

    def push(self, packet: RtpPacket, lost_before: bool) -> Frame | None:
        if lost_before or (self._timestamp is not None and packet.timestamp != self._timestamp):
            self._drop()  # the frame in progress lost its end
            if lost_before:  # whatever was lost may have been a whole frame the next ones refer to
                self.want_keyframe = self.video
        if self._timestamp is None:
            self._timestamp = packet.timestamp
        try:
            if not self._broken:
                self._take(packet.payload, first=not self._parts)
                self._size += len(packet.payload)
                if self._size > MAX_FRAME_SIZE:
                    raise PayloadError("frame too large")
        except PayloadError:
            self.malformed += 1
            self._broken = True
        if not packet.marker:
            return None
        frame = None
        if not self._broken and self._parts:
            try:
                data, keyframe = self._finish(self._parts)
            except PayloadError:
                self.malformed += 1
                self._drop()
                return None
            if keyframe:
                self.want_keyframe = False
            if not self.want_keyframe:
                frame = Frame(data, packet.timestamp, keyframe)
            else:
                self.dropped_frames += 1
        else:
            self._drop()
        self._reset()
        return frame

    def _drop(self) -> None:
        if self._parts or self._broken:
            self.dropped_frames += 1
            self.want_keyframe = self.video
        self._reset()

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._timestamp = None
        self._broken = False

    def _take(self, payload: bytes, first: bool) -> None:
        """Appends the payload's media to self._parts; PayloadError if it cannot belong there."""
        raise NotImplementedError

    def _finish(self, parts: list[bytes]) -> tuple[bytes, bool]:
        """The whole frame and whether it is a keyframe."""
        return b"".join(parts), False


class OpusDepacketizer(Depacketizer):
    """One RTP payload is one Opus packet; a lost one is only a gap (the decoder conceals it)."""

    video = False

    def push(self, packet: RtpPacket, lost_before: bool) -> Frame | None:
        if not packet.payload:
            self.malformed += 1
            return None
        return Frame(packet.payload, packet.timestamp, True)


class Vp8Depacketizer(Depacketizer):
    def _take(self, payload: bytes, first: bool) -> None:
        if not payload:
            raise PayloadError("empty VP8 payload")
        start = bool(payload[0] & 0x10) and payload[0] & 0x07 == 0  # S=1 and partition index 0
        offset = 1
        if payload[0] & 0x80:  # X: extension byte with I L T K
            if len(payload) < 2:
                raise PayloadError("truncated VP8 descriptor")
            extension = payload[1]
            offset = 2
            if extension & 0x80:  # I: picture id, 7 or 15 bits
                if len(payload) <= offset:
                    raise PayloadError("truncated VP8 descriptor")
                offset += 2 if payload[offset] & 0x80 else 1
            if extension & 0x40:  # L: TL0PICIDX
                offset += 1
            if extension & 0x30:  # T or K: one byte TID/Y/KEYIDX
                offset += 1
        if offset >= len(payload):
            raise PayloadError("VP8 payload without data")
        if first != start:
            raise PayloadError("VP8 frame without its start" if first else "VP8 frame start inside a frame")
        self._parts.append(payload[offset:])

    def _finish(self, parts: list[bytes]) -> tuple[bytes, bool]:
        data = b"".join(parts)
        return data, data[0] & 0x01 == 0  # RFC 6386 frame tag: P bit 0 = key frame


class Vp9Depacketizer(Depacketizer):
    """A picture (one RTP timestamp) may hold a frame per spatial layer: joined into a VP9 superframe."""

    def _reset(self) -> None:
        super()._reset()
        self._frames: list[bytes] = []  # the picture's completed layer frames
        self._keyframe = False
        self._layer_done = True         # no layer frame is open
        self._layer_start = 0           # index in self._parts where the open layer frame began

    def _take(self, payload: bytes, first: bool) -> None:
        if not payload:
            raise PayloadError("empty VP9 payload")
        flags = payload[0]
        inter, layered, flexible = flags & 0x40, flags & 0x20, flags & 0x10
        begin, end, scalability = flags & 0x08, flags & 0x04, flags & 0x02
        offset = 1
        spatial = 0
        if flags & 0x80:  # I: picture id
            if len(payload) <= offset:
                raise PayloadError("truncated VP9 descriptor")
            offset += 2 if payload[offset] & 0x80 else 1
        if layered:
            if len(payload) <= offset:
                raise PayloadError("truncated VP9 descriptor")
            spatial = (payload[offset] >> 1) & 0x07
            offset += 1 if flexible else 2  # TID/U/SID/D, and TL0PICIDX in non-flexible mode
        if flexible and inter:  # P_DIFF bytes while N is set
            while True:
                if len(payload) <= offset:
                    raise PayloadError("truncated VP9 reference list")
                more = payload[offset] & 0x01
                offset += 1
                if not more:
                    break
        if scalability:
            offset = _skip_vp9_ss(payload, offset)
        if offset >= len(payload):
            raise PayloadError("VP9 payload without data")
        in_layer = bool(self._parts) and not self._layer_done
        if begin and in_layer or not begin and not in_layer:
            raise PayloadError("VP9 layer frame boundaries out of order")
        if begin and not self._parts and not self._frames:
            self._keyframe = not inter and spatial == 0
        self._parts.append(payload[offset:])
        self._layer_done = bool(end)
        if end:
            self._frames.append(b"".join(self._parts[self._layer_start:]))
            self._layer_start = len(self._parts)

    def _finish(self, parts: list[bytes]) -> tuple[bytes, bool]:
        if not self._layer_done:
            raise PayloadError("VP9 picture ended inside a layer frame")
        return _superframe(self._frames), self._keyframe


def _skip_vp9_ss(payload: bytes, offset: int) -> int:
    """Past the scalability structure (N_S, Y, G; sizes; picture group)."""
    if len(payload) <= offset:
        raise PayloadError("truncated VP9 scalability structure")
    head = payload[offset]
    offset += 1
    if head & 0x10:  # Y: width and height per spatial layer
        offset += 4 * ((head >> 5) + 1)
    if head & 0x08:  # G: picture group
        if len(payload) <= offset:
            raise PayloadError("truncated VP9 picture group")
        groups = payload[offset]
        offset += 1
        for _ in range(groups):
            if len(payload) <= offset:
                raise PayloadError("truncated VP9 picture group")
            offset += 1 + ((payload[offset] >> 2) & 0x03)  # TID/U/R, then R reference differences
    return offset


def _superframe(frames: list[bytes]) -> bytes:
    """VP9 superframe (VP9 bitstream spec annex B): the frames, then an index of their sizes; one frame stays bare."""
    if len(frames) == 1:
        return frames[0]
    size_bytes = max(1, (max(len(f) for f in frames).bit_length() + 7) // 8)
    if size_bytes > 4 or len(frames) > 8:
        raise PayloadError("VP9 picture too large for a superframe")
    marker = 0xC0 | ((size_bytes - 1) << 3) | (len(frames) - 1)
    index = bytes([marker]) + b"".join(len(f).to_bytes(size_bytes, "little") for f in frames) + bytes([marker])
    return b"".join(frames) + index


class H264Depacketizer(Depacketizer):
    """Access units in Annex B. A keyframe (IDR) without SPS/PPS in front gets the last ones seen, so a file that
    starts there (and a muxer that reads the parameter sets from it) has them."""

    def __init__(self) -> None:
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        super().__init__()

    def _reset(self) -> None:
        super()._reset()
        self._nals: list[bytes] = []
        self._fragment: bytearray | None = None

    def _take(self, payload: bytes, first: bool) -> None:
        if not payload:
            raise PayloadError("empty H.264 payload")
        kind = payload[0] & 0x1F
        if self._fragment is not None and kind != NAL_FU_A:
            raise PayloadError("FU-A fragment without its end")
        if 1 <= kind <= 23:
            self._nals.append(payload)
        elif kind == NAL_STAP_A:
            offset = 1
            while offset < len(payload):
                if offset + 2 > len(payload):
                    raise PayloadError("truncated STAP-A")
                size = int.from_bytes(payload[offset:offset + 2], "big")
                offset += 2
                if size == 0 or offset + size > len(payload):
                    raise PayloadError("STAP-A unit past the payload")
                self._nals.append(payload[offset:offset + size])
                offset += size
        elif kind == NAL_FU_A:
            if len(payload) < 3:
                raise PayloadError("truncated FU-A")
            header = payload[1]
            if header & 0x80:  # S
                if self._fragment is not None:
                    raise PayloadError("FU-A start inside a fragment")
                self._fragment = bytearray([(payload[0] & 0xE0) | (header & 0x1F)])
            elif self._fragment is None:
                raise PayloadError("FU-A fragment without its start")
            self._fragment += payload[2:]
            if header & 0x40:  # E
                self._nals.append(bytes(self._fragment))
                self._fragment = None
        else:
            raise PayloadError(f"unsupported H.264 packetization (NAL type {kind})")
        self._parts.append(b"")  # marks the frame as started; the units are in self._nals

    def _finish(self, parts: list[bytes]) -> tuple[bytes, bool]:
        if self._fragment is not None or not self._nals:
            raise PayloadError("access unit ended inside a fragment")
        types = [nal[0] & 0x1F for nal in self._nals]
        for nal, kind in zip(self._nals, types):
            if kind == NAL_SPS:
                self._sps = nal
            elif kind == NAL_PPS:
                self._pps = nal
        nals = self._nals
        keyframe = NAL_IDR in types
        if keyframe and NAL_SPS not in types and self._sps is not None and self._pps is not None:
            nals = [self._sps, self._pps, *nals]
        return b"".join(START_CODE + nal for nal in nals), keyframe


DEPACKETIZERS: dict[str, type[Depacketizer]] = {
    "opus": OpusDepacketizer, "vp8": Vp8Depacketizer, "vp9": Vp9Depacketizer, "h264": H264Depacketizer,
}
