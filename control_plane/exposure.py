"""Defaults that say what they do: a gateway without client authentication whose listener is
reachable beyond loopback lets anyone call Vertex AI as its service account. `serve` logs it,
/debug/regions shows it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .config import RegionConfig


def is_loopback(host: str) -> bool:
    """A loopback IP (v4 or v6, brackets allowed) or `localhost`: reachable from this machine only."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    # ::ffff:127.0.0.1 is IPv4's loopback written as IPv6 (Python's is_loopback says no).
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def open_listener_warning(config: RegionConfig, listen_addresses: Iterable[str] = ()) -> str | None:
    """None when clients must authenticate or every listener is on loopback; else the warning.
    `listen_addresses`: HOST:PORT overrides connected Envoys gave in their bootstrap."""
    if config.clients is not None:
        return None
    hosts = {config.listener.address} | {a.rpartition(":")[0].strip("[]") for a in listen_addresses if a}
    exposed = sorted(h for h in hosts if h and not is_loopback(h))
    if not exposed:
        return None
    return (f"no client authentication (regions.yaml has no `clients:` section) and the Envoy listener is "
            f"reachable beyond loopback ({', '.join(exposed)}): anyone who reaches it calls Vertex AI as the "
            f"gateway's service account; add `clients:` (docs/CONFIG.md) or bind the listener to loopback")


def client_authentication(config: RegionConfig, listen_addresses: Iterable[str] = ()) -> dict:
    """For /debug/regions: whether and how clients authenticate."""
    clients = config.clients
    return {
        "enabled": clients is not None,
        "jwt_issuers": sorted(clients.jwt) if clients else [],
        "mtls": bool(clients and clients.mtls),
        "grants": sorted(clients.allow) if clients else [],
        "warning": open_listener_warning(config, listen_addresses),
    }
