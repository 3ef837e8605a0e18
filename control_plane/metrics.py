"""Prometheus metrics, in a registry of the control plane's own (no process-global state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .xds_types import PUSH_ORDER, short

if TYPE_CHECKING:
    from .config import RegionConfig

XDS_TYPES = tuple(short(t) for t in PUSH_ORDER)  # the "type" label: "Secret", "Cluster", ...
CLIENT_STATUSES = ("SYNCED", "STALE", "NACKED", "ERROR")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pushes = Counter("vertex_gateway_xds_pushes", "xDS responses sent", ["type", "mode"], registry=r)
        self.acks = Counter("vertex_gateway_xds_acks", "xDS ACKs received", ["type"], registry=r)
        self.nacks = Counter("vertex_gateway_xds_nacks", "xDS NACKs received (Envoy rejected config)",
                             ["type"], registry=r)
        self.connected = Gauge("vertex_gateway_xds_connected_clients", "Connected xDS streams", ["mode"],
                               registry=r)
        self.refused = Counter("vertex_gateway_xds_streams_refused",
                               "xDS streams refused because this replica serves --max-streams already",
                               registry=r)
        self.reloads = Counter("vertex_gateway_config_reloads", "Config reloads by result", ["result"],
                               registry=r)
        self.config_ok = Gauge("vertex_gateway_config_last_reload_ok",
                               "1 if the last reload applied, 0 if it was rejected", registry=r)
        self.ack_latency = Histogram("vertex_gateway_xds_ack_seconds", "Time from a push to its ACK",
                                     ["type"], registry=r,
                                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.token_refreshes = Counter("vertex_gateway_token_refreshes", "Access-token refreshes by result",
                                       ["credential", "result"], registry=r)
        self.token_expiry = Gauge("vertex_gateway_token_expiry_seconds",
                                  "Seconds until the current access token expires", ["credential"], registry=r)

        self.backends = Gauge("vertex_gateway_backends", "Vertex regions and custom backends in the config in "
                              "force (1 each), by kind and the credential attempts to it carry",
                              ["backend", "kind", "credential"], registry=r)
        # From the Envoys' load reports (control_plane/lrs.py, control_plane/fleet.py).
        self.load_reports = Counter("vertex_gateway_load_reports", "Load reports received from Envoys", registry=r)
        self.region_requests = Counter("vertex_gateway_region_requests",
                                       "Attempts per model and region, fleet-wide, by result (load reports)",
                                       ["model", "region", "result"], registry=r)
        self.failover_answers = Counter("vertex_gateway_failover_answers",
                                        "Attempts answered successfully by a region other than the reporting "
                                        "Envoy's own (load reports)", ["model", "region"], registry=r)
        self.reporting_envoys = Gauge("vertex_gateway_reporting_envoys",
                                      "Envoys that sent a load report within the window", registry=r)
        self.failing_envoys = Gauge("vertex_gateway_region_failing_envoys",
                                    "Envoys whose attempts to this region mostly failed within the window",
                                    ["region"], registry=r)
        self.avoided = Gauge("vertex_gateway_region_avoided",
                             "1 while the region is at the back of every failover order (fleet avoidance)",
                             ["region"], registry=r)
        self.avoidance_changes = Counter("vertex_gateway_region_avoidance_changes",
                                         "Fleet avoidance decisions by region and action (avoid, restore)",
                                         ["region", "action"], registry=r)

        # Every label value known up front is exported from the start (0), so dashboards and
        # alerts see the series before the first NACK or reload.
        for kind in XDS_TYPES:
            self.nacks.labels(kind)
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self.clients_by_status = Gauge("vertex_gateway_xds_clients",
                                       "Connected Envoy streams by sync status: SYNCED (every type ACKed), "
                                       "STALE (a push not yet answered), NACKED, ERROR (served nothing)",
                                       ["status"], registry=r)

    def describe_backends(self, config: RegionConfig) -> None:
        self.backends.clear()
        for name, spec in config.regions.items():
            credential = config.backend_credential(name).type if spec.custom else "access_token"
            self.backends.labels(name, spec.kind, credential).set(1)

    def observe_clients(self, statuses: list[str]) -> None:
        """Set at scrape time from the client registry."""
        for status in CLIENT_STATUSES:
            self.clients_by_status.labels(status).set(statuses.count(status))

    def render(self) -> bytes:
        return generate_latest(self.registry)
