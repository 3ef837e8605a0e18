"""Custom backends (`kind: custom`) without Envoy running: the rules, the resources (checked by
`envoy --mode validate`), the credential sources, the dry run. End to end: test_e2e_custom_backend.py."""

from __future__ import annotations

import io
import json

import pytest
from envoy.config.core.v3 import base_pb2
from google.oauth2 import service_account
from google.protobuf import json_format

from control_plane import dryrun
from control_plane.cache import SnapshotCache, UnknownRegion, node_group
from control_plane.config import AuthProfile, ConfigError, parse_config
from control_plane.lab.envoy_static import assert_envoy_accepts
from control_plane.lab.fake_oauth import write_service_account_key
from control_plane.resources import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE, Build, NodeGroup, build_resources
from control_plane.tokens import FileHeader, HeaderFileSource, IdTokenSource, make_source_credentials

CONFIG = """
project: p-1
regions:
  us-central1: {address: 10.0.0.1, failover: [us-east4, vllm, run]}
  us-east4: {address: 10.0.0.2, failover: [us-central1, vllm]}
  vllm:
    kind: custom
    address: 10.9.0.5
    port: 8000
    tls: false
    path: /v1/models/{model}:{verb}
    credential: {type: header, header: x-api-key, file: /etc/keys/vllm}
  run:
    kind: custom
    address: svc-abc.a.run.app
    credential: {type: id_token}
models:
  housing:
    default: true
    endpoints: {us-central1: "111", us-east4: "222", vllm: /v1/completions}
  churn:
    endpoints: {us-central1: "333", run: "/predict/{model}/{verb}"}
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, vllm]
  only-custom:
    endpoints: {vllm: /v1/chat/completions}
"""

CENTRAL = NodeGroup("us-central1", "0.0.0.0", 8080)


@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG)


def by_name(messages):
    return {getattr(m, "cluster_name", "") or m.name: m for m in messages}


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


# ---------------------------------------------------------------- config


def test_kinds_hosts_credentials_and_paths(config):
    assert config.vertex_regions == ["us-central1", "us-east4"]
    assert config.host_of("vllm") == "10.9.0.5" and config.host_of("run") == "svc-abc.a.run.app"
    assert config.audience_of("run") == "https://svc-abc.a.run.app"
    assert config.credential_for("housing", "us-central1") == "default"
    assert config.credential_for("housing", "vllm") == "backend/vllm"
    assert config.credential_for("churn", "run") == "backend/run"
    assert config.profiles_in_use() == ["default"]
    assert config.backends_in_use() == ["run", "vllm"]


def test_no_credential_and_access_token(config):
    text = CONFIG.replace("credential: {type: header, header: x-api-key, file: /etc/keys/vllm}",
                          "credential: {type: access_token}\n    auth: other") + \
        "auth: {profiles: {other: {credentials: adc}}}\n"
    text = text.replace("    credential: {type: id_token}\n", "")
    other = parse_config(text)
    assert other.credential_for("housing", "vllm") == "other"  # the profile's access token, when asked
    assert other.credential_for("churn", "run") is None  # default: nothing
    assert other.profiles_in_use() == ["default", "other"] and other.backends_in_use() == []


