"""The xDS channel secured with mTLS: Envoy with a client certificate is served; a client
without one is refused; plaintext off loopback is refused unless asked for."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import trustme
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from control_plane.app import ControlPlane, PlaintextRefused, ServerTls
from control_plane.bootstrap import XdsTls
from control_plane.lab.stack import Stack
from control_plane.xds_identity import certificate_matches

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {"ca": root / "ca.pem", "server": root / "server.pem", "server_key": root / "server.key",
             "client": root / "client.pem", "client_key": root / "client.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server = ca.issue_cert("127.0.0.1", "control-plane.test")
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client = ca.issue_cert("envoy-us-central1.test")
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client_key"]))
    return {k: str(v) for k, v in files.items()}


def test_envoy_with_a_client_certificate_is_served_over_mtls(pki):
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",),
                  plane_options={"xds_tls": ServerTls(pki["server"], pki["server_key"], pki["ca"])},
                  envoy_xds_tls=XdsTls(pki["ca"], pki["client"], pki["client_key"], server_name="control-plane.test"))
    try:
        assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        stack.wait_synced()
        # a client without a certificate gets no stream
        assert asyncio.run(_try_ads(stack.plane.xds_address, pki["ca"])) == grpc.StatusCode.UNAVAILABLE
        # us-central1's certificate names its node and region: it may ask as that node ...
        cert = (pki["client"], pki["client_key"])
        assert asyncio.run(_try_ads(stack.plane.xds_address, pki["ca"], cert, "envoy-us-central1",
                                    "us-central1")) == grpc.StatusCode.OK
        # ... but never as another region's Envoy (whose config and tokens it would get)
        for node_id, region in (("envoy-us-east4", "us-east4"), ("envoy-us-central1", "us-east4")):
            assert asyncio.run(_try_ads(stack.plane.xds_address, pki["ca"], cert, node_id, region)) == \
                grpc.StatusCode.PERMISSION_DENIED
            # nor send load reports as one: they move regions in every Envoy's failover order
            assert asyncio.run(_try_lrs(stack.plane.xds_address, pki["ca"], cert, node_id, region)) == \
                grpc.StatusCode.PERMISSION_DENIED
        assert asyncio.run(_try_lrs(stack.plane.xds_address, pki["ca"], cert, "envoy-us-central1",
                                    "us-central1")) == grpc.StatusCode.OK
    finally:
        stack.close()


def test_a_node_id_names_its_region_as_a_whole_word():
    cert = ["envoy-europe-west12.gw.internal"]
    assert certificate_matches(cert, "envoy-europe-west12", "europe-west12")
    assert not certificate_matches(cert, "envoy-europe-west12", "europe-west1")  # not europe-west1's tokens
    assert certificate_matches(["envoy-europe-west1-0.gw"], "envoy-europe-west1-0", "europe-west1")
    assert not certificate_matches(["xeurope-west1"], "xeurope-west1", "europe-west1")


async def _try_lrs(address: str, ca_file: str, cert: tuple[str, str], node_id: str, region: str) -> grpc.StatusCode:
    request = lrs_pb2.LoadStatsRequest()
    request.node.id = node_id
    request.node.metadata.fields["region"].string_value = region
    return await _first_answer(address, ca_file, cert, "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats",
                               request, lrs_pb2.LoadStatsResponse)


async def _try_ads(address: str, ca_file: str, cert: tuple[str, str] | None = None, node_id: str = "envoy-test",
                   region: str = "us-central1") -> grpc.StatusCode:
    request = discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster")
    request.node.id = node_id
    request.node.metadata.fields["region"].string_value = region
    return await _first_answer(address, ca_file, cert,
                               "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                               request, discovery_pb2.DiscoveryResponse)


async def _first_answer(address: str, ca_file: str, cert: tuple[str, str] | None, method: str, request,
                        response_type) -> grpc.StatusCode:
    """OK when the stream opened with `request` is answered, else how it ended."""
    key_pair = {"certificate_chain": open(cert[0], "rb").read(), "private_key": open(cert[1], "rb").read()} \
        if cert else {}
    credentials = grpc.ssl_channel_credentials(root_certificates=open(ca_file, "rb").read(), **key_pair)
    async with grpc.aio.secure_channel(address, credentials, options=[
            ("grpc.ssl_target_name_override", "control-plane.test")]) as channel:
        call = channel.stream_stream(method, request_serializer=type(request).SerializeToString,
                                     response_deserializer=response_type.FromString)

        async def requests():
            yield request
            await asyncio.sleep(10)  # keep the stream open until the answer (bounded by the call timeout)

        try:
            async for _ in call(requests(), timeout=5):
                return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK



def test_plaintext_off_loopback_is_refused_unless_asked(tmp_path, caplog):
    config = tmp_path / "regions.yaml"
    config.write_text("project: p\nregions: {us-central1: {address: 10.0.0.1}}\n"
                      "models: {m: {default: true, endpoints: {us-central1: '1'}}}\n")
    with pytest.raises(PlaintextRefused, match="0.0.0.0"):
        ControlPlane(config, xds_address="0.0.0.0:0", admin_address="127.0.0.1:0")
    ControlPlane(config, xds_address="0.0.0.0:0", admin_address="127.0.0.1:0", insecure_xds=True)
    assert "PLAINTEXT" in caplog.text
    ControlPlane(config, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0")  # loopback: fine


def test_tls_without_client_ca_off_loopback_is_refused_unless_asked(tmp_path, pki, caplog):
    """TLS authenticates the control plane only; without client certificates anyone who connects
    would be served config and tokens, so off loopback it is refused like plaintext."""
    config = tmp_path / "regions.yaml"
    config.write_text("project: p\nregions: {us-central1: {address: 10.0.0.1}}\n"
                      "models: {m: {default: true, endpoints: {us-central1: '1'}}}\n")
    tls = ServerTls(pki["server"], pki["server_key"])
    with pytest.raises(PlaintextRefused, match="--xds-tls-client-ca"):
        ControlPlane(config, xds_address="0.0.0.0:0", admin_address="127.0.0.1:0", xds_tls=tls)
    ControlPlane(config, xds_address="0.0.0.0:0", admin_address="127.0.0.1:0", xds_tls=tls, insecure_xds=True)
    assert "WITHOUT client certificates" in caplog.text
    ControlPlane(config, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", xds_tls=tls)  # loopback: fine
    ControlPlane(config, xds_address="0.0.0.0:0", admin_address="127.0.0.1:0",  # mTLS: fine
                 xds_tls=ServerTls(pki["server"], pki["server_key"], pki["ca"]))
