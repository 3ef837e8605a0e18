"""The build side of large configs, in CPU seconds of one process: parse + rules, a cold build
of every region (SnapshotCache, as `serve` at start and `validate`), and the reload of an
edited file (prepare + apply, what the reload thread and the loop do), for a global policy
edit and for one model's policy edit. No gRPC, no clients: bench/loopside.py measures the
loop's share, part (iv) of bench/controlplane.py the whole from the file write.

    python -m bench.reload_cpu --sizes 100x40,1000x5 --runs 3
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fanout import EDIT_POLICIES, fanout_config  # noqa: E402
from control_plane.__main__ import GC_THRESHOLDS  # noqa: E402
from control_plane.cache import SnapshotCache  # noqa: E402
from control_plane.config import parse_config  # noqa: E402


def _cpu(step):
    start = time.process_time()
    result = step()
    return time.process_time() - start, result


def measure(models: int, regions: int, runs: int) -> dict[str, float]:
    data = fanout_config(models, regions, "/nonexistent")
    text = yaml.safe_dump(data, sort_keys=False)
    times: dict[str, list[float]] = {"parse": [], "cold build": [], "global edit reload": [], "one-model reload": []}
    for i in range(runs):
        parsed, config = _cpu(lambda: parse_config(text))
        times["parse"].append(parsed)
        built, cache = _cpu(lambda: SnapshotCache(config))
        times["cold build"].append(built)
        for kind in ("global edit reload", "one-model reload"):
            edited = copy.deepcopy(data)
            # Part (iv)'s edits: a route change and a cluster change at once.
            if kind == "one-model reload":
                edited["models"]["model-001"]["policy"] = EDIT_POLICIES[i % 2]
            else:
                edited["policy"] = EDIT_POLICIES[i % 2]
            new = parse_config(yaml.safe_dump(edited, sort_keys=False))
            times[kind].append(_cpu(lambda: cache.set_config(new))[0])
            cache.set_config(config)  # back, for the next edit
    return {kind: statistics.median(values) for kind, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100x40,1000x5", help="models x regions, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLDS)  # as the CLI sets it
    print("| models × regions | parse | cold build of every region | reload, global policy edit | "
          "reload, one model edited |\n|---|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        models, regions = (int(x) for x in size.lower().split("x"))
        row = measure(models, regions, args.runs)
        print(f"| {models:,} × {regions} | " + " | ".join(f"{row[k]:.2f} s" for k in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