@pytest.mark.parametrize("change, expected", [
    (("endpoints: {us-central1: \"111\", us-east4: \"222\", vllm: /v1/completions}",
      "endpoints: {us-central1: \"111\", us-east4: \"222\", vllm: \"444\"}"),
     "models.housing.endpoints.vllm: custom backend 'vllm': bad path '444'"),
    (("vllm: /v1/completions}", "vllm: \"/v1/completions?x=1\"}"), "models.housing.endpoints.vllm: custom backend"),
    (("/predict/{model}/{verb}", "/predict/{project}/{verb}"), "placeholders allowed: {verb}, {model}"),
    (("endpoints: {us-central1: \"333\",", "endpoints: {us-central1: /x,"),
     "models.churn.endpoints.us-central1: bad endpoint id '/x'"),
    (("    path: /v1/models/{model}:{verb}\n", ""),
     "models.gemini.regions[1]: custom backend 'vllm' serves this publisher model but has no `path:`"),
    (("    tls: false\n", ""), "regions.vllm.host: a custom backend at an IP address with TLS needs `host:`"),
    (("kind: custom\n    address: svc", "kind: custom\n    failover: [us-east4]\n    address: svc"),
     "regions.run.failover: a custom backend has no Envoy of its own"),
    (("file: /etc/keys/vllm}", "audience: x}"), "regions.vllm.credential.file: credential type header needs `file:`"),
    (("{type: id_token}", "{type: id_token, file: /k}"),
     "regions.run.credential.file: `file` applies only to credential type header"),
    (("{type: id_token}", "{type: header, file: /k, audience: a}"),
     "regions.run.credential.audience: `audience` applies only to credential type id_token"),
    (("header: x-api-key", "header: \"x api key\""), "regions.vllm.credential.header: bad header name"),
    (("header: x-api-key", "header: host"), "regions.vllm.credential.header: bad header name 'host'"),
    (("{type: id_token}", "{type: basic}"), "regions.run.credential.type"),
    (("us-east4: {address: 10.0.0.2,", "us-east4: {address: 10.0.0.2, path: /x,"),
     "regions.us-east4.path: `path` applies only to `kind: custom` backends"),
    (("kind: custom\n    address: 10.9", "kind: other\n    address: 10.9"), "regions.vllm.kind"),
])
def test_rules(change, expected):
    old, new = change
    assert old in CONFIG
    found = problems(CONFIG.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_endpoint_ids_stay_unique_among_vertex_regions_only():
    # two models may use the same path on a custom backend; ids are still checked
    text = CONFIG.replace("only-custom:\n    endpoints: {vllm: /v1/chat/completions}",
                          "only-custom:\n    endpoints: {vllm: /v1/completions, us-east4: \"111\"}")
    assert any("endpoint id 111 is also used by model 'housing'" in p for p in problems(text))


# ---------------------------------------------------------------- resources


def test_custom_endpoint_metadata_carries_its_path_host_and_credential_key(config):
    res = build_resources(Build(config), CENTRAL)
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/housing@vllm"])
    ep = la["endpoints"][0]["lbEndpoints"][0]
    assert ep["endpoint"]["address"]["socketAddress"] == {"address": "10.9.0.5", "portValue": 8000}
    assert ep["metadata"]["filterMetadata"]["vertex"] == {
        "region": "vllm", "host": "10.9.0.5", "upstream_path": "/v1/completions", "credential": "backend/vllm"}
    gemini = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/gemini@vllm"])
    assert gemini["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]["upstream_path"] == \
        "/v1/models/gemini:{verb}"
    run = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/churn@run"])
    assert run["type"] == "STRICT_DNS"
    assert run["transportSocket"]["typedConfig"]["sni"] == "svc-abc.a.run.app"
    meta = run["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]
    assert meta["upstream_path"] == "/predict/churn/{verb}" and "endpoint_path" not in meta


def test_each_credential_gets_its_own_injector_under_a_matcher(config):
    res = build_resources(Build(config), CENTRAL)
    agg = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/housing"])
    filters = agg["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "httpFilters"]
    assert [f["name"] for f in filters] == ["envoy.filters.http.header_mutation", "credential/default",
                                            "credential/backend/vllm", "vertex/copy", "envoy.filters.http.lua",
                                            "vertex/route-rewritten", "envoy.filters.http.upstream_codec"]
    removed = [m["remove"] for m in filters[0]["typedConfig"]["mutations"]["requestMutations"] if "remove" in m]
    assert removed == ["authorization", "x-api-key"]  # neither travels to the next attempt
    vllm = filters[2]["typedConfig"]
    assert vllm["xdsMatcher"]["matcherList"]["matchers"][0]["predicate"]["notMatcher"]["singlePredicate"][
        "valueMatch"]["exact"] == "backend/vllm"
    generic = vllm["extensionConfig"]["typedConfig"]["credential"]["typedConfig"]
    assert generic["header"] == "x-api-key" and generic["credential"]["name"] == "backend/vllm"


def test_a_backend_without_credential_puts_every_injector_under_a_matcher():
    text = CONFIG.replace("    credential: {type: header, header: x-api-key, file: /etc/keys/vllm}\n", "")
    res = build_resources(Build(parse_config(text)), CENTRAL)
    agg = json_format.MessageToDict(by_name(res[CLUSTER_TYPE])["model/housing"])
    filters = agg["typedExtensionProtocolOptions"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "httpFilters"]
    assert [f["name"] for f in filters][1:-4] == ["credential/default"]
    assert "xdsMatcher" in filters[1]["typedConfig"]  # not on attempts to vllm, which carry no credential key
    la = json_format.MessageToDict(by_name(res[ENDPOINT_TYPE])["model/housing@vllm"])
    assert "credential" not in la["endpoints"][0]["lbEndpoints"][0]["metadata"]["filterMetadata"]["vertex"]


def test_routes_native_paths_only_for_vertex_ids(config):
    routes = json_format.MessageToDict(build_resources(Build(config), CENTRAL)[ROUTE_TYPE][0])["virtualHosts"][0]["routes"]
    names = {r["name"]: r for r in routes}
    assert "native:housing" in names and "native:only-custom" not in names
    assert "/v1/completions" not in names["native:housing"]["match"]["safeRegex"]["regex"]
    assert "model:only-custom" in names and "pin:only-custom@vllm" in names


def test_envoys_are_only_in_vertex_regions(config):
    cache = SnapshotCache(config)
    assert {g.region for g in cache._snapshots} == {"us-central1", "us-east4"}
    node = base_pb2.Node(id="e")
    node.metadata.fields["region"].string_value = "vllm"
    with pytest.raises(UnknownRegion, match="custom backend"):
        node_group(node, config)
    assert cache.missing_tokens(CENTRAL) == ["backend/run", "backend/vllm", "default"]
    cache.set_tokens({"default": "ya29.a", "backend/vllm": "k", "backend/run": "Bearer id"})
    assert cache.missing_tokens(CENTRAL) == []
    served = {r.name: r.message for r in cache.select(CENTRAL, "type.googleapis.com/envoy.extensions."
                                                                "transport_sockets.tls.v3.Secret")}
    assert served["token/default"].generic_secret.secret.inline_string == "Bearer ya29.a"
    assert served["backend/vllm"].generic_secret.secret.inline_string == "k"  # as read: prefix already applied


@pytest.mark.parametrize("region", ["us-central1", "us-east4"])
def test_envoy_accepts_the_generated_config(config, region, tmp_path):
    assert_envoy_accepts(build_resources(Build(config), NodeGroup(region, "127.0.0.1", 8080)), tmp_path)


# ---------------------------------------------------------------- credential sources


def test_a_header_file_is_read_stripped_and_refused_when_empty_or_multiline(tmp_path):
    path = tmp_path / "key"
    path.write_text("sk-123\n")
    source = HeaderFileSource(str(path), "x-api-key", "Key ")
    credentials = make_source_credentials(source)
    assert isinstance(credentials, FileHeader)
    credentials.refresh(None)
    assert credentials.token == "sk-123" and credentials.expiry is None
    for bad, message in (("", "is empty"), ("a\nb", "more than one line")):
        path.write_text(bad)
        with pytest.raises(ValueError, match=message):
            credentials.refresh(None)
    path.unlink()
    with pytest.raises(OSError):
        credentials.refresh(None)


def test_id_token_credentials_for_a_service_account_key(tmp_path):
    key = write_service_account_key(tmp_path / "k.json", "http://127.0.0.1:1/token")
    source = IdTokenSource(AuthProfile(credentials=f"service_account:{key}"), "https://svc.example")
    credentials = make_source_credentials(source)
    assert isinstance(credentials, service_account.IDTokenCredentials)
    assert credentials._target_audience == "https://svc.example"
    assert "https://svc.example" in source.describe() and str(key) in source.describe()


# ---------------------------------------------------------------- validate --show


def test_show_lists_custom_backends_with_path_and_credential_never_a_value(config):
    out = io.StringIO()
    dryrun.show("regions.yaml", config, out=out)
    text = out.getvalue()
    assert "Envoy in vllm" not in text and "Envoy in run" not in text
    assert "SDS  backend/vllm" in text and "(custom backend credential, read at run time; not shown)" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("vllm") and "/v1/completions" in x)
    assert "10.9.0.5:8000" in line and "plaintext" in line and "custom backend, credential header x-api-key" in line
    out = io.StringIO()
    dryrun.show("regions.yaml", config, as_json=True, out=out)
    churn = json.loads(out.getvalue())["regions"]["us-central1"]["models"]["churn"]
    assert churn["chain"] == ["us-central1", "run"]
    assert churn["upstreams"]["run"] == {
        "address": "svc-abc.a.run.app", "port": 443, "tls": True, "host": "svc-abc.a.run.app",
        "path": "/predict/churn/{verb}", "kind": "custom", "credential": "id_token for https://svc-abc.a.run.app"}
