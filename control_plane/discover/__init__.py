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

Modules, one concern each: client (the gapic client, credentials, reading endpoints),
messages (a failed call -> one line), grouping, render (the printed `models:` section),
merge (`--write`, keeping comments), online (`validate --online`), cli (the commands and
their arguments).
"""

from .cli import discover_command, validate_online_command
from .client import (
    ANONYMOUS_ENV,
    CALL_TIMEOUT,
    DEFAULT_API_ENDPOINT,
    INSTALL_HINT,
    DeployedModel,
    DiscoveryError,
    Endpoint,
    api_url,
    check_region_name,
    credentials_for_cli,
    list_endpoints,
    load_credentials,
)
from .grouping import Group, group_endpoints, slug
from .merge import MergeResult, _guess_indent, merge, read_target, write_atomically
from .messages import ApiProblem, explain
from .online import OnlineReport, validate_online
from .render import render

__all__ = [
    "ANONYMOUS_ENV", "CALL_TIMEOUT", "DEFAULT_API_ENDPOINT", "INSTALL_HINT", "ApiProblem", "DeployedModel",
    "DiscoveryError", "Endpoint", "Group", "MergeResult", "OnlineReport", "_guess_indent",
    "api_url", "check_region_name", "credentials_for_cli", "discover_command", "explain", "group_endpoints",
    "list_endpoints", "load_credentials", "merge", "read_target", "render", "slug", "validate_online",
    "validate_online_command", "write_atomically",
]
