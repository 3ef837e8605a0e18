"""regions.yaml: typed models, loading, and every rule from SPEC "Rules".

Structural checks (types, unknown keys, durations, addresses) come from pydantic;
cross-references (a model naming an unknown region, a failover list naming
itself...) are checked on the raw data so that one run reports every problem,
not just the first that stopped the parse.

fields.py       field types and bounds (durations, addresses, projects, files), the strict base
policy.py       policy: and its overrides
regions.py      regions: (Vertex regions and custom backends)
models.py       models: and openai:
auth.py         auth: and its profiles
clients.py      clients: (who may call)
observability.py  observability: (access log, tracing, load reports)
region_config.py  RegionConfig, the whole file, and what is derived from it
rules.py        the cross-reference rules
problems.py     Problem, ConfigError, pydantic's errors in the project's words
parse.py        load_config / parse_config: YAML, models, rules, every problem at once
"""

from .auth import DEFAULT_PROFILE, Auth, AuthProfile
from .clients import (
    GOOGLE_ISSUER,
    GOOGLE_JWKS_URI,
    CaFile,
    ClientGrant,
    Clients,
    ClientTls,
    JwtIssuer,
    PemFile,
    check_jwks_file,
    check_pem_file,
)
from .fields import (
    MAX_DURATION_SECONDS,
    Address,
    Duration,
    check_address,
    check_ca_file,
    check_hostname,
    check_ip,
    check_project,
    is_ip,
    key_pair_problem,
    parse_duration,
)
from .models import PUBLISHER_VERBS, STREAMING_VERBS, VERBS, Model, OpenAI
from .observability import AccessLog, LoadReports, Observability, Tracing
from .parse import load_config, parse_config, parse_config_bytes
from .policy import OutlierDetection, Policy, PolicyOverride, StatusCode
from .problems import ConfigError, Problem
from .region_config import Listener, RegionConfig
from .regions import PATH_PLACEHOLDERS, BackendCredential, HealthCheck, Region, check_upstream_path
from .rules import is_name

__all__ = [
    "DEFAULT_PROFILE", "GOOGLE_ISSUER", "GOOGLE_JWKS_URI", "MAX_DURATION_SECONDS", "PATH_PLACEHOLDERS",
    "PUBLISHER_VERBS", "STREAMING_VERBS", "VERBS",
    "AccessLog", "Address", "Auth", "AuthProfile", "BackendCredential", "CaFile", "ClientGrant", "ClientTls",
    "Clients", "ConfigError", "Duration", "HealthCheck", "JwtIssuer", "Listener", "LoadReports", "Model",
    "Observability", "OpenAI", "OutlierDetection", "PemFile", "Policy", "PolicyOverride", "Problem", "Region",
    "RegionConfig", "StatusCode", "Tracing",
    "check_address", "check_ca_file", "check_hostname", "check_ip", "check_jwks_file", "check_pem_file",
    "check_project", "check_upstream_path", "is_ip", "is_name", "key_pair_problem", "load_config", "parse_config",
    "parse_config_bytes", "parse_duration",
]
