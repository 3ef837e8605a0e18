"""Inputs a mutation fuzzer of regions.yaml found (validate's verdict against `envoy --mode
validate` on what was built): each was accepted with exit 0 and then refused by Envoy, or
crashed a rule, or was reported without a line or in the validation library's words. Each
is now refused by `validate` with its key path and line, in the project's words.
"""

from __future__ import annotations

import json

import pytest

from control_plane.config import is_name, parse_config
from control_plane.lab.envoy_static import assert_envoy_accepts
from control_plane.resources import ROUTE_TYPE, Build, NodeGroup, build_resources

from .config_problems import expect, set_key
from .config_problems import to_yaml as yaml_of
from .configs import BASE_YAML, base


def google_clients(**grant) -> dict:
    return {"jwt": {"google": {"issuer": "https://accounts.google.com", "audiences": ["gw"]}},
            "allow": {"eu": {"identities": ["a@b.c"], **grant}}}


# A value with a trailing newline passed the rules ("$" matches before a final "\n") and Envoy refused it.
@pytest.mark.parametrize("keys, value, path, fragment", [
    (("project",), "p\n", "project", "bad project"),
    (("models", "housing", "endpoints", "us-east4"), "1\n", "models.housing.endpoints.us-east4", "bad endpoint id"),
    (("regions", "us-east4", "host"), "a.example\n", "regions.us-east4.host", "bad host"),
    # "numeric" in other scripts' digits is not Vertex's endpoint id
    (("models", "housing", "endpoints", "us-east4"), "١٢٣", "models.housing.endpoints.us-east4", "bad endpoint id"),
], ids=["project", "endpoint-id", "host", "unicode-digits"])
def test_a_value_with_a_trailing_newline_or_other_digits_is_refused(tmp_path, keys, value, path, fragment):
    data = base()
    set_key(*keys, value=value)(data)
    expect(tmp_path, data, path, fragment, only=True)


def test_a_name_with_a_trailing_newline_is_not_a_name():
    assert is_name("us-east4") and not is_name("us-east4\n") and not is_name("")


@pytest.mark.parametrize("value, fragment", [
    ("9223372036s", "beyond Envoy's limit of 9,223,372,035 s"),  # Envoy refused it; the bound was one over
    ("0.0000000001s", "below Envoy's resolution of 1 ns"),  # Envoy would read 0, which it refuses
])
def test_durations_envoy_cannot_take(tmp_path, value, fragment):
    data = base()
    data["policy"] = {"connect_timeout": value}
    expect(tmp_path, data, "policy.connect_timeout", fragment, line="connect_timeout", only=True)


def test_the_largest_duration_envoy_takes_is_accepted(tmp_path):
    data = base()
    data["policy"] = {"timeout": "9223372035s", "connect_timeout": "0.000000001s"}  # 1 ns
    config = parse_config(yaml_of(data))
    assert_envoy_accepts(build_resources(Build(config), NodeGroup("us-central1", "127.0.0.1", 8080)), tmp_path)


def test_a_publisher_model_naming_a_region_twice(tmp_path):
    data = base()
    data["models"]["gemini"] = {"publisher_model": "google/gemini-2.0-flash", "strategy": "least_request",
                                "regions": ["us-central1", "us-central1"]}
    expect(tmp_path, data, "models.gemini.regions[1]", "region 'us-central1' listed twice", only=True)


@pytest.mark.parametrize("name", ["r" * 60, "us_east5"])
def test_a_region_whose_default_host_is_not_a_dns_name_needs_a_host(tmp_path, name):
    data = base()
    data["regions"][name] = {"address": "10.0.0.9"}
    expect(tmp_path, data, f"regions.{name}", "is not a DNS name", "give `host:`", only=True)
    data["regions"][name]["host"] = "vertex.example.com"
    assert parse_config(yaml_of(data)).host_of(name) == "vertex.example.com"


@pytest.mark.parametrize("uri", ["https://idp.example.com:99999/jwks", "https://idp_example.com/jwks",
                                 "https://idp.example.com/jwks\n", "https://idp.example.com:0/jwks"])
def test_a_jwks_uri_envoy_cannot_fetch(tmp_path, uri):
    data = base()
    data["clients"] = {"jwt": {"idp": {"issuer": "https://idp.example.com", "audiences": ["gw"], "jwks_uri": uri}},
                       "allow": {"all": {"identities": ["*"]}}}
    expect(tmp_path, data, "clients.jwt.idp.jwks_uri", "bad jwks_uri", only=True)


@pytest.mark.parametrize("regions", [["us-central1"], "us-central1", 3])
def test_regions_not_a_mapping_is_reported_with_the_other_problems(tmp_path, regions):
    data = base()
    data["regions"] = regions
    data["models"]["housing"]["default"] = "yes"
    expect(tmp_path, data, "regions", "expected a mapping", line="regions:")
    expect(tmp_path, data, "models.housing.default", "expected true or false")


def test_a_grant_naming_a_region_twice(tmp_path):
    data = base()
    data["clients"] = google_clients(regions=["us-east4", "us-east4"])
    expect(tmp_path, data, "clients.allow.eu.regions[1]", "region 'us-east4' listed twice", only=True)


