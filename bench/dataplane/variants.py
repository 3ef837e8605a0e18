"""bench.dataplane's ablation rows: Envoys whose filter chain lacks one part more each, the
alternative rewrites (one joined header for Lua; the C dynamic module of bench/native_rewrite/,
compiled here), and the rows that add to the product's chain (+jwt, +tracing, with the OTLP
receiver the tracer exports to)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.common import ROOT
from control_plane.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, Build, build_resources

# Cumulative from "full" down: each variant drops one more part of the filter chain than the one
# before. "+tracing" is "full" plus the OpenTelemetry tracer (every request sampled, spans
# exported over OTLP/gRPC to a receiver in this process).
VARIANTS = {
    "+jwt (no cache)": "the product's chain plus client authentication (`clients:`), with jwt_authn's "
                      "verified-token cache off: an RS256 signature checked on every request",
    "+jwt": "the product's chain plus client authentication as shipped: jwt_authn (inline JWKS, verified "
            "tokens cached per worker, expiry checked per request) and the per-identity routes",
    "+tracing": "the product's filter chain plus tracing (100% sampled, a span per request and per attempt)",
    "full": "the product's filter chain, as shipped: JSON access log to stdout (Envoy's log file here); the "
            "route rewrites for the local region, so a first attempt sent there skips the per-attempt rewrite",
    "-access log": "without the access log",
    "-lua": "without the Lua rewrite (upstream filter)",
    "-upstream filters": "also without header_mutation and credential_injector: upstream_codec only",
    "-buffer, scrub, local replies": "also HCM with the router alone: no buffer filter, no early header "
                                     "mutation, no local-reply mapping",
    "bare": "also the route names the region cluster directly: no aggregate cluster, no retry policy, "
            "no response header",
    "bare, one route": "also the route table is the one housing route, matched on a path prefix (the product's "
                       "has a regex route per model, verb group and pinned region, the housing route 14th)",
    # Alternatives to the per-attempt rewrite, each on its own: "full" with one part done another way.
    # Each rewrites every attempt, as the product did before the route rewrote for the local region.
    "rewrite every attempt": "`full` as it was before: no rewrite at the route, the Lua rewrite (and "
                             "header_mutation's copy of the host's metadata) on every attempt",
    "lua, one header": "`full` with the rewrite reading one `|`-joined temporary header (1 get + 1 remove) "
                       "instead of six (6 + 6)",
    "native rewrite": "`full` with header_mutation + Lua replaced by a C dynamic module (prototype, "
                      "bench/native_rewrite/) reading the host's metadata itself; credential_injector kept",
    "native rewrite, -access log": "`native rewrite` without the access log: how near the static reference a "
                                   "native rewrite gets when the log costs nothing",
    # The access log done another way: what in its cost is the formatting, what the writing.
    "access log: one field": "`full` with an access log of one field (the status) instead of 20",
    "access log: default time": "`full` with the log's time as %START_TIME% (Envoy's own format, the same text) "
                                "instead of a strftime pattern",
    "access log: /dev/null": "`full` with the same log written to /dev/null by the file logger",
}
# The rows that drop one more part each, from "full" down (the others are additions or alternatives).
CUMULATIVE = ("full", "-access log", "-lua", "-upstream filters", "-buffer, scrub, local replies", "bare",
              "bare, one route")
REWRITES = ("rewrite every attempt", "lua, one header", "native rewrite", "native rewrite, -access log")
LOG_FORMATS = ("access log: one field", "access log: default time", "access log: /dev/null")
ALTERNATIVES = REWRITES + LOG_FORMATS
NATIVE_MODULE = "vertex_rewrite"  # bench/native_rewrite/vertex_rewrite.c, built into lib<name>.so
ABLATE_CONNECTIONS = 16
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def managers(built: dict):
    """Each HTTP connection manager of the built listeners, unpacked for the caller to edit, and
    packed back once the caller's loop body is done with it."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    for listener in built[LISTENER_TYPE]:
        for chain in listener.filter_chains:
            for flt in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(manager)
                yield manager
                flt.typed_config.Pack(manager)


# --------------------------------------------------------------------------- ablation builder


