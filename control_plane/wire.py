"""Resources assembled from already-serialized parts.

A message's bytes are its fields' bytes, in field-number order when serialized
deterministically. So a resource made mostly of parts shared with other resources (a
route appears in the route configuration of every region that can reach the model) is
written by joining the parts' bytes, each serialized once per config, instead of building
and serializing one large message per region. The result is byte for byte what the whole
message serializes to (tests/test_wire.py), so versions do not depend on the path taken.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import Message

_LENGTH_DELIMITED = 2


@dataclass(frozen=True)
class Serialized:
    """A resource held as its bytes (what the snapshot sends); parsed only when looked at."""

    name: str
    data: bytes
    message_type: type[Message]
    requires: tuple[tuple[str, str], ...] = ()  # (type URL, name) of the resources it refers to

    def parse(self) -> Message:
        return self.message_type.FromString(self.data)


class Entries(bytes):
    """Elements of a repeated message field, each already framed by entry(): a Template hole
    given Entries takes them as they are."""


def entry(number: int, data: bytes) -> bytes:
    """One length-delimited field (a sub-message, or one element of a repeated one)."""
    return _VarintBytes(number << 3 | _LENGTH_DELIMITED) + _VarintBytes(len(data)) + data


class Template:
    """A message with holes: every field of `base` but the holes is serialized once, and
    fill() writes the holes' values between them in field-number order, so its result is
    what the whole message serializes to. For many resources that differ in a few fields
    (one cluster per model and region, alike but for the name)."""

    def __init__(self, base: Message, holes: tuple[str, ...]):
        by_name = base.DESCRIPTOR.fields_by_name
        parts: list[tuple[int, bytes | str]] = [(by_name[h].number, h) for h in holes]
        for descriptor, _ in base.ListFields():
            if descriptor.name in holes:
                continue
            alone = type(base)()
            alone.CopyFrom(base)
            for other, _ in base.ListFields():
                if other is not descriptor:
                    alone.ClearField(other.name)
            parts.append((descriptor.number, alone.SerializeToString(deterministic=True)))
        parts.sort(key=lambda part: part[0])
        self._parts: list[bytes | tuple[str, int]] = []
        for number, part in parts:  # neighbouring constant fields joined
            if isinstance(part, bytes) and self._parts and isinstance(self._parts[-1], bytes):
                self._parts[-1] += part
            else:
                self._parts.append(part if isinstance(part, bytes) else (part, number))

    def fill(self, **values: str | bytes | Message) -> bytes:
        """The message's bytes; each hole's value a string, a message or its serialized bytes
        (string, bytes and message fields only; an empty value leaves the field unset), or
        the Entries of a repeated message field."""
        out = []
        for part in self._parts:
            if isinstance(part, bytes):
                out.append(part)
                continue
            name, number = part
            value = values[name]
            if isinstance(value, Entries):
                out.append(value)
                continue
            if isinstance(value, Message):
                value = value.SerializeToString(deterministic=True)
            elif isinstance(value, str):
                value = value.encode()
            if value:
                out.append(entry(number, value))
        return b"".join(out)


def packed(type_url: str, data: bytes) -> bytes:
    """A google.protobuf.Any holding already-serialized `data` {type_url = 1, value = 2}."""
    return entry(1, type_url.encode()) + entry(2, data)


def as_message(resource: Message | Serialized) -> Message:
    return resource.parse() if isinstance(resource, Serialized) else resource
