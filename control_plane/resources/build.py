"""One build of a config's resources: what is built once and shared by every node group (memo),
and what a reload takes over from the build before (memo_model, content, inherit).

The config is data only; what is built from it lives here, owned by the snapshot cache, so
that what a reload replaces is this object (freed off the push, cache.retire) and two builds
of one config share nothing through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TypeVar

from ..config import RegionConfig

T = TypeVar("T")
_NONE: Mapping = MappingProxyType({})


class Build:
    """The resources built from `config` with `avoided` tried last, memoized for every node group."""

    def __init__(self, config: RegionConfig, avoided: frozenset[str] = frozenset()):
        self.config = config
        # Regions the fleet's load reports say to try last (control_plane/lrs.py); never from the file.
        self.avoided = frozenset(avoided)
        # A config is immutable, so what is built from it is built once (a reload with 100
        # models x 40 regions asks for the same pieces thousands of times).
        self._memo: dict = {}
        self.models_taken_over = 0  # how many models' resources inherit() took over
        self._before: Build | None = None  # while building: the build before (content)

    def __repr__(self) -> str:
        return f"Build(config {self.config.version}, avoided {sorted(self.avoided)})"

    def avoiding(self, regions: frozenset[str]) -> Build:
        """A build of this config with `regions` tried last: one per set of regions, kept by this
        one (failover orders, and what is built from them, differ; going back to a set is free)."""
        regions = frozenset(regions)
        if regions == self.avoided:
            return self
        return self.memo(("avoiding", regions), lambda: Build(self.config, regions))

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """compute() once per build and key; for built resources and the pieces they share."""
        memo = self._memo
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = compute()
            return value

    def memo_model(self, model: str, key: tuple, compute: Callable[[], T]) -> T:
        """memo() for what is built from one model's spec and the rest of the config, but from
        no other model: a reload whose edit leaves that model (and the rest) as it was takes
        it over from the build before (inherit)."""
        return self.memo(("model", model, *key), compute)

    def content(self, key: tuple) -> tuple[dict, Mapping]:
        """A store whose entries are determined entirely by `key` and their own key (e.g. a shape
        stand-in's bytes and a member's name and ids: the member's filled resource). Returns
        this build's store, and the build before's to take entries over from, whatever the
        edit changed, even a global one (inherit)."""
        key = ("content", *key)
        mine = self._memo.get(key)
        if mine is None:
            mine = self._memo[key] = {}
        return mine, (self._before._memo.get(key, _NONE) if self._before is not None else _NONE)

    def built(self) -> None:
        """The build is done: let go of the build before (content() no longer looks there)."""
        self._before = None

    def inherit(self, previous: Build) -> int:
        """Take over `previous`'s memo_model() values of every model whose spec is unchanged,
        if nothing outside the models changed either (a global edit rebuilds everything).
        Returns how many models were taken over. Until built(), content() looks in `previous`
        too; an edit of a few models keeps all of it (it builds those few without it), for the
        global edit after it."""
        self._before = previous
        if self._reuse_key() != previous._reuse_key():
            return 0
        before, now = previous._model_specs(), self._model_specs()
        same = {m for m in self.config.models if before.get(m) == now[m]}
        memo = self._memo
        for key, value in list(previous._memo.items()):  # a copy: read off the loop
            if key[0] == "content":
                memo.setdefault(key, dict(value))  # a store of its own: this build may add to it
            elif key[0] == "model" and key[1] in same:
                memo.setdefault(key, value)
        self.models_taken_over = len(same)
        return len(same)

    def _model_specs(self) -> dict[str, str]:
        """Each model's spec as JSON, once per build (compared when it is inherited from and
        when it inherits): dict equality ignores order, and order matters (pins, spreads)."""
        return self.memo(("model_specs",), lambda: {
            m: spec.model_dump_json() for m, spec in self.config.models.items()})

    def _reuse_key(self) -> tuple:
        """Everything but the models' own specs that a model's resources may depend on."""
        config = self.config
        return self.memo(("reuse_key",), lambda: (
            config.model_dump_json(exclude={"models"}), config.default_model,
            list(config.openai_models().items()), self.avoided))