def ablated_builder(variant_by_port: dict[int, str], collector: str | None = None):
    """build_resources, then (for Envoys listening on a port in variant_by_port) drop parts, or
    (+tracing) turn tracing on toward `collector`."""
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

    from control_plane.config import Observability, Tracing

    def ablated(build, group):
        variant = variant_by_port.get(group.listen_port, "full")
        if variant.startswith("+jwt"):
            built = build_resources(with_jwt_clients(build), group)
            if variant == "+jwt (no cache)":
                without_jwt_cache(built)
            return built
        if variant == "+tracing":
            return build_resources(build.memo(("bench-tracing",), lambda: Build(build.config.model_copy(update={
                "observability": Observability(tracing=Tracing(collector=collector))}), build.avoided)), group)
        built = build_resources(every_attempt(build) if variant in REWRITES else build, group)
        if variant in LOG_FORMATS:
            relog(variant, built)
            return built
        if variant in ALTERNATIVES:
            alternative(variant.removesuffix(", -access log"), built)
            if not variant.endswith("-access log"):
                return built
        level = 1 if variant in ALTERNATIVES else CUMULATIVE.index(variant)  # full 0, -access log 1 ...
        if level == 0:
            return built
        for manager in managers(built):
            manager.ClearField("access_log")
        if level == 1:
            return built
        for cluster in built[CLUSTER_TYPE]:
            if HPO in cluster.typed_extension_protocol_options:
                options = hpo_pb2.HttpProtocolOptions()
                cluster.typed_extension_protocol_options[HPO].Unpack(options)
                keep = [f for f in options.http_filters if
                        (f.name != "envoy.filters.http.lua" if level == 2 else f.name.endswith("upstream_codec"))]
                del options.http_filters[:]
                options.http_filters.extend(keep)
                cluster.typed_extension_protocol_options[HPO].Pack(options)
        if level >= 4:
            for manager in managers(built):
                keep = [f for f in manager.http_filters if f.name == "envoy.filters.http.router"]
                del manager.http_filters[:]
                manager.http_filters.extend(keep)
                manager.ClearField("early_header_mutation_extensions")
                manager.ClearField("local_reply_config")
            for rc in built[ROUTE_TYPE]:
                for vh in rc.virtual_hosts:
                    for route in vh.routes:
                        route.typed_per_filter_config.clear()
                        route.ClearField("request_body_buffer_limit")
                        if level >= 5 and route.HasField("route") and route.route.cluster.startswith("model/") \
                                and "@" not in route.route.cluster:
                            route.route.cluster = f"{route.route.cluster}@{group.region}"
                            route.route.ClearField("retry_policy")
                    if level >= 5:
                        vh.include_attempt_count_in_response = False
                        del vh.response_headers_to_add[:]
                    if level >= 6:
                        keep = [r for r in vh.routes if r.name == "model:housing"]
                        for route in keep:
                            route.match.Clear()
                            route.match.prefix = "/v1/models/housing:"
                        del vh.routes[:]
                        vh.routes.extend(keep)
        return built

    return ablated


# The "lua, one header" row: header_mutation writes the chosen host's endpoint_path, host,
# upstream_path and tier into one header, "|"-joined ("|" cannot appear in a URL path or a host),
# and the script reads it with 1 get + 1 remove where the product's reads six (6 + 6). An absent
# key renders as "" or "-". Bench only (it measured no gain, docs/BENCHMARKS.md), so the listener
# does not scrub this header from clients.
ONE_HEADER = "x-vertex-attempt"
ONE_HEADER_KEYS = ("endpoint_path", "host", "upstream_path", "tier")
_ONE_HEADER_HEAD = """
local function present(v) if v == nil or v == "" or v == "-" then return nil end return v end
function envoy_on_request(h)
  local hd = h:headers()
  local ep, authority, up, tier = string.match(hd:get("x-vertex-attempt") or "",
    "^([^|]*)|([^|]*)|([^|]*)|([^|]*)$")
  hd:remove("x-vertex-attempt")
  ep, authority, up, tier = present(ep), present(authority), present(up), present(tier)
"""


def one_header_lua(product_script: str) -> str:
    """The product's script with its reading of six temporary headers replaced by _ONE_HEADER_HEAD;
    from the tier headers on, the product's own."""
    return _ONE_HEADER_HEAD + product_script[product_script.index("  if tier ~= nil"):]


def build_native_module(workdir: Path) -> None:
    """Compile bench/native_rewrite/vertex_rewrite.c into workdir and let Envoys started from now on
    find it there (ENVOY_DYNAMIC_MODULES_SEARCH_PATH)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("the `native rewrite` row needs a C compiler (cc/gcc)")
    subprocess.run([cc, "-O2", "-fPIC", "-shared", "-o", str(workdir / f"lib{NATIVE_MODULE}.so"),
                    str(ROOT / "bench" / "native_rewrite" / f"{NATIVE_MODULE}.c")], check=True)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(workdir)


def relog(variant: str, built: dict) -> None:
    """The listener's access log done another way (see LOG_FORMATS)."""
    from envoy.extensions.access_loggers.file.v3 import file_pb2
    from envoy.extensions.access_loggers.stream.v3 import stream_pb2

    from control_plane.resources.observability import ACCESS_LOG_FIELDS
    from control_plane.resources.proto import _struct

    for manager in managers(built):
        for log in manager.access_log:
            stdout = stream_pb2.StdoutAccessLog()
            log.typed_config.Unpack(stdout)
            if variant == "access log: /dev/null":
                log.name = "envoy.access_loggers.file"
                log.typed_config.Pack(file_pb2.FileAccessLog(path="/dev/null", log_format=stdout.log_format))
                continue
            fields = {"code": "%RESPONSE_CODE%"} if variant == "access log: one field" else \
                {**ACCESS_LOG_FIELDS, "time": "%START_TIME%"}
            stdout.log_format.json_format.CopyFrom(_struct(fields))
            log.typed_config.Pack(stdout)


