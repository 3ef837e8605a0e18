"""Client authentication and authorization at a real Envoy (`clients:` in regions.yaml).

Tokens come from a local issuer made here (RS256, `cryptography`); one issuer's JWKS is a
file on the Envoy host, the other (shaped like Google's: issuer https://accounts.google.com,
`email` claim) is fetched by Envoy over HTTP through the cluster the control plane builds.
Certificates come from trustme. The listener speaks HTTPS (it has `mtls:`), so every request
here is HTTPS; a JWT client needs no certificate.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import requests
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.lab.harness import LoopThread, wait_for
from control_plane.lab.jwt_issuer import Issuer
from control_plane.lab.stack import DELETE, Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "europe-west4")
AUDIENCE = "https://gateway.test"
GOOGLE = "https://accounts.google.com"


class JwksServer:
    """An issuer's JWKS over HTTP, as Envoy's jwt_authn fetches it (remote_jwks)."""

    def __init__(self, jwks: dict):
        self.loop = LoopThread()
        self.fetches = 0

        async def certs(_: web.Request) -> web.Response:
            self.fetches += 1
            return web.json_response(jwks)

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_get("/oauth2/v3/certs", certs)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            return runner

        self.runner = self.loop.call(start())

    def close(self) -> None:
        self.loop.call(self.runner.cleanup())
        self.loop.close()


def issue_uri_cert(ca: trustme.CA, uri: str, cert_path: str, key_path: str) -> None:
    """A client certificate whose identity is a URI SAN (a SPIFFE id), signed by `ca`
    (trustme issues DNS and IP SANs only)."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eu batch")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    Path(cert_path).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(key_path).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("clients")
    corp, google = Issuer("https://idp.corp.test"), Issuer(GOOGLE, kid="google-key")
    jwks = JwksServer(google.jwks())
    ca, stranger_ca = trustme.CA(), trustme.CA()
    files = {name: str(root / name) for name in ("ca.pem", "listener.pem", "listener.key", "ops.pem",
                                                "ops.key", "eu.pem", "eu.key", "stranger.pem", "stranger.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    listener = ca.issue_cert("127.0.0.1")
    listener.cert_chain_pems[0].write_to_path(files["listener.pem"])
    listener.private_key_pem.write_to_path(files["listener.key"])
    for name, issuer, san in (("ops", ca, "ops.clients.test"), ("stranger", stranger_ca, "ops.clients.test")):
        cert = issuer.issue_cert(san)
        cert.cert_chain_pems[0].write_to_path(files[f"{name}.pem"])
        cert.private_key_pem.write_to_path(files[f"{name}.key"])
    issue_uri_cert(ca, "spiffe://test/ns/batch/sa/eu", files["eu.pem"], files["eu.key"])
    clients = {
        "jwt": {
            "corp": {"issuer": corp.issuer, "audiences": [AUDIENCE], "claim": "email",
                     "jwks_file": corp.write_jwks(root / "corp-jwks.json")},
            "google": {"issuer": GOOGLE, "audiences": [AUDIENCE], "claim": "email",
                       "jwks_uri": f"http://127.0.0.1:{jwks.port}/oauth2/v3/certs"},
        },
        "mtls": {"ca_file": files["ca.pem"], "cert_file": files["listener.pem"], "key_file": files["listener.key"]},
        "allow": {
            "eu-only": {"identities": ["eu@corp.test", "spiffe://test/ns/batch/sa/eu"], "regions": ["europe-west4"]},
            "central-and-eu": {"identities": ["ce@corp.test"], "regions": ["us-central1", "europe-west4"]},
            "housing-only": {"identities": ["batch@corp.test"], "models": ["housing"]},
            "ops": {"identities": ["ops@corp.test", "ops.clients.test", "sa@p.iam.gserviceaccount.com"]},
        },
    }
    extra = {"clients": clients, "policy": {"timeout": "10s", "per_try_timeout": "2s",
                                            "outlier_detection": {"consecutive_5xx": 1000}}}
    stack = Stack(regions=REGIONS, envoys=("us-central1",), extra=extra)
    try:
        yield {"stack": stack, "corp": corp, "google": google, "jwks": jwks, "files": files}
    finally:
        stack.close()
        jwks.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "world" in request.fixturenames:
        request.getfixturevalue("world")["stack"].reset()
    yield


def call(world, path="/v1/models/housing:predict", token: str | None = None, cert: str | None = None,
         headers: dict | None = None) -> requests.Response:
    stack = world["stack"]
    headers = dict(headers or {})
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    files = world["files"]
    return requests.post(f"https://{stack.envoys['us-central1'].listen}{path}", json={"instances": [1]},
                         headers=headers, verify=files["ca.pem"], timeout=30,
                         cert=(files[f"{cert}.pem"], files[f"{cert}.key"]) if cert else None)


def upstream_requests(world) -> int:
    return sum(len(e.received) for e in world["stack"].emulators.values())


def test_a_valid_token_is_served_and_never_forwarded(world):
    token = world["corp"].token(AUDIENCE, email="ops@corp.test")
    response = call(world, token=token)
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "us-central1"
    [seen] = world["stack"].emulators["us-central1"].received
    assert token not in json.dumps(seen.headers)  # the gateway's own token went instead
    assert seen.headers["authorization"].startswith("Bearer ya29.fake")
    assert not {"x-vertex-client-jwt", "x-vertex-client-cert"} & set(seen.headers)


def test_a_google_shaped_token_is_verified_with_keys_envoy_fetched(world):
    """Issuer https://accounts.google.com, `email` claim, JWKS fetched by Envoy from a URI."""
    token = world["google"].token(AUDIENCE, email="sa@p.iam.gserviceaccount.com", email_verified=True)
    response = call(world, token=token)
    assert response.status_code == 200, response.text
    assert world["jwks"].fetches >= 1


@pytest.mark.parametrize("case", ["missing", "expired", "wrong-audience", "wrong-issuer", "unsigned",
                                  "other-key", "garbage"])
def test_no_valid_credentials_get_401_json_and_reach_nothing(world, case):
    corp = world["corp"]
    grants = world["stack"].token_server.grants
    token = {
        "missing": None,
        "expired": corp.token(AUDIENCE, lifetime=-120, email="ops@corp.test"),
        "wrong-audience": corp.token("https://elsewhere.test", email="ops@corp.test"),
        "wrong-issuer": corp.token(AUDIENCE, issuer="https://evil.test", email="ops@corp.test"),
        "unsigned": corp.token(AUDIENCE, signed=False, email="ops@corp.test"),
        "other-key": Issuer(corp.issuer).token(AUDIENCE, email="ops@corp.test"),  # same kid, another key
        "garbage": "not.a.jwt",
    }[case]
    # a client-sent identity header is scrubbed, never trusted
    response = call(world, token=token, headers={"x-vertex-client-jwt": "ops@corp.test",
                                                 "x-vertex-client-cert": ",ops.clients.test,"})
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == 401 and error["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert upstream_requests(world) == 0
    assert world["stack"].token_server.grants == grants  # never a token grant


def test_a_valid_identity_that_is_not_allowed_gets_403(world):
    corp = world["corp"]
    nobody = call(world, token=corp.token(AUDIENCE, email="nobody@corp.test"))
    assert nobody.status_code == 403 and nobody.json()["error"]["code"] == 403
    # allowed one model only
    batch = corp.token(AUDIENCE, email="batch@corp.test")
    assert call(world, "/v1/models/churn:predict", token=batch).status_code == 403
    assert upstream_requests(world) == 0
    assert call(world, "/v1/models/housing:predict", token=batch).status_code == 200


def test_client_certificates_trusted_untrusted_and_none(world):
    response = call(world, cert="ops")
    assert response.status_code == 200, response.text
    assert upstream_requests(world) == 1
    with pytest.raises(requests.exceptions.SSLError):
        call(world, cert="stranger")  # same SAN, another CA: the handshake fails
    no_credentials = call(world)
    assert no_credentials.status_code == 401
    assert "client certificate" in no_credentials.json()["error"]["message"]
    assert upstream_requests(world) == 1


def test_an_eu_client_is_served_only_in_its_regions_even_during_failover(world):
    stack = world["stack"]
    for credentials in ({"token": world["corp"].token(AUDIENCE, email="eu@corp.test")}, {"cert": "eu"}):
        stack.reset()
        # the Envoy is in us-central1, but this client's requests go to europe-west4 only
        response = call(world, **credentials)
        assert response.status_code == 200, response.text
        assert response.headers["x-vertex-region"] == "europe-west4"
        stack.emulators["europe-west4"].fail("503")
        failed = call(world, **credentials)
        # its only region failing: the clean all-regions-failed error, never a US region
        assert failed.status_code == 503
        assert failed.headers.get("x-vertex-region") in (None, "europe-west4")
        assert stack.emulators["us-central1"].received == [] and stack.emulators["us-east4"].received == []
        # pinning outside its regions: 403; inside: served
        stack.reset()
        pinned = call(world, **credentials, headers={"x-vertex-pin-region": "us-central1"})
        assert pinned.status_code == 403 and "outside the regions" in pinned.json()["error"]["message"]
        assert call(world, **credentials, headers={"x-vertex-pin-region": "europe-west4"}).status_code == 200
        assert stack.emulators["us-central1"].received == []
    # an unrestricted client meanwhile fails over as before
    stack.emulators["us-central1"].fail("503")
    ops = call(world, token=world["corp"].token(AUDIENCE, email="ops@corp.test"))
    assert ops.status_code == 200 and ops.headers["x-vertex-region"] != "us-central1"



def test_a_client_limited_to_two_regions_fails_over_inside_them(world):
    """Local us-central1 fails: an unrestricted client goes to us-east4 (next in the chain); a
    client allowed us-central1 and europe-west4 skips us-east4 and is answered from Europe."""
    stack = world["stack"]
    stack.emulators["us-central1"].fail("503")
    token = world["corp"].token(AUDIENCE, email="ce@corp.test")
    for _ in range(3):
        response = call(world, token=token)
        assert response.status_code == 200, response.text
        assert response.headers["x-vertex-region"] == "europe-west4"
        assert response.headers["x-envoy-attempt-count"] == "2"
    assert stack.emulators["us-east4"].received == []
    ops = call(world, token=world["corp"].token(AUDIENCE, email="ops@corp.test"))
    assert ops.headers["x-vertex-region"] == "us-east4"


def test_adding_and_removing_clients_takes_effect_live(tmp_path):
    """A running gateway without `clients:` serves anyone; the edit that adds it makes the same
    Envoy refuse tokenless requests (and serve a valid token) with no restart; removing it
    opens the gateway again."""
    issuer = Issuer("https://idp.live.test")
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    with Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",)) as stack:
        assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        stack.update_config({"clients": {
            "jwt": {"live": {"issuer": issuer.issuer, "audiences": [AUDIENCE], "jwks_file": jwks}},
            "allow": {"anyone": {"identities": ["*"]}}}})
        wait_for(lambda: stack.post("/predict", json={"instances": [1]}).status_code == 401, what="401 after the edit")
        token = issuer.token(AUDIENCE, sub="live-client")
        assert stack.post("/predict", json={"instances": [1]},
                          headers={"authorization": f"Bearer {token}"}).status_code == 200
        stack.update_config({"clients": DELETE})
        wait_for(lambda: stack.post("/predict", json={"instances": [1]}).status_code == 200, what="open again")


def test_a_weighted_model_is_authorized_and_region_restricted_like_any(world):
    """A weighted model's route picks one of several aggregates (issue 17): grants still apply."""
    stack, corp = world["stack"], world["corp"]
    stack.update_config({"models": {"churn": {"strategy": "weighted", "weights": {
        "us-central1": 1, "us-east4": 1, "europe-west4": 1}}}})
    try:
        stack.wait_synced()
        batch = corp.token(AUDIENCE, email="batch@corp.test")  # housing only
        assert call(world, "/v1/models/churn:predict", token=batch).status_code == 403
        assert upstream_requests(world) == 0
        eu = corp.token(AUDIENCE, email="eu@corp.test")  # europe-west4 only
        regions = {call(world, "/v1/models/churn:predict", token=eu).headers["x-vertex-region"] for _ in range(12)}
        assert regions == {"europe-west4"}
        ops = corp.token(AUDIENCE, email="ops@corp.test")
        assert call(world, "/v1/models/churn:predict", token=ops).status_code == 200
    finally:
        stack.update_config({"models": {"churn": {"strategy": "failover", "weights": DELETE}}})
        stack.wait_synced()
