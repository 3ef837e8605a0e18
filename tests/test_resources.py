"""Config -> Envoy resources, without Envoy running (but checked by `envoy --mode validate`)."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from control_plane.config import parse_config
from control_plane.lab.envoy_static import assert_envoy_accepts
from control_plane.resources import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Build,
    NodeGroup,
    build_resources,
    failover_chain,
)
from control_plane.snapshot import Interner, Snapshot, type_version

from .configs import CONFIG


@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG)


def by_name(messages):
    return {getattr(m, "cluster_name", "") or m.name: m for m in messages}


def test_failover_chain_is_local_first_then_the_regions_failover_list(config):
    assert failover_chain(config, "housing", "us-central1") == ["us-central1", "us-east4", "europe-west4"]
    assert failover_chain(config, "housing", "us-east4") == ["us-east4", "us-central1"]
    # a model with no endpoint in the local region starts at the first failover region serving it
    assert failover_chain(config, "churn", "us-central1") == ["us-east4"]
    assert failover_chain(config, "churn", "europe-west4") == []


def test_aggregate_cluster_orders_regions_and_carries_the_per_attempt_filters(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    clusters = by_name(res[CLUSTER_TYPE])
    agg = json_format.MessageToDict(clusters["model/housing"])
    assert agg["clusterType"]["typedConfig"]["clusters"] == [
        "model/housing@us-central1", "model/housing@us-east4", "model/housing@europe-west4"]
    filters = agg["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["httpFilters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation", "credential/default", "vertex/copy", "envoy.filters.http.lua",
        "vertex/route-rewritten", "envoy.filters.http.upstream_codec"]
    budget = agg["circuitBreakers"]["thresholds"][0]["retryBudget"]
    assert budget["budgetPercent"]["value"] == 100.0


def skipped_unless(flt: dict) -> tuple[str, str, bool]:
    """(header, prefix, run when it matches) of a filter under a header matcher (upstream._when)."""
    predicate = flt["typedConfig"]["xdsMatcher"]["matcherList"]["matchers"][0]["predicate"]
    skip_if_not = "notMatcher" in predicate
    single = (predicate["notMatcher"] if skip_if_not else predicate)["singlePredicate"]
    return single["input"]["typedConfig"]["headerName"], single["valueMatch"]["prefix"], skip_if_not


def test_the_route_rewrites_for_the_local_region_and_an_attempt_that_fits_skips_the_per_attempt_rewrite(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    route = next(json_format.MessageToDict(r) for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes
                 if r.name == "model:housing")
    assert route["route"]["cluster"] == "model/housing"
    assert route["route"]["hostRewriteLiteral"] == config.host_of("us-central1")
    assert route["route"]["regexRewrite"]["substitution"] == \
        "/v1/projects/p-123/locations/us-central1/endpoints/111:\\1"
    agg = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/housing"])
    filters = {f["name"]: f for f in agg["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["httpFilters"]}
    attempt = filters["envoy.filters.http.header_mutation"]["typedConfig"]["mutations"]["requestMutations"]
    assert {"key": "x-vertex-attempt-region", "value": "%UPSTREAM_METADATA(vertex:region)%>%REQ(:AUTHORITY)%>%REQ(:PATH)%"} \
        in [m["append"]["header"] for m in attempt if "append" in m]
    # The copy of the host's metadata and the Lua run on every attempt that does not fit; the cleanup
    # only on one that does. The test is on the request's own path and host.
    local, east = config.host_of("us-central1"), config.host_of("us-east4")
    fitted = f"us-central1>{local}>/v1/projects/p-123/locations/us-central1/"
    assert [skipped_unless(filters[name]) for name in ("vertex/copy", "envoy.filters.http.lua", "vertex/route-rewritten")] \
        == [("x-vertex-attempt-region", fitted, False), ("x-vertex-attempt-region", fitted, False),
            ("x-vertex-attempt-region", fitted, True)]
    fits = [f"us-central1>{local}>/v1/projects/p-123/locations/us-central1/endpoints/111:predict?x=1"]
    misfits = [f"us-east4>{east}>/v1/projects/p-123/locations/us-east4/endpoints/222:predict",  # sent elsewhere
               f"us-central1>{local}>/v1/models/housing:predict",  # a route that did not rewrite
               f"us-central1>{east}>/v1/projects/p-123/locations/us-east4/endpoints/222:predict",  # another's rewrite
               f"us-central1>{local}>/v1/projects/p-123/locations/us-east4/endpoints/222:predict"]
    assert [value.startswith(fitted) for value in fits + misfits] == [True] + [False] * 4


def test_region_cluster_endpoint_metadata_tls_and_eds(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    east = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/housing@us-east4"])
    assert east["type"] == "EDS"
    tls = east["transportSocket"]["typedConfig"]
    assert tls["sni"] == "vertex.east.internal"
    assert tls["commonTlsContext"]["validationContext"]["matchTypedSubjectAltNames"][0]["matcher"]["exact"] \
        == "vertex.east.internal"
    assert east["commonLbConfig"]["updateMergeWindow"] == "0s"
    assert tls["commonTlsContext"]["alpnProtocols"] == ["h2"]  # http2: true
    assert "http2ProtocolOptions" in east["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicitHttpConfig"]
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/housing@us-east4"])
    ep = la["endpoints"][0]["lbEndpoints"][0]
    assert ep["endpoint"]["address"]["socketAddress"] == {"address": "10.150.0.10", "portValue": 8443}
    assert ep["metadata"]["filterMetadata"]["vertex"] == {
        "region": "us-east4", "host": "vertex.east.internal", "credential": "default",
        "endpoint_path": "/v1/projects/p-123/locations/us-east4/endpoints/222"}
    # Only pinned routes run a region's own filters, and they rewrite the path themselves: no
    # Lua (a Lua state per cluster and thread in Envoy)
    filters = east["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["httpFilters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation", "credential/default", "envoy.filters.http.upstream_codec"]
    assert filters[0]["typedConfig"]["mutations"]["requestMutations"] == [{"remove": "authorization"}]


def test_hostname_address_is_resolved_by_envoy_not_eds(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    europe = by_name(res[CLUSTER_TYPE])["model/housing@europe-west4"]
    assert json_format.MessageToDict(europe)["type"] == "STRICT_DNS"
    assert "transportSocket" not in json_format.MessageToDict(europe)  # tls: false
    assert "model/housing@europe-west4" not in by_name(res[ENDPOINT_TYPE])
    md = json_format.MessageToDict(europe.load_assignment)["endpoints"][0]["lbEndpoints"][0]["metadata"]
    assert md["filterMetadata"]["vertex"]["host"] == "europe-west4-aiplatform.googleapis.com"


def test_routes_cover_the_client_paths(config):
    res = build_resources(Build(config), NodeGroup("us-east4", "0.0.0.0", 8080))
    vhost = json_format.MessageToDict(res[ROUTE_TYPE][0])["virtualHosts"][0]
    routes = {r["name"]: r for r in vhost["routes"]}
    assert routes["model:housing"]["match"]["safeRegex"]["regex"].startswith("^/v1/models/housing:(predict|")
    assert "(111|222|333)" in routes["native:housing"]["match"]["safeRegex"]["regex"]
    assert routes["predict"]["match"]["path"] == "/predict"
    assert routes["predict"]["route"]["cluster"] == "model/housing"
    assert routes["not-found"]["directResponse"]["status"] == 404
    body = json.loads(routes["not-found"]["directResponse"]["body"]["inlineString"])
    assert "POST /v1/models/{model}:{verb}" in body["error"]["paths"]
    assert vhost["includeAttemptCountInResponse"] is True
    assert routes["model:housing:stream"]["route"]["timeout"] == "0s"  # streams: idle timeout per try instead
    assert routes["model:housing:stream"]["route"]["retryPolicy"]["perTryIdleTimeout"] == "20s"
    assert "streamRawPredict" in routes["model:housing:stream"]["match"]["safeRegex"]["regex"]
    assert "streamRawPredict" not in routes["model:housing"]["match"]["safeRegex"]["regex"]
    retry = routes["model:housing"]["route"]["retryPolicy"]
    assert retry["retryPriority"]["name"] == "envoy.retry_priorities.previous_priorities"
    assert retry["numRetries"] == 1  # two regions reachable from us-east4: one retry, never a revisit


def test_weighted_model_is_one_aggregate_per_first_region_picked_by_weight(config):
    res = build_resources(Build(config), NodeGroup("europe-west4", "0.0.0.0", 8080))
    clusters = by_name(res[CLUSTER_TYPE])
    assert "model/spread" not in clusters
    orders = {name: json_format.MessageToDict(c)["clusterType"]["typedConfig"]["clusters"]
              for name, c in clusters.items() if name.startswith("model/spread/first/")}
    # every weighted region first once, the others heaviest first; weight 0 (europe-west4) in none
    assert orders == {"model/spread/first/us-central1": ["model/spread@us-central1", "model/spread@us-east4"],
                      "model/spread/first/us-east4": ["model/spread@us-east4", "model/spread@us-central1"]}
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    route = json_format.MessageToDict(routes["model:spread"].route)
    assert route["weightedClusters"]["clusters"] == [{"name": "model/spread/first/us-central1", "weight": 3},
                                                     {"name": "model/spread/first/us-east4", "weight": 1}]
    assert route["retryPolicy"]["retryPriority"]["name"] == "envoy.retry_priorities.previous_priorities"
    # a drained region keeps its cluster: pinned requests still reach it
    assert routes["pin:spread@europe-west4"].route.cluster == "model/spread@europe-west4"
    assert "model/spread@europe-west4" in clusters


def test_least_request_model_is_one_spread_cluster_with_many_host_reselections(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    gemini = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/gemini"])
    assert gemini["lbPolicy"] == "LEAST_REQUEST"
    assert gemini["commonLbConfig"]["healthyPanicThreshold"] == {}  # 0%: never route to ejected regions
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    retry = routes["model:gemini"].route.retry_policy
    assert not retry.HasField("retry_priority") and retry.host_selection_retry_max_attempts >= 1000


def test_pin_routes_allow_only_the_regions_this_envoy_uses(config):
    res = build_resources(Build(config), NodeGroup("us-east4", "0.0.0.0", 8080))
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    assert routes["pin:housing@us-central1"].route.cluster == "model/housing@us-central1"
    assert routes["pin:housing@us-central1"].route.retry_policy.num_retries.value == 0
    rewrite = routes["pin:housing@us-central1"].route.regex_rewrite
    assert (rewrite.pattern.regex, rewrite.substitution) == (
        r"^.*:([^:/]+)$", r"/v1/projects/p-123/locations/us-central1/endpoints/111:\1")
    assert routes["pin:housing@us-central1"].route.host_rewrite_literal == "us-central1-aiplatform.googleapis.com"
    predict = routes["pin:housing@us-central1:predict"]  # the default model's /predict, pinned
    assert predict.match.path == "/predict" and predict.route.regex_rewrite.substitution.endswith("/111:predict")
    assert "pin:housing@europe-west4" not in routes  # not in us-east4's failover list
    refused = json.loads(routes["pin:housing:refused"].direct_response.body.inline_string)
    assert refused["error"]["allowed_regions"] == ["us-east4", "us-central1"]
    names = [r.name for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes]
    assert names.index("pin:housing:refused") < names.index("model:housing")


def test_publisher_model_paths(config):
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/gemini@us-east4"])
    assert la["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]["endpoint_path"] == \
        "/v1/projects/p-123/locations/us-east4/publishers/google/models/gemini-2.0-flash"
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    assert "streamGenerateContent" in routes["model:gemini:stream"].match.safe_regex.regex
    assert "publishers/google/models/gemini\\-2\\.0\\-flash:" in routes["native:gemini"].match.safe_regex.regex


def test_unreachable_model_gets_a_json_503_route(config):
    res = build_resources(Build(config), NodeGroup("europe-west4", "0.0.0.0", 8080))
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    assert routes["model:churn"].direct_response.status == 503
    assert "model/churn" not in by_name(res[CLUSTER_TYPE])


def test_listener_address_comes_from_the_node_group(config):
    res = build_resources(Build(config), NodeGroup("us-east4", "127.0.0.7", 9090))
    sock = res[LISTENER_TYPE][0].address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.7", 9090)


def test_listener_scrubs_client_control_headers_before_routing(config):
    res = build_resources(Build(config), NodeGroup("us-east4", "127.0.0.7", 9090))
    hcm = json_format.MessageToDict(res[LISTENER_TYPE][0])["filterChains"][0]["filters"][0]["typedConfig"]
    mutations = hcm["earlyHeaderMutationExtensions"][0]["typedConfig"]["mutations"]
    assert {"removeOnMatch": {"keyMatcher": {"prefix": "x-envoy-"}}} in mutations
    assert {m.get("remove") for m in mutations} >= {"x-vertex-endpoint-path", "x-vertex-host", "x-vertex-region"}
    assert [f["name"] for f in hcm["httpFilters"]] == ["envoy.filters.http.buffer", "vertex.openai.body",
                                                     "envoy.filters.http.router"]
    assert hcm["httpFilters"][1]["disabled"]  # the OpenAI body reader runs only where a route enables it


def test_building_is_pure_and_versions_are_content_hashes(config):
    group = NodeGroup("us-central1", "0.0.0.0", 8080)
    first = Snapshot.build(build_resources(Build(config), group), Interner())
    second = Snapshot.build(build_resources(Build(parse_config(CONFIG)), group), Interner())
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert type_version(first.select(type_url)) == type_version(second.select(type_url))
    # a sub-cluster is the same resource whichever region's Envoy gets it: shared, one serialization
    interner, build = Interner(), Build(config)
    a = Snapshot.build(build_resources(build, group), interner)
    b = Snapshot.build(build_resources(build, NodeGroup("us-east4", "0.0.0.0", 8080)), interner)
    assert a.resources[CLUSTER_TYPE]["model/housing@us-east4"] is b.resources[CLUSTER_TYPE]["model/housing@us-east4"]
    assert a.resources[CLUSTER_TYPE]["model/housing"].version != b.resources[CLUSTER_TYPE]["model/housing"].version


@pytest.mark.parametrize("region", ["us-central1", "us-east4", "europe-west4"])
def test_envoy_accepts_the_generated_config(config, region, tmp_path):
    assert_envoy_accepts(build_resources(Build(config), NodeGroup(region, "127.0.0.1", 8080)), tmp_path)


def test_envoy_accepts_every_bound_the_rules_allow(tmp_path):
    """The rules' largest values are inside Envoy's: `validate` exit 0 means Envoy accepts it."""
    at_bounds = parse_config(CONFIG.replace("models:", """policy:
  timeout: 2562047h
  per_try_timeout: 2562047h
  num_retries: 10
  max_request_bytes: 4294967295
  retriable_status_codes: [100, 599]
  outlier_detection: {consecutive_5xx: 4294967295, interval: 2562047h, base_ejection_time: 2562047h,
                      max_ejection_percent: 100}
