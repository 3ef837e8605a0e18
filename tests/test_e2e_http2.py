"""`http2: true` on a region: HTTP/2 over TLS (ALPN h2) to that region's endpoint. The
backend here is a second real Envoy that answers directly and reports the protocol it saw."""

from __future__ import annotations

import subprocess

import pytest
import trustme
import yaml

from control_plane.lab.envoy_process import envoy_binary
from control_plane.lab.harness import free_port, wait_for
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

HOST = "us-central1-aiplatform.googleapis.com"


def backend_config(port: int, cert: str, key: str) -> dict:
    """An Envoy that answers every request itself, saying which protocol it arrived over."""
    tls = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"alpn_protocols": ["h2", "http/1.1"], "tls_certificates": [
            {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]}}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                 ".HttpConnectionManager",
        "stat_prefix": "backend", "codec_type": "AUTO",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": '{"predictions": []}'}},
            "response_headers_to_add": [
                {"header": {"key": "x-backend-protocol", "value": "%PROTOCOL%"}},
                {"header": {"key": "x-backend-path", "value": "%REQ(:PATH)%"}}]}]}]},
    }
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {"listeners": [{
                "name": "backend", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"transport_socket": tls, "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}]}]}}


def test_http2_upstream_over_tls(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued = ca.issue_cert(HOST)
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    port = free_port()
    (tmp_path / "backend.yaml").write_text(yaml.safe_dump(backend_config(
        port, str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))))
    backend = subprocess.Popen([envoy_binary(), "-c", str(tmp_path / "backend.yaml"), "--disable-hot-restart",
                                "--log-level", "error"], start_new_session=True)
    stack = Stack(regions=("us-central1",), extra={"regions": {"us-central1": {
        "port": port, "tls": True, "http2": True, "ca_file": str(tmp_path / "ca.pem")}}})
    try:
        response = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
            stack.post("/v1/models/housing:predict?x=1", json={"instances": [1]})), 30, what="an answer over h2")
        assert response.headers["x-backend-protocol"] == "HTTP/2"
        assert response.headers["x-backend-path"] == "/v1/projects/p-e2e/locations/us-central1/endpoints/1001:predict?x=1"
        assert response.headers["x-vertex-region"] == "us-central1"
    finally:
        stack.close()
        backend.terminate()
        backend.wait(10)
