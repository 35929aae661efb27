"""Access tokens: minting, verification against LiveKit's claims and grants, refresh, and what is refused."""
import base64
import datetime
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api

from signaling.auth import AuthError, TokenVerifier, VideoGrant, create_token

KEY = "APIkey123"
SECRET = "a-secret-that-is-at-least-32-characters-long"


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier({KEY: SECRET, "other": "another-secret-of-sufficient-length-000"})


def livekit_token(**grants) -> str:
    grants.setdefault("room_join", True)
    grants.setdefault("room", "my-room")
    return (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_grants(api.VideoGrants(**grants))
        .to_jwt()
    )


def signed(payload: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, secret, algorithm=algorithm)


def future() -> int:
    return int(time.time()) + 3600


def test_livekit_minted_token_verifies(verifier):
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_name("Alice")
        .with_metadata('{"x": 1}')
        .with_attributes({"role": "host"})
        .with_kind("agent")
        .with_grants(api.VideoGrants(room_join=True, room="my-room"))
        .to_jwt()
    )
    claims, room = verifier.verify_join(token)
    assert room == "my-room"
    assert claims.api_key == KEY
    assert claims.identity == "alice"
    assert claims.name == "Alice"
    assert claims.metadata == '{"x": 1}'
    assert claims.attributes == {"role": "host"}
    assert claims.kind == "agent"
    assert claims.video.room_join and claims.video.can_publish and claims.video.can_subscribe
    assert claims.video.can_publish_data
    assert not claims.video.room_admin and not claims.video.hidden
    assert abs(claims.expires_at - (time.time() + 6 * 3600)) < 10


def test_livekit_grants_parsed(verifier):
    token = livekit_token(
        can_publish=False, can_subscribe=False, can_publish_data=False, hidden=True,
        can_publish_sources=["camera", "microphone"], can_update_own_metadata=True,
        room_admin=True, recorder=True, agent=True, can_subscribe_metrics=True,
    )
    video = verifier.verify(token).video
    assert video == VideoGrant(
        room_join=True, room="my-room", room_admin=True, can_publish=False,
        can_subscribe=False, can_publish_data=False, hidden=True,
        can_publish_sources=("camera", "microphone"), can_update_own_metadata=True,
        recorder=True, agent=True, can_subscribe_metrics=True,
    )


def test_absent_grants_take_livekit_defaults(verifier):
    claims = verifier.verify(signed({"iss": KEY, "sub": "bob", "exp": future(),
                                     "video": {"roomJoin": True, "room": "r"}}))
    assert claims.video.can_publish_data and claims.video.can_publish
    assert claims.video.can_subscribe
    assert not claims.video.can_update_own_metadata and not claims.video.hidden
    assert claims.video.can_publish_sources == ()
    assert claims.kind == "standard" and claims.attributes == {} and claims.name == ""


def test_no_video_claim_is_default_grant(verifier):
    claims = verifier.verify(signed({"iss": KEY, "sub": "bob", "exp": future()}))
    assert claims.video == VideoGrant()


def test_identity_falls_back_to_jti(verifier):
    claims = verifier.verify(signed({"iss": KEY, "jti": "carol", "exp": future()}))
    assert claims.identity == "carol"


def test_unknown_kind_is_standard(verifier):
    claims = verifier.verify(signed({"iss": KEY, "sub": "x", "exp": future(), "kind": "robot"}))
    assert claims.kind == "standard"


def test_issuer_selects_secret(verifier):
    token = signed({"iss": "other", "sub": "x", "exp": future()},
                   secret="another-secret-of-sufficient-length-000")
    assert verifier.verify(token).api_key == "other"
    # Signed with a known key's secret but naming the other key as issuer.
    with pytest.raises(AuthError, match="signature mismatch"):
        verifier.verify(signed({"iss": "other", "sub": "x", "exp": future()}))


def test_expired_beyond_leeway(verifier):
    with pytest.raises(AuthError, match="token expired"):
        verifier.verify(signed({"iss": KEY, "sub": "x", "exp": int(time.time()) - 120}))


def test_expired_within_leeway_accepted(verifier):
    verifier.verify(signed({"iss": KEY, "sub": "x", "exp": int(time.time()) - 30}))


def test_livekit_token_past_ttl_refused(verifier):
    token = (
        api.AccessToken(KEY, SECRET)
        .with_identity("alice")
        .with_ttl(datetime.timedelta(seconds=-300))
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(token)


def test_not_before_honoured(verifier):
    with pytest.raises(AuthError, match="not yet valid"):
        verifier.verify(signed({"iss": KEY, "sub": "x", "exp": future(),
                                "nbf": int(time.time()) + 600}))
    verifier.verify(signed({"iss": KEY, "sub": "x", "exp": future(),
                            "nbf": int(time.time()) + 30}))


def test_unknown_key_refused_exactly_as_a_bad_signature(verifier):
    """The answer must not tell a prober which API keys exist."""
    errors = []
    for key, secret in (("nobody", SECRET), (KEY, "not-the-right-secret-but-long-enough-000")):
        with pytest.raises(AuthError) as error:
            verifier.verify(api.AccessToken(key, secret).with_identity("a").to_jwt())
        errors.append(str(error.value))
    assert errors[0] == errors[1] == "invalid token: unknown API key or signature mismatch"


@pytest.mark.parametrize("exp", ["soon", "", [], {}, float("nan"), float("inf"), True, -1.5, "1e999"])
def test_non_integer_exp_is_a_clean_refusal(verifier, exp):
    with pytest.raises(AuthError):
        verifier.verify(signed({"iss": KEY, "sub": "x", "exp": exp}))


def test_float_exp_in_the_future_is_accepted_as_livekit_does(verifier):
    assert verifier.verify(signed({"iss": KEY, "sub": "x", "exp": time.time() + 600.5})).identity == "x"


def test_missing_issuer_refused(verifier):
    with pytest.raises(AuthError, match="issuer"):
        verifier.verify(signed({"sub": "x", "exp": future()}))


def test_wrong_secret_refused(verifier):
    token = api.AccessToken(KEY, "not-the-right-secret-but-long-enough-000").with_identity(
        "a").to_jwt()
    with pytest.raises(AuthError, match="signature mismatch"):
        verifier.verify(token)


def test_missing_exp_refused(verifier):
    with pytest.raises(AuthError, match="exp"):
        verifier.verify(signed({"iss": KEY, "sub": "x"}))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_alg_none_refused(verifier):
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"iss": KEY, "sub": "x", "exp": future()}).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}.{_b64(b'sig')}"):
        with pytest.raises(AuthError, match="algorithm"):
            verifier.verify(token)


