"""regions.yaml (SPEC "Region config"): what a valid file becomes: the base and SPEC's example,
the defaults, policy merging, the version.

Pure and fast: no network, no Envoy. The rules that reject a file are in the other
test_config_*.py modules (keys, refs, bounds, files), the CLI in test_config_cli.py.
"""

from __future__ import annotations

import trustme

from control_plane.config import PUBLISHER_VERBS, VERBS, Policy, PolicyOverride, parse_config

from .config_problems import load
from .configs import BASE_YAML, base

# ---------------------------------------------------------------- the base is valid


def test_base_config_is_valid(tmp_path):
    config = load(tmp_path, BASE_YAML)
    assert config.project == "my-project"
    assert list(config.regions) == ["us-central1", "us-east4"]
    assert config.regions["us-central1"].address == "10.128.0.10"
    assert config.regions["us-central1"].failover == ["us-east4"]
    assert config.models["housing"].endpoints == {"us-central1": "1234567890", "us-east4": "9876543210"}
    assert config.default_model == "housing"
    assert config.listener.port == 8080


def test_spec_example_is_valid():
    """The full example from SPEC "Region config" parses, publisher model included."""
    spec_example = BASE_YAML.replace("    default: true\n", "    default: true                # also served at POST /predict\n") + """\
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, us-east4]
policy:
  timeout: 60s
  per_try_timeout: 20s
  num_retries: 2
  retry_on: [5xx, reset, connect-failure, retriable-status-codes]
  retriable_status_codes: [429]
  outlier_detection: {consecutive_5xx: 3, interval: 5s, base_ejection_time: 30s, max_ejection_percent: 100}
auth:
  credentials: adc
  scopes: [https://www.googleapis.com/auth/cloud-platform]
  refresh_margin: 300s
"""
    spec_example = spec_example.replace(
        "    address: 10.128.0.10\n",
        "    address: 10.128.0.10         # PSC forwarding-rule IP (or a hostname)\n"
        "    port: 443\n    tls: true\n    host: us-central1-aiplatform.googleapis.com\n"
        "    ca_file: /etc/ssl/certs/ca-certificates.crt\n")
    config = parse_config(spec_example)
    assert config.models["gemini"].publisher_model == "google/gemini-2.0-flash"
    assert config.models["gemini"].served_regions == ["us-central1", "us-east4"]
    assert config.regions["us-central1"].ca_file == "/etc/ssl/certs/ca-certificates.crt"
    assert config.auth.refresh_margin == 300.0
    assert config.policy == Policy()  # the example spells out exactly the defaults


def test_verbs_match_spec():
    assert set(VERBS) == {"predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict"}
    assert {"generateContent", "streamGenerateContent", "countTokens"} <= set(PUBLISHER_VERBS)


# ---------------------------------------------------------------- defaults


def test_region_defaults(tmp_path):
    data = base()
    data["regions"]["eu"] = {"address": "10.0.0.3"}
    config = load(tmp_path, data)
    region = config.regions["us-east4"]
    assert region.port == 443
    assert region.tls is True
    assert region.ca_file is None
    assert region.policy is None
    assert config.regions["eu"].failover == []
    assert config.host_of("us-east4") == "us-east4-aiplatform.googleapis.com"
    assert config.host_of("us-central1") == "us-central1-aiplatform.googleapis.com"
    assert config.host_of("eu") == "eu-aiplatform.googleapis.com"


def test_explicit_region_settings(tmp_path):
    data = base()
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    data["regions"]["us-east4"].update(port=8443, tls=False, host="vertex.east.internal", ca_file=str(ca_file))
    config = load(tmp_path, data)
    region = config.regions["us-east4"]
    assert (region.port, region.tls, region.ca_file) == (8443, False, str(ca_file))
    assert config.host_of("us-east4") == "vertex.east.internal"


def test_policy_and_auth_defaults(tmp_path):
    config = load(tmp_path, BASE_YAML)
    policy = config.policy
    assert policy.timeout == 60.0
    assert policy.per_try_timeout == 20.0
    assert policy.num_retries == 2
    assert policy.retry_on == ["5xx", "reset", "connect-failure", "retriable-status-codes"]
    assert policy.retriable_status_codes == [429]
    od = policy.outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent) == (3, 5.0, 30.0, 100)
    assert config.auth.credentials == "adc"
    assert config.auth.scopes == ["https://www.googleapis.com/auth/cloud-platform"]
    assert config.auth.refresh_margin == 300.0
    assert config.listener.port == 8080
    # no overrides anywhere: every (model, region) gets the defaults
    assert config.policy_for("housing", "us-east4") == policy


