"""The `discover` and `validate --online` commands and their arguments."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

from ..config import RegionConfig
from .client import ANONYMOUS_ENV, DiscoveryError, _aiplatform, check_region_name, credentials_for_cli, list_endpoints
from .grouping import group_endpoints
from .merge import check_regions_defined, merge, read_target, write_atomically
from .online import validate_online
from .render import render


def validate_online_command(file: str, config: RegionConfig, *, api_endpoint: str | None = None,
                            out: TextIO = sys.stdout, credentials: Any = None) -> int:
    """`validate --online` after the offline check passed: 0 when every endpoint is there and deployed."""
    try:
        if credentials is None and os.environ.get(ANONYMOUS_ENV) == "1":
            credentials = credentials_for_cli()
        _aiplatform()
        report = validate_online(config, file, credentials=credentials, api_endpoint=api_endpoint)
    except DiscoveryError as exc:
        print(f"{file}: online check failed: {exc}", file=out)
        return 1
    for warning in report.warnings:
        print(f"{file}: warning: {warning}", file=out)
    if report.problems:
        print(f"{file}: online: {len(report.problems)} problem(s) in project {config.project}:", file=out)
        for problem in report.problems:
            print(f"  {problem}", file=out)
        return 1
    regions = len({r for m in config.models.values() for r in m.endpoints})
    print(f"{file}: online: OK: {report.checked} endpoint(s) in {regions} region(s) of project {config.project} "
          f"exist and have a deployed model", file=out)
    return 0


def discover_command(args: argparse.Namespace, *, credentials: Any = None) -> int:
    """`python -m control_plane discover`."""
    try:
        regions = [r.strip() for value in args.region or [] for r in value.split(",") if r.strip()]
        project = args.project
        if args.write:
            _text, data = read_target(args.write)
            regions = regions or [str(r) for r in data["regions"]]
            check_regions_defined(args.write, data, regions)
            file_project = str(data.get("project") or "")
            if project and file_project and project != file_project:
                print(f"discover: warning: --project {project} but {args.write} says project {file_project}",
                      file=sys.stderr)
            project = project or file_project
        if not project:
            print("discover: --project is required (or --write FILE whose project: is set)", file=sys.stderr)
            return 2
        if not regions:
            print("discover: give at least one --region (or --write FILE to use its regions)", file=sys.stderr)
            return 2
        regions = list(dict.fromkeys(regions))
        for region in regions:
            check_region_name(region)
        _aiplatform()
        if credentials is None:
            credentials = credentials_for_cli(args.credentials)
        endpoints = list_endpoints(project, regions, credentials=credentials, api_endpoint=args.api_endpoint,
                                   display_name=args.display_name)
        groups = group_endpoints(endpoints, regions)
        sys.stdout.write(render(project, regions, endpoints, groups))
        if args.display_name is not None and not endpoints:
            print(f"discover: no endpoint named {args.display_name!r} in project {project} region(s) "
                  f"{', '.join(regions)}", file=sys.stderr)
            return 1
        if args.write:
            result = merge(args.write, groups)
            for warning in result.warnings:
                print(f"discover: warning: {warning}", file=sys.stderr)
            if not result.changed:
                print(f"discover: {args.write}: already up to date", file=sys.stderr)
                return 0
            write_atomically(args.write, result.text)
            print(f"discover: {args.write}: {len(result.changes)} change(s):", file=sys.stderr)
            for change in result.changes:
                print(f"  {change}", file=sys.stderr)
    except DiscoveryError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return 1
    return 0
