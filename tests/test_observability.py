"""`observability:` config -> access log, tracer, collector cluster; the bootstrap's stats
tags and load-report settings. Pure, plus `envoy --mode validate` on what is built."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from control_plane.bootstrap import bootstrap
from control_plane.config import ConfigError, parse_config
from control_plane.lab.envoy_static import assert_envoy_accepts
from control_plane.resources import CLUSTER_TYPE, LISTENER_TYPE, Build, NodeGroup, build_resources, failover_chain
from control_plane.resources.observability import ACCESS_LOG_FIELDS, COLLECTOR_CLUSTER

BASE = """
project: p-1
regions:
  us-central1: {address: 10.0.0.1, failover: [us-east4, europe-west4]}
  us-east4: {address: 10.0.0.2, failover: [us-central1]}
  europe-west4: {address: 10.0.0.3, failover: [us-central1]}
models:
  housing: {default: true, endpoints: {us-central1: "1", us-east4: "2", europe-west4: "3"}}
"""
GROUP = NodeGroup("us-central1", "0.0.0.0", 8080)


def hcm(config) -> hcm_pb2.HttpConnectionManager:
    (listener,) = build_resources(Build(config), GROUP)[LISTENER_TYPE]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_defaults_log_every_request_to_stdout_and_trace_nothing():
    config = parse_config(BASE)
    manager = hcm(config)
    (log,) = manager.access_log
    assert log.name == "envoy.access_loggers.stdout" and not log.HasField("filter")
    assert not manager.HasField("tracing")
    assert COLLECTOR_CLUSTER not in {c.name for c in build_resources(Build(config), GROUP)[CLUSTER_TYPE]}


def test_the_log_format_names_no_header_but_the_request_id():
    formats = " ".join(ACCESS_LOG_FIELDS.values())
    assert [h.lower() for h in __import__("re").findall(r"%REQ(?:_WITHOUT_QUERY)?\(([^)]+)\)%", formats)] == \
        ["x-request-id", ":method", ":path"]
    assert "%RESP(" not in formats and "%REQ_WITHOUT_QUERY(:PATH)%" in formats  # never the query string


def test_off_sampled_and_file():
    assert not hcm(parse_config(BASE + "observability: {access_log: {enabled: false}}")).access_log
    (log,) = hcm(parse_config(BASE + "observability: {access_log: {sample_percent: 2.5, path: /var/log/a.log}}"
                              )).access_log
    assert log.name == "envoy.access_loggers.file"
    assert log.filter.runtime_filter.percent_sampled.numerator == 25_000  # per million
    assert json_format.MessageToDict(log)["typedConfig"]["path"] == "/var/log/a.log"


def test_tracing_adds_the_tracer_and_the_collector_cluster():
    config = parse_config(BASE + "observability: {tracing: {collector: 'otel.monitoring:4317', sample_percent: 10}}")
    tracing = hcm(config).tracing
    assert tracing.provider.name == "envoy.tracers.opentelemetry" and tracing.spawn_upstream_span.value
    assert tracing.random_sampling.value == 10
    assert {t.tag for t in tracing.custom_tags} == {"vertex.model", "vertex.region", "vertex.attempt"}
    cluster = {c.name: c for c in build_resources(Build(config), GROUP)[CLUSTER_TYPE]}[COLLECTOR_CLUSTER]
    assert cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 4317


@pytest.mark.parametrize("extra, path, fragment", [
    ("observability: {access_log: {enabled: 1}}", "observability.access_log.enabled", "true or false"),
    ("observability: {access_log: {sample_percent: 101}}", "observability.access_log.sample_percent", "100"),
    ("observability: {tracing: {collector: 'no-port'}}", "observability.tracing.collector", "HOST:PORT"),
    ("observability: {load_reports: {interval: 0s}}", "observability.load_reports.interval", "0.1"),
    ("observability: {load_reports: {min_reporting_envoys: 0}}",
     "observability.load_reports.min_reporting_envoys", "1"),
    ("observability: {logs: {}}", "observability.logs", "unknown key"),
])
def test_bad_observability_values_are_reported_with_their_key(extra, path, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra)
    assert any(p.path == path and fragment in p.message for p in info.value.problems), info.value


def test_avoided_regions_go_last_in_every_chain_and_the_file_order_is_unchanged():
    config = parse_config(BASE)
    avoided = frozenset({"us-central1"})
    assert failover_chain(config, "housing", "us-central1", avoided) == ["us-east4", "europe-west4", "us-central1"]
    assert failover_chain(config, "housing", "us-east4", avoided) == ["us-east4", "us-central1"]
    assert failover_chain(config, "housing", "us-central1") == ["us-central1", "us-east4", "europe-west4"]


def test_envoy_accepts_the_listener_with_log_and_tracer(tmp_path):
    config = parse_config(BASE + "observability: {access_log: {sample_percent: 50}, "
                                 "tracing: {collector: '127.0.0.1:4317'}}")
    assert_envoy_accepts(build_resources(Build(config), GROUP), tmp_path)


def test_bootstrap_tags_stats_by_model_and_region_and_reports_load_to_the_control_plane():
    config = bootstrap("us-east4", "cp:18000")
    tags = {t["tag_name"]: t for t in config["stats_config"]["stats_tags"]}
    assert tags["local_region"]["fixed_value"] == "us-east4"
    assert {"model", "region"} <= tags.keys()
    lrs = config["cluster_manager"]["load_stats_config"]
    assert lrs["grpc_services"] == [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]


def test_an_avoiding_build_does_not_reuse_the_orders_built_for_the_file_order():
    config = parse_config(BASE)
    build = Build(config)
    before = build_resources(build, GROUP)  # fills the build's memos
    after = build_resources(build.avoiding(frozenset({"us-central1"})), GROUP)

    def order(built):
        (aggregate,) = [c for c in built[CLUSTER_TYPE] if c.name == "model/housing"]
        return json_format.MessageToDict(aggregate)["clusterType"]["typedConfig"]["clusters"]

    assert order(before)[0] == "model/housing@us-central1"
    assert order(after) == ["model/housing@us-east4", "model/housing@europe-west4", "model/housing@us-central1"]
    assert build.avoiding(frozenset({"us-central1"})) is build.avoiding(frozenset({"us-central1"}))
    assert build.avoiding(frozenset()) is build
