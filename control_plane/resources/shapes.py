"""Models alike but for their names and endpoint ids: built once, filled in per model.

Large configs hold many models of one shape: the same regions, strategy, policy and
credentials, only the model's name and its endpoint ids differ. Their resources differ in
those strings only, so a cold build (start-up, `validate`, a global edit) builds one
stand-in model per shape, with unmistakable names (SENTINEL_MODEL, sentinel ids), turns each
of its resources into a wire.Stencil, and writes every member's resources by filling in the
member's name and ids. The first member of each shape is also built the ordinary way (in the
first region built) and must come out byte for byte equal, else the shape is not used
(logged); tests/test_shapes.py checks every member of many shapes in every region.

Not shaped (built the ordinary way): the default model, models on the OpenAI paths,
publisher models, models with a custom backend, shapes of fewer than MIN_MEMBERS models, and
every model of a build that took models over from the build before it (an edit of a few
models rebuilds those few: Build.inherit).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from .. import wire
from ..config import RegionConfig
from ..snapshot import requires, resource_name
from ..wire import Serialized
from .build import Build
from .names import stat_name
from .proto import _alternation, _re_escape

log = logging.getLogger(__name__)

T = TypeVar("T")
Builder = Callable[[Build, str, str], T]  # (build, model, local region) -> resources

MIN_MEMBERS = 4
SENTINEL_MODEL = "zqshapemodelzq"  # a valid model name no regex escaping changes
# The stand-in of a shape whose names hold a '.': that name, escaped for a regex and as a stat
# name (names.stat_name) are three tokens, each filled with the member's name written alike.
SENTINEL_DOTTED = "zqshape.modelzq"
# Strings of these fields are regexes: a token there takes its escaped value.
_REGEX_FIELDS = frozenset({"envoy.type.matcher.v3.RegexMatcher.regex"})


def shaped(build: Build, model: str, local_region: str, kind: str, builder: Builder[T]) -> T | None:
    """builder(build, model, local_region) written from the model's shape; None: not shaped (the
    caller builds it). `kind` names `builder` (one stand-in build per shape, region and kind)."""
    members = _members(build).get(model)
    if members is None:
        return None
    shape = build.memo(("shape", members[0]), lambda: _Shape(build, members))
    return shape.resources(build, model, local_region, kind, builder)


def shaped_models(build: Build) -> set[str]:
    """The models of this build written from a shape (for tests and tools)."""
    return set(_members(build))


def _members(build: Build) -> dict[str, tuple[str, ...]]:
    """model -> the models of its shape, for the models built from a shape (MIN_MEMBERS or more)."""
    def compute() -> dict[str, tuple[str, ...]]:
        if build.models_taken_over:  # an edit of a few models: those few are built the ordinary way
            return {}
        shapes: dict[str, list[str]] = {}
        for model in build.config.models:
            key = _shape_key(build.config, model)
            if key is not None:
                shapes.setdefault(key, []).append(model)
        groups = [tuple(models) for models in shapes.values() if len(models) >= MIN_MEMBERS]
        return {model: members for members in groups for model in members}
    return build.memo(("shapes",), compute)


def _shape_key(config: RegionConfig, model: str) -> str | None:
    spec = config.models[model]
    if (not spec.endpoints or spec.publisher_model or model == config.default_model
            or config.serves_openai(model) or any(config.regions[r].custom for r in spec.endpoints)):
        return None
    # Everything of the spec but the endpoint ids, the regions in their order; whether the name
    # holds a '.' (its clusters then have a stat name: names.stat_name).
    return json.dumps([spec.model_dump(mode="json", exclude={"endpoints"}), list(spec.endpoints), "." in model])


class _Shape:
    """One shape's stand-in model, its resources as stencils, and what was filled from them."""

    def __init__(self, build: Build, members: tuple[str, ...]):
        self.members = members
        config = build.config
        spec = config.models[members[0]]
        ids = {region: f"8{i:04d}7182818284" for i, region in enumerate(spec.endpoints)}
        self.sentinel = SENTINEL_DOTTED if "." in members[0] else SENTINEL_MODEL
        # token -> how a member's name is written where the stand-in's was written so: (in a
        # string, in a regex; an escaped name is already escaped for a regex)
        self._name_forms: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
            self.sentinel: (str, _re_escape)}
        if self.sentinel == SENTINEL_DOTTED:
            self._name_forms.update({_re_escape(SENTINEL_DOTTED): (_re_escape, _re_escape),
                                     stat_name(SENTINEL_DOTTED): (stat_name, lambda m: _re_escape(stat_name(m)))})
        stand_in = config.model_copy(update={"models": {
            **config.models, self.sentinel: spec.model_copy(update={"endpoints": ids, "default": False})}})
        self.stand_in = Build(stand_in, build.avoided)  # a build of its own: its resources differ
        self._build = build
        # A member's name and ids: with a stand-in resource's bytes, all its filled resource depends on.
        self._member_keys = [f"{m} {json.dumps(config.models[m].endpoints)}" for m in members]
        self._ids = ids
        self._alternation = _alternation(sorted(set(ids.values())))
        self._tokens = wire.tokens_pattern([*self._name_forms, *ids.values(), self._alternation])
        self._built: dict[tuple[str, str], object] = {}  # (kind, region) -> the stand-in's resources, or None
        self._checked: dict[str, bool] = {}  # kind -> whether the first member filled in is as built
        # id of a stand-in's resource (or tuple of them) -> (it, its counterpart for every member,
        # in member order): regions share many of the stand-in's resources, so those are filled once.
        self._columns: dict[int, tuple[object, list]] = {}
        self._by_member: dict[tuple[str, str], dict[str, object]] = {}  # (kind, region) -> model -> filled
        self._member_values: list[dict[str, tuple[str, str]]] | None = None

    def resources(self, build: Build, model: str, region: str, kind: str, builder: Builder[T]) -> T | None:
        found = self._by_member.get((kind, region))
        if found is None:  # every member at once: one pass over the stand-in's resources per region
            found = self._by_member[kind, region] = self._fill_all(build, region, kind, builder)
        return found.get(model)

    def _fill_all(self, build: Build, region: str, kind: str, builder: Builder) -> dict[str, object]:
        """model -> its resources for (kind, region); empty: not shaped there."""
        if (kind, region) not in self._built:
            self._built[kind, region] = builder(self.stand_in, self.sentinel, region)
        built = self._built[kind, region]  # None: not shaped in this region
        if self._member_values is None:
            self._member_values = [self._compute_values(build.config, m) for m in self.members]
        try:
            if kind not in self._checked:  # in the first region built: the names enter alike in every region
                self._checked[kind] = self._check(build, region, kind, builder, built)
            if not self._checked[kind] or built is None:
                return {}
            return dict(zip(self.members, self._column(built)))
        except wire.StencilError as exc:  # a resource of another region than the one checked
            log.warning("model shape not used for %s in region %s: %s", kind, region, exc)
            self._built[kind, region] = None
            return {}

    def _check(self, build: Build, region: str, kind: str, builder: Builder, built: object) -> bool:
        """The first member filled in equals the first member built: else this shape is not used."""
        first = self.members[0]
        try:
            ok = _same(self._column(built)[0], builder(build, first, region))
        except wire.StencilError as exc:
            log.warning("model shape not used (%s): %s", first, exc)
            return False
        if not ok:
            log.warning("model shape not used: %s filled in differs from %s built (%s, region %s)",
                        first, first, kind, region)
        return ok

    def _compute_values(self, config: RegionConfig, model: str) -> dict[str, tuple[str, str]]:
        """token -> (the model's value, escaped for a regex)."""
        endpoints = config.models[model].endpoints
        values = {self._alternation: (alternation := _alternation(sorted(set(endpoints.values()))), alternation)}
        values.update({sentinel: (endpoints[r], _re_escape(endpoints[r])) for r, sentinel in self._ids.items()})
        for token, (plain, in_regex) in self._name_forms.items():
            values[token] = (plain(model), in_regex(model))
        return values

    def _column(self, built: object) -> list:
        """Every member's counterpart of the stand-in's resources `built` (a resource or nested
        tuples of them), in member order."""
        found = self._columns.get(id(built))
        if found is None:
            if type(built) is tuple:  # the items' columns, turned into one tuple per member (in C)
                column = list(zip(*map(self._column, built))) if built else [()] * len(self.members)
            else:
                column = self._fill(built)
            found = self._columns[id(built)] = (built, column)  # `built` kept: its id stays its own
        return found[1]

    def _fill(self, built: Message | Serialized) -> list:
        """The stand-in resource `built` filled for every member. What was filled from the same
        bytes for the same member (by another shape, or the build before: a global edit that left
        this resource as it was) is taken over."""
        data = wire.bytes_of(built)
        mine, before = self._build.content(("shape fills", _message_type(built), data))
        keys = self._member_keys
        missing = [i for i, key in enumerate(keys) if key not in mine and key not in before]
        if missing:
            filled = _Mold(built, data, self._tokens).fill_all([self._member_values[i] for i in missing])
            mine.update(zip([keys[i] for i in missing], filled))
        if len(missing) < len(keys):
            for key in keys:
                if key not in mine:
                    mine[key] = before[key]
        return [mine[key] for key in keys]


