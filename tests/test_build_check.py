"""`validate`'s build of every region, shared out between processes (control_plane/build_check.py):
each region built once, in some process; a problem found in a child reported as in one process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from control_plane.build_check import build_every_region
from control_plane.config import ConfigError
from control_plane.resources import build_serialized

from .config_problems import load
from .configs import CONFIG

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="forks on Linux only")


def recording(log: Path, fail: dict[str, str] | None = None):
    """The product's builder, noting each region it builds in `log` (written from every process)
    and failing as told for some regions (exception message, or 'die' to kill the process)."""
    def builder(build, group):
        with open(log, "a") as out:
            out.write(f"{os.getpid()} {group.region}\n")
        how = (fail or {}).get(group.region)
        if how == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if how:
            raise RuntimeError(how)
        return build_serialized(build, group)
    return builder


def built(log: Path) -> list[tuple[int, str]]:
    return [(int(pid), region) for pid, region in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_every_region_is_built_once(tmp_path, processes):
    config = load(tmp_path, CONFIG)
    log = tmp_path / "built.log"
    build_every_region("regions.yaml", config, processes=processes, builder=recording(log))
    records = built(log)
    assert sorted(region for _, region in records) == sorted(config.vertex_regions)
    assert len({pid for pid, _ in records}) == processes
    assert os.getpid() in {pid for pid, _ in records}  # this process builds a share too


def test_a_problem_in_a_child_is_reported_with_the_parents(tmp_path):
    config = load(tmp_path, CONFIG)
    regions = list(config.vertex_regions)  # with 2 processes, regions[1] is built by the child
    log = tmp_path / "built.log"
    fail = {regions[0]: "no route for housing", regions[1]: "no cluster for churn"}
    with pytest.raises(ConfigError) as info:
        build_every_region("regions.yaml", config, processes=2, builder=recording(log, fail))
    messages = [str(p) for p in info.value.problems]
    assert len(messages) == 2, messages
    assert all(m.startswith("regions.yaml: (top): cannot build Envoy resources: RuntimeError: ") for m in messages)
    assert "no route for housing" in messages[0] and "no cluster for churn" in messages[1]
    assert {region for pid, region in built(log) if pid != os.getpid()} >= {regions[1]}


def test_a_child_that_dies_is_a_problem_naming_its_regions(tmp_path):
    config = load(tmp_path, CONFIG)
    regions = list(config.vertex_regions)
    with pytest.raises(ConfigError) as info:
        build_every_region("regions.yaml", config, processes=2,
                           builder=recording(tmp_path / "built.log", {regions[1]: "die"}))
    [problem] = info.value.problems
    assert problem.message == f"cannot build Envoy resources for region(s) {regions[1]}: the build process " \
                              "killed by signal 9"


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1)])
def test_usable_cpus_respects_a_containers_cpu_quota(tmp_path, cpu_max, expected):
    from control_plane.build_check import usable_cpus

    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "cpu.max") == (affinity if expected is None else min(affinity, expected))
    assert usable_cpus(tmp_path / "missing") == affinity


def test_a_problem_every_process_finds_is_reported_once(tmp_path):
    config = load(tmp_path, CONFIG)
    fail = dict.fromkeys(config.vertex_regions, "no listener")  # alike in every region
    with pytest.raises(ConfigError) as info:
        build_every_region("regions.yaml", config, processes=3, builder=recording(tmp_path / "log", fail))
    assert len(info.value.problems) == 1


def test_what_then_learns_is_merged_and_its_failure_is_no_verdict(tmp_path, capfd):
    config = load(tmp_path, CONFIG)
    learned = build_every_region("regions.yaml", config, processes=2,
                                 then=lambda cache: {r: os.getpid() for r in cache.region_clusters()})
    assert set(learned) == set(config.vertex_regions) and len(set(learned.values())) == 2

    def broken(cache):
        raise RuntimeError("estimate failed")
    assert build_every_region("regions.yaml", config, processes=2, then=broken) == {}
    assert "note: RuntimeError after the build: estimate failed" in capfd.readouterr().err
