"""A faithful Python "smart router": the proxy vertex-gateway replaces, rebuilt on aiohttp.

What the original (Flask on Cloud Run) did per request, and what this does too:

  1. take `POST /v1/models/{model}:{verb}` (or `POST /predict` = the default model);
  2. rewrite the path to the *local* region's Vertex path
     `/v1/projects/{project}/locations/{region}/endpoints/{endpoint_id}:{verb}`,
     set `Host: {region}-aiplatform.googleapis.com` and `Authorization: Bearer <token>`;
  3. forward the body, and on a 503 retry once in the remote region, with *that* region's
     path, host and token;
  4. answer with the upstream's status and body, plus `x-vertex-region` (who answered) and
     `x-envoy-attempt-count` (so the same load generator can read both proxies).

One difference, in the baseline's favour: the original fetched an access token per request
(`google.auth.default()` + `refresh()`, one OAuth round trip each); by default this one uses a
static token, so its numbers are an upper bound for the original. `--token-per-request KEY`
restores the original behaviour (google-auth service-account credentials from KEY, refreshed
in a thread for every request), which bench/tokens.py uses to count the original's grants.
It is also asyncio with a pooled keep-alive client (the Flask one was synchronous, one
request per worker thread).

    python -m bench.smart_router --config router.json [--listen 127.0.0.1:8090] [--reuse-port]

router.json: {"project": "p", "local": "us-central1", "failover": ["us-east4"],
              "default_model": "housing", "token": "ya29.static",
              "regions": {"us-central1": {"upstream": "http://127.0.0.1:9001",
                                          "endpoints": {"housing": "1001"}}, ...}}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import threading
from pathlib import Path

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web

MODEL_PATH = re.compile(r"^/v1/models/(?P<model>[A-Za-z0-9_.-]+):(?P<verb>[A-Za-z]+)$")
# Hop-by-hop and rewritten headers are not forwarded as the client sent them.
DROP = frozenset({"host", "authorization", "connection", "keep-alive", "transfer-encoding", "content-length",
                  "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection"})
RETRY_STATUS = 503


class SmartRouter:
    def __init__(self, config: dict):
        self.project = config["project"]
        self.local = config["local"]
        self.order = [self.local, *config.get("failover", [])][:2]  # the original tried two regions at most
        self.default_model = config["default_model"]
        self.token = config["token"]
        self.regions = config["regions"]
        self.session: ClientSession | None = None
        self.key_file = config.get("token_per_request_key")
        self._local = threading.local()

    def fetch_token(self) -> str:
        """What the original did for every request: one OAuth grant. (The key is parsed once per
        thread, in the baseline's favour; the grant, a signed JWT exchanged over HTTP, is not cached.)"""
        local = self._local
        if getattr(local, "credentials", None) is None:
            import google.auth.transport.requests
            from google.oauth2 import service_account
            local.credentials = service_account.Credentials.from_service_account_file(
                self.key_file, scopes=["https://www.googleapis.com/auth/cloud-platform"])
            local.request = google.auth.transport.requests.Request()
        local.credentials.refresh(local.request)
        return local.credentials.token

    async def start(self, app: web.Application) -> None:
        self.session = ClientSession(connector=TCPConnector(limit=0, ttl_dns_cache=None),
                                     timeout=ClientTimeout(total=60), auto_decompress=False)

    async def stop(self, app: web.Application) -> None:
        if self.session:
            await self.session.close()

    def target(self, region: str, model: str, verb: str) -> tuple[str, str] | None:
        spec = self.regions[region]
        endpoint = spec["endpoints"].get(model)
        if endpoint is None:
            return None
        path = f"/v1/projects/{self.project}/locations/{region}/endpoints/{endpoint}:{verb}"
        return spec["upstream"] + path, spec.get("host", f"{region}-aiplatform.googleapis.com")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/predict":
            model, verb = self.default_model, "predict"
        else:
            match = MODEL_PATH.match(request.path)
            if match is None:
                return web.json_response({"error": {"code": 404, "message": "no such path"}}, status=404)
            model, verb = match["model"], match["verb"]
        body = await request.read()
        forwarded = {k: v for k, v in request.headers.items() if k.lower() not in DROP}
        token = await asyncio.to_thread(self.fetch_token) if self.key_file else self.token
        attempts = 0
        last: web.Response | None = None
        for region in self.order:
            found = self.target(region, model, verb)
            if found is None:
                continue
            url, host = found
            headers = {**forwarded, "Host": host, "Authorization": f"Bearer {token}"}
            attempts += 1
            try:
                async with self.session.post(url, data=body, headers=headers) as upstream:
                    data = await upstream.read()
                    status = upstream.status
                    # Upstream headers pass through (as Envoy passes them), less hop-by-hop ones.
                    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in DROP}
            except (ClientError, asyncio.TimeoutError) as exc:
                last = web.json_response({"error": {"code": 502, "message": f"upstream {region}: {exc!r}"}},
                                         status=502)
                continue  # the original treated a dead upstream like a 503
            headers.update({"x-vertex-region": region, "x-envoy-attempt-count": str(attempts)})
            last = web.Response(status=status, body=data, headers=headers)
            if status != RETRY_STATUS:
                return last
        if last is None:
            return web.json_response({"error": {"code": 404, "message": f"model {model!r} not served"}}, status=404)
        return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smart_router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--listen", default="127.0.0.1:8090")
    parser.add_argument("--reuse-port", action="store_true", help="SO_REUSEPORT: run several processes on one port")
    parser.add_argument("--token-per-request", metavar="KEY_JSON",
                        help="fetch a token per request with this service-account key, as the original did")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    if args.token_per_request:
        config["token_per_request_key"] = args.token_per_request
    router = SmartRouter(config)
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.on_startup.append(router.start)
    app.on_cleanup.append(router.stop)
    app.router.add_route("*", "/{tail:.*}", router.handle)
    host, _, port = args.listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), reuse_port=args.reuse_port or None, access_log=None,
                print=None, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
