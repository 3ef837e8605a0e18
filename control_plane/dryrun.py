"""`validate --show`: what the control plane would push, per region, without serving anything.

For each region, one Envoy with the config's default listener (the node group a
`bootstrap --region R` Envoy is in): per xDS type, every resource name with its version
(the content hash the server sends, see snapshot.py), the referenced token secrets (their
content is fetched at run time and never shown), and per model the failover chain and the
upstream each region of the chain is reached at.

With an old file (`--against`), a diff per region instead of the full listing: resources
added (+), changed (~ old -> new version) and removed (-), and how many are unchanged, so
an operator sees exactly what an edit will push before saving it over the live file.

Output is deterministic: regions and models in file order, types in push order, names sorted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import TextIO

from .config import ConfigError, RegionConfig, load_config
from .resources import Build, NodeGroup, attempts, build_serialized, credential_secret_name, members, upstream_path
from .resources.clients import grant_members
from .snapshot import InconsistentSnapshot, Interner, Snapshot
from .xds_types import PUSH_ORDER, SECRET_TYPE, short

# The types the snapshot holds (secrets are per auth profile, added at run time), in push order.
TYPES = tuple(t for t in PUSH_ORDER if t != SECRET_TYPE)
LABELS = {  # short type name -> the xDS API that carries it
    "Secret": "SDS", "Cluster": "CDS", "ClusterLoadAssignment": "EDS", "Listener": "LDS", "RouteConfiguration": "RDS",
}


@dataclass(frozen=True)
class Upstream:
    region: str
    address: str
    port: int
    tls: bool
    host: str
    path: str  # the path an attempt in this region is rewritten to ({verb}: the client's)
    kind: str = "vertex"  # or custom (a custom backend)
    credential: str = ""  # what an attempt carries, described (never a value)
    tiers: tuple[str, ...] = ()  # capacity tiers tried in this region, in order (models with `tiers`)


def upstream(config: RegionConfig, model: str, region: str) -> Upstream:
    """Where an attempt for `model` in `region` (a Vertex region or a custom backend) goes."""
    spec = config.regions[region]
    return Upstream(region, spec.address, spec.port, spec.tls, config.host_of(region),
                    upstream_path(config, model, region), spec.kind, describe_credential(config, model, region),
                    tuple(t for _, t in attempts(config, model, [region]) if t))


def upstream_fields(u: Upstream) -> dict:
    """An upstream as JSON (validate --show --json, /debug/config): `tiers` only where a model sets them."""
    return {k: v for k, v in asdict(u).items() if k != "region" and (k != "tiers" or v)}


def describe_credential(config: RegionConfig, model: str, region: str) -> str:
    key = config.credential_for(model, region)
    if key is None:
        return "none"
    if not key.startswith("backend/"):
        return f"access_token {key}"
    credential = config.backend_credential(region)
    if credential.type == "header":
        return f"header {credential.header}"
    return f"id_token for {config.audience_of(region)}"


@dataclass(frozen=True)
class ModelPlan:
    default: bool
    chain: list[str]  # regions used (failover: in order); empty: the route answers 503
    upstreams: list[Upstream]
    strategy: str = "failover"
    weights: dict[str, int] | None = None
    # `clients:` grants that may call the model -> the regions they are served in (None: no
    # `clients:`, anyone who reaches the listener may call)
    callers: dict[str, list[str]] | None = None


@dataclass
class EnvoyPlan:
    region: str
    listener: str
    resources: dict[str, dict[str, str]]  # short type -> name -> version
    secrets: list[str]
    models: dict[str, ModelPlan] = field(default_factory=dict)

    def flat(self) -> dict[tuple[str, str], str]:
        return {(kind, name): version for kind, of_type in self.resources.items() for name, version in of_type.items()}

    def count(self) -> int:
        return sum(len(of_type) for of_type in self.resources.values())


class PlanError(Exception):
    pass


def plan(config: RegionConfig) -> dict[str, EnvoyPlan]:
    """region -> what an Envoy of that region (default listener) is served."""
    interner = Interner()
    build = Build(config)  # shared by every region's Envoy, as the snapshot cache's is
    out: dict[str, EnvoyPlan] = {}
    for region in config.vertex_regions:  # custom backends have no Envoy of their own
        group = NodeGroup(region, config.listener.address, config.listener.port)
        try:
            snapshot = Snapshot.build(build_serialized(build, group), interner)
        except InconsistentSnapshot as exc:
            raise PlanError(f"cannot build a consistent snapshot for region {region}: {exc}") from None
        envoy = EnvoyPlan(
            region=region, listener=f"{group.listen_address}:{group.listen_port}",
            resources={short(t): {r.name: r.version for r in snapshot.select(t)} for t in TYPES},
            secrets=[])
        profiles: set[str] = set()
        for model, spec in config.models.items():
            chain = members(build, model, region)
            profiles.update(config.credential_for(model, r) for r in chain)
            envoy.models[model] = ModelPlan(default=spec.default, chain=chain, upstreams=[
                upstream(config, model, r) for r in chain],
                strategy=spec.strategy, weights=dict(spec.weights) or None, callers=_callers(build, model, region))
        envoy.secrets = sorted(credential_secret_name(p) for p in profiles if p is not None)
        out[region] = envoy
    return out


def _callers(build: Build, model: str, region: str) -> dict[str, list[str]] | None:
    config = build.config
    if config.clients is None:
        return None
    return {name: grant_members(build, grant, model, region) for name, grant in config.clients.allow.items()
            if grant.models is None or model in grant.models}


@dataclass
class Change:
    sign: str  # "+" added, "~" changed, "-" removed
    kind: str  # short type name
    name: str
    old_version: str | None
    version: str | None


@dataclass
class RegionDiff:
    status: str  # "changed" | "unchanged" | "added" (a new region) | "removed" (its Envoys get no updates)
    changes: list[Change]
    unchanged: int

    def counts(self) -> dict[str, int]:
        return {sign: sum(1 for c in self.changes if c.sign == sign) for sign in "~+-"}


def diff(old: EnvoyPlan | None, new: EnvoyPlan | None) -> RegionDiff:
    before = old.flat() if old else {}
    after = new.flat() if new else {}
    order = {short(t): i for i, t in enumerate(TYPES)}
    changes = []
    for key in sorted(set(before) | set(after), key=lambda k: (order.get(k[0], 99), k[0], k[1])):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        sign = "+" if was is None else "-" if now is None else "~"
        changes.append(Change(sign, key[0], key[1], was, now))
    unchanged = sum(1 for k in after if before.get(k) == after[k])
    if old is None:
        status = "added"
    elif new is None:
        status = "removed"
    else:
        status = "changed" if changes else "unchanged"
    return RegionDiff(status, changes, unchanged)


# ---------------------------------------------------------------------- output


def show(path: str, config: RegionConfig, against: str | None = None, as_json: bool = False,
         out: TextIO | None = None) -> int:
    """Print the plan for `config` (diffed against the file `against` if given); the exit code."""
    out = out or sys.stdout
    old_config = None
    if against is not None:
        try:
            old_config = load_config(against)
        except ConfigError as exc:
            print(f"{against}: invalid, cannot diff against it: {len(exc.problems)} problem(s):", file=out)
            for problem in exc.problems:
                print(f"  {problem}", file=out)
            return 1
    try:
        new_plan = plan(config)
    except PlanError as exc:
        print(f"{path}: {exc}", file=out)
        return 1
    old_plan = None
    if old_config is not None:
        try:
            old_plan = plan(old_config)
        except PlanError as exc:
            print(f"{against}: invalid, cannot diff against it: {exc}", file=out)
            return 1
    if as_json:
        document = to_json(path, config, new_plan, against, old_config, old_plan)
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(to_text(config, new_plan, old_config, old_plan))
    return 0


def _regions(new_plan: dict[str, EnvoyPlan], old_plan: dict[str, EnvoyPlan] | None) -> list[str]:
    """The new file's regions in its order, then regions only the old file had."""
    return [*new_plan, *(r for r in (old_plan or {}) if r not in new_plan)]