models:""", 1))
    assert_envoy_accepts(build_resources(Build(at_bounds), NodeGroup("us-central1", "127.0.0.1", 65535)), tmp_path)


def test_envoy_accepts_the_404_and_model_list_of_hundreds_of_models(tmp_path):
    """The 404 and GET /v1/models name every model: past Envoy's 4 KB default for a direct
    response's body, which would make Envoy refuse the whole route configuration (it did, at
    1,000 models), the route configuration raises the limit to its largest body."""
    many = "".join(f'  a-rather-long-model-name-{i:03d}:\n    endpoints: {{us-central1: "{1000 + i}"}}\n'
                   for i in range(300))
    config = parse_config(CONFIG.replace("models:\n", "models:\n" + many, 1))
    resources = build_resources(Build(config), NodeGroup("us-central1", "127.0.0.1", 8080))
    route_config = resources[ROUTE_TYPE][0]
    bodies = [len(r.direct_response.body.inline_string.encode()) for r in route_config.virtual_hosts[0].routes
              if r.HasField("direct_response")]
    assert max(bodies) > 4096
    assert route_config.max_direct_response_body_size_bytes.value == max(bodies)
    assert_envoy_accepts(resources, tmp_path)


def test_health_checks_hedging_and_first_byte_deadline(tmp_path):
    config = parse_config(CONFIG.replace(
        "    failover: [us-east4, europe-west4]\n",
        "    failover: [us-east4, europe-west4]\n    health_check: {kind: http, interval: 3s}\n", 1).replace(
        "    endpoints: {us-central1: \"111\", us-east4: \"222\", europe-west4: \"333\"}\n",
        "    endpoints: {us-central1: \"111\", us-east4: \"222\", europe-west4: \"333\"}\n"
        "    policy: {hedge: true, first_byte_timeout: 3s}\n", 1))
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    clusters = {name: json_format.MessageToDict(c) for name, c in by_name(res[CLUSTER_TYPE]).items()}
    hc = clusters["model/housing@us-central1"]["healthChecks"][0]
    assert hc["httpHealthCheck"]["host"] == "us-central1-aiplatform.googleapis.com"
    assert hc["interval"] == hc["noTrafficInterval"] == "3s"
    assert clusters["model/housing@us-central1"]["outlierDetection"]["successfulActiveHealthCheckUnejectHost"] is False
    assert "healthChecks" not in clusters["model/housing@us-east4"]
    routes = {r.name: json_format.MessageToDict(r) for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    names = list(routes)
    assert names.index("model:housing:hedged") < names.index("model:housing")
    assert routes["model:housing:hedged"]["route"]["hedgePolicy"] == {"hedgeOnPerTryTimeout": True}
    assert "explain" not in routes["model:housing:hedged"]["match"]["safeRegex"]["regex"]
    assert "hedgePolicy" not in routes["model:housing"]["route"] and "hedgePolicy" in routes["predict"]["route"]
    assert routes["model:housing:stream"]["route"]["retryPolicy"]["perTryIdleTimeout"] == "3s"
    assert "model:churn:hedged" not in routes
    assert_envoy_accepts(res, tmp_path)


CONNECT = """
project: p
regions:
  us-central1: {address: 10.0.0.1, failover: [us-east4]%s}
  us-east4: {address: 10.0.0.2, failover: [us-central1]}
