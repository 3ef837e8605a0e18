"""Vertex AI endpoint discovery (`discover`) and online validation (`validate --online`).

Both talk to the Vertex AI API through google-cloud-aiplatform's gapic
`EndpointServiceClient` (REST transport), which is the optional `vertex` extra: it is
imported only inside these commands, so the control plane itself runs without it.

- `discover` lists the endpoints in some regions (display name, numeric id, deployed
  models, Private Service Connect / dedicated endpoint / VPC network settings) and prints
  a `models:` section for regions.yaml: endpoints with the same display name in several
  regions become one model (key = slug of the display name; `endpoints: {region: id}`).
  `--write FILE` merges it into an existing regions.yaml with ruamel's round-trip
  loader, keeping the operator's comments, order and quoting; the result must pass
  `parse_config` or nothing is written.
- `validate --online` checks that each configured endpoint id exists in its region and
  has at least one deployed model, every problem with its key path.

Credentials: `validate --online` uses the config's auth profiles (the profile each model
and region uses, as the token refresher does); `discover` uses ADC unless
`--credentials service_account:PATH`. The functions take a `credentials=` argument (tests
pass `AnonymousCredentials()`), and the CLI honours `VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS=1`
(tests only: anonymous calls, e.g. to a local fake given with `--api-endpoint`).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .config import DEFAULT_PROFILE, AuthProfile, ConfigError, Problem, RegionConfig, parse_config

INSTALL_HINT = "pip install 'vertex-gateway[vertex]'"
ANONYMOUS_ENV = "VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS"
DEFAULT_API_ENDPOINT = "https://{region}-aiplatform.googleapis.com"
CALL_TIMEOUT = 30.0  # seconds per API call (the gapic default is none)
# us-central1, europe-west4, northamerica-northeast1, me-central2 ...
_REGION = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")


class DiscoveryError(Exception):
    """Something the operator must fix, said in one line."""


# ---------------------------------------------------------------------------- the client


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

    from .tokens import make_credentials

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


# ---------------------------------------------------------------------------- errors -> one line


@dataclass(frozen=True)
class ApiProblem:
    kind: str  # credentials | api_disabled | permission | unauthenticated | region | unreachable | not_found | other
    message: str


def explain(exc: BaseException, *, project: str, region: str, url: str, credentials: Any = None) -> ApiProblem:
    """An exception from a call to the Vertex AI API -> what it means, in one line."""
    import google.auth.exceptions
    import requests
    from google.api_core import exceptions as api

    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return ApiProblem("credentials", f"no Google credentials: {_first_line(exc)}")
    if isinstance(exc, (google.auth.exceptions.RefreshError, google.auth.exceptions.TransportError)):
        return ApiProblem("credentials", f"could not get an access token{_who(credentials)}: {_first_line(exc)}")
    if isinstance(exc, requests.exceptions.RequestException) or isinstance(exc, (api.RetryError, api.ServiceUnavailable)):
        text = str(exc)
        dns = any(s in text for s in ("NameResolutionError", "Name or service not known", "getaddrinfo failed",
                                      "nodename nor servname", "Temporary failure in name resolution"))
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        timed_out = isinstance(exc, requests.exceptions.Timeout) or "timed out" in text or "Timeout" in text
        why = "the name does not resolve" if dns else "timed out" if timed_out else \
            errno.group(1).strip() if errno else _short(text, 200)
        hint = f"; is {region!r} a Vertex AI region?" if dns and url == api_url(region) else ""
        return ApiProblem("unreachable", f"cannot reach the Vertex AI API at {url} for region {region} ({why}){hint}")
    if not isinstance(exc, api.GoogleAPICallError):
        return ApiProblem("other", f"{type(exc).__name__}: {_first_line(exc)}")

    message = _server_message(exc)
    reason = exc.reason or ""
    metadata = dict(exc.metadata or {})
    if exc.code == 403 and (reason == "SERVICE_DISABLED" or "has not been used in project" in message
                            or "it is disabled" in message):
        consumer = metadata.get("consumer") or f"projects/{project}"
        target = consumer.removeprefix("projects/")
        other = "" if target == project else (f"; if that is not project {project}, your credentials bill another "
                                              f"quota project: gcloud auth application-default set-quota-project "
                                              f"{project}")
        return ApiProblem("api_disabled", f"the Vertex AI API (aiplatform.googleapis.com) is not enabled in project "
                                          f"{target}: gcloud services enable aiplatform.googleapis.com --project "
                                          f"{target}{other}")
    if exc.code == 403:
        permission = metadata.get("permission") or "aiplatform.endpoints.list/get"
        return ApiProblem("permission", f"permission denied{_who(credentials)} in project {project} region {region}: "
                                        f"needs {permission} (e.g. roles/aiplatform.viewer): {message}")
    if exc.code == 401:
        return ApiProblem("unauthenticated", f"the credentials were rejected (401{_who(credentials)}): {message}")
    if exc.code == 404:
        return ApiProblem("not_found", message)
    if exc.code == 400 and "location" in message.lower():
        return ApiProblem("region", f"region {region!r} is not a Vertex AI location for project {project}: {message}")
    status = getattr(exc, "grpc_status_code", None)
    return ApiProblem("other", f"{exc.code} {getattr(status, 'name', '') or ''} from {url}: {message}".replace("  ", " "))


def _server_message(exc: Any) -> str:
    """The API's own message, without the `GET url:` prefix api_core puts in front."""
    try:
        message = exc.response.json()["error"]["message"]
        if isinstance(message, str) and message:
            return _short(message)
    except Exception:  # noqa: BLE001 - not JSON, no response: fall back to the formatted message
        pass
    return _short(re.sub(r"^[A-Z]+ \S+: ", "", str(exc.message)))


