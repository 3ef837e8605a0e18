"""The Vertex AI API client: the gapic EndpointServiceClient (REST), credentials, and
reading the endpoints of some regions."""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import AuthProfile
from .messages import _first_line, explain

INSTALL_HINT = "pip install 'vertex-gateway[vertex]'"
ANONYMOUS_ENV = "VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS"
DEFAULT_API_ENDPOINT = "https://{region}-aiplatform.googleapis.com"
CALL_TIMEOUT = 30.0  # seconds per API call (the gapic default is none)
# us-central1, europe-west4, northamerica-northeast1, me-central2 ...
_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")


class DiscoveryError(Exception):
    """Something the operator must fix, said in one line."""


def _aiplatform():
    try:
        aiplatform_v1 = importlib.import_module("google.cloud.aiplatform_v1")
    except ImportError as exc:
        raise DiscoveryError(f"this command needs the Vertex AI client library, an optional extra: "
                             f"{INSTALL_HINT}  (or: pip install 'google-cloud-aiplatform>=1.60')") from exc
    return aiplatform_v1


def api_url(region: str, api_endpoint: str | None = None) -> str:
    """The API root for a region; `{region}` in a custom endpoint is replaced."""
    return (api_endpoint or DEFAULT_API_ENDPOINT).replace("{region}", region).rstrip("/")


def _client(region: str, credentials: Any, api_endpoint: str | None):
    aiplatform_v1 = _aiplatform()
    from google.api_core.client_options import ClientOptions

    return aiplatform_v1.EndpointServiceClient(
        credentials=credentials, transport="rest",
        client_options=ClientOptions(api_endpoint=api_url(region, api_endpoint)))


def check_region_name(region: str) -> None:
    if not _REGION.match(region):
        raise DiscoveryError(f"invalid region name {region!r}: expected a Vertex AI region such as us-central1")


def credentials_for_cli(spec: str = "adc", hint: str = "--credentials service_account:PATH"):
    """google-auth credentials for `adc` or `service_account:PATH`, or anonymous when the test switch is set."""
    if os.environ.get(ANONYMOUS_ENV) == "1":
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    try:
        profile = AuthProfile(credentials=spec)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise DiscoveryError(f"bad --credentials {spec!r}: expected adc or service_account:/path/to/key.json") from exc
    return load_credentials(profile, hint)


def load_credentials(profile: AuthProfile, hint: str):
    """make_credentials (the token refresher's), with its failures said in one line."""
    import google.auth.exceptions

    from ..tokens import make_credentials

    try:
        return make_credentials(profile)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        if profile.credentials != "adc":
            raise DiscoveryError(f"bad service-account key {profile.credentials.removeprefix('service_account:')}: "
                                 f"{_first_line(exc)}") from exc
        raise DiscoveryError(f"no Google credentials found (Application Default Credentials: {_first_line(exc)}): "
                             f"run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS to "
                             f"a key file, or use {hint}") from exc
    except (OSError, ValueError, KeyError) as exc:
        path = profile.credentials.removeprefix("service_account:")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise DiscoveryError(f"cannot use service-account key {path}: {reason}") from exc


@dataclass
class DeployedModel:
    id: str
    model: str  # projects/N/locations/R/models/M
    display_name: str = ""
    version: str = ""
    traffic: int | None = None

    def describe(self) -> str:
        model_id = self.model.rsplit("/", 1)[-1] + (f"@{self.version}" if self.version else "")
        traffic = f", traffic {self.traffic}%" if self.traffic is not None else ""
        return f"{self.display_name or model_id} (model {model_id}, deployed model id {self.id}{traffic})"


@dataclass
class Endpoint:
    region: str
    id: str
    display_name: str
    deployed_models: list[DeployedModel] = field(default_factory=list)
    network: str = ""
    private_service_connect: dict | None = None  # enable_private_service_connect, project_allowlist, service_attachment
    dedicated_endpoint_enabled: bool = False
    dedicated_endpoint_dns: str = ""
    create_time: str = ""

    @classmethod
    def from_api(cls, region: str, endpoint: Any) -> Endpoint:
        pb = type(endpoint).pb(endpoint)
        traffic = dict(endpoint.traffic_split)
        psc = None
        if pb.HasField("private_service_connect_config") or endpoint.enable_private_service_connect:
            config = endpoint.private_service_connect_config
            psc = {"enable_private_service_connect": bool(config.enable_private_service_connect
                                                          or endpoint.enable_private_service_connect),
                   "project_allowlist": list(config.project_allowlist),
                   "service_attachment": config.service_attachment}
        return cls(
            region=region, id=endpoint.name.rsplit("/", 1)[-1], display_name=endpoint.display_name,
            deployed_models=[DeployedModel(m.id, m.model, m.display_name, m.model_version_id, traffic.get(m.id))
                             for m in endpoint.deployed_models],
            network=endpoint.network, private_service_connect=psc,
            dedicated_endpoint_enabled=bool(endpoint.dedicated_endpoint_enabled),
            dedicated_endpoint_dns=endpoint.dedicated_endpoint_dns,
            create_time=endpoint.create_time.isoformat() if pb.HasField("create_time") else "")

    def details(self) -> list[str]:
        """The private-networking settings, where present, one per line."""
        out = []
        if self.private_service_connect is not None:
            psc = self.private_service_connect
            parts = ["enabled" if psc["enable_private_service_connect"] else "disabled"]
            if psc["service_attachment"]:
                parts.append(f"service_attachment {psc['service_attachment']}")
            if psc["project_allowlist"]:
                parts.append(f"project_allowlist [{', '.join(psc['project_allowlist'])}]")
            out.append("private_service_connect_config: " + ", ".join(parts))
        if self.dedicated_endpoint_enabled or self.dedicated_endpoint_dns:
            out.append(f"dedicated_endpoint_dns: {self.dedicated_endpoint_dns or '(dedicated, no DNS name yet)'}")
        if self.network:
            out.append(f"network: {self.network}")
        return out


def list_endpoints(project: str, regions: Iterable[str], *, credentials: Any, api_endpoint: str | None = None,
                   display_name: str | None = None, page_size: int | None = None) -> list[Endpoint]:
    """Every endpoint in those regions (all pages), optionally only those with this display name."""
    found: list[Endpoint] = []
    for region in regions:
        check_region_name(region)
        url = api_url(region, api_endpoint)
        request: dict[str, Any] = {"parent": f"projects/{project}/locations/{region}"}
        if display_name is not None:
            request["filter"] = 'display_name="{}"'.format(display_name.replace("\\", "\\\\").replace('"', '\\"'))
        if page_size:
            request["page_size"] = page_size
        try:
            with _client(region, credentials, api_endpoint) as client:
                for endpoint in client.list_endpoints(request=request, timeout=CALL_TIMEOUT):
                    found.append(Endpoint.from_api(region, endpoint))
        except DiscoveryError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line
            problem = explain(exc, project=project, region=region, url=url, credentials=credentials)
            if problem.kind == "not_found":
                raise DiscoveryError(f"region {region!r} unknown: no Vertex AI location {region} for project "
                                     f"{project} (404 from {url}): {problem.message}") from exc
            raise DiscoveryError(problem.message) from exc
    return found
