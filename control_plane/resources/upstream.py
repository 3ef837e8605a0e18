"""What runs once per attempt on the cluster a route names: copy the chosen host's
metadata into temporary headers, inject that region's token, rewrite :path and
:authority (unless the route's own rewrite already fits the attempt). Also the access
tokens as SDS secrets."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    base_pb2,
)
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.injected_credentials.generic.v3 import (
    generic_pb2 as generic_credential_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from .names import (
    ATTEMPT_HEADER,
    CREDENTIAL_HEADER,
    METADATA_KEYS,
    METADATA_NAMESPACE,
    REGION_HEADER,
    TEMP_HEADERS,
)
from .proto import (
    _ads,
    _any,
    _header,
)

# Runs once per attempt, after the host is chosen. :path may already hold the previous
# attempt's rewrite (header edits persist across attempts), so the client's verb and query
# are kept in the request's dynamic metadata the first time it runs (a custom backend's path
# need not end in ":verb"); failing that, they are taken from :path. When the route rewrote
# the path (names.route_region), that is the route's ".../endpoints/ID:verb?query", whose verb
# and query are the client's. The rest
# comes from the chosen host's metadata: a Vertex region's endpoint_path + ":" + verb, or a
# custom backend's upstream_path with "{verb}" replaced.
_REWRITE_HEAD = """
function envoy_on_request(h)
  local hd = h:headers()
  local ep, authority = hd:get("x-vertex-endpoint-path"), hd:get("x-vertex-host")
  local up = hd:get("x-vertex-upstream-path")
  hd:remove("x-vertex-endpoint-path"); hd:remove("x-vertex-host"); hd:remove("x-vertex-region")
  hd:remove("x-vertex-credential"); hd:remove("x-vertex-upstream-path"); hd:remove("x-vertex-attempt-region")
  if up == "" then up = nil end
  -- A model with capacity tiers sets this attempt's tier (its metadata says which); the client's
  -- own tier headers are then replaced. Without tiers there is no metadata: they are kept.
  local tier = hd:get("x-vertex-tier")
  hd:remove("x-vertex-tier")
  if tier ~= nil and tier ~= "" then
    hd:remove("x-vertex-ai-llm-request-type"); hd:remove("x-vertex-ai-llm-shared-request-type")
    if tier == "dedicated" or tier == "shared" then
      hd:add("x-vertex-ai-llm-request-type", tier)
    elseif tier == "priority" then
      hd:add("x-vertex-ai-llm-request-type", "shared")
      hd:add("x-vertex-ai-llm-shared-request-type", "priority")
    end
  end
  if ((ep == nil or ep == "") and up == nil) or authority == nil or authority == "" then
    h:respond({[":status"] = "502", ["content-type"] = "application/json"},
      '{"error": {"code": 502, "message": "selected upstream has no vertex metadata"}}')
    return
  end
  local meta = h:streamInfo():dynamicMetadata()
  local client = meta:get("vertex.client")
  local verb, query
