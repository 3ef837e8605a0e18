"""A failed Vertex AI call -> one line an operator can act on (who, what, where, why)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


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
        from .client import api_url  # (here: the client module uses this one)
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
