"""Who an Envoy is on an mTLS xDS channel: its client certificate must name the node.

The rule (docs/SPEC.md, "A locked xDS channel"): a certificate *name* is its subject CN or
any subject alternative name; each name is also read as its first DNS label
(`envoy-us-central1.gw.internal` -> `envoy-us-central1`) and, for a URI, its last path
segment (`spiffe://td/ns/gw/sa/envoy-us-central1` -> `envoy-us-central1`). A node is
accepted when one of those names

- is the node's region, or
- is the node id, and the node id contains the node's region as a whole word: not next to
  a letter or digit (the bootstrap's default `envoy-{region}` does; `envoy-europe-west12`
  does not contain `europe-west1`).

So a certificate issued to one region's Envoy can never be used to ask for another
region's config and access tokens. Connections without a client certificate (plaintext on
loopback, or TLS without a client CA) are not checked here: app.py refuses those off
loopback unless --insecure-xds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import grpc
from envoy.config.core.v3 import base_pb2

from .status import REPEATS_LOGGED_EVERY_S, Sparse, printable

log = logging.getLogger(__name__)


def node_region(node: base_pb2.Node) -> str:
    fields = node.metadata.fields
    return fields["region"].string_value if "region" in fields else node.locality.region


def certificate_names(auth_context: Mapping[str, Iterable[bytes]] | None) -> list[str]:
    """The names grpc's auth context holds for the peer certificate (empty: no certificate)."""
    if not auth_context:
        return []
    raw = [*auth_context.get("x509_common_name", ()), *auth_context.get("x509_subject_alternative_name", ())]
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw if n]


def _readings(name: str) -> set[str]:
    out = {name}
    if "://" in name:  # a URI SAN: its last path segment
        out.add(name.rstrip("/").rsplit("/", 1)[-1])
    else:
        out.add(name.split(".", 1)[0])
    return out


def certificate_matches(names: list[str], node_id: str, region: str) -> bool:
    readings = set().union(*(_readings(n) for n in names)) if names else set()
    if region and region in readings:
        return True
    return bool(region) and node_id in readings and _contains_word(node_id, region)


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text) is not None


def refusal(names: list[str], node_id: str, region: str) -> str | None:
    """None when the node may be served; else why not (for the log and the gRPC status)."""
    if not names:
        return None
    if certificate_matches(names, node_id, region):
        return None
    shown = ", ".join(sorted(names))[:512]
    return (f"client certificate ({shown}) does not name node {node_id[:128]!r} or its region "
            f"{region[:64]!r} (a certificate name must be the region, or the node id when the node id "
            f"contains the region as a whole word)")


class Gate:
    """The check every stream on the xDS port runs on its first message (xDS and load reports
    alike): a node its certificate does not name is refused with PERMISSION_DENIED, and logged
    once per node and interval (an Envoy retrying writes a line, not one per retry)."""

    def __init__(self, stream: str):
        self.stream = stream  # for the log line: "xDS stream", "load reports"
        self._logged = Sparse(REPEATS_LOGGED_EVERY_S)

    async def admit(self, node: base_pb2.Node, context: grpc.aio.ServicerContext) -> None:
        refused = refusal(certificate_names(context.auth_context()), node.id, node_region(node))
        if refused is None:
            return
        left_out = self._logged.due(node.id)
        if left_out is not None:
            log.warning("%s refused from %s: %s%s", self.stream, context.peer(), printable(refused),
                        f" ({left_out} more since the last line)" if left_out else "")
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
