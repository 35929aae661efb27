"""SDP for tern's peer connections: parse what LiveKit clients send, build the server's side.

The server is ICE-lite, the DTLS server on the publisher PC, and BUNDLEs every m-line on one UDP port (and one
passive ICE-TCP port) with rtcp-mux, so both builders repeat one transport block in every m-line and never
negotiate a per-m-line transport. The parser is hand-written and strict about the fields it reads (numbers,
fingerprints, m-lines) so that anything a remote peer sends either parses or raises SdpError; attributes it does
not use are skipped.

A client's SDP is hostile input parsed on the event loop every room shares, so parsing is linear in its size
(dict and set lookups only) and bounded: past any MAX_* below, parse() stops and raises SdpLimitError.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "SdpError", "SdpLimitError", "Codec", "MediaSection", "SessionDescription", "parse",
    "LocalEndpoint", "AcceptedMedia", "ReceivePolicy", "build_answer",
    "OutgoingMedia", "build_offer", "answer_codecs", "matching_codec", "red_codec", "with_params",
]

EXT_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
EXT_RID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
EXT_RRID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
EXT_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
EXT_ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
EXT_TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
EXT_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
# AV1 RTP specification appendix A: frame dependencies and layers of an SVC stream (AV1, VP9). A keyframe's carries
# the template structure (tens of bytes), which only the two-byte header form (a=extmap-allow-mixed) can hold.
EXT_DEPENDENCY_DESCRIPTOR = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"

_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
_SENDING = frozenset({"sendrecv", "sendonly"})
_MAX_SSRC = 0xFFFFFFFF
_NUMBER = re.compile(r"[0-9]{1,20}\Z")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+\Z")
_TOKEN = re.compile(r"[!-~]+\Z")           # mid (RFC 5888 token, visible ASCII)
_RID = re.compile(r"[A-Za-z0-9_-]+\Z")     # RFC 8851 rid-id

# Limits on a client's SDP. A libwebrtc offer's video m-section (~30 payload types with rtx) is ~5 KB and
# ~130 lines, an audio one ~1.7 KB and ~50; a subscriber's answer has one ~1 KB m-section per subscribed track.
# A publisher's offer legitimately grows without bound: livekit-client sets an unpublished track's transceiver
# inactive and adds a new one for every publish, and libwebrtc recycles only the m-sections of stopped transceivers
# (JSEP), so each screen-share toggle adds ~5-7 KB. Parsing is linear (~60 ms of CPU per MiB of libwebrtc SDP,
# answer included), so the length limit only bounds that work: 1 MiB holds ~150 toggles (the tests' leaner
# m-sections: ~300); past it the offer is refused, and after MAX_SDP_REFUSALS the participant is closed.
MAX_SDP_LENGTH = 1024 * 1024       # characters; protocol/v0.py's MAX_SIGNAL_MESSAGE makes room for it
MAX_SDP_LINES = 32_768             # 1 MiB of libwebrtc SDP is ~28,000 lines (~38 characters each)
MAX_MEDIA_SECTIONS = 512           # one per track (LiveKit clients) ever published on the PC; one per subscription
MAX_FORMATS_PER_SECTION = 128      # payload types are 7 bits
MAX_RIDS_PER_SECTION = 8           # LiveKit simulcasts 3 layers, libwebrtc at most 4
MAX_SSRCS_PER_SECTION = 32         # distinct SSRCs, and ssrc-group lines: legacy simulcast needs 6 (3 + RTX)
MAX_EXTMAPS_PER_SECTION = 64       # libwebrtc offers ~15
MAX_FEEDBACK_PER_CODEC = 16        # distinct rtcp-fb values for one payload type (or "*"); libwebrtc sends 5
MAX_FINGERPRINTS = 8               # per level; aiortc lists 3
MAX_CANDIDATES_PER_SECTION = 256   # ICE-lite never uses them; but a host with many interfaces (docker bridges, VPNs) lists
                                   # each address x UDP/TCP x generation: a test host with two extra veths sent > 64

# RFC 8445 5.1.2.1: priority = 2^24 type preference + 2^8 local preference + (256 - component). Host UDP candidates
# take the highest type preference (126) and local preference (65535), the local preference less one per further
# address (RFC 8445 5.1.2.2: distinct per address of a multihomed or dual-stack host).
_HOST_UDP_PRIORITY = (126 << 24) | (65535 << 8) | 255
# RFC 6544 4.2 ranks TCP below UDP so clients use it only when UDP fails. Like pion (LiveKit's stack): host type
# preference 126 - 27 for TCP, and local preference 2^13 direction-pref + other-pref, direction-pref 4 for a passive
# host candidate: 1671430143 for the first address; other-pref less one per further address.
_HOST_TCP_PASSIVE_PRIORITY = ((126 - 27) << 24) | (((4 << 13) | 8191) << 8) | 255


class SdpError(ValueError):
    """SDP that is malformed or unusable; the message says which line and why."""


class SdpLimitError(SdpError):
    """SDP beyond one of the MAX_* limits."""


def _limit(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise SdpLimitError(f"{what}: more than {limit}")


@dataclass
class Codec:
    """One rtpmap'ed payload type."""
    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    fmtp: str = ""
    rtcp_fb: list[str] = field(default_factory=list)
    rtx_payload_type: int | None = None   # the RTX PT whose apt= points here, if any

    def params(self) -> dict[str, str]:
        """fmtp as key -> value (keys lower-case); a key without '=' maps to ''."""
        out: dict[str, str] = {}
        for item in self.fmtp.split(";"):
            key, _, value = item.strip().partition("=")
            if key:
                out.setdefault(key.strip().lower(), value.strip())
        return out


