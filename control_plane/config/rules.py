"""Rules that relate keys to each other (SPEC "Rules"): checked on the raw data, tolerant of a
structurally broken file, so that one run reports every problem."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from .auth import DEFAULT_PROFILE
from .clients import GOOGLE_ISSUER
from .fields import is_hostname, is_ip
from .regions import check_upstream_path, default_host

# A region, model, JWT issuer or grant name: a letter or digit, then letters, digits, '-', '_', '.'.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_name(text: str) -> bool:
    """A name of a region, model, profile or grant: what Envoy's names and metrics can carry."""
    return bool(_NAME.fullmatch(text))


def _alike_in_stats(where: tuple, kind: str, names: object) -> list[tuple[tuple, str]]:
    """Names (in a cluster's name) that differ only in '.' and '_': Envoy's stats write a '.' of a
    cluster name as '_' (resources/names.stat_name), so their series would merge."""
    out: list[tuple[tuple, str]] = []
    seen: dict[str, str] = {}
    for name in names if isinstance(names, dict) else ():
        other = seen.setdefault(str(name).replace(".", "_"), str(name))
        if other != str(name):
            out.append(((*where, name), f"{kind} names {other!r} and {name!r} differ only in '.' and '_': "
                                         "Envoy's metrics would not tell them apart (they write '.' as '_')"))
    return out


def _is_jwks_uri(uri: str) -> bool:
    """What Envoy's jwt_authn takes as a provider's remote JWKS URI, and a cluster can reach."""
    if not re.fullmatch(r"https?://[^/\s:?#]+(:[0-9]{1,5})?(/[^\s?#]*)?(\?[^\s#]*)?", uri):
        return False
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return (port is None or 0 < port < 65536) and (is_ip(host) or is_hostname(host))