def _who(credentials: Any) -> str:
    email = getattr(credentials, "service_account_email", None) or getattr(credentials, "_target_principal", None)
    return f" for {email}" if isinstance(email, str) and "@" in email else ""


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _first_line(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return _short(arg)


def _short(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


# ---------------------------------------------------------------------------- reading endpoints


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


# ---------------------------------------------------------------------------- grouping


def slug(display_name: str) -> str:
    """A model key from a display name: lower case ASCII letters, digits and '-'."""
    text = unicodedata.normalize("NFKD", display_name).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if text and not text[0].isalpha():
        text = f"model-{text}"  # `2024` would be a YAML number, not a name
    return text or "model"


@dataclass
class Group:
    key: str
    display_name: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # region -> the endpoint the model uses
    notes: list[str] = field(default_factory=list)

    @property
    def ids(self) -> dict[str, str]:
        return {region: endpoint.id for region, endpoint in self.endpoints.items()}


def group_endpoints(endpoints: list[Endpoint], regions: list[str]) -> list[Group]:
    """Endpoints with the same display name across regions -> one model, sorted by key.

    Only endpoints with a deployed model are used (the others could not answer); if a region
    has several endpoints with the same display name, the newest with a deployed model wins.
    """
    by_name: dict[str, list[Endpoint]] = {}
    for endpoint in endpoints:
        by_name.setdefault(endpoint.display_name, []).append(endpoint)
    groups: list[Group] = []
    taken: set[str] = set()
    for name in sorted(by_name, key=lambda n: (slug(n), n)):
        key = slug(name)
        n = 2
        while key in taken:
            key, n = f"{slug(name)}-{n}", n + 1
        taken.add(key)
        group = Group(key, name)
        order = {r: i for i, r in enumerate(regions)}
        members = sorted(by_name[name], key=lambda e: (order.get(e.region, len(order)), e.region))
        for region in dict.fromkeys(e.region for e in members):
            here = [e for e in members if e.region == region]
            usable = sorted((e for e in here if e.deployed_models), key=lambda e: (e.create_time, e.id), reverse=True)
            for endpoint in here:
                if not endpoint.deployed_models:
                    group.notes.append(f"{region}: endpoint {endpoint.id} has no deployed model: left out")
            if usable:
                group.endpoints[region] = usable[0]
                for other in usable[1:]:
                    group.notes.append(f"{region}: endpoint {other.id} has the same display name; using the "
                                       f"newer {usable[0].id}")
                chosen = usable[0]
                if chosen.dedicated_endpoint_enabled:
                    group.notes.append(f"{region}: endpoint {chosen.id} is a dedicated endpoint: Vertex serves it only "
                                       f"at {chosen.dedicated_endpoint_dns or 'its dedicated DNS name'} "
                                       f"(regions.{region}.host must be that name)")
                if chosen.private_service_connect and chosen.private_service_connect["enable_private_service_connect"]:
                    group.notes.append(f"{region}: endpoint {chosen.id} uses Private Service Connect: "
                                       f"regions.{region}.address must be a forwarding rule to its service attachment")
        groups.append(group)
    return groups


# ---------------------------------------------------------------------------- printing


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold an operator's long lines
    return yaml


def _quoted(value: str):
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    return DoubleQuotedScalarString(value)


def _model_node(group: Group, ids: dict[str, str]):
    from ruamel.yaml.comments import CommentedMap

    endpoints = CommentedMap((region, _quoted(endpoint_id)) for region, endpoint_id in ids.items())
    node = CommentedMap([("endpoints", endpoints)])
    return node


def render(project: str, regions: list[str], endpoints: list[Endpoint], groups: list[Group]) -> str:
    """The listing (as YAML comments) and a `models:` section ready for regions.yaml."""
    from ruamel.yaml.comments import CommentedMap

    out = io.StringIO()
    out.write(f"# Vertex AI endpoints in project {project}, region(s) {', '.join(regions)}\n")
    width = max((len(e.id) for e in endpoints), default=0)
    for region in regions:
        here = sorted((e for e in endpoints if e.region == region), key=lambda e: (e.display_name, e.id))
        out.write(f"#\n# {region}: {len(here)} endpoint(s)\n")
        for endpoint in here:
            deployed = "; ".join(m.describe() for m in endpoint.deployed_models) or "no deployed model"
            out.write(f"#   {endpoint.id:<{width}}  {_quote(endpoint.display_name)}  deployed: {deployed}\n")
            for line in endpoint.details():
                out.write(f"#   {'':<{width}}    {line}\n")
    notes = [note for group in groups for note in group.notes]
    if notes:
        out.write("#\n# notes:\n" + "".join(f"#   {note}\n" for note in notes))
    models = CommentedMap()
    column = 2 + max((len(g.key) for g in groups), default=0) + 3
    for group in groups:
        if group.endpoints:
            models[group.key] = _model_node(group, group.ids)
            models.yaml_add_eol_comment(f"display name {_quote(group.display_name)}", group.key, column=column)
    if not models:
        out.write("#\n# no endpoint with a deployed model: nothing for models:\n")
        return out.getvalue()
    out.write("#\n# for regions.yaml (every region must be defined under regions:, and exactly one model "
              "needs `default: true`):\n")
    _yaml().dump({"models": models}, out)
    return out.getvalue()


# ---------------------------------------------------------------------------- merging into regions.yaml


@dataclass
class MergeResult:
    text: str
    changed: bool
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_target(path: str | Path) -> tuple[str, Any]:
    """regions.yaml as text and round-trip data; the file need not be valid yet, only a mapping."""
    from ruamel.yaml.error import YAMLError

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DiscoveryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise DiscoveryError(f"{path} is not valid YAML: {_first_line(exc)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict) or not data["regions"]:
        raise DiscoveryError(f"{path} has no `regions:` mapping: define the regions (address of each) first")
    return text, data


def check_regions_defined(path: str | Path, data: Any, regions: list[str]) -> None:
    missing = [r for r in regions if r not in data["regions"]]
    if missing:
        raise DiscoveryError(f"{path} does not define region(s) {', '.join(missing)} under regions: (defined: "
                             f"{', '.join(map(str, data['regions']))}); add them (address, failover) first, or "
                             f"leave them out of --region")


def merge(path: str | Path, groups: list[Group]) -> MergeResult:
    """The groups merged into the file's models; comments, order and quoting kept; checked by parse_config."""
    from ruamel.yaml.comments import CommentedMap

    original, data = read_target(path)
    check_regions_defined(path, data, sorted({r for g in groups for r in g.endpoints}))
    result = MergeResult(original, False)
    models = data.get("models")
    fresh = not isinstance(models, dict) or not models  # no models yet: built apart, put in place at the end
    if fresh:
        models = CommentedMap()
    separate = not fresh and _blank_line_after(models, original)
    indent = _guess_indent(original)[0]
    owner: dict[str, str] = {}
    for name, model in models.items():
        for endpoint_id in (model.get("endpoints") or {}).values() if isinstance(model, dict) else ():
            owner.setdefault(str(endpoint_id), str(name))

    added: list[str] = []
    for group in groups:
        if not group.endpoints:
            continue
        ids = group.ids
        target = next((owner[i] for i in ids.values() if i in owner), None)
        if target is None and group.key in models:
            target = group.key
        if target is None:  # a new model: none of its ids is in use
            free = dict(ids)
            node = _model_node(group, free)
            _append(models, group.key, node, separate=separate)
            models.yaml_add_eol_comment(f"display name {_quote(group.display_name)} (added by discover)", group.key,
                                        column=indent + len(group.key) + 3)
            for endpoint_id in free.values():
                owner[endpoint_id] = group.key
            added.append(group.key)
            result.changes.append(f"added model {group.key} ({', '.join(f'{r}: {i}' for r, i in free.items())})")
            continue
        model = models[target]
        if not isinstance(model, dict) or model.get("publisher_model"):
            result.warnings.append(f"models.{target} is a publisher model (or not a mapping): not touched "
                                   f"(discovered {group.display_name!r})")
            continue
        endpoints = model.get("endpoints")
        if not isinstance(endpoints, dict):
            endpoints = CommentedMap()
            _append(model, "endpoints", endpoints)
        for region, endpoint_id in ids.items():
            if owner.get(endpoint_id, target) != target:
                result.warnings.append(f"models.{target}.endpoints.{region}: not set to {endpoint_id}, which "
                                       f"models.{owner[endpoint_id]} already uses")
                continue
            old = endpoints.get(region)
            if old is not None and str(old) == endpoint_id:
                continue
            if old is None:
                _append(endpoints, region, _quoted(endpoint_id))
                result.changes.append(f"models.{target}.endpoints.{region}: added {endpoint_id}")
            else:
                endpoints[region] = _quoted(endpoint_id)
                owner.pop(str(old), None)
                result.changes.append(f"models.{target}.endpoints.{region}: {old} -> {endpoint_id}")
            owner[endpoint_id] = target

    if added and not any(isinstance(m, dict) and m.get("default") is True for m in models.values()):
        models[added[0]].insert(0, "default", True)
        result.changes.append(f"models.{added[0]}: default: true (the file had no default model)")

    if not result.changes:
        return result
    if fresh:
        _put_models(data, models, original)
    out = io.StringIO()
    yaml = _yaml()
    yaml.indent(*_guess_indent(original))
    yaml.dump(data, out)
    result.text, result.changed = out.getvalue(), True
    try:
        parse_config(result.text, str(path))
    except ConfigError as exc:
        lines = "; ".join(str(p) for p in exc.problems)
        raise DiscoveryError(f"not writing {path}: the merged file would not be valid: {lines}") from exc
    return result


def _blank_line_after(models: Any, text: str) -> bool:
    """Whether the operator separates the entries of this mapping with blank lines (then a new one gets one too)."""
    lines = text.splitlines()
    for key in list(models.keys())[1:]:
        try:
            at = models.lc.key(key)[0] - 1  # 0-based line above the key
        except (AttributeError, KeyError, TypeError):
            return False
        while at >= 0 and lines[at].lstrip().startswith("#"):
            at -= 1
        if at >= 0 and not lines[at].strip():
            return True
    return False


def _put_models(data: Any, models: Any, original: str) -> None:
    """A new `models:` block in place of a missing or empty one, keeping the comments around it."""
    if "models" not in data:
        _append(data, "models", models, separate=_blank_line_after(data, original))
        return
    entry = data.ca.items.get("models")  # `models: {}   # fill me` and the lines after it
    token = entry[2] if entry and len(entry) > 2 else None
    if token is not None:
        entry[2] = None
    data["models"] = models
    if token is None:
        return
    head, _, rest = token.value.partition("\n")
    if head.strip():
        data.yaml_add_eol_comment(head.strip().removeprefix("#").strip(), "models")
    if rest:
        _attach_trailing(data, "models", rest)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file in one step (serve watches it: it never sees half a file)."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append(mapping: Any, key: str, value: Any, separate: bool = False) -> None:
    """mapping[key] = value at the end, moving the comment lines that trailed the old last entry after it.

    ruamel attaches the blank lines and comments that follow a block (e.g. `# policy section`
    before the next top-level key, or `# legacy` before the next model) to the deepest last
    entry of that block; a plain append would leave them above the new entry. `separate`:
    put a blank line above the new entry (models written with blank lines between them).
    """
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    trailing = None
    if len(mapping) and not mapping.fa.flow_style():
        trailing = _detach_trailing(mapping)
    mapping[key] = value
    if trailing:
        _attach_trailing(mapping, key, trailing)
    if separate:  # a blank line above the new key
        mapping.ca.items.setdefault(key, [None, None, None, None])[1] = [CommentToken("\n", CommentMark(0), None)]


def _attach_trailing(mapping: Any, key: str, text: str) -> None:
    """Comment lines (ruamel's token text) after the deepest last entry under mapping[key]."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    holder, slot_key = mapping, key
    while isinstance(holder[slot_key], (CommentedMap, CommentedSeq)) and len(holder[slot_key]) \
            and not holder[slot_key].fa.flow_style():
        holder = holder[slot_key]
        slot_key = list(holder.keys())[-1] if isinstance(holder, CommentedMap) else len(holder) - 1
    position = 2 if isinstance(holder, CommentedMap) else 0
    entry = holder.ca.items.setdefault(slot_key, [None, None, None, None])
    existing = entry[position].value if entry[position] is not None else "\n"
    entry[position] = CommentToken(existing + text, start_mark=CommentMark(0), end_mark=None)


def _detach_trailing(node: Any) -> str | None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, (CommentedMap, CommentedSeq)) or not len(node) or node.fa.flow_style():
        return None
    last = list(node.keys())[-1] if isinstance(node, CommentedMap) else len(node) - 1
    found = _detach_trailing(node[last])
    if found:
        return found
    position = 2 if isinstance(node, CommentedMap) else 0
    entry = node.ca.items.get(last)
    if not entry or len(entry) <= position or entry[position] is None:
        return None
    token = entry[position]
    head, _, rest = token.value.partition("\n")
    if not rest:
        return None
    if head.strip():
        token.value = head + "\n"
    else:
        entry[position] = None
    return rest


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation as the operator wrote it, for ruamel's dumper."""
    mapping = sequence = offset = None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for previous, line in zip(lines, lines[1:]):
        head = re.sub(r"\s+#.*$", "", previous).rstrip()
        if not head.endswith(":") or head.lstrip().startswith("- "):
            continue
        before, after = len(previous) - len(previous.lstrip()), len(line) - len(line.lstrip())
        if line.lstrip().startswith("- ") and sequence is None and after >= before:
            offset = after - before
            sequence = offset + 2
        elif after > before and mapping is None:
            mapping = after - before
    return mapping or 2, max(sequence or 2, (offset or 0) + 2), offset or 0


# ---------------------------------------------------------------------------- validate --online


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


# ---------------------------------------------------------------------------- the commands


def validate_online_command(file: str, config: RegionConfig, *, api_endpoint: str | None = None,
                            out: TextIO = sys.stdout, credentials: Any = None) -> int:
    """`validate --online` after the offline check passed: 0 when every endpoint is there and deployed."""
    try:
        if credentials is None and os.environ.get(ANONYMOUS_ENV) == "1":
            credentials = credentials_for_cli()
        _aiplatform()
        report = validate_online(config, file, credentials=credentials, api_endpoint=api_endpoint)
    except DiscoveryError as exc:
        print(f"{file}: online check failed: {exc}", file=out)
        return 1
    for warning in report.warnings:
        print(f"{file}: warning: {warning}", file=out)
    if report.problems:
        print(f"{file}: online: {len(report.problems)} problem(s) in project {config.project}:", file=out)
        for problem in report.problems:
            print(f"  {problem}", file=out)
        return 1
    regions = len({r for m in config.models.values() for r in m.endpoints})
    print(f"{file}: online: OK: {report.checked} endpoint(s) in {regions} region(s) of project {config.project} "
          f"exist and have a deployed model", file=out)
    return 0


def discover_command(args: argparse.Namespace, *, credentials: Any = None) -> int:
    """`python -m control_plane discover`."""
    try:
        regions = [r.strip() for value in args.region or [] for r in value.split(",") if r.strip()]
        project = args.project
        if args.write:
            _text, data = read_target(args.write)
            regions = regions or [str(r) for r in data["regions"]]
            check_regions_defined(args.write, data, regions)
            file_project = str(data.get("project") or "")
            if project and file_project and project != file_project:
                print(f"discover: warning: --project {project} but {args.write} says project {file_project}",
                      file=sys.stderr)
            project = project or file_project
        if not project:
            print("discover: --project is required (or --write FILE whose project: is set)", file=sys.stderr)
            return 2
        if not regions:
            print("discover: give at least one --region (or --write FILE to use its regions)", file=sys.stderr)
            return 2
        regions = list(dict.fromkeys(regions))
        for region in regions:
            check_region_name(region)
        _aiplatform()
        if credentials is None:
            credentials = credentials_for_cli(args.credentials)
        endpoints = list_endpoints(project, regions, credentials=credentials, api_endpoint=args.api_endpoint,
                                   display_name=args.display_name)
        groups = group_endpoints(endpoints, regions)
        sys.stdout.write(render(project, regions, endpoints, groups))
        if args.display_name is not None and not endpoints:
            print(f"discover: no endpoint named {args.display_name!r} in project {project} region(s) "
                  f"{', '.join(regions)}", file=sys.stderr)
            return 1
        if args.write:
            result = merge(args.write, groups)
            for warning in result.warnings:
                print(f"discover: warning: {warning}", file=sys.stderr)
            if not result.changed:
                print(f"discover: {args.write}: already up to date", file=sys.stderr)
                return 0
            write_atomically(args.write, result.text)
            print(f"discover: {args.write}: {len(result.changes)} change(s):", file=sys.stderr)
            for change in result.changes:
                print(f"  {change}", file=sys.stderr)
    except DiscoveryError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return 1
    return 0


def add_discover_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="Vertex project id or number (default: the --write file's project)")
    parser.add_argument("--region", action="append", metavar="REGION",
                        help="a region to list (repeat, or comma-separate; default: the --write file's regions)")
    parser.add_argument("--display-name", metavar="NAME", help="only endpoints with exactly this display name")
    parser.add_argument("--write", metavar="FILE",
                        help="merge the models into this regions.yaml (comments and order kept; every region "
                             "must already be defined there)")
    parser.add_argument("--api-endpoint", metavar="URL",
                        help="Vertex API root, {region} is substituted (default https://{region}-aiplatform.googleapis.com)")
    parser.add_argument("--credentials", default="adc", metavar="adc|service_account:PATH",
                        help="Google credentials for the API calls (default adc)")
