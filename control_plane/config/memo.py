"""What a config computes once (memo), and what a reload takes over from the config before
(memo_model, inherit): a config is immutable, so both are safe."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import PrivateAttr

from .fields import Strict

if TYPE_CHECKING:
    from .region_config import RegionConfig

T = TypeVar("T")
_TAKEN_OVER = ("models_taken_over",)


class Memoized(Strict):
    """RegionConfig's memos, and the copies of it that try some regions last (`avoiding`).
    inherit and _reuse_key read RegionConfig's models, default_model and openai_models()."""

    # The config is immutable, so what is derived from it is computed once (a reload with
    # 100 models x 40 regions asks for the same policy thousands of times).
    _memo: dict = PrivateAttr(default_factory=dict)
    # Regions the fleet's load reports say to try last (control_plane/lrs.py); never from the file.
    _avoided: frozenset = PrivateAttr(default_factory=frozenset)

    @property
    def avoided(self) -> frozenset[str]:
        return self._avoided

    def avoiding(self, regions: frozenset[str]) -> RegionConfig:
        """This config with `regions` tried last: one copy per set of regions, with memos of its
        own (failover orders, and what is built from them, differ)."""
        regions = frozenset(regions)
        if regions == self._avoided:
            return self

        def make() -> RegionConfig:
            copy = self.model_copy()
            copy._memo = {}
            copy._avoided = regions
            return copy
        return self.memo(("avoiding", regions), make)

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """compute() once per config and key; for derived values and shared built resources."""
        memo = self.__pydantic_private__["_memo"]  # not self._memo: pydantic's __getattr__ is slow
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = compute()
            return value

    def memo_model(self, model: str, key: tuple, compute: Callable[[], T]) -> T:
        """memo() for what is built from one model's spec and the rest of the config, but from
        no other model: a reload whose edit leaves that model (and the rest) as it was takes
        it over from the config before (inherit)."""
        return self.memo(("model", model, *key), compute)

    def inherit(self, previous: RegionConfig) -> int:
        """Take over `previous`'s memo_model() values of every model whose spec is unchanged,
        if nothing outside the models changed either (a global edit rebuilds everything).
        Returns how many models were taken over."""
        if self._reuse_key() != previous._reuse_key():
            return 0
        before, now = previous._model_specs(), self._model_specs()
        same = {m for m in self.models if before.get(m) == now[m]}
        memo = self.__pydantic_private__["_memo"]
        for key, value in dict(previous.__pydantic_private__["_memo"]).items():  # a copy: read off the loop
            if key[0] == "model" and key[1] in same:
                memo.setdefault(key, value)
        memo[_TAKEN_OVER] = len(same)
        return len(same)

    @property
    def models_taken_over(self) -> int:
        """How many models' resources this config took over from the one before (inherit)."""
        return self.__pydantic_private__["_memo"].get(_TAKEN_OVER, 0)

    def _model_specs(self) -> dict[str, str]:
        """Each model's spec as JSON, once per config (compared when it is inherited from and
        when it inherits): dict equality ignores order, and order matters (pins, spreads)."""
        return self.memo(("model_specs",), lambda: {m: spec.model_dump_json() for m, spec in self.models.items()})

    def _reuse_key(self) -> tuple:
        """Everything but the models' own specs that a model's resources may depend on."""
        return self.memo(("reuse_key",), lambda: (
            self.model_dump_json(exclude={"models"}), self.default_model,
            list(self.openai_models().items()), self._avoided))
