"""models: what each model is (endpoints or a publisher model), where it is served and how;
openai: which models the OpenAI-compatible door serves."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictBool

from .fields import Strict
from .policy import PolicyOverride

VERBS = ("predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict")
PUBLISHER_VERBS = ("generateContent", "streamGenerateContent", "countTokens", "rawPredict", "streamRawPredict")
# Answered as a stream: no whole-response timeout, failover only before the first byte.
STREAMING_VERBS = frozenset({"streamRawPredict", "serverStreamingPredict", "streamGenerateContent"})


class Model(Strict):
    default: StrictBool = False  # `default: yes` is a string in YAML 1.2; say so rather than "no default"
    endpoints: dict[str, Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]] = {}
    publisher_model: str | None = None
    regions: list[str] = []
    policy: PolicyOverride | None = None
    auth: str | None = None  # a profile under auth.profiles; wins over the region's
    # failover: local region first, then its failover list. weighted: first attempts spread by
    # `weights`. least_request: spread by outstanding requests. Retries always go elsewhere.
    strategy: Literal["failover", "weighted", "least_request"] = "failover"
    weights: dict[str, Annotated[int, Field(ge=0, le=1000)]] = {}
    # Capacity tiers per region, tried in this order before the next region (publisher models):
    # dedicated = Provisioned Throughput only, shared = pay-as-you-go, priority = Priority PayGo,
    # default = no tier header (Vertex's own PT-then-spillover). Clients' tier headers are replaced.
    tiers: dict[str, Annotated[list[Literal["dedicated", "shared", "priority", "default"]],
                               Field(min_length=1)]] = {}

    @property
    def served_regions(self) -> list[str]:
        return list(self.endpoints) if self.endpoints else list(self.regions)


class OpenAI(Strict):
    """The OpenAI-compatible front door (POST /v1/chat/completions). Its regions, their order
    and policy are each listed model's own: the door only says which models a client may name."""

    # Keys under `models:` of publisher models; a client names one in the body by its
    # publisher_model ("google/gemini-2.0-flash"). None: every publisher model; []: none.
    models: list[str] | None = None
    # Keys under `models:` of endpoint models whose container speaks the OpenAI API (vLLM, TGI):
    # served at /v1/models/{model}/chat/completions, /completions, /embeddings.
    endpoint_models: list[str] = []
