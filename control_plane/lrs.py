"""The Load Reporting Service (envoy.service.load_stats.v3) on the xDS port: every Envoy's
bootstrap (`cluster_manager.load_stats_config`) opens a stream; the control plane asks for
all clusters every `observability.load_reports.interval`, and hands each report's per-region
counts to the fleet view (control_plane/fleet.py).

What a report holds per cluster `model/{m}@{region}`: attempts that region answered with a
non-5xx (successful) or a 5xx, reset or timeout (error) since the Envoy's previous report.
The aggregate and spread clusters (model/{m}) are skipped: their attempts are counted on the
per-region clusters (a spread cluster's are not: see docs/METRICS.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.load_stats.v3 import lrs_pb2

from .config import LoadReports
from .fleet import FleetLoad, Tally
from .resources.proto import _duration
from .status import printable
from .xds_identity import Gate, node_region

log = logging.getLogger(__name__)

LRS_SERVICE = "envoy.service.load_stats.v3.LoadReportingService"


def counts_of(request: lrs_pb2.LoadStatsRequest) -> dict[tuple[str, str], Tally]:
    """(model, region) -> Tally, from the per-region clusters of one report."""
    out: dict[tuple[str, str], Tally] = {}
    for stats in request.cluster_stats:
        name = stats.cluster_name
        if not name.startswith("model/") or "@" not in name:
            continue
        model, _, region = name[len("model/"):].rpartition("@")
        tally = out.setdefault((model, region), Tally())
        for locality in stats.upstream_locality_stats:
            tally.success += locality.total_successful_requests
            tally.error += locality.total_error_requests
    return out


class LoadReportServer:
    def __init__(self, fleet: FleetLoad, settings: Callable[[], LoadReports]):
        self.fleet = fleet
        self._settings = settings
        self._gate = Gate("load reports")

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(LRS_SERVICE, {
            "StreamLoadStats": grpc.stream_stream_rpc_method_handler(
                self._serve, request_deserializer=lrs_pb2.LoadStatsRequest.FromString,
                response_serializer=lrs_pb2.LoadStatsResponse.SerializeToString),
        })

    def _response(self, interval: float) -> lrs_pb2.LoadStatsResponse:
        return lrs_pb2.LoadStatsResponse(send_all_clusters=True, load_reporting_interval=_duration(interval))

    async def _serve(self, requests: AsyncIterator[lrs_pb2.LoadStatsRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[lrs_pb2.LoadStatsResponse]:
        node_id, region, interval = "", "", None
        try:
            async for request in requests:
                if not node_id:  # the node is sent on the first message
                    # Reports steer every Envoy's failover order: a locked channel's rule holds here too.
                    await self._gate.admit(request.node, context)
                    node_id, region = request.node.id, node_region(request.node)
                    log.debug("load reports: node %s (region %s) connected", printable(node_id, 256),
                              printable(region, 64) or "?")
                else:
                    self.fleet.record(node_id, region, counts_of(request))
                wanted = self._settings().interval
                if wanted != interval:  # first message, or the config changed the interval
                    interval = wanted
                    yield self._response(interval)
        except asyncio.CancelledError:
            raise
        finally:
            if node_id:
                self.fleet.forget(node_id)
                log.debug("load reports: node %s disconnected", printable(node_id, 256))