def every_attempt(build: Build) -> Build:
    """A build of the config whose routes rewrite for no region (names.route_region is None for
    every model): the per-attempt filters rewrite every attempt, as before the route did."""
    def compute() -> Build:
        copy = Build(build.config, build.avoided)
        for model in build.config.models:
            for region in build.config.regions:
                copy.memo(("route_region", model, region), lambda: None)
        return copy
    return build.memo(("bench-every-attempt",), compute)


def alternative(variant: str, built: dict) -> None:
    """Redo the per-attempt filters of every cluster another way (see ALTERNATIVES)."""
    from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
    from envoy.extensions.filters.http.lua.v3 import lua_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

    from control_plane.resources.names import METADATA_NAMESPACE, TEMP_HEADERS

    if variant == "rewrite every attempt":
        return
    for cluster in built[CLUSTER_TYPE]:
        if HPO not in cluster.typed_extension_protocol_options:
            continue
        options = hpo_pb2.HttpProtocolOptions()
        cluster.typed_extension_protocol_options[HPO].Unpack(options)
        if not any(f.name == "envoy.filters.http.lua" for f in options.http_filters):
            continue  # a region's own cluster: its pinned routes rewrite, no per-attempt rewrite to redo
        if variant == "native rewrite":
            from envoy.extensions.dynamic_modules.v3 import dynamic_modules_pb2 as dm_pb2
            from envoy.extensions.filters.http.dynamic_modules.v3 import dynamic_modules_pb2 as dm_filter_pb2
            from envoy.extensions.filters.network.http_connection_manager.v3 import (
                http_connection_manager_pb2 as hcm_pb2,
            )
            native = hcm_pb2.HttpFilter(name="envoy.filters.http.dynamic_modules")
            native.typed_config.Pack(dm_filter_pb2.DynamicModuleFilter(
                dynamic_module_config=dm_pb2.DynamicModuleConfig(name=NATIVE_MODULE), filter_name=NATIVE_MODULE))
            keep = [native, *[f for f in options.http_filters if f.name.startswith("credential/")
                              or f.name.endswith("upstream_codec")]]
            del options.http_filters[:]
            options.http_filters.extend(keep)
            cluster.typed_extension_protocol_options[HPO].Pack(options)
            continue
        for f in options.http_filters:
            if f.name == "envoy.filters.http.header_mutation":
                mutation = header_mutation_pb2.HeaderMutation()
                f.typed_config.Unpack(mutation)
                keep = [m for m in mutation.mutations.request_mutations
                        if not (m.HasField("append") and m.append.header.key in TEMP_HEADERS)]
                del mutation.mutations.request_mutations[:]
                mutation.mutations.request_mutations.extend(keep)
                added = mutation.mutations.request_mutations.add()
                added.append.header.key = ONE_HEADER
                added.append.header.value = "|".join(f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{k})%"
                                                     for k in ONE_HEADER_KEYS)
                added.append.append_action = added.append.OVERWRITE_IF_EXISTS_OR_ADD
                f.typed_config.Pack(mutation)
            elif f.name == "envoy.filters.http.lua":
                lua = lua_pb2.Lua()
                f.typed_config.Unpack(lua)
                lua.default_source_code.inline_string = one_header_lua(lua.default_source_code.inline_string)
                f.typed_config.Pack(lua)
        cluster.typed_extension_protocol_options[HPO].Pack(options)


BENCH_ISSUER = "https://issuer.bench.test"
BENCH_AUDIENCE = "vertex-gateway-bench"
_JWT: dict = {}


def bench_jwt(workdir: Path) -> tuple[str, str]:
    """(JWKS file, a 1-hour RS256 token) from a local issuer, made once per run."""
    if not _JWT:
        from control_plane.lab.jwt_issuer import Issuer
        issuer = Issuer(BENCH_ISSUER)
        _JWT["jwks"] = issuer.write_jwks(workdir / "bench-jwks.json")
        _JWT["token"] = issuer.token(BENCH_AUDIENCE, lifetime=3600, sub="bench-client")
    return _JWT["jwks"], _JWT["token"]


def without_jwt_cache(built: dict) -> None:
    from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2

    for manager in managers(built):
        for http_filter in manager.http_filters:
            if http_filter.name == "envoy.filters.http.jwt_authn":
                jwt = jwt_pb2.JwtAuthentication()
                http_filter.typed_config.Unpack(jwt)
                for provider in jwt.providers.values():
                    provider.ClearField("jwt_cache_config")
                http_filter.typed_config.Pack(jwt)


def with_jwt_clients(build):
    """A build of the config with a `clients:` section: one issuer (JWKS file), any authenticated
    client; one per build (shared by its node groups)."""
    from control_plane.config import RegionConfig
    jwks = _JWT["jwks"]
    return build.memo(("bench-jwt",), lambda: Build(RegionConfig.model_validate({
        **build.config.model_dump(), "clients": {
            "jwt": {"bench": {"issuer": BENCH_ISSUER, "audiences": [BENCH_AUDIENCE], "jwks_file": jwks}},
            "allow": {"all": {"identities": ["*"]}}}}), build.avoided))


class SpanSink:
    """An OTLP/gRPC trace receiver that counts spans: where the +tracing Envoy exports to."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        sink = self
        self.spans = 0

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802
                sink.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)
