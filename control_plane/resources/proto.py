"""Small builders for the protobuf messages every resource uses."""

from __future__ import annotations

import functools

from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2
from google.protobuf.message import Message

from ..config import is_ip


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)  # map order (Structs) must not vary between processes
    return packed


def _struct(data: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def _header(key: str, value: str, append: int = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
            ) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=append)


def _socket(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _alternation(items: list[str]) -> str:
    return "|".join(_re_escape(item) for item in items)


_RE_ESCAPES = str.maketrans({c: "\\" + c for c in ".^$*+?()[]{}|\\-"})


def _re_escape(text: str) -> str:
    """RE2-safe escape of the few metacharacters names may contain."""
    return text.translate(_RE_ESCAPES)



# pure; asked for every (model, region) of every build
_is_ip = functools.lru_cache(maxsize=4096)(is_ip)


def _percent(value: float) -> percent_pb2.Percent:
    return percent_pb2.Percent(value=value)


