"""EdDSA access tokens: who may sign which role, what a verifier refuses, key
ids, rotation, and the key tool."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from pydantic import ValidationError

from ourvidz import keys
from ourvidz.auth import (
    GATEWAY_ROLES,
    ISSUER,
    WORKER_ROLES,
    TokenSigner,
    TokenVerifier,
    load_jwks,
    parse_jwks,
)
from ourvidz.errors import Unauthenticated
from services.gateway.settings import GatewaySettings
from services.sdxl.settings import SdxlSettings
from tests.conftest import (
    GATEWAY_KEY,
    GATEWAY_SIGNER,
    VERIFIER,
    WORKER_KEY,
    WORKER_SIGNER,
    make_settings,
)


def claims(subject: str = "u-1", role: str = "user", ttl: int = 60) -> dict:
    now = int(time.time())
    return {"iss": ISSUER, "sub": subject, "role": role, "typ": "access", "iat": now,
            "exp": now + ttl}  # fmt: skip


def signed(key, role: str, kid: str, alg: str = "EdDSA") -> str:
    """A token with any role, signed however a forger likes."""
    return jwt.encode(claims(role=role), key, algorithm=alg, headers={"kid": kid})


def test_rfc8037_thumbprint():
    # RFC 8037, appendix A.3.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert keys.thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_tokens_carry_the_thumbprint_as_kid_and_are_eddsa():
    header = jwt.get_unverified_header(GATEWAY_SIGNER.mint("u-1", "user", 60))
    assert header["alg"] == "EdDSA"
    assert header["kid"] == keys.thumbprint(keys.public_jwk(GATEWAY_KEY))


@pytest.mark.parametrize("role", ["admin", "user"])
def test_a_worker_key_cannot_make_user_or_admin_tokens(role):
    with pytest.raises(ValueError):
        WORKER_SIGNER.mint("w-1", role, 60)
    # Signed by hand with the worker's private key: refused all the same.
    forged = signed(WORKER_KEY, role, WORKER_SIGNER.kid)
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(forged)


def test_the_gateway_key_cannot_make_worker_tokens():
    with pytest.raises(ValueError):
        GATEWAY_SIGNER.mint("g-1", "worker", 60)
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(signed(GATEWAY_KEY, "worker", GATEWAY_SIGNER.kid))
    assert VERIFIER.verify(WORKER_SIGNER.mint("w-1", "worker", 60)).role == "worker"


def test_hs256_with_the_old_secret_and_alg_none_are_refused():
    old_secret = "test-secret-0123456789-0123456789-abcdef"
    for kid in (GATEWAY_SIGNER.kid, WORKER_SIGNER.kid):
        with pytest.raises(Unauthenticated):
            VERIFIER.verify(signed(old_secret, "admin", kid, alg="HS256"))
        with pytest.raises(Unauthenticated):
            VERIFIER.verify(jwt.encode(claims(role="admin"), None, algorithm="none",
                                       headers={"kid": kid}))  # fmt: skip
    # HS256 keyed with the public key itself (the algorithm-confusion attack).
    public = keys.public_jwk(GATEWAY_KEY)["x"]
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(signed(public, "admin", GATEWAY_SIGNER.kid, alg="HS256"))


def test_unknown_or_missing_kid_is_refused():
    stranger = keys.generate_private_key()
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(signed(stranger, "user", keys.public_jwk(stranger)["kid"]))
    # A stranger's signature under a known kid fails the signature check.
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(signed(stranger, "user", GATEWAY_SIGNER.kid))
    no_kid = jwt.encode(claims(), GATEWAY_KEY, algorithm="EdDSA")
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(no_kid)


def test_issuer_and_type_are_still_checked():
    wrong_issuer = jwt.encode({**claims(), "iss": "elsewhere"}, GATEWAY_KEY, algorithm="EdDSA",
                              headers={"kid": GATEWAY_SIGNER.kid})  # fmt: skip
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(wrong_issuer)
    with pytest.raises(Unauthenticated):
        VERIFIER.verify(GATEWAY_SIGNER.mint("u-1", "user", 60, kind="refresh"))


def test_rotation_both_keys_of_the_set_verify():
    old, new = keys.generate_private_key(), keys.generate_private_key()
    jwks = json.dumps({"keys": [keys.public_jwk(old), keys.public_jwk(new)]})
    verifier = TokenVerifier(parse_jwks(jwks, "AUTH_JWKS"))
    for key in (old, new):
        token = TokenSigner(key, GATEWAY_ROLES).mint("u-1", "user", 60)
        assert verifier.verify(token).subject == "u-1"
    # The old key dropped: its tokens stop working, the new key's still do.
    after = TokenVerifier([keys.public_jwk(new)])
    with pytest.raises(Unauthenticated):
        after.verify(TokenSigner(old, GATEWAY_ROLES).mint("u-1", "user", 60))
    assert after.verify(TokenSigner(new, GATEWAY_ROLES).mint("u-1", "user", 60)).role == "user"


def test_a_jwks_with_a_private_key_or_a_foreign_kind_of_key_is_refused():
    jwk = keys.public_jwk(GATEWAY_KEY)
    with pytest.raises(ValueError, match="private"):
        parse_jwks(json.dumps({"keys": [{**jwk, "d": "secret"}]}), "AUTH_JWKS")
    with pytest.raises(ValueError, match="Ed25519"):
        parse_jwks(json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}), "AUTH_JWKS")
    with pytest.raises(ValueError, match="AUTH_JWKS"):
        parse_jwks("not json", "AUTH_JWKS")
    with pytest.raises(ValueError, match="both"):
        TokenVerifier([jwk], [jwk])


def test_a_key_without_kid_is_known_by_its_thumbprint():
    jwk = keys.public_jwk(GATEWAY_KEY)
    bare = {k: jwk[k] for k in ("kty", "crv", "x")}
    verifier = TokenVerifier(parse_jwks(json.dumps({"keys": [bare]}), "AUTH_JWKS"))
    assert verifier.verify(GATEWAY_SIGNER.mint("u-1", "user", 60)).subject == "u-1"


def test_gateway_jwks_holds_public_members_only():
    doc = VERIFIER.gateway_jwks()
    assert [k["kid"] for k in doc["keys"]] == [GATEWAY_SIGNER.kid]  # no worker key
    assert all(set(k) <= set(keys.PUBLIC_MEMBERS) for k in doc["keys"])


def test_the_key_tool_writes_a_private_pem_and_extends_the_jwks(tmp_path: Path):
    assert keys.main(["generate", str(tmp_path), "--name", "gateway"]) == 0
    assert keys.main(["generate", str(tmp_path), "--name", "next"]) == 0
    assert (
        keys.main(["generate", str(tmp_path), "--name", "sdxl", "--jwks", "worker-jwks.json"]) == 0
    )
    assert keys.main(["generate", str(tmp_path), "--name", "gateway"]) == 1  # never overwrites
    pem = tmp_path / "gateway.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    signer = TokenSigner.from_pem(pem.read_bytes(), GATEWAY_ROLES)
    jwks = load_jwks(path=str(tmp_path / "jwks.json"))
    assert len(jwks) == 2 and jwks[0]["kid"] == signer.kid
    written = json.loads((tmp_path / "jwks.json").read_text())["keys"]
    assert all(set(k) <= set(keys.PUBLIC_MEMBERS) for k in written)
    worker = load_jwks(path=str(tmp_path / "worker-jwks.json"))
    verifier = TokenVerifier(jwks, worker)
    assert verifier.verify(signer.mint("u-1", "admin", 60)).role == "admin"
    sdxl = TokenSigner.from_pem((tmp_path / "sdxl.pem").read_bytes(), WORKER_ROLES)
    assert verifier.verify(sdxl.mint("sdxl-1", "worker", 60)).role == "worker"


def test_prod_refuses_missing_keys(tmp_path: Path):
    jwks = json.dumps({"keys": [keys.public_jwk(GATEWAY_KEY)]})
    prod = {
        "OURVIDZ_ENV": "prod",
        "STORAGE_BACKEND": "s3",
        "AUTH_JWKS": jwks,
        "GATEWAY_DATABASE_URL": "postgresql://ourvidz_gateway:pw@db/ourvidz",
    }
    with pytest.raises(ValidationError, match="AUTH_SIGNING_KEY_FILE"):
        make_settings(GatewaySettings, prod)
    with pytest.raises(ValidationError, match="WORKER_KEY_FILE"):
        make_settings(SdxlSettings, prod)
    with pytest.raises(ValidationError, match="AUTH_JWKS_FILE"):
        make_settings(SdxlSettings, {**prod, "AUTH_JWKS": "", "WORKER_KEY": "x"})
    pem = keys.private_pem(GATEWAY_KEY).decode()
    settings = make_settings(GatewaySettings, {**prod, "AUTH_SIGNING_KEY": pem})
    assert settings.token_signer().kid == GATEWAY_SIGNER.kid


def test_a_missing_key_file_says_what_to_set(tmp_path: Path):
    settings = make_settings(SdxlSettings, {"WORKER_KEY_FILE": str(tmp_path / "none.pem")})
    with pytest.raises(ValueError, match="WORKER_KEY_FILE"):
        settings.worker_signer()
    (tmp_path / "bad.pem").write_text("not a key")
    settings = make_settings(SdxlSettings, {"WORKER_KEY_FILE": str(tmp_path / "bad.pem")})
    with pytest.raises(ValueError, match="PEM"):
        settings.worker_signer()


def test_a_malformed_public_key_is_refused_at_load():
    jwk = {**keys.public_jwk(GATEWAY_KEY), "x": "too-short"}
    with pytest.raises(ValueError, match=jwk["kid"]):
        TokenVerifier([jwk])
