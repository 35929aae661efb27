"""LiveKit access tokens: HS256 JWTs whose issuer is an API key and whose claims carry grants.

Verification follows LiveKit's server: only HS256, the issuer selects the secret, `exp` is
required, `nbf` is honoured, and clocks may disagree by a leeway. Claims come from a remote
peer, so every field is type-checked and a malformed token is an `AuthError`, never a crash.
"""
from __future__ import annotations

import secrets
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import jwt

ALGORITHM = "HS256"
DEFAULT_TTL = 6 * 3600

# Secret length is policed once, at startup, by the config (dev mode allows LiveKit's short
# "secret"); pyjwt's warning on every encode/decode would only repeat it.
warnings.filterwarnings("ignore", message=r"The HMAC key is \d+ bytes long")

PARTICIPANT_KINDS = frozenset(
    {"standard", "ingress", "egress", "sip", "agent", "connector", "bridge"}
)


class AuthError(Exception):
    """A token was refused; the message is safe to show to the client."""


@dataclass(frozen=True)
class VideoGrant:
    """LiveKit's VideoGrant; absent claims take LiveKit's defaults."""

    room_create: bool = False
    room_list: bool = False
    room_record: bool = False
    room_admin: bool = False
    room_join: bool = False
    room: str = ""
    destination_room: str = ""
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_publish_sources: tuple[str, ...] = ()  # empty = all sources allowed
    can_update_own_metadata: bool = False
    ingress_admin: bool = False
    hidden: bool = False
    recorder: bool = False
    agent: bool = False
    can_subscribe_metrics: bool = False


@dataclass(frozen=True)
class Claims:
    api_key: str
    identity: str
    name: str
    metadata: str
    attributes: dict[str, str]
    kind: str
    video: VideoGrant
    sha256: str
    expires_at: int
    room_config: dict[str, Any] = field(default_factory=dict)  # roomConfig: a RoomConfiguration as protojson


# snake_case field -> camelCase claim name, for the scalar grant fields.
_GRANT_CLAIM_NAMES: dict[str, str] = {
    name: name.split("_")[0] + "".join(part.capitalize() for part in name.split("_")[1:])
    for name in VideoGrant.__dataclass_fields__
    if name != "can_publish_sources"
}


