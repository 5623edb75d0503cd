"""Who a connection is (gateway/auth.py) and how a refused one is closed (relay.refuse)."""

from __future__ import annotations

import asyncio
import base64
import time
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from gateway.auth import Authenticator
from gateway.limits import Admission
from gateway.relay import RelayEndpoint
from gateway.settings import GatewaySettings
from wire.errors import MAX_CLOSE_REASON, ErrorCode, WireError, close_reason

SECRET = "s" * 40


def auth(**settings: object) -> Authenticator:
    return Authenticator(GatewaySettings(jwt_secret=SECRET, **settings))


def token(**claims: object) -> str:
    return jwt.encode({"sub": "u", "exp": int(time.time()) + 300, **claims}, SECRET, "HS256")


def refused(authenticator: Authenticator, raw: str) -> str:
    with pytest.raises(WireError) as exc:
        authenticator.identify(raw, None)
    assert exc.value.code is ErrorCode.UNAUTHORIZED
    return exc.value.description


def test_a_token_pyjwt_refuses_before_its_signature_gets_a_short_fixed_reason() -> None:
    # b64=false with crit: PyJWT's message about it is 159 bytes, more than a close
    # frame's reason may hold (the close failed: the client saw 1006)
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","b64":false,"crit":["b64"]}').rstrip(b"=")
    reason = refused(auth(), header.decode() + "..junk")
    assert reason == "invalid token"


def test_an_aud_claim_is_not_checked_without_a_configured_audience() -> None:
    assert auth().identify(token(aud="someone-else"), None).user == "u"
    strict = auth(jwt_audience="switchboard")
    assert refused(strict, token(aud="someone-else")) == "token audience not accepted"
    assert strict.identify(token(aud="switchboard"), None).user == "u"


def test_clock_skew_up_to_the_leeway_is_allowed() -> None:
    now = int(time.time())
    lenient = auth()
    assert lenient.identify(token(iat=now + 5, nbf=now + 5), None).user == "u"
    assert lenient.identify(token(exp=now - 5), None).user == "u"
    assert refused(lenient, token(exp=now - 120)) == "token expired"
    assert refused(lenient, token(nbf=now + 120)) == "token not yet valid"
    strict = auth(jwt_leeway=0)
    assert refused(strict, token(exp=now - 5)) == "token expired"


def test_a_null_claim_counts_as_absent() -> None:
    identity = auth().identify(token(rooms=["a"], publish=None), None)
    assert identity.may_publish("a") and not identity.may_publish("b")  # publish = rooms
    anywhere = auth().identify(token(rooms=None, publish=None), None)
    assert anywhere.may_join("b") and anywhere.may_publish("b")


def test_a_missing_claim_is_named() -> None:
    raw = jwt.encode({"sub": "u"}, SECRET, "HS256")
    assert refused(auth(), raw) == "token lacks the 'exp' claim"


def test_a_public_key_that_is_not_rsa_stops_the_start() -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ValidationError, match="must be an RSA PEM public key"):
        GatewaySettings(jwt_public_key=pem.decode())


def test_close_reasons_are_cut_to_123_bytes_at_a_character_boundary() -> None:
    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)  # 200 bytes
    assert len(cut.encode()) <= MAX_CLOSE_REASON and cut == "é" * 61


def test_a_refused_connection_gives_its_admission_back_even_if_the_client_is_gone() -> None:
    admission = Admission(total=10, per_ip=2)
    endpoint = RelayEndpoint.__new__(RelayEndpoint)
    endpoint.hub = SimpleNamespace(admission=admission)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "websocket.close":
            raise OSError("connection reset")

    async def main() -> None:
        for _ in range(3):  # more than the address may hold at once
            assert admission.admit("10.0.0.1")
            with pytest.raises(OSError):
                await endpoint.refuse(send, {"type": "websocket.accept"}, "10.0.0.1", error)

    error = WireError(ErrorCode.UNAUTHORIZED, "x" * 200)
    asyncio.run(main())
    assert admission.count == 0 and not admission.by_ip["10.0.0.1"]
    assert len(sent[-1]["reason"].encode()) <= MAX_CLOSE_REASON
