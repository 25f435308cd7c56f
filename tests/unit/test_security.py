"""Pure security kernels: password hashing, token signing and verification
(algorithm pinning, rotation), client addresses, login back-off, input checks."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pulse.core import accounts
from pulse.errors import InvalidInput, Unauthorized, Unavailable
from pulse.security import passwords, tokens
from pulse.security.ratelimit import client_ip, lock_seconds
from pulse.settings import Settings, SettingsError

N = 1024  # cheap scrypt for tests; the stored parameters travel with the hash


# Passwords --------------------------------------------------------------------

def test_password_hash_verifies_and_salts() -> None:
    first, second = passwords.hash_password("correct horse", N), passwords.hash_password("correct horse", N)
    assert first != second and first.startswith(f"scrypt${N}$8$1$")
    assert passwords.verify_password("correct horse", first)
    assert not passwords.verify_password("correct horsE", first)
    assert not passwords.verify_password("correct horse", "garbage")
    assert not passwords.verify_password("x", "bcrypt$1$2$3$4$5")


def test_password_check_of_unknown_account_is_false() -> None:
    checker = passwords.Passwords(N)
    assert checker.check("anything", None) is False
    assert checker.check("pw-123456", checker.hash("pw-123456")) is True


def test_hash_keeps_its_own_cost() -> None:
    stored = passwords.hash_password("pw-123456", 2048)
    assert passwords.Passwords(N).check("pw-123456", stored)


# Tokens -----------------------------------------------------------------------

def write_key(folder: Path, name: str, kind: str = "ed25519") -> Path:
    path = folder / name
    if kind == "ed25519":
        return tokens.generate_key_file(path)
    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def verifier_for(path: Path) -> tokens.Verifier:
    return tokens.Verifier(tokens.FileKeys(path), "pulse", "pulse")


@pytest.mark.parametrize("kind,alg", [("ed25519", "EdDSA"), ("ec", "ES256"), ("rsa", "RS256")])
def test_issue_and_verify_each_key_type(tmp_path: Path, kind: str, alg: str) -> None:
    path = write_key(tmp_path, "signing.pem", kind)
    signing = tokens.load_signing_key(path)
    assert signing.alg == alg
    token = tokens.Issuer(signing, "pulse", "pulse", 900).issue("7a1f7c52-2a7e-4a51-8a36-5b8c3b7d7c11")
    header = jwt.get_unverified_header(token.token)
    assert header["alg"] == alg and header["kid"] == signing.kid
    claims = verifier_for(path).verify(token.token)
    assert claims.subject == "7a1f7c52-2a7e-4a51-8a36-5b8c3b7d7c11" and claims.jti == token.jti
    payload = jwt.decode(token.token, options={"verify_signature": False})
    assert set(payload) >= {"sub", "iat", "exp", "iss", "aud", "jti"} and payload["exp"] - payload["iat"] == 900


def test_rfc7638_thumbprint_example() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
                "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
                "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
                "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
    assert tokens.thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


SUBJECT = "7a1f7c52-2a7e-4a51-8a36-5b8c3b7d7c11"


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"sub": SUBJECT, "iat": now, "exp": now + 600, "iss": "pulse", "aud": "pulse",
                               "jti": "j1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_forged_and_invalid_tokens_are_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path, "signing.pem")
    signing = tokens.load_signing_key(path)
    verifier = verifier_for(path)
    other = tokens.load_signing_key(write_key(tmp_path / "other", "other.pem"))
    public_pem = signing.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    good = jwt.encode(claims(), signing.key, algorithm="EdDSA", headers={"kid": signing.kid})
    head, body, sig = good.split(".")
    forged = {
        "expired": jwt.encode(claims(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600), signing.key,
                              algorithm="EdDSA", headers={"kid": signing.kid}),
        "wrong audience": jwt.encode(claims(aud="someone-else"), signing.key, algorithm="EdDSA",
                                     headers={"kid": signing.kid}),
        "wrong issuer": jwt.encode(claims(iss="evil"), signing.key, algorithm="EdDSA", headers={"kid": signing.kid}),
        "no jti": jwt.encode(claims(jti=None), signing.key, algorithm="EdDSA", headers={"kid": signing.kid}),
        "subject not a user id": jwt.encode(claims(sub="admin"), signing.key, algorithm="EdDSA",
                                            headers={"kid": signing.kid}),
        "tampered payload": f"{head}.{b64(claims(sub='00000000-0000-0000-0000-000000000001'))}.{sig}",
        "wrong key, same kid": jwt.encode(claims(), other.key, algorithm="EdDSA", headers={"kid": signing.kid}),
        "unknown kid": jwt.encode(claims(), other.key, algorithm="EdDSA", headers={"kid": other.kid}),
        "no kid": jwt.encode(claims(), signing.key, algorithm="EdDSA"),
        "alg none": f"{b64({'alg': 'none', 'kid': signing.kid, 'typ': 'JWT'})}.{b64(claims())}.",
        "HS256 keyed with the public key": _hs256(claims(), public_pem, signing.kid),
        "garbage": "not.a.jwt",
    }
    assert verifier.verify(good).subject == SUBJECT
    for name, token in forged.items():
        with pytest.raises(Unauthorized):
            verifier.verify(token)
            pytest.fail(f"{name} was accepted")


def _hs256(payload: dict[str, object], secret: bytes, kid: str) -> str:
    import hashlib
    import hmac
    signing_input = f"{b64({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{b64(payload)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_rotation_keeps_old_tokens_valid_while_the_old_key_is_published(tmp_path: Path) -> None:
    old_path = write_key(tmp_path, "2026-01.pem")
    old_token = tokens.Issuer(tokens.load_signing_key(old_path), "pulse", "pulse", 900).issue(SUBJECT).token
    new_path = write_key(tmp_path, "2026-02.pem")
    new_token = tokens.Issuer(tokens.load_signing_key(new_path), "pulse", "pulse", 900).issue(SUBJECT).token
    published = tokens.FileKeys(new_path, reload_s=0)
    assert len(tokens.jwks(published.ring())["keys"]) == 2
    verifier = tokens.Verifier(published, "pulse", "pulse")
    assert verifier.verify(old_token).subject == verifier.verify(new_token).subject == SUBJECT
    old_path.unlink()  # the old key retires: its tokens stop verifying, the new key's do not
    assert len(tokens.jwks(published.ring())["keys"]) == 1
    assert verifier.verify(new_token).subject == SUBJECT
    with pytest.raises(Unauthorized):
        verifier.verify(old_token)


def test_jwks_keys_refresh_on_a_new_kid_and_survive_an_outage(tmp_path: Path) -> None:
    first = write_key(tmp_path, "a.pem")
    documents = [orjson.dumps(tokens.jwks(tokens.load_ring(first)))]
    calls = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        if documents[-1] == b"down":
            raise OSError("connection refused")
        return documents[-1]

    keys = tokens.JwksKeys("http://auth/.well-known/jwks.json", ttl_s=300, fetch=fetch)
    signing = tokens.load_signing_key(first)
    assert keys.get(signing.kid) is not None
    assert keys.get(signing.kid) is not None and len(calls) == 1  # cached
    assert keys.get("unknown") is None and len(calls) == 1  # no refetch storm on random kids
    documents.append(b"down")
    keys._fetched -= 301  # the cache expired while auth is down: keep the last good keys
    assert keys.get(signing.kid) is not None


def test_jwks_keys_without_any_answer_is_unavailable() -> None:
    def fetch(url: str) -> bytes:
        raise OSError("connection refused")

    with pytest.raises(Unavailable):
        tokens.JwksKeys("http://auth/jwks", 300, fetch).get("kid")


def test_jwk_claiming_another_algorithm_is_rejected(tmp_path: Path) -> None:
    jwk = tokens.public_jwk(tokens.load_signing_key(write_key(tmp_path, "k.pem")).key.public_key())
    with pytest.raises(tokens.KeyFileError):
        tokens.VerifyingKey.from_jwk({**jwk, "alg": "HS256"})


def test_weak_keys_are_refused(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(65537, 1024)
    path = tmp_path / "weak.pem"
    path.write_bytes(weak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    with pytest.raises(tokens.KeyFileError):
        tokens.load_signing_key(path)


# Limits and addresses ----------------------------------------------------------

def test_client_ip_trusts_only_configured_proxies() -> None:
    proxies = Settings(trusted_proxies="10.0.0.0/8, 127.0.0.1").trusted_networks
    assert client_ip("10.0.0.5", "1.2.3.4", ()) == "10.0.0.5"
    assert client_ip("10.0.0.5", "6.6.6.6, 1.2.3.4", proxies) == "1.2.3.4"
    assert client_ip("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.9, 10.1.2.3", proxies) == "1.2.3.4"
    assert client_ip("8.8.8.8", "1.2.3.4", proxies) == "8.8.8.8"  # an untrusted peer cannot claim an address
    assert client_ip("10.0.0.5", "not-an-ip", proxies) == "10.0.0.5"
    assert client_ip("10.0.0.5", None, proxies) == "10.0.0.5"
    assert client_ip("10.0.0.5", "10.0.0.7", proxies) == "10.0.0.5"


def test_lock_backs_off_exponentially_with_a_cap() -> None:
    assert [lock_seconds(f, 5, 900) for f in range(1, 9)] == [0, 0, 0, 0, 1, 2, 4, 8]
    assert lock_seconds(40, 5, 900) == 900


# Input checks ------------------------------------------------------------------

@pytest.mark.parametrize("email", ["", "no-at", "a@b", "' OR 1=1 --", "x' OR '1'='1@a.com", "a@b.c;DROP TABLE users",
                                   "a" * 300 + "@x.io", "a@" + "b" * 300 + ".io", "a @b.io"])
def test_bad_emails_are_400_naming_the_field(email: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        accounts.check_email(email)
    assert caught.value.errors[0].field == "email"


def test_plausible_emails_pass() -> None:
    for email in ("o'brien@example.com", "a.b+tag@sub.example.co", "X@Y.IO"):
        assert accounts.check_email(f"  {email} ") == email


@pytest.mark.parametrize("token", ["", "prt_short", "prt_" + "a" * 44, "' OR 1=1 --", "prt_" + "a" * 42 + ";"])
def test_malformed_refresh_tokens_are_400(token: str) -> None:
    with pytest.raises(InvalidInput):
        accounts.check_refresh_token(token)


def test_bad_security_settings_fail_at_start() -> None:
    for bad in ({"trusted_proxies": "10.0.0.0/33"}, {"password_scrypt_n": "1000"}, {"login_rate_limit": "0"},
                {"jwks_url": "file:///etc/keys"}, {"invite_rate_limit": "0"}):
        with pytest.raises(SettingsError):
            Settings.from_values(bad)


def test_admin_by_email_is_refused_at_start_naming_the_way_that_replaced_it() -> None:
    with pytest.raises(SettingsError, match="pulse admin grant USER_ID"):
        Settings.from_values({"admin_emails": "ops@example.com"})


def test_passwords_are_hashed_at_owasp_cost_and_older_costs_are_rehashed() -> None:
    assert Settings().password_scrypt_n == 1 << 17
    current = passwords.Passwords(N)
    old = passwords.Passwords(N // 2).hash("a password")
    assert current.check("a password", old) and current.needs_rehash(old)
    assert not current.needs_rehash(current.hash("a password"))


def test_services_refuse_to_start_without_token_keys(tmp_path: Path) -> None:
    from pulse.services import Services

    with pytest.raises(SettingsError, match="PULSE_JWT_PRIVATE_KEY_FILE"):
        Services(Settings()).verify(["signing_key"])
    with pytest.raises(SettingsError, match="PULSE_JWKS_URL"):
        Services(Settings()).verify(["token_keys"])
    with pytest.raises(SettingsError, match="not a PEM key"):
        (tmp_path / "signing.pem").write_text("not a key")
        Services(Settings(jwt_private_key_file=str(tmp_path / "signing.pem"))).verify(["signing_key"])
    key = write_key(tmp_path / "ok", "signing.pem")
    Services(Settings(jwt_private_key_file=str(key))).verify(["signing_key", "token_keys"])
    Services(Settings(jwks_url="http://auth.pulse.svc/.well-known/jwks.json")).verify(["token_keys"])