"""
# How :path is made from the client's verb (kept in metadata from the first attempt).
_CLIENT_VERB = """  if client ~= nil and client["verb"] ~= nil then
    verb, query = client["verb"], client["query"]
  else
    local path = hd:get(":path")
    query = string.match(path, "%?.*$") or ""
    verb = string.match(string.sub(path, 1, #path - #query), ":(%a+)$") or "predict"
    meta:set("vertex.client", "verb", verb)
    meta:set("vertex.client", "query", query)
  end
  if up ~= nil then
    hd:replace(":path", (string.gsub(up, "{verb}", verb)) .. query)
  else
    hd:replace(":path", ep .. ":" .. verb .. query)
  end
"""
_REWRITE_TAIL = """  hd:replace(":authority", authority)
end
"""
REWRITE_LUA = _REWRITE_HEAD + _CLIENT_VERB + _REWRITE_TAIL

# For a model also served on an OpenAI-compatible path (resources/openai.py): such a path ends in
# an operation instead of a verb; the operation goes after the region's endpoint path, a
# publisher model's being that region's endpoints/openapi, and the API version (v1, v1beta1)
# stays the client's. Other models keep the shorter script.
OPENAI_REWRITE_LUA = _REWRITE_HEAD + """  local op, beta
  if client ~= nil and client["verb"] ~= nil then
    verb, query, op, beta = client["verb"], client["query"], client["op"], client["beta"]
  else
    local path = hd:get(":path")
    query = string.match(path, "%?.*$") or ""
    local base = string.sub(path, 1, #path - #query)
    verb = string.match(base, ":(%a+)$")
    if not verb then
      op = base:match("/chat/completions$") or base:match("/completions$") or base:match("/embeddings$")
    end
    beta = (base:sub(1, 9) == "/v1beta1/") and "1" or "0"
    verb = verb or "predict"
    meta:set("vertex.client", "verb", verb)
    meta:set("vertex.client", "query", query)
    meta:set("vertex.client", "beta", beta)
    if op then meta:set("vertex.client", "op", op) end
  end
  if up ~= nil then
    hd:replace(":path", (string.gsub(up, "{verb}", verb)) .. query)
  elseif op then
    ep = ep:gsub("/publishers/.*$", "/endpoints/openapi")
    if beta == "1" then ep = "/v1beta1" .. ep:sub(4) end
    hd:replace(":path", ep .. op .. query)
  else
    hd:replace(":path", ep .. ":" .. verb .. query)
  end
""" + _REWRITE_TAIL


def token_secret_name(profile: str) -> str:
    return f"token/{profile}"


def token_secret(profile: str, token: str) -> secret_pb2.Secret:
    """An access token as an SDS secret. The value carries the "Bearer " prefix because this
    API snapshot lacks Generic.header_value_prefix."""
    return secret_pb2.Secret(name=token_secret_name(profile), generic_secret=secret_pb2.GenericSecret(
        secret=base_pb2.DataSource(inline_string=f"Bearer {token}")))


@dataclass(frozen=True)
class Injection:
    """One credential an attempt may carry: chosen by the endpoint's `credential` metadata
    (`key`), its value an SDS secret, set as `header`."""

    key: str
    secret: str
    header: str = "authorization"


def credential_secret(key: str, value: str) -> secret_pb2.Secret:
    """The SDS secret for a credential key: an auth profile's access token (token/{profile},
    "Bearer " added), or a custom backend's header value as it is sent (backend/{name})."""
    if key.startswith("backend/"):
        return secret_pb2.Secret(name=key, generic_secret=secret_pb2.GenericSecret(
            secret=base_pb2.DataSource(inline_string=value)))
    return token_secret(key, value)


def credential_secret_name(key: str) -> str:
    return key if key.startswith("backend/") else token_secret_name(key)


def _credential_injector(profile: str | Injection) -> credential_injector_pb2.CredentialInjector:
    injection = profile if isinstance(profile, Injection) else Injection(profile, token_secret_name(profile))
    return credential_injector_pb2.CredentialInjector(
        overwrite=True,  # the client's own Authorization is replaced, never forwarded
        credential=core_extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic",
            typed_config=_any(generic_credential_pb2.Generic(
                header=injection.header,
                credential=secret_pb2.SdsSecretConfig(name=injection.secret, sds_config=_ads())))))


def _only_for_profile(profile: str, injector: credential_injector_pb2.CredentialInjector) -> Message:
    """Run the injector only on attempts whose chosen region uses this profile."""
    return _when(CREDENTIAL_HEADER, xds_string_pb2.StringMatcher(exact=profile), core_extension_pb2.TypedExtensionConfig(
        name="envoy.filters.http.credential_injector", typed_config=_any(injector)))


def _when(header: str, matcher: xds_string_pb2.StringMatcher, extension: core_extension_pb2.TypedExtensionConfig,
          on_match: bool = True) -> Message:
    """`extension`, run only on attempts whose `header` matches (on_match) or does not; skipped
    on the others."""
    skip = xds_matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=_any(skip_action_pb2.SkipFilter())))
    header_matches = xds_matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=xds_matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=xds_extension_pb2.TypedExtensionConfig(
                name=header, typed_config=_any(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=header))),
            value_match=matcher))
    skip_when = xds_matcher_pb2.Matcher.MatcherList.Predicate(not_matcher=header_matches) if on_match else header_matches
    return extension_matcher_pb2.ExtensionWithMatcher(
        extension_config=extension,
        xds_matcher=xds_matcher_pb2.Matcher(matcher_list=xds_matcher_pb2.Matcher.MatcherList(matchers=[
            xds_matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=skip_when, on_match=skip)])))


def upstream_filters(profiles: list[str | Injection], uncredentialed: bool = False,
                     openai: bool = False, fitted: str | None = None) -> list[hcm_pb2.HttpFilter]:
    """profiles: the credentials attempts of this cluster carry (an auth profile's name, or an
    Injection for a custom backend's own). uncredentialed: some attempt carries none (a custom
    backend with `credential: none`), so no injector may run unconditionally. openai: the
    cluster's model is also served on OpenAI-compatible paths (a longer rewrite). fitted: the
    routes naming this cluster rewrite for a region themselves (names.route_region): how an
    attempt's header starts when the request already fits that region (names.fitted_prefix)."""
    return list(_upstream_filters(tuple(profiles), uncredentialed, openai, fitted))


