"""bench.dataplane's targets: the fast backend, the static reference Envoy, the product's Envoys,
the smart router, and the one-request checks that each rewrites as it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from bench.common import ROOT, children, ensure_debian_package, stop_process, wait_until
from bench.dataplane.variants import ALTERNATIVES
from control_plane.lab.envoy_process import EnvoyProcess, envoy_binary
from control_plane.lab.harness import free_port
from control_plane.lab.stack import ENDPOINT_IDS, PROJECT, Stack

LOCAL, REMOTE = "us-central1", "us-east4"
MODEL_PATH = "/v1/models/housing:predict"
TARGETS = ("direct", "static-1w", "envoy-1w", "envoy-2w", "router-1p", "router-2p")
GEMINI = "google/gemini-2.0-flash"
# The OpenAI front door's body reading, priced on envoy-1w with one chat body: only the path differs.
BODY_READING = {
    "vertex-native": ("/v1/models/gemini:generateContent", "Vertex-native path to the gemini cluster: the route "
                                                           "is chosen on the path, the body is not parsed"),
    "openai": ("/v1/chat/completions", "OpenAI path: json_to_metadata parses the body (model, stream), the route "
                                       "is chosen again on them; then the same cluster"),
}
BENCH_TOKEN = "ya29.bench-static-token"


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
        wait_until(lambda: post(self.url + MODEL_PATH, b"{}")[0] == 200, 30, f"the {self.kind} backend")
        return self

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        stop_process(self.proc)


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


def start_static_reference(backend_port: int, workdir: Path, ready: float = 30) -> tuple[subprocess.Popen, str]:
    import yaml
    port = free_port()
    path = workdir / "static-reference.yaml"
    path.write_text(yaml.safe_dump(static_reference_config(port, backend_port)))
    log = open(workdir / "static-reference.log", "ab")
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
                             "--log-level", "error"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: post(url + MODEL_PATH, b'{"instances":[1]}', timeout=ready / 10)[0] == 200, ready,
               "the static reference Envoy")
    return proc, url


def post(url: str, body: bytes, timeout: float = 5, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


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
    wait_until(lambda: post(url + MODEL_PATH, b'{"instances":[1]}')[0] == 200, 30, f"the {processes}-process router")
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
        status, headers = post(url + path, body)
        want = f"/v1/projects/{PROJECT}/locations/{LOCAL}/" + (
            "endpoints/openapi/chat/completions" if cell == "openai" else "publishers/google/models/gemini-2.0-flash"
                                                                          ":generateContent")
        out[cell] = {"status": status, "uri": headers.get("x-seen-uri"),
                     "ok": status == 200 and headers.get("x-seen-uri") == want}
    return out


def check_rewrite(target: str, url: str, body: bytes, backend: Backend, send: dict | None = None) -> dict:
    """One request: did the backend see the local region's Vertex path, host and a token?"""
    status, headers = post(url + MODEL_PATH, body, headers=send)
    seen = {k: headers.get(f"x-seen-{k}", "") for k in ("uri", "host", "auth")}
    ok = status == 200
    if target != "direct" and (not target.startswith("ablate:") or target[len("ablate:"):] in ALTERNATIVES):
        ok = ok and seen["uri"] == f"/v1/projects/{PROJECT}/locations/{LOCAL}/endpoints/{ENDPOINT_IDS[LOCAL]}:predict" \
            and seen["host"] == f"{LOCAL}-aiplatform.googleapis.com" and seen["auth"].startswith("Bearer ")
    return {"status": status, "seen": {**seen, "auth": seen["auth"][:12] + "..." if seen["auth"] else ""},
            "region": headers.get("x-vertex-region"), "ok": ok}
