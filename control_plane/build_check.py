"""`validate`'s last step: build every region's Envoy resources as `serve` does at start,
the regions shared out between processes, one per usable CPU (at most MAX_PROCESSES).

The build is pure CPU work and each region's is its own (at 1,000 models x 5 regions or
100 x 40 it is about half of `validate`). Each process also builds what its regions share,
so two processes on two cores took 0.75-0.87x of the wall time of one (docs/BENCHMARKS.md).
Each process runs exactly what `serve` runs (SnapshotCache) for its regions; a problem found
in any of them is reported as if one process had found it. Processes are forked (Linux
only: elsewhere, and on one CPU, it all runs in this process), after the config is parsed,
so each starts with the parsed config in hand.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from . import loading
from .cache import Builder, SnapshotCache
from .config import ConfigError, Problem, RegionConfig
from .resources import build_serialized

DOING = "cannot build Envoy resources"


# Each process builds the pieces its regions share once more, and holds its own build: past a
# few processes that costs more than it saves (and a large host's CPU count is no limit at all).
MAX_PROCESSES = 4


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may run on: its affinity, within a container's CPU quota (cgroup v2)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def build_every_region(file: str, config: RegionConfig, processes: int | None = None,
                       builder: Builder = build_serialized,
                       then: Callable[[SnapshotCache], dict] = lambda cache: {}) -> dict:
    """Raise ConfigError with every problem the build of each Vertex region's resources finds.
    Else return what `then` learns from each process's build (a dict, e.g. by region), merged."""
    regions = list(config.vertex_regions)
    count = min(processes or min(usable_cpus(), MAX_PROCESSES), len(regions)) if sys.platform == "linux" else 1
    shares = [regions[i::count] for i in range(count)] if count > 1 else [regions]

    def build(share: list[str]) -> dict:
        cache = loading.checked(file, DOING, lambda: SnapshotCache(config, builder, regions=share))
        try:
            return then(cache)
        except Exception as exc:  # noqa: BLE001 - what `then` learns is extra: never a verdict on the file
            print(f"{file}: note: {type(exc).__name__} after the build: {exc}", file=sys.stderr)
            return {}

    sys.stdout.flush()  # a child's copy of unwritten output would be written twice
    sys.stderr.flush()
    children, mine = [], list(shares[0])
    for share in shares[1:]:
        try:
            children.append((_fork(build, share), share))
        except OSError:  # no process to be had (a pid or memory limit): build that share here
            mine += share
    problems: list[Problem] = []
    learned: dict = {}
    try:
        learned.update(build(mine))
    except ConfigError as exc:
        problems += exc.problems
    for (pid, results), share in children:
        found, child_learned = _results(file, pid, results, share)
        problems += found
        learned.update(child_learned)
    if problems:  # a piece every region shares fails in each process alike: reported once
        raise ConfigError(list(dict.fromkeys(problems)))
    return learned


def _fork(build: Callable[[list[str]], dict], share: list[str]) -> tuple[int, int]:
    """A child process building `share`; it writes (problems, what `then` learned), pickled, to
    the pipe returned."""
    results, out = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(results)
        os.close(out)
        raise
    if pid:
        os.close(out)
        return pid, results
    os.close(results)
    status = 2
    try:
        try:
            data, status = pickle.dumps(([], build(share))), 0
        except ConfigError as exc:
            data, status = pickle.dumps((exc.problems, {})), 1
        with os.fdopen(out, "wb") as pipe:
            pipe.write(data)
    except BaseException:  # a bug, or interrupted: say what, and the parent reports the exit status
        traceback.print_exc()
        status = 2
    finally:
        os._exit(status)  # never back into the parent's code (its finally blocks, atexit, stdio)


def _results(file: str, pid: int, results: int, share: list[str]) -> tuple[list[Problem], dict]:
    with os.fdopen(results, "rb") as pipe:
        data = pipe.read()  # before waiting: a child blocked on a full pipe would never exit
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code in (0, 1) and data:
        return pickle.loads(data)
    why = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
    return [Problem(file, "", f"{DOING} for region(s) {', '.join(share)}: the build process {why}")], {}
