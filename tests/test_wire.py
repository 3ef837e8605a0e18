"""Resources assembled from pre-serialized parts (control_plane/wire.py) are byte for byte
what the whole message serializes to, so a version never depends on how it was built."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2

from control_plane.config import parse_config
from control_plane.lab.jwt_issuer import Issuer
from control_plane.resources import ROUTE_TYPE, NodeGroup, build_serialized
from control_plane.resources.clients import authorize_routes
from control_plane.resources.routes import _virtual_host, region_routes
from control_plane.wire import Entries, Serialized, Template, entry

from .test_clients import CLIENTS
from .test_resources import CONFIG


def whole_message(config, region: str) -> bytes:
    vhost = _virtual_host()
    vhost.routes.extend(authorize_routes(config, region, region_routes(config, region)))
    return route_pb2.RouteConfiguration(name="vertex", virtual_hosts=[vhost]).SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def with_clients(tmp_path_factory):
    jwks = Issuer("https://idp.test").write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")
    return parse_config(CONFIG + CLIENTS.replace("JWKS", jwks))


@pytest.mark.parametrize("clients", [False, True])
@pytest.mark.parametrize("region", ["us-central1", "us-east4", "europe-west4"])
def test_route_configuration_is_the_whole_message_byte_for_byte(region, clients, with_clients):
    config = with_clients if clients else parse_config(CONFIG)
    (built,) = build_serialized(config, NodeGroup(region, "127.0.0.1", 8080))[ROUTE_TYPE]
    assert isinstance(built, Serialized)
    assert built.data == whole_message(config, region)
    assert built.parse().SerializeToString(deterministic=True) == built.data


def test_a_template_keeps_field_order_around_its_holes():
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"], include_attempt_count_in_response=True)
    routes = [route_components_pb2.Route(name=f"r{i}") for i in range(3)]
    data = Template(vhost, holes=("name", "routes")).fill(
        name="w", routes=Entries(b"".join(entry(3, r.SerializeToString()) for r in routes)))
    whole = route_components_pb2.VirtualHost()
    whole.CopyFrom(vhost)
    whole.name = "w"
    whole.routes.extend(routes)
    assert data == whole.SerializeToString(deterministic=True)