@dataclass
class MediaSection:
    kind: str                       # "audio" | "video" | "application" (or whatever was offered)
    mid: str
    port: int
    protocol: str
    direction: str = "sendrecv"
    codecs: list[Codec] = field(default_factory=list)   # m-line order, RTX/red/ulpfec included
    extmap: dict[str, int] = field(default_factory=dict)   # URI -> id
    rids: list[tuple[str, str]] = field(default_factory=list)   # (rid, "send"|"recv"), a=rid order
    msid: tuple[str, str] | None = None   # (stream id, track id); track id "" if absent
    ssrcs: list[int] = field(default_factory=list)
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprint: tuple[str, str] | None = None   # (algorithm lower-case, hex upper-case)
    setup: str | None = None
    candidates: list[str] = field(default_factory=list)   # values after "a=candidate:"
    sctp_port: int | None = None
    max_message_size: int | None = None
    formats: list[str] = field(default_factory=list)   # m-line format tokens as written
    simulcast: dict[str, list[str]] = field(default_factory=dict)   # "send"/"recv" -> rids, "~" stripped
    # RFC 8285 a=extmap-allow-mixed (on the m-line or the session): header extensions may take the two-byte form
    extmap_allow_mixed: bool = False

    def codec(self, payload_type: int) -> Codec | None:
        return next((c for c in self.codecs if c.payload_type == payload_type), None)


@dataclass
class SessionDescription:
    sections: list[MediaSection]
    bundle: list[str]               # mids of the BUNDLE group
    extmap_allow_mixed: bool = False  # a=extmap-allow-mixed at the session level


# ---------------------------------------------------------------------------------------
# parsing

