"""Debug and admin HTTP endpoints (SPEC "Debug and admin endpoints"). Read-only views
over the control plane's state; all JSON except /metrics."""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from aiohttp import web
from google.protobuf import json_format

from .cache import UnknownRegion, node_group
from .dryrun import upstream, upstream_fields
from .exposure import client_authentication
from .resources import Build, members
from .xds_types import PUSH_ORDER, SECRET_TYPE, short

if TYPE_CHECKING:
    from .app import ControlPlane


def _json(data, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(data) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def admin_app(plane: ControlPlane) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        reasons = plane.tokens.degraded_reasons()
        waiting = plane.cache.missing_tokens()
        if waiting:
            reasons.append(f"waiting for the first access token of auth profile(s) {', '.join(waiting)}")
        return _json({"status": "degraded" if reasons else "ok", "reasons": reasons,
                      "config_version": plane.cache.config.version, "clients": len(plane.clients.streams())},
                     status=503 if reasons else 200)

    async def tokens(_: web.Request) -> web.Response:
        return _json({"refresh_margin_seconds": plane.cache.config.auth.refresh_margin,
                      "credentials": [state.to_dict() for state in plane.tokens.states]})

    async def clients(_: web.Request) -> web.Response:
        return _json({"config_version": plane.cache.config.version,
                      "clients": [s.to_dict() for s in plane.clients.streams()]})

    async def config(request: web.Request) -> web.Response:
        node_id = request.query.get("node", "")
        streams = plane.clients.by_node(node_id)
        if not streams:
            known = sorted({s.node_id for s in plane.clients.streams()})
            return _json({"error": f"no connected node {node_id!r}" if node_id else "give ?node=NODE_ID",
                          "nodes": known}, status=404 if node_id else 400)
        stream = streams[-1]
        try:
            group = node_group(stream.node, plane.cache.config)
        except UnknownRegion as exc:
            return _json({"node_id": node_id, "error": str(exc)}, status=409)
        resources = {}
        for type_url in PUSH_ORDER:
            resources[short(type_url)] = [
                {"name": r.name, "version": r.version,
                 "resource": "[redacted]" if type_url == SECRET_TYPE else
                 json_format.MessageToDict(r.message, preserving_proto_field_name=True)}
                for r in plane.cache.select(group, type_url)]
        config_now = plane.cache.config
        in_file = Build(config_now)  # the file's orders
        # What this Envoy runs: fleet avoidance applied (a build of its own, not the one served:
        # that one is the reload thread's to read)
        served = Build(config_now, plane.cache.build.avoided)
        models = {}
        for name, spec in config_now.models.items():
            chain, file_chain = members(served, name, group.region), members(in_file, name, group.region)
            models[name] = {"strategy": spec.strategy, "weights": spec.weights or None, "regions": chain,
                            **({"regions_in_file": file_chain} if file_chain != chain else {}),
                            "upstreams": {r: upstream_fields(upstream(config_now, name, r)) for r in file_chain}}
        return _json({"node_id": node_id, "region": group.region, "models": models,
                      "avoided": sorted(served.avoided),
                      "listener": f"{group.listen_address}:{group.listen_port}",
                      "config_version": plane.cache.config.version, "resources": resources})

    async def regions(_: web.Request) -> web.Response:
        config = plane.cache.config
        listens = [s.node.metadata.fields["listen"].string_value for s in plane.clients.streams()
                   if "listen" in s.node.metadata.fields]
        return _json({"config_file": str(plane.config_path), "version": config.version,
                      "client_authentication": client_authentication(config, listens),
                      "config": config.model_dump(mode="json"), "last_reload": plane.last_reload,
                      "load": plane.fleet.view(), "trust_stores": plane.trust_stores})

    async def restore_region(request: web.Request) -> web.Response:
        region = request.match_info["region"]
        if region not in plane.cache.config.regions:
            return _json({"error": f"unknown region {region!r}"}, status=404)
        restored = plane.fleet.restore(region)
        return _json({"region": region, "restored": restored,
                      "avoided": sorted(plane.fleet.avoided)}, status=200)

    async def metrics(_: web.Request) -> web.Response:
        plane.metrics.observe_clients([s.status for s in plane.clients.streams()])
        return web.Response(body=plane.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"x-content-type-options": "nosniff"})

    @web.middleware
    async def require_token(request: web.Request, handler):
        # /healthz stays open for probes; everything else shows config and must be asked for.
        if plane.admin_token and request.path != "/healthz":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {plane.admin_token}".encode()):
                return _json({"error": "missing or wrong bearer token"}, status=401)
        return await handler(request)

    @web.middleware
    async def errors_as_json(request: web.Request, handler):
        # aiohttp's own answers (no such path, wrong method) are plain text; these endpoints are JSON.
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _json({"error": exc.reason, "path": request.path}, status=exc.status)
            if "Allow" in exc.headers:  # a 405
                response.headers["Allow"] = exc.headers["Allow"]
            return response

    app = web.Application(middlewares=[errors_as_json, require_token])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/debug/clients", clients)
    app.router.add_get("/debug/config", config)
    app.router.add_get("/debug/regions", regions)
    app.router.add_post("/debug/regions/{region}/restore", restore_region)
    app.router.add_get("/debug/tokens", tokens)
    app.router.add_get("/metrics", metrics)
    return app