def _message_type(built: Message | Serialized) -> type[Message]:
    return built.message_type if isinstance(built, Serialized) else type(built)


class _Mold:
    """One resource of the stand-in model, ready to be written for another model."""

    def __init__(self, built: Message | Serialized, data: bytes, tokens: re.Pattern):
        self.message_type = _message_type(built)
        self.write = wire.Stencil(data, self.message_type.DESCRIPTOR, tokens, _REGEX_FIELDS).fill
        self.name = tokens.split(resource_name(built))
        self.requires = tuple((type_url, tokens.split(name)) for type_url, name in requires(built))

    def fill_all(self, members: list[dict[str, tuple[str, str]]]) -> list[Serialized]:
        """The resource written for each member (given each member's token values)."""
        write, message_type, name, requires = self.write, self.message_type, self.name, self.requires
        if len(name) == 1 and all(len(parts) == 1 for _, parts in requires):  # names without tokens
            fixed = tuple((type_url, parts[0]) for type_url, parts in requires)
            return [Serialized(name[0], write(values), message_type, fixed) for values in members]
        return [Serialized(_joined(name, values), write(values), message_type,
                           tuple((type_url, _joined(parts, values)) for type_url, parts in requires))
                for values in members]


def _joined(parts: list[str], values: dict[str, tuple[str, str]]) -> str:
    """A name split at the tokens, with each token's value."""
    if len(parts) == 3:  # one token: most names (model/<model>/...)
        return parts[0] + values[parts[1]][0] + parts[2]
    if len(parts) == 1:
        return parts[0]
    return "".join([part if i % 2 == 0 else values[part][0] for i, part in enumerate(parts)])


def _same(filled: object, built: object) -> bool:
    if isinstance(built, (tuple, list)):
        return isinstance(filled, tuple) and len(filled) == len(built) and all(map(_same, filled, built))
    return (wire.bytes_of(filled) == wire.bytes_of(built) and resource_name(filled) == resource_name(built)
            and filled.requires == requires(built))
