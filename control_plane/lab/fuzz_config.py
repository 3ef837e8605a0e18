"""Mutation fuzzing of regions.yaml: does `validate` keep its promises on inputs nobody wrote?

    python -m control_plane.lab.fuzz_config [SEED.yaml ...] [--count N] [--minutes M] [--seed S] [--out DIR]

Each case is a seed file mutated one to three times, in its data (a value replaced by an edge
value of another type, a trailing newline, other digits, a key deleted, a list item doubled, a
container emptied, a name renamed) or in its text (a control character, a tab, a byte-order
mark, a line doubled, the file cut short). It runs through what `validate` runs, in process:
the parse, the rules and the build of every Vertex region's resources. A finding is:

  crash    anything raised but the config error `validate` reports (exit 1)
  words    a problem in the validation library's words, not the project's
  envoy    validate accepts the file, and `envoy --mode validate` refuses what was built
  unstable two builds of the same file differ

Each distinct finding (kind and message, numbers and quoted values masked) is written once to
OUT as NNN-KIND.yaml, with what was seen in NNN-KIND.txt. Envoy's validate mode does not check
everything a live Envoy does; tests/test_config_fuzzed.py keeps what this found. Seeds default to
the compose and demo configs; richer ones cover more sections (docs/CONFIG.md's examples).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from ..config import ConfigError, parse_config
from ..resources import Build, NodeGroup, build_resources
from .envoy_static import envoy_refusal, static_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SEEDS = [ROOT / "deploy/compose/regions.yaml", ROOT / "control_plane/lab/demo_regions.yaml"]
EDGES = [0, -1, 1, 2**31, 2**32, 2**63, 1.5, 1e309, float("nan"), True, False, None, "", " ", "x" * 300,
         "%", "%REQ(x)%", "{", "{verb}", "..", "/", "a b", "a\tb", "a\nb", "é", "١٢", "0s", "1ns", "-1s",
         "0.0000000001s", "9223372036s", "315576000000s", "1.5ms", "yes", "null", [], {}, ["x"], {"x": 1}]
LIBRARY_WORDS = re.compile(r"Input should|should be|Field required|Extra inputs|Value error|Keys should|\[key\]")


def mutate_data(rng: random.Random, data: dict) -> str:
    """One mutation of the parsed file, in place; what it did."""
    nodes = list(_walk(data))
    path, value = rng.choice(nodes)
    parent = _get(data, path[:-1]) if path else None
    kind = rng.choice(["edge", "edge", "newline", "delete", "double", "empty", "rename"])
    if kind == "rename" and isinstance(parent, dict) and isinstance(path[-1], str):
        new = rng.choice([path[-1] + "\n", path[-1].upper(), path[-1].replace("-", "_"), "x" * 70, "a.b", "-x"])
        _rename(data, path[-1], new)
    elif kind == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif kind == "double" and isinstance(value, list) and value:
        value.append(copy.deepcopy(rng.choice(value)))
    elif kind == "empty" and isinstance(value, (dict, list)) and path:
        parent[path[-1]] = type(value)()
    elif kind == "newline" and isinstance(value, str) and path:
        parent[path[-1]] = rng.choice([value + "\n", value + "\r\n", value.translate(str.maketrans("0123456789",
                                                                                                "٠١٢٣٤٥٦٧٨٩"))])
    elif path:
        parent[path[-1]] = copy.deepcopy(rng.choice(EDGES))
    else:
        return "nothing"
    return f"{kind} {'.'.join(map(str, path))}"


def mutate_text(rng: random.Random, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    i = rng.randrange(len(lines))
    kind = rng.choice(["control", "tab", "bom", "double", "cut"])
    if kind == "control":
        lines[i] = lines[i].rstrip("\n") + rng.choice(["\x00", "\x07", "\x1b", "\x7f", "\u2028"]) + "\n"
    elif kind == "tab":
        lines[i] = "\t" + lines[i]
    elif kind == "bom":
        lines[0] = "\ufeff" + lines[0]
    elif kind == "double":
        lines.insert(i, lines[i])
    else:
        lines = lines[:i]
    return "".join(lines)


def check(text: str, workdir: Path) -> tuple[str, str] | None:
    """(kind, detail) of what this file shows, or None when validate keeps its promises on it."""
    try:
        config = parse_config(text)
        build = Build(config)  # what regions share, built once (as validate and serve do)
        built = [build_resources(build, _group(config, r)) for r in config.vertex_regions]
    except ConfigError as exc:
        words = [str(p) for p in exc.problems if LIBRARY_WORDS.search(p.message)]
        return ("words", words[0]) if words else None
    except Exception:  # noqa: BLE001 - what a fuzzer looks for
        return "crash", traceback.format_exc(limit=-3)
    again = parse_config(text)
    build_again = Build(again)
    for resources, region in zip(built, again.vertex_regions, strict=True):
        static = static_config(resources)
        if static != static_config(build_resources(build_again, _group(again, region))):
            return "unstable", f"region {region}: two builds of the file differ"
        refusal = envoy_refusal(resources, workdir)
        if refusal:
            return "envoy", f"region {region}: {refusal[-600:]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m control_plane.lab.fuzz_config", description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="*", type=Path, default=DEFAULT_SEEDS)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seeds = [(path, path.read_text()) for path in args.seeds]
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    deadline = time.monotonic() + args.minutes * 60
    cases = 0
    with tempfile.TemporaryDirectory() as workdir:
        while cases < args.count and time.monotonic() < deadline:
            cases += 1
            path, text = rng.choice(seeds)
            done = []
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.2:
                    text = mutate_text(rng, text)
                    done.append("text")
                    continue
                try:
                    data = yaml.safe_load(text)
                except yaml.YAMLError:
                    break  # a text mutation made it unreadable: checked as it is
                if not isinstance(data, dict):
                    break
                done.append(mutate_data(rng, data))
                text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
            found = check(text, Path(workdir))
            if found is None:
                continue
            kind, detail = found
            signature = kind + ":" + re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "#", detail.splitlines()[-1])[:160]
            if signature in seen:
                continue
            seen.add(signature)
            name = f"{len(seen):03}-{kind}"
            (args.out / f"{name}.yaml").write_text(text)
            (args.out / f"{name}.txt").write_text(f"seed {path}\nmutations {done}\n\n{detail}\n")
            print(f"{name}: {detail.splitlines()[-1][:200]}", file=sys.stderr)
    print(json.dumps({"cases": cases, "findings": len(seen), "out": str(args.out)}))
    return 1 if seen else 0


def _group(config, region: str) -> NodeGroup:
    return NodeGroup(region, config.listener.address, config.listener.port)


def _walk(node, path: tuple = ()):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _get(node, path: tuple):
    for part in path:
        node = node[part]
    return node


def _rename(node, old: str, new: str) -> None:
    """A name renamed everywhere it is used: keys and values alike."""
    if isinstance(node, dict):
        for key in list(node):
            value = node.pop(key)
            _rename(value, old, new)
            node[new if key == old else key] = new if value == old else value
    elif isinstance(node, list):
        node[:] = [new if value == old else value for value in node]
        for value in node:
            _rename(value, old, new)


if __name__ == "__main__":
    sys.exit(main())