def cross_reference_problems(raw: dict) -> list[tuple[tuple, str]]:
    """Rules that relate keys to each other; tolerant of a structurally broken file."""
    out: list[tuple[tuple, str]] = _client_problems(raw)
    regions = raw.get("regions")
    models = raw.get("models")
    region_names = list(regions) if isinstance(regions, dict) else []
    known = ", ".join(map(str, region_names)) or "none"

    if "regions" in raw and isinstance(regions, dict) and not regions:
        out.append((("regions",), "no regions defined"))
    custom = {name for name, region in (regions.items() if isinstance(regions, dict) else ())
              if isinstance(region, dict) and region.get("kind") == "custom"}
    out += _alike_in_stats(("regions",), "region", regions)
    for name, region in (regions or {}).items() if isinstance(regions, dict) else []:
        if not is_name(str(name)):
            out.append((("regions", name), f"bad region name {name!r}"))
        if isinstance(region, dict):
            out += _backend_kind_problems(name, region, name in custom)
            host = default_host(str(name))
            if name not in custom and region.get("host") is None and is_name(str(name)) and not is_hostname(host):
                out.append((("regions", name), f"the region's default host {host!r} is not a DNS name (a label is "
                                               "at most 63 letters, digits and '-'): give `host:`"))
        failover = region.get("failover") if isinstance(region, dict) else None
        if not isinstance(failover, list):
            continue
        seen: set = set()
        for i, target in enumerate(failover):
            loc = ("regions", name, "failover", i)
            if not isinstance(target, str):
                continue  # pydantic reports the type; a nested list is unhashable below
            if target == name:
                out.append((loc, f"region {name!r} cannot fail over to itself"))
            elif target not in region_names:
                out.append((loc, f"unknown region {target!r} (defined: {known})"))
            elif target in seen:
                out.append((loc, f"region {target!r} listed twice"))
            seen.add(target)

    auth = raw.get("auth") if isinstance(raw.get("auth"), dict) else {}
    profiles = auth.get("profiles") if isinstance(auth.get("profiles"), dict) else {}
    if DEFAULT_PROFILE in profiles:
        out.append((("auth", "profiles", DEFAULT_PROFILE), "'default' names the top-level auth; pick another name"))
    for section, entries in (("regions", regions), ("models", models)):
        for name, entry in entries.items() if isinstance(entries, dict) else []:
            wanted = entry.get("auth") if isinstance(entry, dict) else None
            if isinstance(wanted, str) and wanted != DEFAULT_PROFILE and wanted not in profiles:
                out.append(((section, name, "auth"), f"unknown auth profile {wanted!r} "
                                                     f"(defined under auth.profiles: {', '.join(profiles) or 'none'})"))

    if "models" in raw and isinstance(models, dict) and not models:
        out.append((("models",), "no models defined"))
    if not isinstance(models, dict):
        return out
    defaults = [name for name, m in models.items() if isinstance(m, dict) and m.get("default") is True]
    if models and not defaults:
        out.append((("models",), "no default model: mark exactly one model `default: true` (it serves POST /predict)"))
    for extra in defaults[1:]:
        out.append((("models", extra, "default"), f"more than one default model ({', '.join(defaults)})"))

    owner_of_id: dict[str, str] = {}
    out += _alike_in_stats(("models",), "model", models)
    for name, model in models.items():
        if not is_name(str(name)):
            out.append((("models", name), f"bad model name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(model, dict):
            continue
        endpoints, publisher = model.get("endpoints"), model.get("publisher_model")
        if not endpoints and not publisher:
            out.append((("models", name), "needs `endpoints:` (region -> endpoint id) or `publisher_model:`"))
        if endpoints and publisher:
            out.append((("models", name), "give either `endpoints:` or `publisher_model:`, not both"))
        if publisher is not None and not re.fullmatch(r"[a-z0-9-]+/[A-Za-z0-9._@-]+", str(publisher)):
            out.append((("models", name, "publisher_model"), f"bad publisher model {publisher!r}: expected PUBLISHER/MODEL"))
        if publisher and not model.get("regions"):
            out.append((("models", name, "regions"), "a publisher model needs `regions:`"))
        served = list(endpoints) if isinstance(endpoints, dict) and endpoints else \
            [r for r in model.get("regions") or [] if isinstance(r, str)] if isinstance(model.get("regions"), list) else []
        weights = model.get("weights")
        if model.get("strategy") == "weighted":
            if not isinstance(weights, dict) or not weights:
                out.append((("models", name, "weights"), "strategy weighted needs `weights:` (region -> weight)"))
            else:
                for region in served:
                    if region not in weights:
                        out.append((("models", name, "weights"), f"no weight for region {region!r}, which "
                                                                 f"serves this model (0 drains it)"))
                if all(w == 0 for w in weights.values() if isinstance(w, int)):
                    out.append((("models", name, "weights"), "every weight is 0: nothing would serve the model"))
        elif weights:
            out.append((("models", name, "weights"), "weights apply only with `strategy: weighted`"))
        for region in weights if isinstance(weights, dict) else []:
            if region not in served:
                out.append((("models", name, "weights", region), f"region {region!r} does not serve this model"))
        tiers = model.get("tiers")
        if isinstance(tiers, dict) and tiers:
            if model.get("strategy") == "least_request":
                out.append((("models", name, "tiers"), "tiers apply with strategy failover or weighted"))
            for region, order in tiers.items():
                if region not in served:
                    out.append((("models", name, "tiers", region), f"region {region!r} does not serve this model"))
                if isinstance(order, list) and len(order) != len(set(map(str, order))):
                    out.append((("models", name, "tiers", region), "a tier is listed twice"))
        listed_before: list = []
        for i, region in enumerate(model.get("regions") or []) if isinstance(model.get("regions"), list) else []:
            if region not in region_names:
                out.append((("models", name, "regions", i), f"unknown region {region!r} (defined: {known})"))
            elif region in listed_before:
                out.append((("models", name, "regions", i), f"region {region!r} listed twice"))
            listed_before.append(region)
        listed = model.get("regions") if publisher and isinstance(model.get("regions"), list) else []
        for i, region in enumerate(listed):
            if isinstance(region, str) and region in custom and not regions[region].get("path"):
                out.append((("models", name, "regions", i), f"custom backend {region!r} serves this publisher model "
                                                            f"but has no `path:` (regions.{region}.path)"))
        for region, endpoint_id in (endpoints or {}).items() if isinstance(endpoints, dict) else []:
            loc = ("models", name, "endpoints", region)
            if region not in region_names:
                out.append((loc, f"unknown region {region!r} (defined: {known})"))
            if region in custom:  # a custom backend is given its path here, not an endpoint id
                try:
                    check_upstream_path(endpoint_id)
                except ValueError as exc:
                    out.append((loc, f"custom backend {region!r}: {exc}"))
            elif not re.fullmatch(r"[0-9]{1,19}", str(endpoint_id)):
                out.append((loc, f"bad endpoint id {endpoint_id!r}: expected the numeric Vertex endpoint id"))
            elif str(endpoint_id) in owner_of_id and owner_of_id[str(endpoint_id)] != name:
                out.append((loc, f"endpoint id {endpoint_id} is also used by model {owner_of_id[str(endpoint_id)]!r}"))
            else:
                owner_of_id[str(endpoint_id)] = name
    return out


def _backend_kind_problems(name: Any, region: dict, custom: bool) -> list[tuple[tuple, str]]:
    """What a Vertex region and a custom backend may and must have."""
    out: list[tuple[tuple, str]] = []
    if not custom:
        for key in ("path", "credential"):
            if key in region:
                out.append((("regions", name, key), f"`{key}` applies only to `kind: custom` backends"))
        return out
    if region.get("failover"):
        out.append((("regions", name, "failover"), "a custom backend has no Envoy of its own, so no failover "
                                                   "list: name it in the Vertex regions' failover lists"))
    address = region.get("address")
    if region.get("tls", True) is not False and not region.get("host") and isinstance(address, str) \
            and is_ip(address.strip()):
        out.append((("regions", name, "host"), "a custom backend at an IP address with TLS needs `host:` "
                                               "(the name its certificate is checked against, and the SNI)"))
    credential = region.get("credential")
    if isinstance(credential, dict):
        kind = credential.get("type", "none")
        if kind == "header" and not credential.get("file"):
            out.append((("regions", name, "credential", "file"), "credential type header needs `file:` "
                                                                 "(the file holding the header's value)"))
        for key, only in (("file", "header"), ("prefix", "header"), ("header", "header"), ("audience", "id_token")):
            if key in credential and kind != only:
                out.append((("regions", name, "credential", key), f"`{key}` applies only to credential type {only}"))
    return out


def openai_problems(raw: dict) -> list[tuple[tuple, str]]:
    """`openai.models` names publisher models, each body "model" naming exactly one of them."""
    out: list[tuple[tuple, str]] = []
    openai, models = raw.get("openai"), raw.get("models")
    if not isinstance(models, dict):
        return out
    listed = openai.get("models") if isinstance(openai, dict) else None
    names = listed if isinstance(listed, list) else \
        [m for m, spec in models.items() if isinstance(spec, dict) and spec.get("publisher_model")]
    owner: dict[str, str] = {}
    for i, name in enumerate(names):
        loc = ("openai", "models", i) if isinstance(listed, list) else ("models", name, "publisher_model")
        spec = models.get(name) if isinstance(name, str) else None
        if not isinstance(spec, dict):
            out.append((loc, f"unknown model {name!r} (defined: {', '.join(map(str, models)) or 'none'})"))
        elif not spec.get("publisher_model"):
            out.append((loc, f"model {name!r} has no `publisher_model:`; an endpoint model is served at "
                             f"/v1/models/{name}/chat/completions instead"))
        elif str(spec["publisher_model"]) in owner:
            out.append((loc, f"models {owner[str(spec['publisher_model'])]!r} and {name!r} are both "
                             f"{spec['publisher_model']}: POST /v1/chat/completions could not tell them apart "
                             f"(list one under openai.models)"))
        else:
            owner[str(spec["publisher_model"])] = name
    served = openai.get("endpoint_models") if isinstance(openai, dict) else None
    for i, name in enumerate(served if isinstance(served, list) else []):
        spec = models.get(name) if isinstance(name, str) else None
        if not isinstance(spec, dict):
            out.append((("openai", "endpoint_models", i),
                        f"unknown model {name!r} (defined: {', '.join(map(str, models)) or 'none'})"))
        elif not spec.get("endpoints"):
            out.append((("openai", "endpoint_models", i), f"model {name!r} has no `endpoints:`; a publisher model "
                                                          f"is served at POST /v1/chat/completions (openai.models)"))
    return out


def _client_problems(raw: dict) -> list[tuple[tuple, str]]:
    """clients: cross-references (models and regions named by grants, a JWKS per issuer)."""
    clients = raw.get("clients")
    if not isinstance(clients, dict):
        return []
    out: list[tuple[tuple, str]] = []
    if not clients.get("jwt") and not clients.get("mtls"):
        out.append((("clients",), "give `jwt:` issuers and/or `mtls:`: how clients prove who they are"))
    out += _alike_in_stats(("clients", "jwt"), "issuer", clients.get("jwt"))
    out += _alike_in_stats(("clients", "allow"), "grant", clients.get("allow"))
    for name, issuer in (clients.get("jwt") or {}).items() if isinstance(clients.get("jwt"), dict) else []:
        if not is_name(str(name)):
            out.append((("clients", "jwt", name), f"bad issuer name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(issuer, dict):
            continue
        uri, file = issuer.get("jwks_uri"), issuer.get("jwks_file")
        if uri and file:
            out.append((("clients", "jwt", name), "give either `jwks_uri:` or `jwks_file:`, not both"))
        elif not uri and not file and issuer.get("issuer") not in (GOOGLE_ISSUER, "accounts.google.com"):
            out.append((("clients", "jwt", name), "needs `jwks_uri:` or `jwks_file:` (the issuer's signing keys)"))
        if isinstance(uri, str) and not _is_jwks_uri(uri):
            out.append((("clients", "jwt", name, "jwks_uri"), f"bad jwks_uri {uri!r}: expected http(s)://host[:port]/path "
                                                               "(a DNS name or IP, a port 1-65535, no spaces)"))
    models, regions = raw.get("models"), raw.get("regions")
    model_names = list(models) if isinstance(models, dict) else []
    region_names = list(regions) if isinstance(regions, dict) else []
    allow = clients.get("allow")
    for name, grant in allow.items() if isinstance(allow, dict) else []:
        if not is_name(str(name)):
            out.append((("clients", "allow", name), f"bad grant name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(grant, dict):
            continue
        for key, known in (("models", model_names), ("regions", region_names)):
            items = grant.get(key)
            for i, item in enumerate(items) if isinstance(items, list) else []:
                if item not in known:
                    out.append((("clients", "allow", name, key, i),
                                f"unknown {key[:-1]} {item!r} (defined: {', '.join(map(str, known)) or 'none'})"))
                elif item in items[:i]:
                    out.append((("clients", "allow", name, key, i), f"{key[:-1]} {item!r} listed twice"))
            if isinstance(items, list) and not items:
                out.append((("clients", "allow", name, key), f"empty list: leave `{key}` out to allow every {key[:-1]}"))
    return out
