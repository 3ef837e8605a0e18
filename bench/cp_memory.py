"""Diagnosis for bench/controlplane.py (ii): where the control plane's memory per ADS client goes.

Runs the control plane in this process (on a background loop, as the tests do) with
tracemalloc on, connects N simulated Envoys from a separate process (the same SimEnvoy as the
benchmark), and prints RSS and Python-allocated bytes per client, by source line. Slower than
the benchmark (tracemalloc), and RSS here includes this process's other threads: use it for
the breakdown, bench/controlplane.py for the figure.

    python -m bench.cp_memory [--clients 1000] [--streams-per-channel 1] [--top 15] [--delta]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import rss_bytes  # noqa: E402
from bench.fanout import _fanout_process, fanout_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cp_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--streams-per-channel", type=int, default=1)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--delta", action="store_true", help="Delta clients (default: state of the world)")
    args = parser.parse_args(argv)

    from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
    from control_plane.lab.harness import ControlPlaneThread, LoopThread, write_config

    workdir = Path(tempfile.mkdtemp(prefix="bench-cp-memory-"))
    loop = LoopThread()
    tokens = FakeTokenServer()
    loop.call(tokens.start())
    key = write_service_account_key(workdir / "key.json", tokens.token_uri)
    config = fanout_config(10, 5, str(key))
    plane = ControlPlaneThread(write_config(workdir / "regions.yaml", config))
    time.sleep(1.0)  # first token, snapshots built
    n = args.clients
    tracemalloc.start(4)
    before, rss0 = tracemalloc.take_snapshot(), rss_bytes(os.getpid())
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_fanout_process, args=(plane.xds_address, n, list(config["regions"]),
                                                      args.streams_per_channel, True, child, args.delta))
    proc.start()
    try:
        if not parent.poll(600):
            raise TimeoutError("clients did not sync")
        synced = parent.recv()
        time.sleep(1.0)
        after, rss1 = tracemalloc.take_snapshot(), rss_bytes(os.getpid())
        print(f"{synced['synced']}/{n} clients synced in {synced['sync_all_s']:.1f} s (tracemalloc slows this)")
        print(f"RSS per client:              {(rss1 - rss0) / n / 1024:6.1f} KB")
        by_file = after.compare_to(before, "filename")
        print(f"Python-allocated per client: {sum(d.size_diff for d in by_file) / n / 1024:6.1f} KB")
        print("\nby source line (KB and objects per client):")
        for d in after.compare_to(before, "lineno")[:args.top]:
            frame = d.traceback[0]
            print(f"  {d.size_diff / n / 1024:7.2f} KB {d.count_diff / n:6.1f}  {frame.filename}:{frame.lineno}")
        parent.send({"cmd": "stop"})
        proc.join(60)
    finally:
        if proc.is_alive():
            proc.kill()
        plane.close()
        loop.call(tokens.stop())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
