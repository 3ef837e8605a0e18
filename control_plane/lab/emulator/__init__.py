"""A local stand-in for one region of the Vertex AI prediction API.

Used by the demo and by end-to-end tests that put a real Envoy in front of it:
it answers like Vertex, records every request it reads, and fails on command.

Recording: every request that reaches a handler is appended to ``received``,
including failed ones. ``ReceivedRequest.failure`` names the injected mode that
was applied ("503", "reset", "hang", "slow", ...; None when served normally) and
``status`` is the HTTP status sent (None when no response was sent: reset, hang).
Requests refused because the region is "down" never reach a handler and are
not recorded. The control API shows Authorization values as received: this is
a test double, and e2e tests check the token Envoy injected.

``delay`` applies to every failing mode: wait, then fail ("slow" = wait, then
answer normally; "stall" = answer, but a stream goes silent after its first chunk
until the mode changes, then the connection is dropped; "tls" = on a TLS emulator,
the connections are dropped and the port answers without TLS, so every TLS
handshake fails). Envoy's HTTP health
probes (User-Agent ``Envoy/HC``) get the current failure too (a hung region hangs
them) but are only counted in ``probes``, never recorded nor counted in ``count``.

Capacity tiers: ``ReceivedRequest.tier`` records the tier each request asked for
(``X-Vertex-AI-LLM-Request-Type``: dedicated/shared, "priority" for shared +
``X-Vertex-AI-LLM-Shared-Request-Type: priority``, "" for none); ``fail_tier(tier,
429)`` answers that status to requests of one tier (Provisioned Throughput exhausted). A numeric mode ("503", "418") answers that status; mode
"status" takes ``status=``. ``count`` does not apply to "down".

failures.py    the injected failure (modes, count, delay, tiers) and dropping a connection
vertex_api.py  the Vertex paths and their answers (endpoints, publisher models, OpenAI-compatible)
server.py      VertexEmulator (listeners, recording, the control API) and EmulatorThread
cli.py         `python -m control_plane.lab.emulator`
"""

from .cli import main
from .failures import FAILURE_MESSAGES, HANG_MAX_SECONDS, MODES, FailureModes
from .server import MAX_BODY, PROBE_USER_AGENT, EmulatorThread, ReceivedRequest, VertexEmulator, request_tier
from .vertex_api import ENDPOINT_VERBS, PUBLISHER_VERBS, REGION_HEADER, STATUS_NAMES, STREAM_CHUNKS, STREAM_INTERVAL

__all__ = [
    "ENDPOINT_VERBS", "FAILURE_MESSAGES", "HANG_MAX_SECONDS", "MAX_BODY", "MODES", "PROBE_USER_AGENT",
    "PUBLISHER_VERBS", "REGION_HEADER", "STATUS_NAMES", "STREAM_CHUNKS", "STREAM_INTERVAL",
    "EmulatorThread", "FailureModes", "ReceivedRequest", "VertexEmulator", "main", "request_tier",
]