@functools.lru_cache(maxsize=256)  # the same few filter chains for every cluster of a build
def _upstream_filters(profiles: tuple[str | Injection, ...], uncredentialed: bool = False,
                      openai: bool = False, fitted: str | None = None) -> tuple[hcm_pb2.HttpFilter, ...]:
    """Per-attempt filters on the aggregate cluster, in order: copy the chosen host's metadata
    into temporary headers, inject that region's token, rewrite :path/:authority, encode.

    With `fitted`, an attempt sent to the route's region whose request already carries that
    region's path and host (the route wrote them, as a static route would: the first attempt)
    skips the copy and the rewrite: the Lua is a coroutine and a dozen crossings per attempt,
    an eighth of Envoy's instructions per request (docs/BENCHMARKS.md). The test is on the
    request itself, not on which region the route meant: a route and a cluster from two
    versions of the config (Envoy applies them apart) cannot make an attempt skip wrongly."""
    copy = [_header(name, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{key})%")
            for name, key in zip(TEMP_HEADERS, METADATA_KEYS)]
    rewrite = core_extension_pb2.TypedExtensionConfig(name="envoy.filters.http.lua", typed_config=_any(lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=OPENAI_REWRITE_LUA if openai else REWRITE_LUA))))
    if fitted is None:
        return (_scrub(profiles, copy), *_injectors(profiles, uncredentialed),
                hcm_pb2.HttpFilter(name=rewrite.name, typed_config=rewrite.typed_config), _CODEC)
    fits = xds_string_pb2.StringMatcher(prefix=fitted)
    attempt = _header(ATTEMPT_HEADER, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:region)%>%REQ(:AUTHORITY)%>%REQ(:PATH)%")
    credential = [h for h in copy if h.header.key == CREDENTIAL_HEADER] if _matched_injectors(
        profiles, uncredentialed) else []
    # The rewrite's inputs (the region is only removed again, like the other temporary headers).
    rest = [h for h in copy if h.header.key not in (CREDENTIAL_HEADER, REGION_HEADER)]
    copy_rest = _mutation([mutation_rules_pb2.HeaderMutation(append=h) for h in rest])
    done = _mutation([mutation_rules_pb2.HeaderMutation(remove=name) for name in (ATTEMPT_HEADER, CREDENTIAL_HEADER)])
    return (_scrub(profiles, [attempt, *credential]), *_injectors(profiles, uncredentialed),
            _filter("vertex/copy", _when(ATTEMPT_HEADER, fits, copy_rest, on_match=False)),
            _filter("envoy.filters.http.lua", _when(ATTEMPT_HEADER, fits, rewrite, on_match=False)),
            _filter("vertex/route-rewritten", _when(ATTEMPT_HEADER, fits, done)),
            _CODEC)


def _filter(name: str, config: Message) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=_any(config))


def _mutation(mutations: list) -> core_extension_pb2.TypedExtensionConfig:
    return core_extension_pb2.TypedExtensionConfig(
        name="envoy.filters.http.header_mutation", typed_config=_any(header_mutation_pb2.HeaderMutation(
            mutations=header_mutation_pb2.Mutations(request_mutations=mutations))))


def pinned_filters(profiles: list[str | Injection], uncredentialed: bool = False) -> list[hcm_pb2.HttpFilter]:
    """The upstream filters of one region's own cluster. Only a pinned route runs them (under
    an aggregate a member's filters never run), and a pinned route knows its region, so it
    rewrites :path and :authority itself: no Lua here. Envoy keeps a Lua state per thread for
    each cluster's Lua filter, about 190 KB a cluster (docs/BENCHMARKS.md, "A real Envoy on a
    large config"), and most clusters are regions' own."""
    return list(_pinned_filters(tuple(profiles), uncredentialed))


@functools.lru_cache(maxsize=256)
def _pinned_filters(profiles: tuple[str | Injection, ...], uncredentialed: bool) -> tuple[hcm_pb2.HttpFilter, ...]:
    return (_scrub(profiles, []), *_injectors(profiles, uncredentialed), _CODEC)


def _scrub(profiles: tuple[str | Injection, ...], copy: list) -> hcm_pb2.HttpFilter:
    """Remove the credentials a previous attempt (or the client) left, then append `copy`."""
    mutations = header_mutation_pb2.Mutations(request_mutations=[
        # Never carry a client's (or a previous attempt's) Authorization to another region.
        mutation_rules_pb2.HeaderMutation(remove="authorization"),
        # Nor a custom backend's own credential header to the next attempt.
        *[mutation_rules_pb2.HeaderMutation(remove=p.header) for p in profiles
          if isinstance(p, Injection) and p.header != "authorization"],
        *[mutation_rules_pb2.HeaderMutation(append=h) for h in copy],
    ])
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation",
                              typed_config=_any(header_mutation_pb2.HeaderMutation(mutations=mutations)))


def _matched_injectors(profiles: tuple[str | Injection, ...], uncredentialed: bool) -> bool:
    """Whether the injectors choose by the attempt's credential header (_only_for_profile)."""
    return not (len(profiles) == 1 and not uncredentialed)


def _injectors(profiles: tuple[str | Injection, ...], uncredentialed: bool) -> list[hcm_pb2.HttpFilter]:
    def key(p: str | Injection) -> str:
        return p.key if isinstance(p, Injection) else p

    if not _matched_injectors(profiles, uncredentialed):  # the common case: one token for every region
        return [hcm_pb2.HttpFilter(name=f"credential/{key(profiles[0])}",
                                   typed_config=_any(_credential_injector(profiles[0])))]
    return [hcm_pb2.HttpFilter(name=f"credential/{key(p)}", typed_config=_any(
        _only_for_profile(key(p), _credential_injector(p)))) for p in profiles]


_CODEC = hcm_pb2.HttpFilter(name="envoy.filters.http.upstream_codec", typed_config=_any(upstream_codec_pb2.UpstreamCodec()))


