"""The floor for bench/controlplane.py (ii): the most trivial ADS server that serves the same
bytes, so the product's per-stream cost and its time to sync and to push an edit can be read
against what gRPC and Python cost anyway, measured in the same run.

It uses the product's SnapshotCache (the same pre-serialized resources and memoized
selections), the same file watch as `serve` (watchfiles, 50 ms debounce) and the same way of
handing responses to gRPC (control_plane.server.Outgoing: grpc.aio would otherwise keep each
stream's last response alive) and of giving a burst's freed memory back (control_plane.heap),
and nothing else: no per-stream records, no make-before-break, no NACK handling, no
versions beyond the cache's. Per stream: the names subscribed per type; an ACK (a nonce and
unchanged names) is ignored; a request is answered; a change pushes every subscribed type.
Delta the same, with the name -> version each stream was sent, so a change sends only what
differs, and the endpoints of an updated cluster again (Envoy warms an updated EDS cluster
only on them: without, a real Envoy would never finish the edit); removals are never sent
(the floor does not need them).

    python -m bench.xds_floor --config regions.yaml --xds-port P --admin-port Q
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHANGED = object()
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


async def serve(config_path: Path, xds_port: int, admin_port: int) -> None:
    import grpc
    from aiohttp import web
    from envoy.service.discovery.v3 import discovery_pb2
    from watchfiles import awatch

    from control_plane import loading
    from control_plane.cache import SnapshotCache
    from control_plane.heap import HeapTrimmer
    from control_plane.server import Outgoing, stream_handler
    from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE

    config = loading.load(config_path).config
    cache = SnapshotCache(config)
    cache.set_tokens({p: "floor-token" for p in config.profiles_in_use()})
    inboxes: set[asyncio.Queue] = set()
    heap = HeapTrimmer()
    nonce = 0

    def listen(requests) -> tuple[asyncio.Queue, asyncio.Task]:
        """The stream's requests, then None, in an inbox that change notifications also reach."""
        inbox: asyncio.Queue = asyncio.Queue()
        inboxes.add(inbox)

        async def read() -> None:
            try:
                async for request in requests:
                    inbox.put_nowait(request)
            finally:
                inbox.put_nowait(None)

        return inbox, asyncio.create_task(read())

    async def stream(requests, context):
        nonlocal nonce
        inbox, reader = listen(requests)
        subscribed: dict[str, frozenset[str] | None] = {}
        group = None
        try:
            while (item := await inbox.get()) is not None:
                heap.busy()
                if item is CHANGED:
                    types = list(subscribed)
                else:
                    group = group or cache.node_group(item.node)
                    names = frozenset(item.resource_names) or None
                    if item.response_nonce and subscribed.get(item.type_url, 0) == names:
                        continue  # an ACK
                    subscribed[item.type_url] = names
                    types = [item.type_url]
                for type_url in types:
                    selection, version = cache.target(group, type_url, subscribed[type_url])
                    nonce += 1
                    header = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url,
                                                             nonce=str(nonce))
                    yield Outgoing(header.SerializeToString() + b"".join(r.response_entry for r in selection.values()))
        finally:
            inboxes.discard(inbox)
            reader.cancel()

    async def delta_stream(requests, context):
        nonlocal nonce
        inbox, reader = listen(requests)
        subscribed: dict[str, set[str] | None] = {}
        sent: dict[str, dict[str, str]] = {}
        group = None
        try:
            while (item := await inbox.get()) is not None:
                heap.busy()
                if item is CHANGED:
                    types = list(subscribed)
                else:
                    group = group or cache.node_group(item.node)
                    t = item.type_url
                    add, drop = set(item.resource_names_subscribe) - {"*"}, set(item.resource_names_unsubscribe)
                    if t not in subscribed:
                        subscribed[t] = add or None
                    elif add or drop:
                        subscribed[t] = None if subscribed[t] is None else (subscribed[t] | add) - drop
                    else:
                        continue  # an ACK
                    types = [t]
                for type_url in types:
                    names = subscribed[type_url]
                    selection, version = cache.target(group, type_url, None if names is None else frozenset(names))
                    have = sent.setdefault(type_url, {})
                    changed = [r for r in selection.values() if have.get(r.name) != r.version]
                    if not changed:
                        continue
                    if type_url == CLUSTER_TYPE and ENDPOINT_TYPE in sent:  # an updated cluster's endpoints again
                        for r in changed:
                            sent[ENDPOINT_TYPE].pop(r.name, None)
                    have.update((r.name, r.version) for r in changed)
                    nonce += 1
                    header = discovery_pb2.DeltaDiscoveryResponse(system_version_info=version, type_url=type_url,
                                                                  nonce=str(nonce))
                    yield Outgoing(header.SerializeToString() + b"".join(r.delta_entry for r in changed))
        finally:
            inboxes.discard(inbox)
            reader.cancel()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, {
        "StreamAggregatedResources": stream_handler(stream, discovery_pb2.DiscoveryRequest),
        "DeltaAggregatedResources": stream_handler(delta_stream, discovery_pb2.DeltaDiscoveryRequest)}),))
    server.add_insecure_port(f"127.0.0.1:{xds_port}")
    await server.start()

    async def healthz(_request):
        return web.json_response({"status": "ok", "clients": len(inboxes)})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", admin_port).start()
    async for _changes in awatch(config_path.parent, debounce=50, step=10, recursive=False,
                                 watch_filter=lambda _c, path: Path(path).name == config_path.name):
        try:
            cache.set_config(loading.load(config_path).config)
        except Exception as exc:  # noqa: BLE001 - a half-written file: the next event has it whole
            print(f"floor: reload failed: {exc}", file=sys.stderr)
            continue
        for inbox in inboxes:
            inbox.put_nowait(CHANGED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--xds-port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.config.resolve(), args.xds_port, args.admin_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
