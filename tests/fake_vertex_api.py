"""A local fake of the Vertex AI REST API's EndpointService read side, for discovery tests.

The real gapic client (`aiplatform_v1.EndpointServiceClient`, REST transport) runs unchanged
against it when pointed here with `client_options={"api_endpoint": "http://127.0.0.1:PORT"}`:

- `GET /v1/projects/{p}/locations/{r}/endpoints` with `filter` (`display_name="x"`) and
  pagination (`pageSize`, `pageToken` -> `nextPageToken`; the server caps the page size at
  `max_page_size`, like the real API, so a test can force several pages);
- `GET /v1/projects/{p}/locations/{r}/endpoints/{id}`;
- errors shaped like Google's (`{"error": {"code", "message", "status", "details": [ErrorInfo]}}`):
  404 for an unknown location or endpoint, 403 PERMISSION_DENIED (IAM), 403 SERVICE_DISABLED
  (the API is not enabled in the project), 400 for a filter it does not understand.

Like the real API, resource names carry the project *number* when one is set, whatever the
caller used in the URL. The server runs on its own thread and event loop because the gapic
client is synchronous (`with FakeVertexAPI() as api:` starts and stops it).
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_FILTER = re.compile(r'^\s*display_name\s*=\s*"((?:[^"\\]|\\.)*)"\s*$')


@dataclass
class FakeEndpoint:
    id: str
    display_name: str
    deployed_models: list[dict] = field(default_factory=list)  # REST JSON (camelCase)
    extra: dict = field(default_factory=dict)  # network, privateServiceConnectConfig, dedicatedEndpoint*...

    def to_json(self, project: str, region: str) -> dict:
        body: dict[str, Any] = {
            "name": f"projects/{project}/locations/{region}/endpoints/{self.id}",
            "displayName": self.display_name,
            "etag": "AMEw9yN" + self.id[-4:],
            "createTime": "2025-01-02T03:04:05.678Z",
            "updateTime": "2025-01-02T03:04:05.678Z",
        }
        if self.deployed_models:
            body["deployedModels"] = self.deployed_models
            body["trafficSplit"] = {m["id"]: 100 if i == 0 else 0 for i, m in enumerate(self.deployed_models)}
        body.update(self.extra)
        return body


def deployed_model(id: str, model: str, display_name: str = "") -> dict:
    """A deployedModels[] entry as the REST API returns it."""
    return {"id": id, "model": model, "displayName": display_name or model.rsplit("/", 1)[-1],
            "createTime": "2025-01-02T03:04:05.678Z",
            "dedicatedResources": {"machineSpec": {"machineType": "n1-standard-4"}, "minReplicaCount": 1,
                                   "maxReplicaCount": 2}}


class FakeVertexAPI:
    def __init__(self, project: str = "my-project", project_number: str | None = None,
                 regions: tuple[str, ...] = ("us-central1", "us-east4"), max_page_size: int = 100,
                 host: str = "127.0.0.1"):
        self.project = project
        self.project_number = project_number
        self.regions = set(regions)
        self.max_page_size = max_page_size
        self.host, self.port = host, 0
        self.endpoints: dict[str, list[FakeEndpoint]] = {r: [] for r in regions}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) of every request
        self.failure: str | None = None  # None | "permission_denied" | "service_disabled"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ set-up
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, region: str, id: str, display_name: str, *, deployed: int = 1, **extra: Any) -> FakeEndpoint:
        """An endpoint with `deployed` deployed models; `extra` is merged into its REST JSON."""
        models = [deployed_model(f"{id}{i}", f"projects/{self.project_number or self.project}/locations/"
                                              f"{region}/models/{id[-3:]}{i}", f"{display_name}-v{i + 1}")
                  for i in range(deployed)]
        endpoint = FakeEndpoint(id, display_name, models, dict(extra))
        with self._lock:
            self.endpoints.setdefault(region, []).append(endpoint)
        return endpoint

    def fail(self, kind: str | None) -> None:
        """Make every request fail: "permission_denied", "service_disabled", or None to stop."""
        self.failure = kind

    def list_requests(self, region: str) -> list[dict[str, str]]:
        suffix = f"/locations/{region}/endpoints"
        return [query for path, query in self.requests if path.endswith(suffix)]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeVertexAPI:
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-vertex-api", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Vertex API did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/projects/{project}/locations/{region}/endpoints", self._list)
        app.router.add_get("/v1/projects/{project}/locations/{region}/endpoints/{id}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------------ handlers
    def _check(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, dict(request.query)))
        project, region = request.match_info["project"], request.match_info["region"]
        if self.failure == "service_disabled":
            number = self.project_number or "123456789012"
            return _error(403, "PERMISSION_DENIED",
                          f"Vertex AI API has not been used in project {number} before or it is disabled. "
                          f"Enable it by visiting https://console.developers.google.com/apis/api/"
                          f"aiplatform.googleapis.com/overview?project={number} then retry. If you enabled this "
                          f"API recently, wait a few minutes for the action to propagate to our systems and retry.",
                          reason="SERVICE_DISABLED", domain="googleapis.com",
                          metadata={"service": "aiplatform.googleapis.com", "consumer": f"projects/{number}",
                                    "serviceTitle": "Vertex AI API",
                                    "activationUrl": f"https://console.developers.google.com/apis/api/"
                                                     f"aiplatform.googleapis.com/overview?project={number}"})
        if self.failure == "permission_denied" or project not in (self.project, self.project_number):
            permission = "aiplatform.endpoints.get" if "id" in request.match_info else "aiplatform.endpoints.list"
            resource = f"projects/{project}/locations/{region}"
            return _error(403, "PERMISSION_DENIED",
                          f"Permission '{permission}' denied on resource '//aiplatform.googleapis.com/{resource}' "
                          f"(or it may not exist).", reason="IAM_PERMISSION_DENIED", domain="aiplatform.googleapis.com",
                          metadata={"permission": permission, "resource": resource})
        if region not in self.regions:
            return _error(404, "NOT_FOUND", f"Location {region} is not found or the project has no access to it.")
        return None

    def _name_project(self) -> str:
        return self.project_number or self.project

    async def _list(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        region = request.match_info["region"]
        with self._lock:
            found = list(self.endpoints.get(region, []))
        text = request.query.get("filter", "")
        if text:
            match = _FILTER.match(text)
            if not match:
                return _error(400, "INVALID_ARGUMENT", f"Invalid filter: {text}")
            wanted = re.sub(r"\\(.)", r"\1", match.group(1))
            found = [e for e in found if e.display_name == wanted]
        try:
            size = int(request.query.get("pageSize") or self.max_page_size)
            start = int(base64.urlsafe_b64decode(request.query["pageToken"]).decode()) \
                if request.query.get("pageToken") else 0
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "Invalid page token or page size.")
        size = max(1, min(size, self.max_page_size))
        page = found[start:start + size]
        body: dict[str, Any] = {"endpoints": [e.to_json(self._name_project(), region) for e in page]} if page else {}
        if start + size < len(found):
            body["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return web.json_response(body)

    async def _get(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        region, wanted = request.match_info["region"], request.match_info["id"]
        with self._lock:
            for endpoint in self.endpoints.get(region, []):
                if endpoint.id == wanted:
                    return web.json_response(endpoint.to_json(self._name_project(), region))
        return _error(404, "NOT_FOUND", f"Endpoint `projects/{self._name_project()}/locations/{region}/endpoints/"
                                        f"{wanted}` not found.")


def _error(code: int, status: str, message: str, reason: str | None = None, domain: str = "",
           metadata: dict | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
                             "domain": domain, "metadata": metadata or {}}]
    return web.json_response({"error": error}, status=code)


def populate(api: FakeVertexAPI) -> None:
    """The discovery tests' usual project: two regions, endpoints with PSC, a dedicated endpoint, a
    VPC network, and one without a deployed model."""
    api.add("us-central1", "1234567890", "Housing Prod", private_service_connect_config={
        "enablePrivateServiceConnect": True, "projectAllowlist": ["consumer-project"],
        "serviceAttachment": "projects/tenant/regions/us-central1/serviceAttachments/sa-1234567890"})
    api.add("us-east4", "9876543210", "Housing Prod", dedicatedEndpointEnabled=True,
            dedicatedEndpointDns="9876543210.us-east4-123456789012.prediction.vertexai.goog")
    api.add("us-central1", "4444", "churn", network="projects/123456789012/global/networks/vpc-a")
    api.add("us-east4", "5555", "scratch", deployed=0)