models:
  housing: {default: true, endpoints: {us-central1: "1", us-east4: "2"}%s}
  spread: {strategy: least_request, endpoints: {us-central1: "3", us-east4: "4"}%s}
"""


@pytest.mark.parametrize("region,model,expected", [
    ("", "", "5s"),  # per_try_timeout 20 s by default: Envoy's connect timeout stays 5 s at most
    ("", ", policy: {per_try_timeout: 3s}", "3s"),
    # a short per-try timeout (a hedge delay) no longer makes connecting a race: 1 s at least
    ("", ", policy: {per_try_timeout: 0.25s, hedge: true}", "1s"),
    (", policy: {per_try_timeout: 0.25s}", ", policy: {connect_timeout: 0.3s}", "0.300s"),  # said outright
    (", policy: {connect_timeout: 10s}", "", "10s"),
])
def test_the_connect_timeout_follows_per_try_timeout_between_1_and_5_s_unless_set(region, model, expected, tmp_path):
    res = build_resources(Build(parse_config(CONNECT % (region, model, model))), NodeGroup("us-central1", "0.0.0.0", 8080))
    clusters = {name: json_format.MessageToDict(c) for name, c in by_name(res[CLUSTER_TYPE]).items()}
    for name in ("model/housing@us-central1", "model/spread@us-central1", "model/spread"):
        assert clusters[name]["connectTimeout"] == expected, name
    assert_envoy_accepts(res, tmp_path)


def test_capacity_tiers_are_one_cluster_per_region_and_tier_in_attempt_order(tmp_path):
    config = parse_config(CONFIG.replace(
        "    strategy: least_request\n",
        "    tiers: {us-central1: [dedicated, shared], us-east4: [priority]}\n"))
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    clusters = by_name(res[CLUSTER_TYPE])
    agg = json_format.MessageToDict(clusters["model/gemini"])
    assert agg["clusterType"]["typedConfig"]["clusters"] == [
        "model/gemini@us-central1/dedicated", "model/gemini@us-central1/shared", "model/gemini@us-east4/priority"]
    assert "model/gemini@us-central1" in clusters  # the pins' target: no tier set, the client's kept
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/gemini@us-central1/shared"])
    assert la["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]["tier"] == "shared"
    pin = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/gemini@us-central1"])
    assert "tier" not in pin["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]
    routes = {r.name: r for r in res[ROUTE_TYPE][0].virtual_hosts[0].routes}
    assert routes["model:gemini"].route.retry_policy.num_retries.value == 2  # min(2, 3 attempts - 1)
    assert_envoy_accepts(res, tmp_path)


def test_a_least_request_spread_is_probed_when_its_regions_agree_on_probes(tmp_path):
    probes = "    health_check: {kind: http}\n"
    config = parse_config(CONFIG.replace("    failover: [us-east4, europe-west4]\n",
                                         "    failover: [us-east4, europe-west4]\n" + probes, 1)
                          .replace("    failover: [us-central1]\n", "    failover: [us-central1]\n" + probes, 1))
    res = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))
    gemini = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/gemini"])
    assert gemini["healthChecks"][0]["httpHealthCheck"]["path"] == "/"
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/gemini"])
    assert {e["endpoint"]["healthCheckConfig"]["hostname"] for e in la["endpoints"][0]["lbEndpoints"]} == {
        "us-central1-aiplatform.googleapis.com", "vertex.east.internal"}
    assert_envoy_accepts(res, tmp_path)
    # regions that disagree (one without probes): no probes on the spread
    config = parse_config(CONFIG.replace("    failover: [us-east4, europe-west4]\n",
                                         "    failover: [us-east4, europe-west4]\n" + probes, 1))
    gemini = json_format.MessageToDict(by_name(build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))[
        CLUSTER_TYPE])["model/gemini"])
    assert "healthChecks" not in gemini


def test_a_dotted_model_names_clusters_have_a_stat_name_without_dots(tmp_path):
    from control_plane.resources import Build, NodeGroup, build_resources

    from .config_problems import load
    from .configs import base

    data = base()
    data["models"]["v2.0-model"] = {"endpoints": {"us-central1": "7771", "us-east4": "7772"}}
    config = load(tmp_path, data)
    clusters = build_resources(Build(config), NodeGroup("us-central1", "0.0.0.0", 8080))[CLUSTER_TYPE]
    dotted = [c for c in clusters if "v2.0-model" in c.name]
    assert len(dotted) == 3  # the aggregate and both regions' own
    assert all(c.alt_stat_name == c.name.replace(".", "_") for c in dotted)
    assert all(not c.alt_stat_name for c in clusters if "." not in c.name)
