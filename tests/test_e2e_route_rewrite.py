"""The route-level rewrite of a failover model's first region, through a real Envoy: the first
attempt sent there skips the per-attempt rewrite, and an attempt whose request does not already
carry its region's path and host is rewritten per attempt, whatever the route did (a route and a
cluster from two versions of the config: Envoy applies them apart)."""

from __future__ import annotations

import pytest
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from control_plane.lab.stack import PROJECT, Stack
from control_plane.resources import CLUSTER_TYPE, ROUTE_TYPE, build_resources

pytestmark = pytest.mark.e2e

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
MARK = "x-test-lua-ran"
NO_EJECTION = {"policy": {"per_try_timeout": "2s", "outlier_detection": {"consecutive_5xx": 1000}}}


def marking_lua(build, group):
    """The product's resources, its per-attempt Lua also marking the request it ran on."""
    built = build_resources(build, group)
    for cluster in built[CLUSTER_TYPE]:
        if HPO not in cluster.typed_extension_protocol_options:
            continue
        options = http_protocol_options_pb2.HttpProtocolOptions()
        cluster.typed_extension_protocol_options[HPO].Unpack(options)
        for flt in options.http_filters:
            if flt.name != "envoy.filters.http.lua":
                continue
            wrapped = extension_matcher_pb2.ExtensionWithMatcher()
            lua = lua_pb2.Lua()
            if flt.typed_config.Unpack(wrapped):
                wrapped.extension_config.typed_config.Unpack(lua)
            else:
                flt.typed_config.Unpack(lua)
            lua.default_source_code.inline_string = lua.default_source_code.inline_string.replace(
                "  local hd = h:headers()\n", f'  local hd = h:headers()\n  hd:add("{MARK}", "1")\n', 1)
            if wrapped.HasField("extension_config"):
                wrapped.extension_config.typed_config.Pack(lua)
                flt.typed_config.Pack(wrapped)
            else:
                flt.typed_config.Pack(lua)
        cluster.typed_extension_protocol_options[HPO].Pack(options)
    return built


def routes_without_rewrite(build, group):
    """The product's resources with routes that write no path or host, as an Envoy holding the
    new clusters but the route configuration before them would have."""
    built = marking_lua(build, group)
    for route_configuration in built[ROUTE_TYPE]:
        for virtual_host in route_configuration.virtual_hosts:
            for route in virtual_host.routes:
                if route.HasField("route") and not route.name.startswith("pin:"):
                    route.route.ClearField("regex_rewrite")
                    route.route.ClearField("host_rewrite_literal")
    return built


def local_path(region: str, endpoint: str) -> str:
    return f"/v1/projects/{PROJECT}/locations/{region}/endpoints/{endpoint}:predict"


def test_the_first_attempt_to_the_local_region_skips_the_per_attempt_rewrite_and_a_failover_does_not():
    with Stack(extra=NO_EJECTION, plane_options={"builder": marking_lua}) as stack:
        local, remote = stack.emulators["us-central1"], stack.emulators["us-east4"]
        assert stack.post("/v1/models/housing:predict?x=1", json={"instances": [1]}).status_code == 200
        first = local.received[-1]
        assert (first.path, first.host) == (local_path("us-central1", "1001"), "us-central1-aiplatform.googleapis.com")
        assert MARK not in first.headers
        assert not [k for k in first.headers if k.startswith("x-vertex-")]  # no temporary header leaks
        local.fail("503")
        answer = stack.post("/v1/models/housing:predict?x=1", json={"instances": [1]})
        assert answer.status_code == 200 and answer.headers["x-envoy-attempt-count"] == "2"
        second = remote.received[-1]
        assert (second.path, second.host) == (local_path("us-east4", "2002"), "us-east4-aiplatform.googleapis.com")
        assert second.headers.get(MARK) == "1"
        assert not [k for k in second.headers if k.startswith("x-vertex-")]


@pytest.mark.parametrize("host", [None, "us-central1-aiplatform.googleapis.com"])
def test_a_route_that_wrote_no_path_leaves_the_rewrite_to_the_attempt(host):
    """Whatever the client's Host, even the local region's own Vertex host."""
    with Stack(extra=NO_EJECTION, plane_options={"builder": routes_without_rewrite}) as stack:
        local = stack.emulators["us-central1"]
        headers = {"host": host} if host else {}
        assert stack.post("/v1/models/housing:predict", json={"instances": [1]}, headers=headers).status_code == 200
        seen = local.received[-1]
        assert (seen.path, seen.host) == (local_path("us-central1", "1001"), "us-central1-aiplatform.googleapis.com")
        assert seen.headers.get(MARK) == "1"


def test_a_route_written_for_another_region_leaves_the_rewrite_to_the_attempt():
    """A route configuration from a config where us-east4 came first, with this config's clusters."""
    def east_first(build, group):
        built = marking_lua(build, group)
        for route in (r for rc in built[ROUTE_TYPE] for vh in rc.virtual_hosts for r in vh.routes):
            if route.name == "model:housing":
                route.route.regex_rewrite.substitution = local_path("us-east4", "2002").removesuffix("predict") + "\\1"
                route.route.host_rewrite_literal = "us-east4-aiplatform.googleapis.com"
        return built

    with Stack(extra=NO_EJECTION, plane_options={"builder": east_first}) as stack:
        local = stack.emulators["us-central1"]
        assert stack.post("/v1/models/housing:predict", json={"instances": [1]}).status_code == 200
        seen = local.received[-1]
        assert (seen.path, seen.host) == (local_path("us-central1", "1001"), "us-central1-aiplatform.googleapis.com")
        assert seen.headers.get(MARK) == "1"