def _typed(container: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = container.get(key)
    if value is None:
        return default
    # bool is a subclass of int; a grant must be a real bool and a string a real str.
    if type(value) is not kind:
        raise AuthError(f"invalid token: {where}{key} must be a {kind.__name__}")
    return value


def _parse_video(raw: Any) -> VideoGrant:
    if raw is None:
        return VideoGrant()
    if not isinstance(raw, dict):
        raise AuthError("invalid token: video must be an object")
    values: dict[str, Any] = {}
    for name, claim in _GRANT_CLAIM_NAMES.items():
        default = VideoGrant.__dataclass_fields__[name].default
        values[name] = _typed(raw, claim, type(default), default, "video.")
    sources = raw.get("canPublishSources")
    if sources is not None:
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise AuthError("invalid token: video.canPublishSources must be a list of strings")
        values["can_publish_sources"] = tuple(sources)
    return VideoGrant(**values)


def video_claim(grant: VideoGrant) -> dict[str, Any]:
    """The `video` claim that carries `grant` (what _parse_video reads back)."""
    claim: dict[str, Any] = {name: getattr(grant, field) for field, name in _GRANT_CLAIM_NAMES.items()}
    if grant.can_publish_sources:
        claim["canPublishSources"] = list(grant.can_publish_sources)
    return claim


def _parse_attributes(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise AuthError("invalid token: attributes must be a map of strings")
    return dict(raw)


class TokenVerifier:
    """Verifies tokens against a set of API keys (key -> secret)."""

    def __init__(self, keys: dict[str, str], leeway: float = 60.0) -> None:
        self._keys = dict(keys)
        self._leeway = leeway
        # Tokens naming an unknown API key are checked against a secret nobody knows, so they fail exactly as a
        # bad signature does (same message, same work): answers do not reveal which API keys exist.
        self._unknown_key_secret = secrets.token_urlsafe(32)

    def verify(self, token: str) -> Claims:
        return self._claims(*self._decode(token))

    def refresh(self, token: str, ttl: float, claims: dict[str, Any] | None = None) -> str:
        """The same claims updated with `claims` (e.g. a changed grant or name), signed anew with the same key
        and valid for `ttl` seconds from now."""
        api_key, payload = self._decode(token)
        now = int(time.time())
        payload = {**payload, **(claims or {}), "nbf": now, "exp": now + int(ttl)}
        return jwt.encode(payload, self._keys[api_key], algorithm=ALGORITHM)

    def _decode(self, token: str) -> tuple[str, dict[str, Any]]:
        """The API key and verified payload of a token; AuthError with a user-facing message otherwise."""
        if not isinstance(token, str) or not token:
            raise AuthError("invalid token: missing")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: malformed ({exc})") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError(f"invalid token: algorithm must be {ALGORITHM}")
        api_key = unverified.get("iss")
        if not isinstance(api_key, str) or not api_key:
            raise AuthError("invalid token: no issuer (API key)")
        secret = self._keys.get(api_key, self._unknown_key_secret)
        try:
            payload = jwt.decode(
                token,
                key=secret,
                algorithms=[ALGORITHM],
                issuer=api_key,
                leeway=self._leeway,
                options={"require": ["exp"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError("invalid token: exp claim required") from None
        except jwt.InvalidSignatureError:
            raise AuthError("invalid token: unknown API key or signature mismatch") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        return api_key, payload

    def verify_join(self, token: str) -> tuple[Claims, str]:
        """Verifies a token presented to join a room; returns the claims and the room name."""
        claims = self.verify(token)
        if not claims.video.room_join:
            raise AuthError("permission denied: roomJoin grant required")
        if not claims.video.room:
            raise AuthError("permission denied: token names no room")
        if not claims.identity:
            raise AuthError("permission denied: token has no identity")
        return claims, claims.video.room

    @staticmethod
    def _claims(api_key: str, payload: dict[str, Any]) -> Claims:
        # LiveKit falls back to jti when sub is empty.
        identity = _typed(payload, "sub", str, "", "") or _typed(payload, "jti", str, "", "")
        # Like LiveKit, a kind this server does not know is treated as a standard participant.
        kind = _typed(payload, "kind", str, "", "")
        if kind not in PARTICIPANT_KINDS:
            kind = "standard"
        return Claims(
            api_key=api_key,
            identity=identity,
            name=_typed(payload, "name", str, "", ""),
            metadata=_typed(payload, "metadata", str, "", ""),
            attributes=_parse_attributes(payload.get("attributes")),
            kind=kind,
            video=_parse_video(payload.get("video")),
            sha256=_typed(payload, "sha256", str, "", ""),
            expires_at=int(payload["exp"]),
            room_config=_typed(payload, "roomConfig", dict, {}, ""),
        )


def create_token(
    api_key: str,
    secret: str,
    identity: str,
    room: str,
    ttl: int = DEFAULT_TTL,
    name: str = "",
    can_publish: bool = True,
    can_subscribe: bool = True,
    *,
    can_publish_data: bool = True,
    room_admin: bool = False,
    hidden: bool = False,
    metadata: str = "",
) -> str:
    """Mints a join token for `identity` in `room`, in the form LiveKit's SDKs mint."""
    if not api_key or not secret:
        raise ValueError("API key and secret are required")
    if not identity or not room:
        raise ValueError("identity and room are required to join a room")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    video: dict[str, Any] = {
        "roomJoin": True,
        "room": room,
        "canPublish": can_publish,
        "canSubscribe": can_subscribe,
        "canPublishData": can_publish_data,
    }
    if room_admin:
        video["roomAdmin"] = True
    if hidden:
        video["hidden"] = True
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "nbf": now,
        "exp": now + int(ttl),
        "video": video,
    }
    if name:
        payload["name"] = name
    if metadata:
        payload["metadata"] = metadata
    return jwt.encode(payload, secret, algorithm=ALGORITHM)
