"""TLS to the regional endpoints (PSC) with a test CA: SNI and certificate name per region,
on the first attempt and on the failover attempt; a wrong certificate is never trusted."""

from __future__ import annotations

import ssl

import pytest
import trustme

from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e


def server_context(ca: trustme.CA, name: str, seen: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    context.sni_callback = lambda _sock, server_name, _ctx: seen.append(server_name)
    return context


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, str(path)


def test_sni_and_certificate_per_region_on_first_and_failover_attempts(ca):
    authority, ca_file = ca
    sni = {"us-central1": [], "us-east4": []}
    stack = Stack(envoys=("us-central1",), ca_file=ca_file, tls={
        region: server_context(authority, f"{region}-aiplatform.googleapis.com", sni[region]) for region in sni})
    try:
        first = stack.post("/predict", json={"instances": [1]})
        assert first.status_code == 200 and first.headers["x-vertex-region"] == "us-central1"
        assert sni["us-central1"] == ["us-central1-aiplatform.googleapis.com"]
        stack.emulators["us-central1"].fail("503")
        moved = stack.post("/predict", json={"instances": [1]})
        assert moved.status_code == 200 and moved.headers["x-vertex-region"] == "us-east4"
        assert sni["us-east4"] == ["us-east4-aiplatform.googleapis.com"]  # not the client's Host, not us-central1's
        assert stack.emulators["us-east4"].received[0].host == "us-east4-aiplatform.googleapis.com"
    finally:
        stack.close()


def test_a_region_with_the_wrong_certificate_is_never_sent_the_request(ca):
    authority, ca_file = ca
    seen: list[str] = []
    stack = Stack(envoys=("us-central1",), ca_file=ca_file, tls={
        "us-central1": server_context(authority, "impostor.example.com", seen),
        "us-east4": server_context(authority, "us-east4-aiplatform.googleapis.com", []),
    })
    try:
        response = stack.post("/predict", json={"instances": [1]})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
        assert seen  # the handshake was tried...
        assert stack.emulators["us-central1"].received == []  # ...but no request went over it
    finally:
        stack.close()


def test_an_untrusted_ca_fails_rather_than_sending_unverified(tmp_path):
    other_ca = trustme.CA()
    stack = Stack(regions=("us-central1",), envoys=("us-central1",), ca_file=str(_write(tmp_path, trustme.CA())),
                  tls={"us-central1": server_context(other_ca, "us-central1-aiplatform.googleapis.com", [])})
    try:
        response = stack.post("/predict", json={"instances": [1]})
        assert response.status_code in (502, 503)
        assert response.headers["content-type"] == "application/json"
        assert stack.emulators["us-central1"].received == []
    finally:
        stack.close()


def _write(tmp_path, authority: trustme.CA):
    path = tmp_path / "trusted.pem"
    authority.cert_pem.write_to_path(str(path))
    return path