def test_rs256_refused(verifier):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = signed({"iss": KEY, "sub": "x", "exp": future()}, secret=private,
                   algorithm="RS256")
    with pytest.raises(AuthError, match="algorithm"):
        verifier.verify(token)


def test_hs512_refused():
    long_key = TokenVerifier({KEY: SECRET * 2})
    token = signed({"iss": KEY, "sub": "x", "exp": future()}, SECRET * 2, algorithm="HS512")
    with pytest.raises(AuthError, match="algorithm"):
        long_key.verify(token)


@pytest.mark.parametrize("token", [
    "", "garbage", "a.b.c", "..", "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
    _b64(b'{"alg":"HS256"}') + "." + _b64(b"[1,2]") + ".sig",
    _b64(b'"HS256"') + "." + _b64(b"{}") + ".sig",
])
def test_garbage_refused(verifier, token):
    with pytest.raises(AuthError):
        verifier.verify(token)


@pytest.mark.parametrize("payload", [
    {"video": "yes"},
    {"video": {"roomJoin": "true"}},
    {"video": {"roomJoin": 1}},
    {"video": {"room": 5}},
    {"video": {"canPublishSources": "camera"}},
    {"video": {"canPublishSources": [1]}},
    {"attributes": ["a"]},
    {"attributes": {"a": 1}},
    {"name": 3},
    {"metadata": {}},
    {"sub": 7},
    {"exp": "soon"},
    {"nbf": "later"},
])
def test_mistyped_claims_refused(verifier, payload):
    base = {"iss": KEY, "sub": "x", "exp": future()}
    with pytest.raises(AuthError):
        verifier.verify(signed({**base, **payload}))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(_b64)),
       st.text(max_size=50), st.binary(max_size=50))
def test_random_input_only_raises_auth_error(text, middle, sig):
    verifier = TokenVerifier({KEY: SECRET})
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    for token in (text, f"{header}.{_b64(middle.encode())}.{_b64(sig)}"):
        with pytest.raises(AuthError):
            verifier.verify(token)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["sub", "jti", "name", "kind", "metadata", "attributes", "video", "sha256",
                     "nbf", "iat"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                 max_leaves=10),
))
def test_arbitrary_signed_claims_never_crash(extra):
    verifier = TokenVerifier({KEY: SECRET})
    token = signed({**extra, "iss": KEY, "exp": future()})
    try:
        verifier.verify(token)
    except AuthError:
        pass


def test_verify_join_requires_room_join(verifier):
    token = api.AccessToken(KEY, SECRET).with_identity("a").with_grants(
        api.VideoGrants(room_list=True)).to_jwt()
    with pytest.raises(AuthError, match="roomJoin grant required"):
        verifier.verify_join(token)


def test_verify_join_requires_room(verifier):
    token = signed({"iss": KEY, "sub": "a", "exp": future(), "video": {"roomJoin": True}})
    with pytest.raises(AuthError, match="room"):
        verifier.verify_join(token)


def test_verify_join_requires_identity(verifier):
    token = signed({"iss": KEY, "exp": future(), "video": {"roomJoin": True, "room": "r"}})
    with pytest.raises(AuthError, match="identity"):
        verifier.verify_join(token)


def test_hidden_honoured(verifier):
    claims, _ = verifier.verify_join(livekit_token(hidden=True))
    assert claims.video.hidden


def test_create_token_round_trip(verifier):
    token = create_token(KEY, SECRET, "alice", "my-room", ttl=600, name="Alice",
                         can_publish=False, room_admin=True)
    claims, room = verifier.verify_join(token)
    assert (room, claims.identity, claims.name) == ("my-room", "alice", "Alice")
    assert not claims.video.can_publish and claims.video.can_subscribe
    assert claims.video.room_admin
    assert abs(claims.expires_at - (time.time() + 600)) < 10


def test_create_token_verifies_with_livekit_api():
    token = create_token(KEY, SECRET, "alice", "my-room", can_subscribe=False)
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "alice"
    assert claims.video.room_join and claims.video.room == "my-room"
    assert claims.video.can_publish and not claims.video.can_subscribe


def test_create_token_rejects_incomplete_input():
    with pytest.raises(ValueError):
        create_token(KEY, SECRET, "", "room")
    with pytest.raises(ValueError):
        create_token(KEY, SECRET, "alice", "")
    with pytest.raises(ValueError):
        create_token(KEY, "", "alice", "room")