def test_refusals_naming_many_regions_fit_envoys_direct_response_limit(tmp_path):
    """A grant's 403 names its regions; the route configuration raises Envoy's 4 KB limit on a
    direct response's body to fit it (Envoy refused the whole route configuration before)."""
    data = base()
    names = [f"region-with-a-rather-long-name-{i:03}" for i in range(150)]
    for name in names:
        data["regions"][name] = {"address": "10.0.0.9", "host": "vertex.example.com"}
    data["clients"] = google_clients(regions=names)
    config = parse_config(yaml_of(data))
    resources = build_resources(Build(config), NodeGroup("us-central1", "127.0.0.1", 8080))
    routes = [r for rc in resources[ROUTE_TYPE] for vh in rc.virtual_hosts for r in vh.routes]
    assert max(len(r.direct_response.body.inline_string) for r in routes) > 4096  # past Envoy's default
    assert_envoy_accepts(resources, tmp_path)


def test_an_mtls_key_file_that_is_not_the_certificates_key(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("gateway.example.com")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(tmp_path / "other.key")
    data = base()
    data["clients"] = {"mtls": {"ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "cert.pem"),
                                "key_file": str(tmp_path / "cert.pem")},  # a certificate, not a key
                       "allow": {"all": {"identities": ["*"]}}}
    expect(tmp_path, data, "clients.mtls", "not a PEM certificate and its unencrypted private key", only=True)
    data["clients"]["mtls"]["key_file"] = str(tmp_path / "other.key")  # another certificate's key
    expect(tmp_path, data, "clients.mtls", "not a PEM certificate and its unencrypted private key", only=True)


def test_a_key_that_is_not_text_is_said_so_with_its_line(tmp_path):
    text = BASE_YAML + "policy: {null: 1}\n"
    expect(tmp_path, text, "policy.null", "a key must be text (got null)", line="policy:", only=True)
    text = BASE_YAML.replace("  us-east4:\n", "  7:\n", 1)
    expect(tmp_path, text, "regions.7", "a key must be text (got 7)", line="  7:")
    text = BASE_YAML.replace("  housing:\n", "  null:\n", 1)
    expect(tmp_path, text, "models.null", "a key must be text (got null)", line="  null:")


def test_a_control_character_is_refused_with_its_line(tmp_path):
    text = BASE_YAML.replace("address: 10.150.0.10", "address: 10.150.0.10\x00")
    expect(tmp_path, text, "", "unacceptable character", line="10.150.0.10", only=True)


def test_two_merge_keys_in_one_mapping_are_refused_with_their_line(tmp_path):
    text = ("anchors:\n  - &d {port: 443}\n  - &e {tls: false}\n" + BASE_YAML).replace(
        "  us-east4:\n    address", "  us-east4:\n    <<: *d\n    <<: *e\n    address")
    expect(tmp_path, text, "", "duplicate merge key <<", "<<: [*a, *b]", line="<<: *e", only=True)


@pytest.mark.parametrize("keys, value, path", [
    (("observability", "access_log", "path"), "/var/log/a\nb", "observability.access_log.path"),
    (("observability", "tracing"), {"collector": "otel:4317", "service_name": "gate\tway"},
     "observability.tracing.service_name"),
], ids=["access-log-path", "service-name"])
def test_text_envoy_writes_as_is_has_no_control_character(tmp_path, keys, value, path):
    data = base()
    set_key(*keys, value=value)(data)
    expect(tmp_path, data, path, "no control character", only=True)


def test_a_port_in_other_scripts_digits_is_not_a_port(tmp_path):
    data = base()
    data["observability"] = {"tracing": {"collector": "otel:٣"}}
    expect(tmp_path, data, "observability.tracing.collector", "expected HOST:PORT", only=True)


def test_a_credential_prefix_is_a_header_value_without_control_characters(tmp_path):
    key = tmp_path / "vllm.key"
    key.write_text("k")
    data = base()
    data["regions"]["vllm"] = {"kind": "custom", "address": "10.0.0.7", "port": 8000, "tls": False,
                               "credential": {"type": "header", "file": str(key), "prefix": "Bearer \r\nX-Evil: 1 "}}
    expect(tmp_path, data, "regions.vllm.credential.prefix", "no control character", only=True)


def test_the_fuzzer_finds_nothing_in_a_short_run_on_the_shipped_configs(tmp_path, capsys):
    from control_plane.lab.fuzz_config import main

    assert main(["--count", "12", "--minutes", "2", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert '"cases": 12, "findings": 0' in capsys.readouterr().out


def test_a_ca_file_cut_short_is_refused(tmp_path):
    trustme = pytest.importorskip("trustme")
    pem = trustme.CA().cert_pem.bytes()
    (tmp_path / "cut.pem").write_bytes(pem[:len(pem) // 2] + b"\n-----END CERTIFICATE-----\n")
    data = base()
    data["regions"]["us-east4"]["ca_file"] = str(tmp_path / "cut.pem")
    expect(tmp_path, data, "regions.us-east4.ca_file", "does not load as PEM certificates", only=True)


@pytest.mark.parametrize("key, fragment", [
    ({"kty": "RSA", "e": "AQAB"}, "`n` is missing"),
    ({"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}, "crv 'P-999'"),
    ({"kty": "XYZ"}, "kty 'XYZ'"),
    ("key", "not a JSON object"),
])
def test_a_jwks_file_key_envoy_cannot_read(tmp_path, key, fragment):
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [key]}))
    data = base()
    data["clients"] = {"jwt": {"idp": {"issuer": "https://idp.example", "audiences": ["gw"],
                                       "jwks_file": str(tmp_path / "jwks.json")}},
                       "allow": {"all": {"identities": ["*"]}}}
    expect(tmp_path, data, "clients.jwt.idp.jwks_file", "key 0", fragment, only=True)


def test_an_access_log_path_is_absolute(tmp_path):
    data = base()
    data["observability"] = {"access_log": {"path": "logs/access.log"}}
    expect(tmp_path, data, "observability.access_log.path", "an absolute path", only=True)

