"""`clients:`: its rules (file, key path, message) and what it builds (pure; Envoy validates it)."""

from __future__ import annotations

import pytest
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from control_plane.config import parse_config
from control_plane.lab.envoy_static import assert_envoy_accepts
from control_plane.lab.jwt_issuer import Issuer
from control_plane.resources import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Build,
    NodeGroup,
    build_resources,
)

from .config_problems import expect
from .configs import CLIENTS, CONFIG, base


@pytest.fixture(scope="module")
def jwks(tmp_path_factory):
    return Issuer("https://idp.test").write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")


@pytest.fixture(scope="module")
def config(jwks):
    return parse_config(CONFIG + CLIENTS.replace("JWKS", jwks))


def build(config, region="us-central1"):
    return build_resources(Build(config), NodeGroup(region, "127.0.0.1", 8080))


# ---------------------------------------------------------------- rules


def with_clients(clients: dict) -> dict:
    data = base()
    data["clients"] = clients
    return data


GRANT = {"all": {"identities": ["*"]}}


@pytest.mark.parametrize("clients, path, fragments", [
    ({"allow": GRANT}, "clients", ("jwt:", "mtls:")),
    ({"jwt": {"x": {"issuer": "https://i", "audiences": ["a"]}}, "allow": GRANT}, "clients.jwt.x",
     ("jwks_uri", "jwks_file")),
    ({"jwt": {"x": {"issuer": "https://i", "audiences": ["a"], "jwks_uri": "https://i/k", "jwks_file": "/k"}},
      "allow": GRANT}, "clients.jwt.x", ("not both",)),
    ({"jwt": {"x": {"issuer": "https://i", "audiences": ["a"], "jwks_uri": "ftp://i/k"}}, "allow": GRANT},
     "clients.jwt.x.jwks_uri", ("bad jwks_uri",)),
    ({"jwt": {"x": {"issuer": "https://i", "audiences": [], "jwks_uri": "https://i/k"}}, "allow": GRANT},
     "clients.jwt.x.audiences", ("empty",)),
    ({"jwt": {"x": {"issuer": "https://i", "audiences": ["a"], "jwks_file": "/nonexistent/jwks.json"}},
      "allow": GRANT}, "clients.jwt.x.jwks_file", ("cannot read jwks_file",)),
    ({"mtls": {"ca_file": "/nonexistent/ca.pem", "cert_file": "/c", "key_file": "/k"}, "allow": GRANT},
     "clients.mtls.ca_file", ("cannot read ca_file",)),
    ({"mtls": {"ca_file": "/ca"}, "allow": GRANT}, "clients.mtls.cert_file", ("missing",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"}, "allow": {}}, "clients.allow",
     ("empty",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"},
      "allow": {"a": {"identities": ["x,y"]}}}, "clients.allow.a.identities[0]", ("bad identity",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"},
      "allow": {"a": {"identities": ["x"], "regions": ["mars-north1"]}}}, "clients.allow.a.regions[0]",
     ("unknown region 'mars-north1'",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"},
      "allow": {"a": {"identities": ["x"], "models": ["nope"]}}}, "clients.allow.a.models[0]",
     ("unknown model 'nope'",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"},
      "allow": {"a": {"identities": ["x"], "models": []}}}, "clients.allow.a.models", ("empty list",)),
    ({"mtls": {"ca_file": "/ca", "cert_file": "/c", "key_file": "/k"}, "allow": GRANT, "typo": 1},
     "clients.typo", ("unknown key",)),
])
def test_client_rules(tmp_path, clients, path, fragments):
    expect(tmp_path, with_clients(clients), path, *fragments)


def test_google_issuer_gets_googles_jwks_by_default(config):
    assert config.clients.jwt["google"].jwks_source == "https://www.googleapis.com/oauth2/v3/certs"


# ---------------------------------------------------------------- what it builds


def test_without_clients_nothing_changes():
    plain = parse_config(CONFIG)
    resources = build(plain)
    routes = resources[ROUTE_TYPE][0].virtual_hosts[0].routes
    assert routes[0].name != "unauthenticated"
    assert not [c for c in resources[CLUSTER_TYPE] if "~" in c.name or c.name.startswith("jwks/")]


def test_jwt_filter_runs_first_and_reads_only_the_bearer_header(config):
    [listener] = build(config)[LISTENER_TYPE]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.http_filters[0].name == "envoy.filters.http.jwt_authn"
    jwt = jwt_pb2.JwtAuthentication()
    manager.http_filters[0].typed_config.Unpack(jwt)
    google = jwt.providers["google"]
    assert google.remote_jwks.http_uri.cluster == "jwks/google"
    assert [h.name for h in google.from_headers] == ["authorization"] and not google.forward
    assert jwt.providers["corp"].local_jwks.filename
    scrubbed = [m for ext in manager.early_header_mutation_extensions for m in [ext.name]]
    assert "vertex.client-identity-scrub" in scrubbed


def test_a_region_restricted_grant_gets_a_cluster_with_only_its_regions(config):
    resources = build(config)
    clusters = {c.name: c for c in resources[CLUSTER_TYPE]}
    aggregate = aggregate_pb2.ClusterConfig()
    clusters["model/housing~eu"].cluster_type.typed_config.Unpack(aggregate)
    assert list(aggregate.clusters) == ["model/housing@europe-west4"]
    # a weighted model restricted to us-east4: only the aggregate starting there, holding only it
    assert [n for n in clusters if n.startswith("model/spread~spread-eu")] == ["model/spread~spread-eu/first/us-east4"]
    clusters["model/spread~spread-eu/first/us-east4"].cluster_type.typed_config.Unpack(aggregate)
    assert list(aggregate.clusters) == ["model/spread@us-east4"]
    routes = {r.name: r for r in resources[ROUTE_TYPE][0].virtual_hosts[0].routes}
    picks = routes["model:spread~spread-eu"].route.weighted_clusters.clusters
    assert [(p.name, p.weight.value) for p in picks] == [("model/spread~spread-eu/first/us-east4", 1)]
    assert routes["model:spread~spread-eu"].route.retry_policy.num_retries.value == 0
    # and a weighted model's routes are authorized like any other: a grant without it gets the 403
    assert routes["model:spread~forbidden"].direct_response.status == 403
    assert "model:spread~ops" not in routes and "model:spread" not in routes
    # an unrestricted grant uses the model's own cluster; a grant whose regions serve nothing gets none
    assert "model/housing~ops" not in clusters and "model/gemini~eu" not in clusters


def test_routes_401_first_then_per_grant_variants_then_403(config):
    routes = build(config)[ROUTE_TYPE][0].virtual_hosts[0].routes
    assert routes[0].name == "unauthenticated" and routes[0].direct_response.status == 401
    housing = [r for r in routes if r.name.startswith("model:housing~")]
    assert [r.name for r in housing] == ["model:housing~eu", "model:housing~ops", "model:housing~forbidden"]
    eu, ops, forbidden = housing
    assert eu.route.cluster == "model/housing~eu" and eu.route.retry_policy.num_retries.value == 0
    assert eu.match.headers[-1].name == "x-vertex-client-jwt"
    assert ops.route.cluster == "model/housing" and ops.match.headers[-1].string_match.safe_regex.regex == ".+"
    assert "x-vertex-client-jwt" in eu.request_headers_to_remove
    assert forbidden.direct_response.status == 403
    # pinned outside the grant's regions: 403; gemini is not served in europe-west4: 403 for eu
    pins = {r.name: r for r in routes if r.name.startswith("pin:housing@us-east4~")}
    assert pins["pin:housing@us-east4~eu"].direct_response.status == 403
    assert pins["pin:housing@us-east4~ops"].route.cluster == "model/housing@us-east4"
    assert next(r for r in routes if r.name == "model:gemini~eu").direct_response.status == 403


@pytest.mark.parametrize("region", ["us-central1", "us-east4", "europe-west4"])
def test_envoy_accepts_the_config_with_clients(config, region, tmp_path):
    assert_envoy_accepts(build(config, region), tmp_path)


def test_validate_show_lists_who_may_call_each_model_and_where(config):
    from control_plane.dryrun import plan

    central = plan(config)["us-central1"].models
    assert central["housing"].callers == {"eu": ["europe-west4"], "ops": ["us-central1", "us-east4", "europe-west4"]}
    assert central["gemini"].callers == {"eu": [], "ops": ["us-central1", "us-east4"]}
    assert central["spread"].callers == {"eu": [], "spread-eu": ["us-east4"]}
    assert plan(parse_config(CONFIG))["us-central1"].models["housing"].callers is None