def to_json(path: str, config: RegionConfig, new_plan: dict[str, EnvoyPlan], against: str | None,
            old_config: RegionConfig | None, old_plan: dict[str, EnvoyPlan] | None) -> dict:
    regions = {}
    for region in _regions(new_plan, old_plan):
        envoy = new_plan.get(region)
        entry: dict = {
            "listener": envoy.listener if envoy else None,
            "resources": envoy.resources if envoy else {},
            "secrets": envoy.secrets if envoy else [],
            "models": {m: {"default": p.default, "chain": p.chain, "strategy": p.strategy, "weights": p.weights,
                           **({"callers": p.callers} if p.callers is not None else {}),
                           "upstreams": {u.region: upstream_fields(u) for u in p.upstreams}}
                       for m, p in (envoy.models if envoy else {}).items()},
        }
        if old_plan is not None:
            old = old_plan.get(region)
            changes = diff(old, envoy)
            kinds = {"+": "added", "~": "changed", "-": "removed"}
            entry["diff"] = {
                "status": changes.status,
                **{kinds[s]: [{"type": c.kind, "name": c.name,
                               **({"old_version": c.old_version} if s != "+" else {}),
                               **({"version": c.version} if s != "-" else {})}
                              for c in changes.changes if c.sign == s] for s in "+~-"},
                "unchanged": changes.unchanged,
                "models": _model_changes(old, envoy),
            }
        regions[region] = entry
    return {
        "config": path,
        "version": config.version,
        "against": None if old_config is None else {"config": against, "version": old_config.version},
        "regions": regions,
    }


def _model_changes(old: EnvoyPlan | None, new: EnvoyPlan | None) -> dict[str, list[str]]:
    before, after = (old.models if old else {}), (new.models if new else {})
    return {
        "added": [m for m in after if m not in before],
        "removed": [m for m in before if m not in after],
        "chain_changed": [m for m in after if m in before and before[m].chain != after[m].chain],
        "upstream_changed": [m for m in after if m in before and before[m].upstreams != after[m].upstreams],
    }


