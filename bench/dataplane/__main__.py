"""`python -m bench.dataplane`: the flags, then the run, the tables, the plot and the JSON under
bench/results/ (what is measured: bench/dataplane/__init__.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import dataplane
from bench.common import ROOT, machine, write_json
from bench.dataplane.measure import run
from bench.dataplane.report import aggregate, markdown, plot, static_ratios, verdicts
from bench.dataplane.targets import MODEL_PATH, TARGETS
from bench.dataplane.variants import VARIANTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane", description=dataplane.__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each cell (not measured)")
    parser.add_argument("--connections", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every cell; the tables show medians")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--backend", choices=("nginx", "envoy"), default="nginx")
    parser.add_argument("--no-ablate", action="store_true", help="skip the filter-chain ablation")
    parser.add_argument("--variants", default=";".join(VARIANTS),
                        help="ablation rows to run, separated by ';' (default all), e.g. '+jwt (no cache);+jwt;full'")
    parser.add_argument("--no-openai", dest="openai", action="store_false",
                        help="skip the two cells pricing the OpenAI path's body reading")
    parser.add_argument("--no-perf", dest="perf", action="store_false",
                        help="skip the extra perf-profiled cell (Envoy 1 worker, 16 connections)")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--instructions", action="store_true",
                        help="run every Envoy under valgrind's callgrind and report instructions per request, "
                             "which the machine's load does not move (CPU time still measured, but slowed 20-50x)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "dataplane.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",") if c.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    if [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"unknown variants; choose from {'; '.join(VARIANTS)}")
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")

    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    t0 = time.monotonic()
    print(f"data-plane benchmark: {args.targets} x {args.connections} connections, {args.duration:g} s per cell "
          f"(+{args.warmup:g} s warm-up), {args.rounds} round(s); {info['cores']} cores, {info['cpu']}, "
          f"Envoy {info['envoy']}", file=sys.stderr)
    out = run(args)
    info["loadavg_end"] = list(os.getloadavg())
    try:
        info["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    except OSError:
        pass
    info["load_generator"] = f"{out['load']} {out['load_version']}".strip()
    cells = aggregate(out["results"])
    doc = {
        "benchmark": "dataplane",
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": info,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
                     "rounds": args.rounds, "targets": args.targets, "body_bytes": out["body_bytes"],
                     "answer_bytes": out["answer_bytes"], "path": MODEL_PATH, "ablate": not args.no_ablate,
                     "chat_body_bytes": out["chat_body_bytes"], "openai": args.openai,
                     "wrk_threads": 1, "instructions": args.instructions},
        "command": "python -m bench.dataplane " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backend": out["backend"], "load": out["load"], "targets": out["targets"], "checks": out["checks"],
        "envoy_stats": out["envoy_stats"], "perf": out["perf"], "spans_received": out["spans_received"],
        "cells": cells,
        "results": out["results"],
    }
    doc["static_ratios"] = static_ratios(out["results"])
    doc["verdicts"] = verdicts(cells, doc["static_ratios"])
    table = markdown(doc)
    print(table)
    if not args.no_plot:
        print(plot(doc, args.plot), file=sys.stderr)
    doc["cells"] = [{"target": t, "connections": c, **v} for (t, c), v in cells.items()]
    doc["markdown"] = table
    path = write_json(args.out, "dataplane", started, doc)
    print(f"results written to {path} ({doc['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
