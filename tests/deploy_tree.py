"""The repository's deployment files as data, for the tests that check them against each
other and against the code (tests/test_deploy.py, tests/test_runbook.py)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from control_plane.__main__ import parser as cli_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"


def load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@cache
def k8s_docs() -> list[dict]:
    return [doc for resource in kustomization()["resources"] for doc in load_all(K8S / resource)]


def k8s(kind: str, name: str) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def serve_args(argv: list[str]):
    args = cli_parser().parse_args(argv)  # SystemExit on a flag the CLI does not have
    assert args.command == "serve"
    return args