def _table(rows: list[list[str]], indent: str) -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip()
            for row in rows]


def _chain(chain: list[str]) -> str:
    return " -> ".join(chain) if chain else "not served from this region or its failover regions (503)"


def to_text(config: RegionConfig, new_plan: dict[str, EnvoyPlan], old_config: RegionConfig | None,
            old_plan: dict[str, EnvoyPlan] | None) -> str:
    lines: list[str] = []
    if old_config is not None:
        lines.append(f"changes from version {old_config.version} to {config.version}, per region "
                     "(+ added, ~ changed old -> new, - removed):")
    for region in _regions(new_plan, old_plan):
        envoy = new_plan.get(region)
        old = old_plan.get(region) if old_plan is not None else None
        lines.append("")
        if old_plan is None:
            lines.extend(_listing(envoy))
        else:
            lines.extend(_diff_lines(region, old, envoy))
        if envoy is not None:
            lines.extend(_models(envoy, old))
    return "\n".join(lines) + "\n"


def _listing(envoy: EnvoyPlan) -> list[str]:
    lines = [f"Envoy in {envoy.region} (listener {envoy.listener}): {envoy.count()} resources"]
    rows = [[LABELS[kind], name, version] for kind, of_type in envoy.resources.items()
            for name, version in sorted(of_type.items())]
    rows += [["SDS", name, "(access token, fetched at run time; not shown)" if name.startswith("token/") else
              "(custom backend credential, read at run time; not shown)"] for name in envoy.secrets]
    return lines + _table(rows, "  ")


def _diff_lines(region: str, old: EnvoyPlan | None, new: EnvoyPlan | None) -> list[str]:
    changes = diff(old, new)
    counts = changes.counts()
    listener = f" (listener {(new or old).listener})"
    head = f"Envoy in {region}{listener}: "
    if changes.status == "added":
        head += f"new region, {counts['+']} resources to push"
    elif changes.status == "removed":
        head += (f"region removed ({counts['-']} resources): its Envoys are refused as an unknown region; "
                 "running ones keep their last config, restarted ones get nothing")
    elif changes.status == "unchanged":
        head += f"no change ({changes.unchanged} unchanged)"
    else:
        head += (f"{counts['~']} changed, {counts['+']} added, {counts['-']} removed, "
                 f"{changes.unchanged} unchanged")
    rows = []
    for c in changes.changes:
        if c.sign == "~":
            rows.append([c.sign, LABELS[c.kind], c.name, f"{c.old_version} -> {c.version}"])
        else:
            rows.append([c.sign, LABELS[c.kind], c.name, c.version or c.old_version or ""])
    old_secrets, new_secrets = set(old.secrets if old else ()), set(new.secrets if new else ())
    rows += [["+", "SDS", name, "(access token, fetched at run time)"] for name in sorted(new_secrets - old_secrets)]
    rows += [["-", "SDS", name, ""] for name in sorted(old_secrets - new_secrets)]
    return [head, *_table(rows, "  ")]


def _models(envoy: EnvoyPlan, old: EnvoyPlan | None) -> list[str]:
    lines = ["  models:"]
    for model, p in envoy.models.items():
        was = old.models.get(model) if old else None
        note = ""
        if old is not None and was is None:
            note = "  (new)"
        elif was is not None and was.chain != p.chain:
            note = f"  (was: {_chain(was.chain)})"
        how = _chain(p.chain) if p.strategy == "failover" else \
            f"{p.strategy} over " + (", ".join(f"{r}={p.weights.get(r, 0)}" for r in p.weights) if p.weights
                                     else ", ".join(p.chain))
        lines.append(f"    {model}{' (default)' if p.default else ''}: {how}{note}")
        if p.callers is not None:
            who = "; ".join(f"{g} -> {_chain(r) if r else 'no region here (403)'}" for g, r in p.callers.items())
            lines.append(f"      callers: {who or 'nobody (every identity gets 403)'}")
        rows = []
        old_upstreams = {u.region: u for u in was.upstreams} if was else {}
        for u in p.upstreams:
            rows.append(_upstream_row(u.region, u))
            previous = old_upstreams.get(u.region)
            if previous is not None and previous != u:
                rows.append(_upstream_row("  was", previous))
        lines.extend(_table(rows, "      "))
    if old is not None:
        lines.extend(f"    {model}: removed" for model in old.models if model not in envoy.models)
    return lines



def _upstream_row(label: str, u: Upstream) -> list[str]:
    custom = f"custom backend, credential {u.credential}" if u.kind == "custom" else ""
    tiers = f"tiers {', '.join(u.tiers)}" if u.tiers else ""
    return [label, f"{u.address}:{u.port}", "tls" if u.tls else "plaintext", f"host {u.host}", f"path {u.path}",
            "  ".join(x for x in (custom, tiers) if x)]
