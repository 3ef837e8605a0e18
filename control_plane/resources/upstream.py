"""What runs once per attempt on the cluster a route names: copy the chosen host's
metadata into temporary headers, inject that region's token, rewrite :path and
:authority. Also the access tokens as SDS secrets."""

from __future__ import annotations

import functools

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
    CREDENTIAL_HEADER,
    METADATA_KEYS,
    METADATA_NAMESPACE,
    TEMP_HEADERS,
)
from .proto import (
    _ads,
    _any,
    _header,
)

# Runs once per attempt, after the host is chosen. :path may already hold the previous
# attempt's rewrite (header edits persist across attempts), so only the verb and the query
# are taken from it; the rest comes from the chosen host's metadata.
REWRITE_LUA = """
function envoy_on_request(h)
  local hd = h:headers()
  local ep, authority = hd:get("x-vertex-endpoint-path"), hd:get("x-vertex-host")
  hd:remove("x-vertex-endpoint-path"); hd:remove("x-vertex-host"); hd:remove("x-vertex-region")
  hd:remove("x-vertex-credential")
  if ep == nil or ep == "" or authority == nil or authority == "" then
    h:respond({[":status"] = "502", ["content-type"] = "application/json"},
      '{"error": {"code": 502, "message": "selected upstream has no vertex metadata"}}')
    return
  end
  local path = hd:get(":path")
  local query = string.match(path, "%?.*$") or ""
  local verb = string.match(string.sub(path, 1, #path - #query), ":(%a+)$") or "predict"
  hd:replace(":path", ep .. ":" .. verb .. query)
  hd:replace(":authority", authority)
end
"""

# For a model also served on an OpenAI-compatible path (resources/openai.py): such a path ends in
# an operation instead of a verb; the operation goes after the region's endpoint path, a
# publisher model's being that region's endpoints/openapi, and the API version (v1, v1beta1)
# stays the client's. Other models keep the shorter script.
OPENAI_REWRITE_LUA = REWRITE_LUA.replace('''  local verb = string.match(string.sub(path, 1, #path - #query), ":(%a+)$") or "predict"
  hd:replace(":path", ep .. ":" .. verb .. query)
''', '''  local base = string.sub(path, 1, #path - #query)
  local verb = string.match(base, ":(%a+)$")
  local op = not verb and (base:match("/chat/completions$") or base:match("/completions$") or base:match("/embeddings$"))
  if op then
    ep = ep:gsub("/publishers/.*$", "/endpoints/openapi")
    if base:sub(1, 9) == "/v1beta1/" then ep = "/v1beta1" .. ep:sub(4) end
    hd:replace(":path", ep .. op .. query)
  else
    hd:replace(":path", ep .. ":" .. (verb or "predict") .. query)
  end
''')



def token_secret_name(profile: str) -> str:
    return f"token/{profile}"


def token_secret(profile: str, token: str) -> secret_pb2.Secret:
    """An access token as an SDS secret. The value carries the "Bearer " prefix because this
    API snapshot lacks Generic.header_value_prefix."""
    return secret_pb2.Secret(name=token_secret_name(profile), generic_secret=secret_pb2.GenericSecret(
        secret=base_pb2.DataSource(inline_string=f"Bearer {token}")))


def _credential_injector(profile: str) -> credential_injector_pb2.CredentialInjector:
    return credential_injector_pb2.CredentialInjector(
        overwrite=True,  # the client's own Authorization is replaced, never forwarded
        credential=core_extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic",
            typed_config=_any(generic_credential_pb2.Generic(
                header="authorization",
                credential=secret_pb2.SdsSecretConfig(name=token_secret_name(profile), sds_config=_ads())))))


def _only_for_profile(profile: str, injector: credential_injector_pb2.CredentialInjector) -> Message:
    """Run the injector only on attempts whose chosen region uses this profile."""
    skip = xds_matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=_any(skip_action_pb2.SkipFilter())))
    header_is_profile = xds_matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=xds_matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=xds_extension_pb2.TypedExtensionConfig(
                name="credential", typed_config=_any(http_inputs_pb2.HttpRequestHeaderMatchInput(
                    header_name=CREDENTIAL_HEADER))),
            value_match=xds_string_pb2.StringMatcher(exact=profile)))
    return extension_matcher_pb2.ExtensionWithMatcher(
        extension_config=core_extension_pb2.TypedExtensionConfig(
            name="envoy.filters.http.credential_injector", typed_config=_any(injector)),
        xds_matcher=xds_matcher_pb2.Matcher(matcher_list=xds_matcher_pb2.Matcher.MatcherList(matchers=[
            xds_matcher_pb2.Matcher.MatcherList.FieldMatcher(
                predicate=xds_matcher_pb2.Matcher.MatcherList.Predicate(not_matcher=header_is_profile),
                on_match=skip)])))


def upstream_filters(profiles: list[str], openai: bool = False) -> list[hcm_pb2.HttpFilter]:
    return list(_upstream_filters(tuple(profiles), openai))


@functools.lru_cache(maxsize=256)  # the same few filter chains for every cluster of a build
def _upstream_filters(profiles: tuple[str, ...], openai: bool = False) -> tuple[hcm_pb2.HttpFilter, ...]:
    """Per-attempt filters on the aggregate cluster, in order: copy the chosen host's metadata
    into temporary headers, inject that region's token, rewrite :path/:authority, encode."""
    copy = [_header(name, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{key})%")
            for name, key in zip(TEMP_HEADERS, METADATA_KEYS)]
    mutations = header_mutation_pb2.Mutations(request_mutations=[
        # Never carry a client's (or a previous attempt's) Authorization to another region.
        mutation_rules_pb2.HeaderMutation(remove="authorization"),
        *[mutation_rules_pb2.HeaderMutation(append=h) for h in copy],
    ])
    filters = [hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation",
                                  typed_config=_any(header_mutation_pb2.HeaderMutation(mutations=mutations)))]
    if len(profiles) == 1:  # the common case: one token for every region, no matcher needed
        filters.append(hcm_pb2.HttpFilter(name=f"credential/{profiles[0]}",
                                          typed_config=_any(_credential_injector(profiles[0]))))
    else:
        filters += [hcm_pb2.HttpFilter(name=f"credential/{p}", typed_config=_any(
            _only_for_profile(p, _credential_injector(p)))) for p in profiles]
    filters += [
        hcm_pb2.HttpFilter(name="envoy.filters.http.lua", typed_config=_any(lua_pb2.Lua(
            default_source_code=base_pb2.DataSource(inline_string=OPENAI_REWRITE_LUA if openai else REWRITE_LUA)))),
        hcm_pb2.HttpFilter(name="envoy.filters.http.upstream_codec",
                           typed_config=_any(upstream_codec_pb2.UpstreamCodec())),
    ]
    return tuple(filters)


