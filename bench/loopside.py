"""The event loop's share of an edit, in one process and without gRPC: the real cache and
sessions, simulated Envoys (bench/sim_envoy.py) driven request by request. Measures the CPU
of what runs on the control plane's event loop (SnapshotCache.apply and every session call)
for the first full set to each client and for an edit until every client ACKed it; the
reload's build (prepare, in a thread in the product) is timed apart.

    python -m bench.loopside --sizes 100x40,1000x5 --edits 3 [--mode delta] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from bench.fanout import fanout_config  # noqa: E402
from bench.sim_envoy import DeltaSimEnvoy, SimEnvoy  # noqa: E402
from control_plane.cache import SnapshotCache  # noqa: E402
from control_plane.config import parse_config  # noqa: E402
from control_plane.metrics import Metrics  # noqa: E402
from control_plane.server import AdsServer  # noqa: E402
from control_plane.sessions import DeltaSession, SotwSession  # noqa: E402
from control_plane.status import ClientRegistry  # noqa: E402


class _Channel:
    def stream_stream(self, *args, **kwargs):
        return lambda requests: None


class Loop:
    """n simulated clients, one per region, fed synchronously; `loop_s` sums the CPU of the
    server-side calls (what the product's event loop runs)."""

    def __init__(self, cache: SnapshotCache, regions: list[str], n: int, delta: bool):
        self.cache = cache
        self.server = AdsServer(cache, ClientRegistry(), Metrics())
        kind, session_type = (DeltaSimEnvoy, DeltaSession) if delta else (SimEnvoy, SotwSession)
        self.response_type = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        parsed: dict = {}
        self.clients = [kind(_Channel(), f"sim-{i:04d}", regions[i % len(regions)], parsed, True) for i in range(n)]
        self.session_type = session_type
        self.sessions: list = [None] * n
        self.changed = [False] * n
        self.loop_s = 0.0
        self.responses = 0
        self.profile: cProfile.Profile | None = None
        for i in range(n):
            cache.watch(lambda i=i: self.changed.__setitem__(i, True))

    def _timed(self, responses) -> list[bytes]:
        if self.profile:
            self.profile.enable()
        t0 = time.process_time()
        out = list(responses)
        self.loop_s += time.process_time() - t0
        if self.profile:
            self.profile.disable()
        return out

    def run(self) -> None:
        """Until every client's requests are answered and nothing changed is left unreconciled."""
        busy = True
        while busy:
            busy = False
            for i, client in enumerate(self.clients):
                out: list[bytes] = []
                while not client.requests.empty():
                    request = client.requests.get_nowait()
                    busy = True
                    session = self.sessions[i]
                    if session is None:
                        t0 = time.process_time()
                        stream = self.server.clients.open(request.node, "sim", self.session_type.MODE)
                        session = self.sessions[i] = self.session_type(self.cache, stream, self.server.metrics,
                                                                       self.server.next_nonce, self.server.responses)
                        self.loop_s += time.process_time() - t0
                    out += self._timed(session.on_request(request))
                    if self.changed[i]:
                        self.changed[i] = False
                        out += self._timed(session.on_change())
                if self.changed[i] and self.sessions[i] is not None:
                    busy = True
                    self.changed[i] = False
                    out += self._timed(self.sessions[i].on_change())
                for data in out:
                    self.responses += 1
                    client.on_response(self.response_type.FromString(data))

    def apply(self, config, snapshots) -> None:
        if self.profile:
            self.profile.enable()
        t0 = time.process_time()
        self.cache.apply(config, snapshots)
        self.loop_s += time.process_time() - t0
        if self.profile:
            self.profile.disable()


def measure(models: int, regions: int, edits: int, delta: bool, clients: int, profile: cProfile.Profile | None):
    data = fanout_config(models, regions, "/nonexistent")
    config = parse_config(yaml.safe_dump(data, sort_keys=False))
    cache = SnapshotCache(config)
    cache.set_tokens({p: "token" for p in config.profiles_in_use()})
    loop = Loop(cache, list(data["regions"]), min(clients, regions), delta)
    retired: list = []
    if hasattr(cache, "retire"):  # (as the server does: freed once the push is over)
        cache.retire = retired.append
    for client in loop.clients:
        client.subscribe("type.googleapis.com/envoy.config.cluster.v3.Cluster")
    loop.run()
    assert all(c.synced.is_set() for c in loop.clients)
    loop.profile = profile  # (the edits only)
    row = {"models": models, "regions": regions, "clients": len(loop.clients), "mode": "delta" if delta else "sotw",
           "first_set_loop_s": loop.loop_s, "first_set_responses": loop.responses, "edits": []}
    edited = copy.deepcopy(data)
    for i in range(edits):
        for kind in ("model", "policy"):
            if kind == "policy":
                edited["policy"] = {"timeout": f"{30 + i}s", "outlier_detection": {"consecutive_5xx": 5 + i}}
            else:
                edited["models"]["model-001"]["policy"] = {"timeout": f"{40 + i}s",
                                                          "outlier_detection": {"consecutive_5xx": 7 + i}}
            new = parse_config(yaml.safe_dump(edited, sort_keys=False))
            t0 = time.process_time()
            snapshots = cache.prepare(new)
            build_s = time.process_time() - t0
            base = [dict(c.version) for c in loop.clients]
            loop.loop_s = loop.responses = 0
            gc.collect()
            loop.apply(new, snapshots)
            loop.run()
            assert all(c.settled_on(b) for c, b in zip(loop.clients, base)), "not every client settled"
            t0 = time.process_time()
            retired.clear()
            row["edits"].append({"kind": kind, "build_s": build_s, "loop_s": loop.loop_s, "responses": loop.responses,
                                 "retired_s": time.process_time() - t0})
    for kind in ("model", "policy"):
        values = [e["loop_s"] for e in row["edits"] if e["kind"] == kind]
        row[f"edit_{kind}_loop_s_median"] = statistics.median(values)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100x40,1000x5")
    parser.add_argument("--edits", type=int, default=3)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--mode", choices=("sotw", "delta"), default="sotw")
    parser.add_argument("--profile", help="write a cProfile of the loop-side calls here")
    args = parser.parse_args(argv)
    gc.set_threshold(100000, 20, 100)  # as the CLI
    profile = cProfile.Profile() if args.profile else None
    for size in args.sizes.split(","):
        models, regions = (int(x) for x in size.split("x"))
        row = measure(models, regions, args.edits, args.mode == "delta", args.clients, profile)
        edits = " ".join(f"{e['kind']}:{e['loop_s'] * 1000:.0f}ms(build {e['build_s']:.2f}s,{e['responses']}r,"
                         f"freed later {e['retired_s'] * 1000:.0f}ms)" for e in row["edits"])
        print(f"{models}x{regions} {row['mode']} clients={row['clients']}: first full set loop "
              f"{row['first_set_loop_s'] * 1000:.0f} ms ({row['first_set_responses']} responses); edits {edits}")
    if profile:
        profile.dump_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
