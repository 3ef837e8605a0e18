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

    def parse(self) -> Message:
        return self.message_type.FromString(self.data)


def entry(number: int, data: bytes) -> bytes:
    """One length-delimited field (a sub-message, or one element of a repeated one)."""
    return _VarintBytes(number << 3 | _LENGTH_DELIMITED) + _VarintBytes(len(data)) + data


def assemble(message: Message, field: str, entries: bytes) -> bytes:
    """`message`'s bytes with its repeated message `field` holding `entries` (already framed
    by entry()), in the order deterministic serialization writes fields."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    head, tail = type(message)(), type(message)()
    head.CopyFrom(message)
    tail.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        (head if descriptor.number > number else tail).ClearField(descriptor.name)
    head.ClearField(field)
    tail.ClearField(field)
    return head.SerializeToString(deterministic=True) + entries + tail.SerializeToString(deterministic=True)


def as_message(resource: Message | Serialized) -> Message:
    return resource.parse() if isinstance(resource, Serialized) else resource
