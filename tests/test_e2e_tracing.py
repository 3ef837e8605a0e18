"""Tracing through a real Envoy to a local OTLP/gRPC receiver: a span per request and per
attempt, tagged with model, region and attempt number, in the client's trace, and the trace
context carried on to Vertex."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self):
        self.spans = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            # xds-protos ships an older copy of these protos (the field is instrumentation_library_spans
            # there, same number); whichever package pip installed last wins the files.
            scopes = resource.scope_spans if hasattr(resource, "scope_spans") else resource.instrumentation_library_spans
            for scope in scopes:
                for span in scope.spans:
                    self.spans.append((service, span))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture()
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.stop(0)


def attributes(span) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


def test_spans_per_attempt_carry_model_region_and_attempt_and_vertex_gets_the_trace(receiver):
    extra = {"policy": {"outlier_detection": {"consecutive_5xx": 1000}},
             "observability": {"tracing": {"collector": f"127.0.0.1:{receiver.port}",
                                           "service_name": "gateway-e2e"}}}
    with Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=extra) as stack:
        stack.emulators["us-central1"].fail("503")
        response = stack.post("/v1/models/housing:predict", json={"instances": [1]},
                              headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
        assert response.status_code == 200 and response.headers["x-envoy-attempt-count"] == "2"
        for emulator in stack.emulators.values():  # each attempt carries the client's trace
            assert emulator.received[-1].headers["traceparent"].split("-")[1] == TRACE_ID
        # Envoy exports in batches (every 5 s, or 5 spans).
        spans = wait_for(lambda: [s for _, s in receiver.spans if s.trace_id.hex() == TRACE_ID]
                         if len(receiver.spans) >= 3 else None, timeout=20, what="three spans")
    assert {service for service, _ in receiver.spans} == {"gateway-e2e"}
    (server,) = [s for s in spans if s.parent_span_id.hex() == CLIENT_SPAN]
    assert attributes(server)["vertex.model"] == "housing" and attributes(server)["vertex.region"] == "us-east4"
    attempts = sorted((s for s in spans if s.parent_span_id == server.span_id),
                      key=lambda s: attributes(s)["vertex.attempt"])
    assert [(attributes(s)["vertex.attempt"], attributes(s)["vertex.region"], attributes(s)["http.status_code"])
            for s in attempts] == [("1", "us-central1", "503"), ("2", "us-east4", "200")]
    assert all(attributes(s)["vertex.model"] == "housing" for s in attempts)
