"""The whole regions.yaml (RegionConfig): its sections, and what is derived from them
(hosts, credentials, merged policies, the OpenAI door's models, the version).

Data only: what is built from a config lives in a build of it (resources/build.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import BeforeValidator, Field, PrivateAttr

from .auth import DEFAULT_PROFILE, Auth
from .clients import Clients
from .fields import Strict, check_ip, check_project
from .models import Model, OpenAI
from .observability import Observability
from .policy import Policy
from .regions import BackendCredential, Region, default_host

T = TypeVar("T")


class Listener(Strict):
    address: Annotated[str, BeforeValidator(check_ip)] = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)


class RegionConfig(Strict):
    # "id or number": an unquoted project number arrives as an int
    project: Annotated[str, BeforeValidator(check_project)]
    listener: Listener = Listener()
    regions: dict[str, Region]
    models: dict[str, Model]
    policy: Policy = Policy()
    auth: Auth = Auth()
    clients: Clients | None = None  # None: no client authentication (serve warns off loopback)
    openai: OpenAI = OpenAI()
    observability: Observability = Observability()

    # The config is immutable, so the cheap values derived from it alone (merged policies, the
    # version, ...) are computed once: a build asks for the same policy thousands of times.
    # Never anything built from it (resources/build.py holds that).
    _derived: dict = PrivateAttr(default_factory=dict)

    def model_copy(self, *, update=None, deep: bool = False) -> RegionConfig:
        copy = super().model_copy(update=update, deep=deep)
        copy._derived = {}  # derived from this config's values, not the copy's (a copy would share the dict)
        return copy

    def _once(self, key: tuple, compute: Callable[[], T]) -> T:
        derived = self.__pydantic_private__["_derived"]  # not self._derived: pydantic's __getattr__ is slow
        try:
            return derived[key]
        except KeyError:
            value = derived[key] = compute()
            return value

    def host_of(self, region: str) -> str:
        spec = self.regions[region]
        if spec.custom:
            return spec.host or spec.address  # an IP with TLS needs `host` (a rule says so)
        return spec.host or default_host(region)

    @property
    def vertex_regions(self) -> list[str]:
        """Regions an Envoy can be in (custom backends have no Envoy of their own)."""
        return [name for name, spec in self.regions.items() if not spec.custom]

    def backend_credential(self, region: str) -> BackendCredential:
        return self.regions[region].credential or BackendCredential()

    def credential_for(self, model: str, region: str) -> str | None:
        """The credential an attempt to `region` for `model` carries: an auth profile's name (its
        access token), `backend/{name}` (a custom backend's own header or ID token), or None."""
        if not self.regions[region].custom:
            return self.profile_for(model, region)
        kind = self.backend_credential(region).type
        if kind == "none":
            return None
        if kind == "access_token":
            return self.regions[region].auth or DEFAULT_PROFILE
        return f"backend/{region}"

    def backends_in_use(self) -> list[str]:
        """Custom backends some model uses whose credential is their own (a header or an ID token)."""
        return self._once(("backends",), lambda: sorted(
            {r for spec in self.models.values() for r in spec.served_regions
             if self.regions[r].custom and self.backend_credential(r).type in ("header", "id_token")}))

    def audience_of(self, region: str) -> str:
        return self.backend_credential(region).audience or f"https://{self.host_of(region)}"

    @property
    def default_model(self) -> str:
        return next(name for name, model in self.models.items() if model.default)

    def profile_for(self, model: str, region: str) -> str:
        """The credentials profile an attempt to `region` for `model` uses."""
        return self.models[model].auth or self.regions[region].auth or DEFAULT_PROFILE

    def profiles_in_use(self) -> list[str]:
        """Profiles whose access token some attempt carries (a backend's ID token is its own)."""
        def compute() -> list[str]:
            used = {self.credential_for(m, r) for m, spec in self.models.items() for r in spec.served_regions}
            return sorted(c for c in used if c is not None and not c.startswith("backend/"))
        return self._once(("profiles",), compute)

    def policy_for(self, model: str, region: str) -> Policy:
        """Defaults, then the region's overrides, then the model's (the most specific wins).
        Pairs with the same overrides share one Policy object (most pairs have none), so what
        is built from a policy can be memoized by its identity."""
        region_override, model_override = self.regions[region].policy, self.models[model].policy
        return self._once(("policy", id(region_override), id(model_override)),
                          lambda: self.policy.merged(region_override, model_override))

    def openai_models(self) -> dict[str, str]:
        """What POST /v1/chat/completions serves: the body's "model" -> the model key."""
        names = self.openai.models
        if names is None:
            names = [m for m, spec in self.models.items() if spec.publisher_model]
        return {self.models[m].publisher_model: m for m in names}  # type: ignore[misc]

    def openai_endpoint_models(self) -> list[str]:
        return list(self.openai.endpoint_models)

    def serves_openai(self, model: str) -> bool:
        """Whether the model is reachable on an OpenAI-compatible path (its clusters rewrite those)."""
        served = self._once(("openai_served",), lambda: set(self.openai_models().values())
                            | set(self.openai_endpoint_models()))
        return model in served

    @property
    def version(self) -> str:
        return self._once(("version",), lambda: hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12])
