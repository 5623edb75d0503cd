"""Who a connection is: a JWT (HS256 or RS256) or, if allowed, an anonymous user.

The token comes in the query (``?token=``) or, for browsers, which cannot set headers,
as a WebSocket subprotocol ``bearer.<token>`` next to ``switchboard.v2``. Claims: ``sub``
is the user id; ``rooms`` (optional) lists the rooms the user may join, ``publish``
(optional, defaults to ``rooms``) those it may publish to; ``"*"`` means any room, and
a claim that is ``null`` counts as absent. ``aud`` is checked only against a configured
audience; ``exp``, ``nbf`` and ``iat`` allow ``SB_GATEWAY_JWT_LEEWAY`` of clock skew.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.settings import GatewaySettings
from wire.errors import ErrorCode, WireError
from wire.names import check_username

SUBPROTOCOL = "switchboard.v2"
BEARER_PREFIX = "bearer."


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    anonymous: bool
    rooms: frozenset[str] | None = None  # None: any room
    publish: frozenset[str] | None = None

    def may_join(self, room: str) -> bool:
        return self.rooms is None or room in self.rooms

    def may_publish(self, room: str) -> bool:
        return self.publish is None or room in self.publish


def _room_set(value: Any, claim: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        raise WireError(ErrorCode.UNAUTHORIZED, f"claim {claim!r} must be a list of room names")
    return None if "*" in value else frozenset(value)


def _reason(exc: jwt.PyJWTError) -> str:
    """A close reason for a refused token: fixed texts (PyJWT's own can be longer than a
    close frame allows, and echo what the client sent)."""
    match exc:
        case jwt.ExpiredSignatureError():
            return "token expired"
        case jwt.InvalidSignatureError():
            return "invalid token signature"
        case jwt.ImmatureSignatureError():
            return "token not yet valid"
        case jwt.InvalidAudienceError():
            return "token audience not accepted"
        case jwt.InvalidIssuerError():
            return "token issuer not accepted"
        case jwt.MissingRequiredClaimError(claim=claim) if claim in ("sub", "exp"):
            return f"token lacks the {claim!r} claim"
        case _:
            return "invalid token"


def token_from(query: dict[str, str], subprotocols: Iterable[str]) -> str | None:
    for proto in subprotocols:
        if proto.startswith(BEARER_PREFIX):
            return proto[len(BEARER_PREFIX) :]
    return query.get("token")


class Authenticator:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.keys: list[tuple[str, Any]] = []
        if settings.jwt_secret is not None:
            self.keys.append(("HS256", settings.jwt_secret.get_secret_value()))
        if settings.jwt_public_key:
            self.keys.append(("RS256", settings.jwt_public_key))

    def identify(self, token: str | None, username: str | None) -> Identity:
        if token:
            return self._verify(token)
        if not self.settings.allow_anonymous:
            raise WireError(ErrorCode.UNAUTHORIZED, "a token is required")
        self._not_reserved(username)
        return Identity(user=username or f"anon-{secrets.token_hex(4)}", anonymous=True)

    def _not_reserved(self, user: str | None) -> None:
        """Nobody connects as the server-side publisher (its messages are signed so),
        whether by ``?username=`` or by a token's ``sub``."""
        if user == self.settings.system_sender:
            raise WireError(ErrorCode.UNAUTHORIZED, f"user name {user!r} is reserved")

    def _verify(self, token: str) -> Identity:
        if not self.keys:
            raise WireError(ErrorCode.UNAUTHORIZED, "tokens are not accepted here")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise WireError(ErrorCode.UNAUTHORIZED, "malformed token") from None
        key = next((k for alg, k in self.keys if alg == header.get("alg")), None)
        if key is None:
            raise WireError(ErrorCode.UNAUTHORIZED, "token algorithm not accepted")
        audience = self.settings.jwt_audience
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway,
                # an aud claim is only checked against a configured audience (else
                # PyJWT refuses every token that has one, as most issuers' do)
                options={"require": ["sub", "exp"], "verify_aud": audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise WireError(ErrorCode.UNAUTHORIZED, _reason(exc)) from None
        user = claims["sub"]
        if not isinstance(user, str) or not user:
            raise WireError(ErrorCode.UNAUTHORIZED, "claim 'sub' must be a non-empty string")
        try:  # the same rules as any user name: else each request would fail later
            check_username(user)
        except WireError as exc:
            raise WireError(ErrorCode.UNAUTHORIZED, f"claim 'sub': {exc.description}") from None
        self._not_reserved(user)
        rooms = _room_set(claims.get("rooms"), "rooms")
        publish = (
            rooms if claims.get("publish") is None else _room_set(claims["publish"], "publish")
        )
        return Identity(user=user, anonymous=False, rooms=rooms, publish=publish)
