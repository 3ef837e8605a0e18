"""`validate --online`: every configured endpoint id exists in its region with a deployed model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import DEFAULT_PROFILE, Problem, RegionConfig
from .client import CALL_TIMEOUT, DiscoveryError, Endpoint, _client, api_url, check_region_name, load_credentials
from .messages import _quote, explain


@dataclass
class OnlineReport:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0


def validate_online(config: RegionConfig, file: str, *, credentials: Any = None,
                    api_endpoint: str | None = None) -> OnlineReport:
    """Each configured endpoint id: exists in its region, has a deployed model. Problems carry key paths.

    `credentials`: used for every call when given; otherwise each (model, region) uses the
    auth profile the gateway uses for it (make_credentials, like the token refresher).
    """
    report = OnlineReport()
    project = config.project
    per_profile: dict[str, Any] = {}
    broken_profiles: set[str] = set()

    def creds(profile: str) -> Any:
        if credentials is not None:
            return credentials
        if profile not in per_profile:
            per_profile[profile] = load_credentials(config.auth.profile(profile), "auth.credentials")
        return per_profile[profile]

    def profile_path(profile: str) -> str:
        return "auth" if profile == DEFAULT_PROFILE else f"auth.profiles.{profile}"

    for region in config.vertex_regions:  # a custom backend is not Vertex: nothing to ask the API
        wanted = [(model, spec.endpoints[region]) for model, spec in config.models.items() if region in spec.endpoints]
        if not wanted:
            continue
        try:
            check_region_name(region)
        except DiscoveryError as exc:
            report.problems.append(Problem(file, f"regions.{region}", str(exc)))
            continue
        url = api_url(region, api_endpoint)
        clients: dict[str, Any] = {}
        try:
            for model, endpoint_id in wanted:
                path = f"models.{model}.endpoints.{region}"
                profile = config.profile_for(model, region)
                if profile in broken_profiles:
                    continue
                if profile not in clients:
                    try:
                        profile_credentials = creds(profile)
                    except DiscoveryError as exc:
                        broken_profiles.add(profile)
                        report.problems.append(Problem(file, profile_path(profile), str(exc)))
                        continue
                    clients[profile] = _client(region, profile_credentials, api_endpoint)
                try:
                    found = clients[profile].get_endpoint(
                        name=f"projects/{project}/locations/{region}/endpoints/{endpoint_id}", timeout=CALL_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - every failure becomes one line
                    problem = explain(exc, project=project, region=region, url=url,
                                      credentials=per_profile.get(profile, credentials))
                    if problem.kind == "not_found":
                        report.problems.append(Problem(file, path, f"endpoint {endpoint_id} not found in project "
                                                                   f"{project} region {region}"))
                    elif problem.kind == "credentials":
                        broken_profiles.add(profile)
                        report.problems.append(Problem(file, profile_path(profile), problem.message))
                    elif problem.kind == "api_disabled":
                        report.problems.append(Problem(file, "project", problem.message))
                        return report
                    elif problem.kind in ("unreachable", "region"):
                        report.problems.append(Problem(file, f"regions.{region}", problem.message))
                        break
                    else:
                        report.problems.append(Problem(file, path, problem.message))
                    continue
                report.checked += 1
                endpoint = Endpoint.from_api(region, found)
                if not endpoint.deployed_models:
                    report.problems.append(Problem(file, path, f"endpoint {endpoint_id} ({_quote(endpoint.display_name)}) "
                                                               f"in project {project} region {region} has no deployed "
                                                               f"model: predictions to it would fail"))
                host = config.host_of(region)
                if endpoint.dedicated_endpoint_enabled and endpoint.dedicated_endpoint_dns \
                        and host != endpoint.dedicated_endpoint_dns:
                    report.warnings.append(f"{path}: endpoint {endpoint_id} is a dedicated endpoint: Vertex serves "
                                           f"it at {endpoint.dedicated_endpoint_dns}, but regions.{region}.host is "
                                           f"{host}")
        finally:
            for client in clients.values():
                client.transport.close()
    return report
