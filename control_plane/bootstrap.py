"""The Envoy bootstrap: who this Envoy is and where its control plane is. Nothing regional
beyond the node's region is baked in; all routing config arrives over xDS."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from .config import is_ip, is_name

# Route regexes list every endpoint id and verb; RE2's default program-size cap (100) is
# far below what a config with many models needs.
RE2_MAX_PROGRAM_SIZE = 100_000


def split_host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


@dataclass(frozen=True)
class XdsTls:
    """mTLS to the control plane: the CA that signed its certificate, and this Envoy's own."""

    ca_file: str
    cert_file: str
    key_file: str
    server_name: str | None = None  # default: the xDS host

    def transport_socket(self, xds_host: str) -> dict:
        name = self.server_name or xds_host
        san = {"san_type": "IP_ADDRESS" if is_ip(name) else "DNS", "matcher": {"exact": name}}
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            **({} if is_ip(name) else {"sni": name}),
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [{"certificate_chain": {"filename": self.cert_file},
                                      "private_key": {"filename": self.key_file}}],
                "validation_context": {"trusted_ca": {"filename": self.ca_file},
                                       "match_typed_subject_alt_names": [san]},
            }}}


def bootstrap(region: str, xds_address: str, node_id: str | None = None, listen: str | None = None,
              admin_address: str = "127.0.0.1:9901", delta: bool = False, xds_tls: XdsTls | None = None,
              stats_listen: str | None = None, lazy_cluster_stats: bool = False) -> dict:
    if not is_name(region):  # as regions.yaml names regions: the node would match no group
        raise ValueError(f"--region {region!r} is not a region name (letters, digits, '-', '_', '.')")
    xds_host, xds_port = split_host_port(xds_address, "--xds-address")
    admin_host, admin_port = split_host_port(admin_address, "--admin-address")
    metadata = {"region": region}
    if listen:
        split_host_port(listen, "--listen")
        metadata["listen"] = listen
    config = _bootstrap(region, node_id, metadata, admin_host, admin_port, xds_host, xds_port, delta, xds_tls)
    if lazy_cluster_stats:
        # A cluster's traffic stats (upstream_rq_*, upstream_cx_*) made when first used, not when
        # the cluster is: most of the time a large config takes a real Envoy to apply, at
        # 1,000 models x 5 regions (docs/BENCHMARKS.md). A cluster never used has no such series.
        config["deferred_stat_options"] = {"enable_deferred_creation_stats": True}
    if stats_listen:
        if admin_port == 0:
            raise ValueError("--stats-listen needs a fixed --admin-address port to forward to")
        stats_host, stats_port = split_host_port(stats_listen, "--stats-listen")
        config["static_resources"]["listeners"] = [_stats_listener(stats_host, stats_port)]
        config["static_resources"]["clusters"].append(_admin_cluster(admin_host, admin_port))
    return config


def _stats_listener(host: str, port: int) -> dict:
    """Only GET /stats/prometheus, forwarded to the admin interface (which stays on loopback):
    Prometheus can scrape Envoy without reaching /config_dump, /quitquitquit and the rest."""
    return {"name": "stats", "address": _socket_address(host, port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                     ".HttpConnectionManager",
            "stat_prefix": "stats",
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "route_config": {"virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": [
                {"match": {"path": "/stats/prometheus", "headers": [
                    {"name": ":method", "string_match": {"exact": "GET"}}]}, "route": {"cluster": "envoy_admin"}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]},
        }}]}]}


def _admin_cluster(host: str, port: int) -> dict:
    return {"name": "envoy_admin", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "envoy_admin", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket_address(host, port)}}]}]}}


def _bootstrap(region, node_id, metadata, admin_host, admin_port, xds_host, xds_port, delta, xds_tls) -> dict:
    return {
        "node": {
            "id": node_id or f"envoy-{region}",
            "cluster": "vertex-gateway",
            "locality": {"region": region},
            "metadata": metadata,
        },
        "admin": {"address": _socket_address(admin_host, admin_port)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds_cluster",
            **({"transport_socket": xds_tls.transport_socket(xds_host)} if xds_tls else {}),
            "type": "STATIC" if is_ip(xds_host) else "STRICT_DNS",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {
                        # Notice a dead control plane (or a dropped NAT entry) within seconds.
                        "connection_keepalive": {"interval": "10s", "timeout": "5s"}}},
                }},
            "load_assignment": {"cluster_name": "xds_cluster", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _socket_address(xds_host, xds_port)}}]}]},
        }]},
        "stats_config": _stats_config(region),
        # Load reports (LRS) to the control plane over the xDS connection; the control plane says
        # which clusters and how often (control_plane/lrs.py).
        "cluster_manager": {"load_stats_config": {
            "api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds_cluster"}}]}},
        "layered_runtime": {"layers": [{"name": "static", "static_layer": {
            "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE,
            "re2.max_program_size.warn_level": RE2_MAX_PROGRAM_SIZE,
        }}]},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                         ".DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000}}]},
    }


# Cluster names are model/{model} (what a route names) and model/{model}@{region} (one region's
# attempts): tags let a dashboard group by model and region without parsing them. The first
# group of each regex is cut from the stat name, the second is the tag's value.
STATS_TAGS = (
    {"tag_name": "model", "regex": r"^cluster\.model/(([^@.]+))[@.]"},
    {"tag_name": "region", "regex": r"^cluster\.model/[^@.]+@(([^.]+))\."},
)


def _stats_config(region: str) -> dict:
    # local_region on every series: which region this Envoy serves, so "attempts sent to a region
    # other than the Envoy's own" (failovers) is a query.
    return {"stats_tags": [*STATS_TAGS, {"tag_name": "local_region", "fixed_value": region}]}


def render(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
