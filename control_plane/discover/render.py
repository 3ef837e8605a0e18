"""The `models:` section `discover` prints."""

from __future__ import annotations

import io

from .client import Endpoint
from .grouping import Group
from .messages import _quote


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold an operator's long lines
    return yaml


def _quoted(value: str):
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    return DoubleQuotedScalarString(value)


def _model_node(group: Group, ids: dict[str, str]):
    from ruamel.yaml.comments import CommentedMap

    endpoints = CommentedMap((region, _quoted(endpoint_id)) for region, endpoint_id in ids.items())
    node = CommentedMap([("endpoints", endpoints)])
    return node


def render(project: str, regions: list[str], endpoints: list[Endpoint], groups: list[Group]) -> str:
    """The listing (as YAML comments) and a `models:` section ready for regions.yaml."""
    from ruamel.yaml.comments import CommentedMap

    out = io.StringIO()
    out.write(f"# Vertex AI endpoints in project {project}, region(s) {', '.join(regions)}\n")
    width = max((len(e.id) for e in endpoints), default=0)
    for region in regions:
        here = sorted((e for e in endpoints if e.region == region), key=lambda e: (e.display_name, e.id))
        out.write(f"#\n# {region}: {len(here)} endpoint(s)\n")
        for endpoint in here:
            deployed = "; ".join(m.describe() for m in endpoint.deployed_models) or "no deployed model"
            out.write(f"#   {endpoint.id:<{width}}  {_quote(endpoint.display_name)}  deployed: {deployed}\n")
            for line in endpoint.details():
                out.write(f"#   {'':<{width}}    {line}\n")
    notes = [note for group in groups for note in group.notes]
    if notes:
        out.write("#\n# notes:\n" + "".join(f"#   {note}\n" for note in notes))
    models = CommentedMap()
    column = 2 + max((len(g.key) for g in groups), default=0) + 3
    for group in groups:
        if group.endpoints:
            models[group.key] = _model_node(group, group.ids)
            models.yaml_add_eol_comment(f"display name {_quote(group.display_name)}", group.key, column=column)
    if not models:
        out.write("#\n# no endpoint with a deployed model: nothing for models:\n")
        return out.getvalue()
    out.write("#\n# for regions.yaml (every region must be defined under regions:, and exactly one model "
              "needs `default: true`):\n")
    _yaml().dump({"models": models}, out)
    return out.getvalue()