def _number(text: str, what: str, low: int, high: int) -> int:
    # int() alone would accept "+1", " 1", "1_0" and non-ASCII digits.
    if not _NUMBER.match(text):
        raise SdpError(f"{what}: expected a number, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpError(f"{what}: {value} is outside {low}..{high}")
    return value


def _split2(value: str, what: str) -> tuple[str, str]:
    """'<first> <rest>' with a non-empty first token and rest."""
    first, _, rest = value.partition(" ")
    rest = rest.strip()
    if not first or not rest:
        raise SdpError(f"{what}: expected two fields, got {value!r}")
    return first, rest


def _fingerprint(value: str) -> tuple[str, str]:
    algorithm, digest = _split2(value, "a=fingerprint")
    if not _HEX_PAIRS.match(digest):
        raise SdpError(f"a=fingerprint: {digest!r} is not colon-separated hex")
    return algorithm.lower(), digest.upper()


def _pick_fingerprint(found: list[tuple[str, str]]) -> tuple[str, str] | None:
    # aiortc lists sha-256/384/512; sha-256 is what the DTLS layer verifies.
    return next((f for f in found if f[0] == "sha-256"), found[0] if found else None)


@dataclass
class _Transport:
    """ICE/DTLS attributes at one level (session or media)."""
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    direction: str | None = None

    def take(self, name: str, value: str) -> bool:
        """Absorb the attribute if it is a transport one; True when it was."""
        if name == "ice-ufrag":
            self.ice_ufrag = value
        elif name == "ice-pwd":
            self.ice_pwd = value
        elif name == "fingerprint":
            _limit(len(self.fingerprints) + 1, MAX_FINGERPRINTS, "a=fingerprint lines")
            self.fingerprints.append(_fingerprint(value))
        elif name == "setup":
            self.setup = value
        elif name in _DIRECTIONS:
            self.direction = name
        else:
            return False
        return True


class _SectionBuilder:
    """Collects one m-section's lines; finish() resolves payload-type cross references."""

    def __init__(self, index: int, value: str) -> None:
        self.where = f"m-line {index}"
        tokens = value.split()
        if len(tokens) < 4:
            raise SdpError(f"{self.where}: expected '<media> <port> <proto> <fmt> ...', got {value!r}")
        kind, port, protocol, *formats = tokens
        _limit(len(formats), MAX_FORMATS_PER_SECTION, f"{self.where} formats")
        self.section = MediaSection(
            kind=kind, mid="", protocol=protocol, formats=formats,
            port=_number(port.split("/", 1)[0], f"{self.where} port", 0, 65535))
        self.is_rtp = "RTP/" in protocol
        self.payload_types = (
            [_number(f, f"{self.where} payload type", 0, 127) for f in formats] if self.is_rtp else [])
        self.transport = _Transport()
        self.rtpmap: dict[int, Codec] = {}
        self.fmtp: dict[int, str] = {}
        # payload type (None for "*") -> rtcp-fb value -> line order, so a codec's list keeps the SDP's order
        self.feedback: dict[int | None, dict[str, int]] = {}
        self.feedback_lines = 0
        self.ssrcs: dict[int, None] = {}   # insertion-ordered set
        self.has_mid = False

    def attribute(self, name: str, value: str) -> None:
        s = self.section
        where = f"{self.where} a={name}"
        if self.transport.take(name, value):
            return
        if name == "mid":
            if not _TOKEN.match(value):
                raise SdpError(f"{where}: mid must be a visible-ASCII token, got {value!r}")
            s.mid, self.has_mid = value, True
        elif name == "rtpmap":
            pt_text, encoding = _split2(value, where)
            pt = _number(pt_text, where, 0, 127)
            if pt in self.rtpmap:
                raise SdpError(f"{where}: payload type {pt} mapped twice")
            parts = encoding.split("/")
            if len(parts) not in (2, 3) or not parts[0]:
                raise SdpError(f"{where}: expected '<name>/<clock>[/<channels>]', got {encoding!r}")
            channels = _number(parts[2], where, 1, 255) if len(parts) == 3 else None
            self.rtpmap[pt] = Codec(pt, parts[0], _number(parts[1], where, 1, 10_000_000), channels)
        elif name == "fmtp":
            pt_text, params = _split2(value, where)
            pt = _number(pt_text, where, 0, 127)
            if pt in self.fmtp:
                raise SdpError(f"{where}: payload type {pt} has two fmtp lines")
            self.fmtp[pt] = params
        elif name == "rtcp-fb":
            pt_text, feedback = _split2(value, where)
            pt = None if pt_text == "*" else _number(pt_text, where, 0, 127)
            values = self.feedback.setdefault(pt, {})
            if feedback not in values:
                _limit(len(values) + 1, MAX_FEEDBACK_PER_CODEC, where)
                values[feedback] = self.feedback_lines
                self.feedback_lines += 1
        elif name == "extmap":
            id_text, rest = _split2(value, where)
            ext_id = _number(id_text.split("/", 1)[0], where, 1, 255)
            uri = rest.split()[0]
            if uri not in s.extmap:
                _limit(len(s.extmap) + 1, MAX_EXTMAPS_PER_SECTION, where)
                s.extmap[uri] = ext_id
        elif name == "rid":
            rid, rest = _split2(value, where)
            if not _RID.match(rid):
                raise SdpError(f"{where}: bad rid {rid!r}")
            direction = rest.split()[0]
            if direction not in ("send", "recv"):
                raise SdpError(f"{where}: direction must be send or recv, got {direction!r}")
            _limit(len(s.rids) + 1, MAX_RIDS_PER_SECTION, where)
            s.rids.append((rid, direction))
        elif name == "simulcast":
            self._simulcast(value, where)
        elif name == "msid":
            if s.msid is None:
                tokens = value.split()
                if not tokens or len(tokens) > 2:
                    raise SdpError(f"{where}: expected '<stream> [<track>]', got {value!r}")
                s.msid = (tokens[0], tokens[1] if len(tokens) == 2 else "")
        elif name == "ssrc":
            ssrc_text, _, _ = value.partition(" ")
            ssrc = _number(ssrc_text, where, 0, _MAX_SSRC)
            if ssrc not in self.ssrcs:
                _limit(len(self.ssrcs) + 1, MAX_SSRCS_PER_SECTION, f"{where} SSRCs")
                self.ssrcs[ssrc] = None
        elif name == "ssrc-group":
            tokens = value.split()
            if len(tokens) < 2:
                raise SdpError(f"{where}: expected '<semantics> <ssrc> ...', got {value!r}")
            _limit(len(s.ssrc_groups) + 1, MAX_SSRCS_PER_SECTION, where)
            _limit(len(tokens) - 1, MAX_SSRCS_PER_SECTION, where)
            s.ssrc_groups.append((tokens[0], [_number(t, where, 0, _MAX_SSRC) for t in tokens[1:]]))
        elif name == "candidate":
            _limit(len(s.candidates) + 1, MAX_CANDIDATES_PER_SECTION, where)
            s.candidates.append(value)
        elif name == "sctp-port":
            s.sctp_port = _number(value, where, 0, 65535)
        elif name == "max-message-size":
            s.max_message_size = _number(value, where, 0, 2**64)
        elif name == "extmap-allow-mixed":
            s.extmap_allow_mixed = True

    def _simulcast(self, value: str, where: str) -> None:
        tokens = value.split()
        if len(tokens) not in (2, 4):
            raise SdpError(f"{where}: expected '<send|recv> <rids> [<send|recv> <rids>]', got {value!r}")
        for direction, rid_list in zip(tokens[::2], tokens[1::2]):
            if direction not in ("send", "recv") or direction in self.section.simulcast:
                raise SdpError(f"{where}: bad or repeated direction {direction!r}")
            # ';' separates streams, ',' alternatives within a stream: all are rids to accept.
            _limit(rid_list.count(";") + rid_list.count(",") + 1, MAX_RIDS_PER_SECTION, where)
            rids = [r[1:] if r.startswith("~") else r for r in re.split(r"[;,]", rid_list)]
            if not all(_RID.match(r) for r in rids):
                raise SdpError(f"{where}: bad rid list {rid_list!r}")
            self.section.simulcast[direction] = rids

    def finish(self, session: _Transport, allow_mixed: bool) -> MediaSection:
        s = self.section
        s.extmap_allow_mixed = s.extmap_allow_mixed or allow_mixed
        if not self.has_mid:
            raise SdpError(f"{self.where} ({s.kind}): no a=mid (BUNDLE needs one on every m-line)")
        t = self.transport
        s.ice_ufrag = t.ice_ufrag if t.ice_ufrag is not None else session.ice_ufrag
        s.ice_pwd = t.ice_pwd if t.ice_pwd is not None else session.ice_pwd
        s.fingerprint = _pick_fingerprint(t.fingerprints or session.fingerprints)
        s.setup = t.setup if t.setup is not None else session.setup
        s.direction = t.direction or session.direction or "sendrecv"
        s.ssrcs = list(self.ssrcs)
        wildcard = self.feedback.get(None, {})
        by_pt: dict[int, Codec] = {}
        for pt in self.payload_types:
            codec = self.rtpmap.get(pt)
            if codec is None or pt in by_pt:
                continue   # static PT without rtpmap, or listed twice
            by_pt[pt] = codec
            codec.fmtp = self.fmtp.get(pt, "")
            # At most 2 * MAX_FEEDBACK_PER_CODEC values to order.
            lines = {**wildcard, **self.feedback.get(pt, {})}
            codec.rtcp_fb = sorted(lines, key=lines.__getitem__)
            s.codecs.append(codec)
        for codec in s.codecs:
            if codec.name.lower() == "rtx":
                apt = codec.params().get("apt", "")
                target = by_pt.get(int(apt)) if _NUMBER.match(apt) else None
                if target is not None and target.rtx_payload_type is None:
                    target.rtx_payload_type = codec.payload_type
        return s


def parse(sdp: str) -> SessionDescription:
    """Parse a session description; raises SdpError on anything malformed."""
    if not isinstance(sdp, str):
        raise SdpError(f"SDP must be text, got {type(sdp).__name__}")
    _limit(len(sdp), MAX_SDP_LENGTH, "SDP characters")
    _limit(sdp.count("\n") + 1, MAX_SDP_LINES, "SDP lines")  # before splitting: a list of strings costs more
    # Likewise before any section is built: an offer of thousands of m-lines is refused without parsing 512 of them.
    _limit(sdp.count("\nm="), MAX_MEDIA_SECTIONS, "m-lines")
    lines = sdp.split("\n")
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    lines = [line for line in lines if line.strip()]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session = _Transport()
    bundle: list[str] = []
    allow_mixed = False
    builders: list[_SectionBuilder] = []
    for number, line in enumerate(lines, 1):
        if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
            raise SdpError(f"line {number}: not '<type>=<value>': {line[:80]!r}")
        if "\r" in line or "\0" in line:
            # Values are echoed into our answer; a stray CR would split a line there.
            raise SdpError(f"line {number}: stray CR or NUL: {line[:80]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            _limit(len(builders) + 1, MAX_MEDIA_SECTIONS, "m-lines")
            builders.append(_SectionBuilder(len(builders), value))
        elif kind == "a":
            name, _, attr_value = value.partition(":")
            if builders:
                builders[-1].attribute(name, attr_value)
            elif name == "group":
                tokens = attr_value.split()
                if tokens and tokens[0] == "BUNDLE" and not bundle:
                    _limit(len(tokens) - 1, MAX_MEDIA_SECTIONS, "BUNDLE mids")
                    bundle = tokens[1:]
            elif name == "extmap-allow-mixed":
                allow_mixed = True
            else:
                session.take(name, attr_value)
    sections = [b.finish(session, allow_mixed) for b in builders]
    mids: set[str] = set()
    for section in sections:
        if section.mid in mids:
            raise SdpError(f"duplicate mids: {section.mid!r}")
        mids.add(section.mid)
    return SessionDescription(sections=sections, bundle=bundle, extmap_allow_mixed=allow_mixed)


def answer_codecs(answer: SessionDescription, mid: str) -> MediaSection:
    """The answer's m-section for `mid` (its codecs are what the peer agreed to)."""
    for section in answer.sections:
        if section.mid == mid:
            return section
    raise SdpError(f"answer has no m-line with mid {mid!r}")


# ---------------------------------------------------------------------------------------
# building

@dataclass
class LocalEndpoint:
    """This server's transport parameters, the same for every m-line (BUNDLE)."""
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str                      # sha-256, "AB:CD:..."
    candidates: list[tuple[str, int]]     # (ip, port) host UDP candidates
    tcp_candidates: list[tuple[str, int]] = field(default_factory=list)  # (ip, port) passive ICE-TCP host candidates
    # The DTLS role an answer takes: the server's (passive), or the client's (active) when the offer took the server's
    # role (a=setup:passive: FFmpeg's WHIP muxer).
    answer_setup: str = "passive"


@dataclass
class AcceptedMedia:
    """What the publisher answer accepted for one m-line the client sends on."""
    mid: str
    kind: str
    track_id: str | None      # msid track id == LiveKit AddTrackRequest cid
    codec: Codec              # the negotiated primary codec (with its rtx PT if video)
    extmap: dict[str, int]    # accepted extensions URI -> id (the client's ids)
    rids: list[str]           # simulcast rids accepted, a=rid order; [] when not simulcast
    ssrcs: list[int]          # from a=ssrc / ssrc-group FID (non-simulcast)
    rtx_ssrcs: list[int]
    red_payload_type: int | None = None   # audio: the client sends RED (RFC 2198) around `codec` under this PT


@dataclass(frozen=True)
class ReceivePolicy:
    """What an answer to a publisher accepts (signaling/rtc/media_caps.py says which): per kind, the header
    extension URIs and RTCP feedback kept, and a codec's preference (lower is better, None = unusable). With a single
    peer connection the answer also covers the m-lines the client receives on: `send_extensions` are, per kind, the
    URIs the server writes there (empty: such m-lines are answered like any inactive one)."""
    extensions: Mapping[str, frozenset[str]]
    feedback: Mapping[str, frozenset[str]]
    codec_rank: Callable[[str, Codec], int | None]
    send_extensions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Extension URIs accepted only on m-lines whose codec is one of these (names upper-case); others: any codec.
    codec_extensions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # By msid track id (LiveKit's AddTrackRequest cid): the codec name the client chose for that track (e.g. VP9 for
    # an SVC camera). Offered and usable, it wins over the rank: LiveKit's SDKs leave the codec order of the offer
    # alone and expect the answer to pick the track's codec, as LiveKit's server does.
    # "red" for an audio track that may send RED: the answer then puts the offer's RED for its Opus first, which
    # makes libwebrtc send Opus with redundancy.
    track_codecs: Mapping[str, str] = field(default_factory=dict)
    # By msid track id: Opus fmtp parameters the answer sets for an audio track (LiveKit's server decides DTX and
    # stereo in its answer from the AddTrackRequest; its SDKs do not put them in their offers).
    track_fmtp: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


@dataclass
class OutgoingMedia:
    """One m-line of the subscriber offer."""
    mid: str
    kind: str                 # "audio" | "video"
    codec: Codec
    ssrc: int
    rtx_ssrc: int | None
    stream_id: str            # "PA_xxx|TR_yyy"
    track_id: str             # "TR_yyy"
    cname: str
    extmap: dict[str, int]
    active: bool              # False once unsubscribed: m-line kept, a=inactive, no ssrc lines
    red_payload_type: int | None = None  # audio: RED around `codec` offered first under this PT (the client's, once
                                         # placed in its m-line); None when the client has none: plain Opus
    # Codecs offered after `codec` that the client may take instead (a track's backup codec, for a client that does
    # not decode its primary one), each with its RTX; empty once the client chose (`codec` is then its choice).
    alternatives: list[Codec] = field(default_factory=list)
    # The client's m-line allows the two-byte header form (a=extmap-allow-mixed), as its offer said (a single PC).
    extmap_allow_mixed: bool = False


def _session_lines(session_id: int, version: int, mids: list[str], allow_mixed: bool = True) -> list[str]:
    """The session level; `allow_mixed`: a=extmap-allow-mixed (an answer to an offer without it leaves it out)."""
    lines = ["v=0", f"o=- {session_id} {version} IN IP4 0.0.0.0", "s=-", "t=0 0"]
    if mids:
        lines.append("a=group:BUNDLE " + " ".join(mids))
    return lines + (["a=extmap-allow-mixed"] if allow_mixed else []) + ["a=ice-lite", "a=msid-semantic: WMS *"]


def _transport_lines(local: LocalEndpoint, setup: str, mid: str) -> list[str]:
    lines = [
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{local.ice_ufrag}",
        f"a=ice-pwd:{local.ice_pwd}",
        f"a=fingerprint:sha-256 {local.fingerprint}",
        f"a=setup:{setup}",
        f"a=mid:{mid}",
    ]
    lines += [f"a={candidate}" for candidate in host_candidates(local)]
    lines.append("a=end-of-candidates")
    return lines


def host_candidates(local: LocalEndpoint) -> list[str]:
    """The server's ICE candidates as attribute values ("candidate:..."), for the SDP and for trickle: UDP first,
    then passive TCP (RFC 6544: the client connects to it; it never dials out)."""
    # Distinct foundations/priorities: each host address (and protocol) is its own candidate base.
    udp = [f"candidate:{index + 1} 1 udp {_HOST_UDP_PRIORITY - (index << 8)} {ip} {port} typ host"
           for index, (ip, port) in enumerate(local.candidates)]
    tcp = [f"candidate:{len(udp) + index + 1} 1 tcp {_HOST_TCP_PASSIVE_PRIORITY - (index << 8)} {ip} {port} typ host"
           " tcptype passive" for index, (ip, port) in enumerate(local.tcp_candidates)]
    return udp + tcp


def codec_lines(codec: Codec, feedback: list[str]) -> list[str]:
    encoding = f"{codec.name}/{codec.clock_rate}"
    if codec.channels is not None:
        encoding += f"/{codec.channels}"
    lines = [f"a=rtpmap:{codec.payload_type} {encoding}"]
    lines += [f"a=rtcp-fb:{codec.payload_type} {fb}" for fb in feedback]
    if codec.fmtp:
        lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    return lines


def rtp_mline(kind: str, protocol: str, codecs: list[Codec]) -> str:
    return f"m={kind} 9 {protocol} " + " ".join(str(c.payload_type) for c in codecs)


def _primary_codec(section: MediaSection, policy: ReceivePolicy) -> Codec | None:
    ranked = [(rank, i, c) for i, c in enumerate(section.codecs)
              if (rank := policy.codec_rank(section.kind, c)) is not None]
    chosen = policy.track_codecs.get(section.msid[1]) if section.msid else None
    if chosen is not None:
        ranked = [r for r in ranked if r[2].name.upper() == chosen.upper()] or ranked
    return min(ranked, key=lambda r: r[:2])[2] if ranked else None


def _accepted_rids(section: MediaSection) -> tuple[list[str], list[str]]:
    """(rids in a=rid order, rids in a=simulcast order) the answer accepts; empty if no simulcast."""
    offered = set(section.simulcast.get("send", []))
    send_rids = [rid for rid, direction in section.rids if direction == "send" and rid in offered]
    accepted = set(send_rids)
    return send_rids, [rid for rid in section.simulcast.get("send", []) if rid in accepted]


def _split_ssrcs(section: MediaSection) -> tuple[list[int], list[int]]:
    rtx_of = {g[0]: g[1] for semantics, g in section.ssrc_groups if semantics == "FID" and len(g) == 2}
    repairs = set(rtx_of.values())
    media = [s for s in section.ssrcs if s not in repairs]
    return media, [rtx_of[s] for s in media if s in rtx_of]


def _rejected_lines(section: MediaSection) -> list[str]:
    return [f"m={section.kind} 0 {section.protocol} {section.formats[0]}", "c=IN IP4 0.0.0.0",
            f"a=mid:{section.mid}", "a=inactive"]


def _inactive_lines(section: MediaSection, local: LocalEndpoint, policy: ReceivePolicy) -> list[str]:
    codecs = section.codecs[:1]
    if codecs:
        lines = [rtp_mline(section.kind, section.protocol, codecs)]
    else:   # static payload type without rtpmap: echo the format
        lines = [f"m={section.kind} 9 {section.protocol} {section.formats[0]}"]
    lines += _transport_lines(local, local.answer_setup, section.mid)
    # Accept the header extensions here too: libwebrtc's later offers carry, even on new m-lines, only
    # extensions an answer has accepted, so an inactive answer without them would lose audio levels and rids.
    lines += extmap_lines(_listed_extensions(section, policy))
    lines += ["a=inactive", "a=rtcp-mux", "a=rtcp-rsize"]
    for codec in codecs:
        lines += codec_lines(codec, [])
    return lines


def _listed_extensions(section: MediaSection, policy: ReceivePolicy) -> dict[str, int]:
    """The extensions an answer lists on an m-line the server does not receive on: those it reads elsewhere, and on
    a client's recvonly m-line those it writes. libwebrtc offers a new m-line (a track published later) only the
    extensions some answer of the bundle accepted, so every m-line lists the ones publishing needs (rids)."""
    listed = _accepted_extensions(section, policy)
    if section.direction == "recvonly":
        listed.update(_accepted_extensions(section, policy, sends=True))
    return listed


def _accepted_extensions(section: MediaSection, policy: ReceivePolicy, sends: bool = False) -> dict[str, int]:
    """The section's extensions (the client's ids) that the server reads, or with `sends` writes."""
    allowed = (policy.send_extensions if sends else policy.extensions).get(section.kind, frozenset())
    return {uri: ext_id for uri, ext_id in section.extmap.items() if uri in allowed}


def extmap_lines(extmap: dict[str, int]) -> list[str]:
    return [f"a=extmap:{ext_id} {uri}" for uri, ext_id in extmap.items()]


def _application_lines(section: MediaSection, local: LocalEndpoint) -> list[str]:
    return ([f"m=application 9 {section.protocol} {' '.join(section.formats)}"]
            + _transport_lines(local, local.answer_setup, section.mid)
            + ["a=sctp-port:5000", "a=max-message-size:65535"])


def _receive_lines(section: MediaSection, local: LocalEndpoint, primary: Codec,
                   policy: ReceivePolicy) -> tuple[list[str], AcceptedMedia]:
    video = section.kind == "video"
    allowed_fb = policy.feedback.get(section.kind, frozenset())
    rtx = section.codec(primary.rtx_payload_type) if video and primary.rtx_payload_type is not None else None
    track_id = section.msid[1] if section.msid and section.msid[1] else None
    red = (red_codec(section, primary)
           if not video and track_id is not None and policy.track_codecs.get(track_id) == "red" else None)
    # NACK is off where RED is used (as LiveKit does): the redundancy repairs loss without a round trip.
    fmtp = with_params(primary.fmtp, policy.track_fmtp.get(track_id, {})) if track_id is not None else primary.fmtp
    codec = Codec(primary.payload_type, primary.name, primary.clock_rate, primary.channels, fmtp,
                  [fb for fb in primary.rtcp_fb if fb.lower() in allowed_fb and not (red and fb.lower() == "nack")],
                  rtx.payload_type if rtx else None)
    extmap = {uri: ext_id for uri, ext_id in _accepted_extensions(section, policy).items()
              if primary.name.upper() in policy.codec_extensions.get(uri, (primary.name.upper(),))}
    rids, simulcast_order = _accepted_rids(section) if video else ([], [])

    lines = [rtp_mline(section.kind, section.protocol, ([red] if red else []) + [codec] + ([rtx] if rtx else []))]
    lines += _transport_lines(local, local.answer_setup, section.mid)
    lines += extmap_lines(extmap)
    lines += ["a=recvonly", "a=rtcp-mux", "a=rtcp-rsize"]
    if red:
        lines += codec_lines(red, [])
    lines += codec_lines(codec, codec.rtcp_fb)
    if rtx:
        lines += codec_lines(rtx, [])
    if rids:
        lines += [f"a=rid:{rid} recv" for rid in rids]
        lines.append("a=simulcast:recv " + ";".join(simulcast_order))

    ssrcs, rtx_ssrcs = ([], []) if rids else _split_ssrcs(section)
    return lines, AcceptedMedia(section.mid, section.kind, track_id, codec, extmap, rids, ssrcs, rtx_ssrcs,
                                red.payload_type if red else None)


def with_params(fmtp: str, params: Mapping[str, str]) -> str:
    """`fmtp` with `params` set (replacing their values there, appended otherwise)."""
    items = [item.strip() for item in fmtp.split(";") if item.strip()]
    kept = [item for item in items if item.partition("=")[0].strip().lower() not in params]
    return ";".join(kept + [f"{key}={value}" for key, value in params.items()])


def red_codec(section: MediaSection, opus: Codec) -> Codec | None:
    """The section's RED for `opus` (`red/48000/2`, its blocks of `opus`'s payload type: fmtp "111/111"), if any."""
    blocks = f"{opus.payload_type}/{opus.payload_type}"
    return next((Codec(c.payload_type, c.name, c.clock_rate, c.channels, blocks) for c in section.codecs
                 if c.name.lower() == "red" and c.clock_rate == opus.clock_rate
                 and c.fmtp.replace(" ", "") in ("", blocks)), None)


def build_answer(offer: SessionDescription, local: LocalEndpoint, session_id: int, policy: ReceivePolicy,
                 outgoing: Mapping[str, OutgoingMedia] | None = None) -> tuple[str, list[AcceptedMedia]]:
    """Answer a publisher offer: receive what the client sends (codec, extensions and feedback as `policy`
    allows), send `outgoing` on the m-lines it names by mid (a single peer connection's subscriptions, placed in
    the client's recvonly m-lines), keep every m-line in order."""
    outgoing = outgoing or {}
    body: list[str] = []
    bundled: list[str] = []
    accepted: list[AcceptedMedia] = []
    offered_bundle = set(offer.bundle)
    for section in offer.sections:
        # A section outside the offered BUNDLE would need its own transport, which we lack;
        # without any BUNDLE group, port 0 marks a section the client already gave up.
        usable = section.mid in offered_bundle if offered_bundle else section.port != 0
        lines: list[str] | None = None
        if not usable:
            pass
        elif section.kind == "application" and "SCTP" in section.protocol:
            lines = _application_lines(section, local)
        elif section.mid in outgoing and section.kind == outgoing[section.mid].kind:
            lines = _send_lines(outgoing[section.mid], local, local.answer_setup, _listed_extensions(section, policy))
        elif section.kind in ("audio", "video") and "RTP/" in section.protocol:
            primary = _primary_codec(section, policy) if section.direction in _SENDING else None
            if primary is not None:
                lines, media = _receive_lines(section, local, primary, policy)
                accepted.append(media)
            elif section.direction not in _SENDING:
                lines = _inactive_lines(section, local, policy)
        if lines is None:
            body += _rejected_lines(section)
        else:
            body += lines
            bundled.append(section.mid)
    allow_mixed = offer.extmap_allow_mixed or any(section.extmap_allow_mixed for section in offer.sections)
    text = "\r\n".join(_session_lines(session_id, 2, bundled, allow_mixed) + body) + "\r\n"
    return text, accepted


def _send_lines(m: OutgoingMedia, local: LocalEndpoint, setup: str, listed: dict[str, int] | None = None) -> list[str]:
    """An m-line the server sends one forwarded track on (sendonly), or one it no longer does (inactive); it lists
    the extensions the server writes (`m.extmap`) or, in an answer, `listed` (which includes them)."""
    if m.kind not in ("audio", "video"):
        raise ValueError(f"mid {m.mid}: kind must be audio or video, got {m.kind!r}")
    codec = m.codec
    if m.rtx_ssrc is not None and codec.rtx_payload_type is None:
        raise ValueError(f"mid {m.mid}: rtx_ssrc given but the codec has no rtx payload type")
    red = (Codec(m.red_payload_type, "red", codec.clock_rate, codec.channels,
                 f"{codec.payload_type}/{codec.payload_type}") if m.red_payload_type is not None else None)
    codecs = [codec, *m.alternatives]
    formats = ([red] if red else []) + [c for sent in codecs for c in [sent, *_rtx_of(sent)]]
    lines = [rtp_mline(m.kind, "UDP/TLS/RTP/SAVPF", formats)]
    lines += _transport_lines(local, setup, m.mid)
    lines += extmap_lines(m.extmap if listed is None else listed)
    lines.append("a=sendonly" if m.active else "a=inactive")
    msid = f"{m.stream_id} {m.track_id}"
    if m.active:
        lines.append(f"a=msid:{msid}")
    lines += ["a=rtcp-mux", "a=rtcp-rsize"]
    if red:
        lines += codec_lines(red, [])
    for sent in codecs:
        lines += codec_lines(sent, sent.rtcp_fb)
        for rtx in _rtx_of(sent):
            lines += codec_lines(rtx, [])
    if m.active:
        ssrcs = [m.ssrc] + ([m.rtx_ssrc] if m.rtx_ssrc is not None else [])
        if m.rtx_ssrc is not None:
            lines.append(f"a=ssrc-group:FID {m.ssrc} {m.rtx_ssrc}")
        for ssrc in ssrcs:
            lines += [f"a=ssrc:{ssrc} cname:{m.cname}", f"a=ssrc:{ssrc} msid:{msid}"]
    return lines


def _rtx_of(codec: Codec) -> list[Codec]:
    """The RTX payload type paired with `codec` (apt=), if it has one."""
    if codec.rtx_payload_type is None:
        return []
    return [Codec(codec.rtx_payload_type, "rtx", codec.clock_rate, fmtp=f"apt={codec.payload_type}")]


def _profile(codec: Codec) -> tuple[str, ...]:
    """What tells apart two codecs of one name whose bitstreams a decoder of the other cannot take."""
    name, params = codec.name.upper(), codec.params()
    if name == "H264":  # the profile (not the level), and the packetization mode
        return _h264_profile(params.get("profile-level-id", "42001f").lower()[:4]), params.get("packetization-mode", "0")
    if name == "VP9":
        return (params.get("profile-id", "0"),)
    if name == "AV1":
        return (params.get("profile", "0"),)
    return ()


# H.264 profiles that several profile_idc / constraint-flag (profile-iop) pairs spell (RFC 6184 §8.1, table 5):
# (profile_idc, iop mask, iop value) -> profile. FFmpeg's WHIP muxer writes constrained baseline as 4240, browsers
# as 42e0; decoders take either.
_H264_PROFILES = ((0x42, 0x4F, 0x40, "constrained-baseline"), (0x4D, 0x8F, 0x80, "constrained-baseline"),
                  (0x58, 0xCF, 0xC0, "constrained-baseline"), (0x42, 0x4F, 0x00, "baseline"),
                  (0x58, 0xCF, 0x80, "baseline"), (0x4D, 0xAF, 0x00, "main"))


def _h264_profile(profile_iop: str) -> str:
    """The profile a profile-level-id's first four hex digits name (themselves if no table row does)."""
    try:
        idc, iop = int(profile_iop[:2], 16), int(profile_iop[2:4], 16)
    except ValueError:
        return profile_iop
    return next((name for row_idc, mask, value, name in _H264_PROFILES if idc == row_idc and iop & mask == value),
                profile_iop)


def matching_codec(section: MediaSection, codec: Codec) -> Codec | None:
    """The section's own payload type for `codec`: the same encoding, clock rate, channels and profile."""
    return next((c for c in section.codecs
                 if c.name.lower() == codec.name.lower() and c.clock_rate == codec.clock_rate
                 and (c.channels or 1) == (codec.channels or 1) and _profile(c) == _profile(codec)), None)


def build_offer(local: LocalEndpoint, media: list[OutgoingMedia], session_id: int, version: int,
                data_mid: str | None = "0") -> str:
    """Subscriber offer: one sendonly m-line per forwarded track, data channel first."""
    mids = ([data_mid] if data_mid is not None else []) + [m.mid for m in media]
    if len(set(mids)) != len(mids):
        raise ValueError(f"duplicate mids in offer: {mids}")
    body: list[str] = []
    if data_mid is not None:
        body += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel"]
        body += _transport_lines(local, "actpass", data_mid)
        body += ["a=sctp-port:5000", "a=max-message-size:65535"]
    for m in media:
        body += _send_lines(m, local, "actpass")
    return "\r\n".join(_session_lines(session_id, version, mids) + body) + "\r\n"
