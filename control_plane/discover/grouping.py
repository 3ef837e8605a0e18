"""Endpoints with the same display name in several regions -> one model."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from .client import Endpoint


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