def test_partial_outlier_detection_keeps_other_defaults(tmp_path):
    data = base()
    data["policy"] = {"outlier_detection": {"consecutive_5xx": 7}}
    od = load(tmp_path, data).policy.outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent) == (7, 5.0, 30.0, 100)


# ---------------------------------------------------------------- policy merging


def test_policy_merging(tmp_path):
    data = base()
    data["models"]["churn"] = {"endpoints": {"us-central1": "111", "us-east4": "222"}}
    data["policy"] = {"timeout": "30s", "num_retries": 3, "retriable_status_codes": [429, 503],
                      "outlier_detection": {"interval": "10s", "consecutive_5xx": 4}}
    data["regions"]["us-east4"]["policy"] = {"num_retries": 1, "per_try_timeout": "5s",
                                             "outlier_detection": {"consecutive_5xx": 9}}
    data["models"]["housing"]["policy"] = {"num_retries": 0, "retry_on": ["5xx"], "timeout": "2m"}
    config = load(tmp_path, data)

    # defaults only (plus the model override): churn has none, us-central1 has none
    plain = config.policy_for("churn", "us-central1")
    assert (plain.timeout, plain.per_try_timeout, plain.num_retries) == (30.0, 20.0, 3)
    assert plain.retriable_status_codes == [429, 503]
    assert (plain.outlier_detection.interval, plain.outlier_detection.consecutive_5xx) == (10.0, 4)

    # region override over the defaults; keys it does not name stay as the defaults say
    east = config.policy_for("churn", "us-east4")
    assert (east.timeout, east.per_try_timeout, east.num_retries) == (30.0, 5.0, 1)
    assert east.retry_on == ["5xx", "reset", "connect-failure", "retriable-status-codes"]
    assert east.outlier_detection.consecutive_5xx == 9
    assert east.outlier_detection.interval == 10.0  # merged key by key, not reset to 5s
    assert east.outlier_detection.base_ejection_time == 30.0

    # model override over the region override over the defaults
    housing_east = config.policy_for("housing", "us-east4")
    assert housing_east.num_retries == 0            # model beats region beats defaults
    assert housing_east.per_try_timeout == 5.0      # region
    assert housing_east.timeout == 120.0            # model
    assert housing_east.retry_on == ["5xx"]         # model
    assert housing_east.retriable_status_codes == [429, 503]  # defaults
    assert housing_east.outlier_detection.consecutive_5xx == 9

    housing_central = config.policy_for("housing", "us-central1")
    assert (housing_central.num_retries, housing_central.per_try_timeout, housing_central.timeout) == (0, 20.0, 120.0)

    # merging does not mutate the defaults
    assert config.policy.num_retries == 3 and config.policy.outlier_detection.consecutive_5xx == 4


def test_policy_merged_directly():
    defaults = Policy(num_retries=4)
    region = PolicyOverride(num_retries=1, timeout=10)
    model = PolicyOverride(per_try_timeout=2)
    merged = defaults.merged(region, None, model)
    assert (merged.num_retries, merged.timeout, merged.per_try_timeout) == (1, 10.0, 2.0)
    assert defaults.merged() == defaults
    assert PolicyOverride().model_dump(exclude_none=True) == {}


# ---------------------------------------------------------------- version


def test_version_stable_and_content_addressed(tmp_path):
    v1 = parse_config(BASE_YAML).version
    assert isinstance(v1, str) and v1
    assert parse_config(BASE_YAML).version == v1
    assert load(tmp_path, BASE_YAML).version == v1
    # same content, different comments and layout: same version (nothing to push)
    restyled = "# edited by ops\n" + BASE_YAML.replace("failover: [us-east4]", "failover:\n      - us-east4  # dr")
    assert parse_config(restyled).version == v1
    # any content change: a new version
    assert parse_config(BASE_YAML.replace("10.150.0.10", "10.150.0.11")).version != v1
    assert parse_config(BASE_YAML.replace('"9876543210"', '"9876543211"')).version != v1
    assert parse_config(BASE_YAML + "policy: {num_retries: 1}\n").version != v1
