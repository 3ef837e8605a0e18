"""Resources assembled from already-serialized parts.

A message's bytes are its fields' bytes, in field-number order when serialized
deterministically. So a resource made mostly of parts shared with other resources (a
route appears in the route configuration of every region that can reach the model) is
written by joining the parts' bytes, each serialized once per config, instead of building
and serializing one large message per region. The result is byte for byte what the whole
message serializes to (tests/test_wire.py), so versions do not depend on the path taken.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import Message

_LENGTH_DELIMITED = 2


@dataclass(frozen=True, slots=True)
class Serialized:
    """A resource held as its bytes (what the snapshot sends); parsed only when looked at."""

    name: str
    data: bytes | memoryview
    message_type: type[Message]
    requires: tuple[tuple[str, str], ...] = ()  # (type URL, name) of the resources it refers to
    # Already framed as a DiscoveryResponse `resources` entry (resource_entry()): `data` is a
    # view into it, and the snapshot takes it as it is.
    entry: bytes | None = field(default=None, compare=False, repr=False)

    def parse(self) -> Message:
        return self.message_type.FromString(self.data)


class Entries(list):
    """Elements of a repeated message field, each already framed by entry() (or runs of
    them): a Template hole given Entries takes them as they are."""


class Pieces(list):
    """A sub-message's bytes in pieces (Template.pieces()): a Template hole given Pieces frames
    them with their total length and joins them once with the rest of the message, however
    deep the nesting (a route configuration of 6 MB is copied once, not once per level)."""


def entry(number: int, data: bytes) -> bytes:
    """One length-delimited field (a sub-message, or one element of a repeated one)."""
    return _tag(number) + varint(len(data)) + data


@functools.lru_cache(maxsize=None)
def _tag(number: int) -> bytes:
    """A length-delimited field's key (few field numbers are used; each is written once)."""
    return _VarintBytes(number << 3 | _LENGTH_DELIMITED)


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

    def fill(self, **values: str | bytes | Message | Entries | Pieces) -> bytes:
        """The message's bytes; each hole's value a string, a message, its serialized bytes or
        Pieces of them (string, bytes and message fields only; an empty value leaves the field
        unset), or the Entries of a repeated message field."""
        return b"".join(self.pieces(**values))

    def pieces(self, **values: str | bytes | Message | Entries | Pieces) -> Pieces:
        """fill(), not yet joined: to be a hole's value in another template."""
        out = Pieces()
        for part in self._parts:
            if isinstance(part, bytes):
                out.append(part)
                continue
            name, number = part
            value = values[name]
            if isinstance(value, Entries):
                out += value
                continue
            if isinstance(value, Pieces):
                length = sum(map(len, value))
                if length:
                    out.append(_tag(number) + varint(length))
                    out += value
                continue
            if isinstance(value, Message):
                value = value.SerializeToString(deterministic=True)
            elif isinstance(value, str):
                value = value.encode()
            if value:  # the tag and length apart from the value: a large one is copied once, by the join
                out += (_tag(number) + varint(len(value)), value)
        return out


RESOURCES_FIELD_TAG = b"\x12"  # DiscoveryResponse.resources: field 2, length-delimited


def entry_head(type_url: str, size: int) -> bytes:
    """What comes before a message of `size` bytes framed as one `resources` entry of a
    DiscoveryResponse: the entry's tag and length, then its Any {type_url = 1, value = 2} up to
    the value's bytes."""
    head = _any_head(type_url)
    length = varint(size)
    return b"".join((RESOURCES_FIELD_TAG, varint(len(head) + len(length) + size), head, length))


def resource_entry(type_url: str, pieces: Sequence[bytes]) -> tuple[bytes, memoryview]:
    """A message given in pieces, framed as one `resources` entry in one join, and the
    message's bytes: a view into that entry, not a copy (a route configuration is 6 MB at
    1,000 models)."""
    head = entry_head(type_url, sum(map(len, pieces)))
    framed = b"".join([head, *pieces])
    return framed, memoryview(framed)[len(head):]


@functools.lru_cache(maxsize=None)
def _any_head(type_url: str) -> bytes:
    """An Any's type_url field and its value's tag: the same for every resource of a type."""
    return entry(1, type_url.encode()) + b"\x12"


def packed(type_url: str, data: bytes) -> bytes:
    """A google.protobuf.Any holding already-serialized `data` {type_url = 1, value = 2}."""
    return _any_head(type_url) + varint(len(data)) + data


def bytes_of(resource: Message | Serialized) -> bytes | memoryview:
    """The resource's deterministic serialization."""
    return resource.data if isinstance(resource, Serialized) else resource.SerializeToString(deterministic=True)


def as_message(resource: Message | Serialized) -> Message:
    return resource.parse() if isinstance(resource, Serialized) else resource


class StencilError(ValueError):
    """A message a stencil cannot be made from (a token in a map key: filling could reorder it)."""


@dataclass(frozen=True)
class _Text:
    """A string field holding tokens: its tag, and the string split at the tokens (odd items)."""

    tag: bytes
    parts: tuple[str, ...]
    escaped: int  # 1: the field is a regex, tokens take their escaped value


@dataclass(frozen=True)
class _Nested:
    """A sub-message holding tokens somewhere: its tag, and its own chunks."""

    tag: bytes
    chunks: tuple


class Stencil:
    """The bytes of a message whose strings hold tokens, ready to be filled with other values:
    for many resources that are alike but for a few names (the models of one shape).

    Made from a message serialized deterministically: every field without a token is kept as
    its bytes; filling writes each string that held tokens with the tokens replaced, and the
    lengths of the messages around it. Strings inside an Any are reached through its type
    URL. The result is what the message built with the new values serializes to, provided
    those values enter the message only as these tokens (the caller checks one fill against
    a real build)."""

    def __init__(self, data: bytes, descriptor: Descriptor, tokens: re.Pattern, escaped_in: frozenset[str]):
        self._tokens = tokens
        self._in_bytes = re.compile(tokens.pattern.encode())  # ASCII tokens: a field without one is kept whole
        self._escaped_in = escaped_in
        # The message's bytes with each token replaced, given a mapping of each token to (its
        # replacement, the same escaped for a regex). A function, not a method: one call per fill.
        self.fill: Callable[[Mapping[str, tuple[str, str]]], bytes] = _writer(
            self._compile(data, descriptor) or (data,))

    def _compile(self, data: bytes, descriptor: Descriptor) -> tuple | None:
        """The message's chunks; None if no token occurs in it."""
        chunks: list = []
        found = False
        for start, key_end, number, payload, end in _scan(data):
            if payload is None:
                _append(chunks, data[start:end])
                continue
            field = descriptor.fields_by_number.get(number) if self._in_bytes.search(payload) else None
            chunk = self._field(field, data[start:key_end], payload) if field is not None else None
            if chunk is None:
                _append(chunks, data[start:end])
            else:
                if descriptor.GetOptions().map_entry and number == 1:
                    raise StencilError(f"a token in a map key of {descriptor.full_name}")
                chunks.append(chunk)
                found = True
        return tuple(chunks) if found else None

    def _field(self, field: FieldDescriptor, tag: bytes, payload: bytes) -> _Text | _Nested | None:
        if field.type == FieldDescriptor.TYPE_STRING:
            parts = self._tokens.split(payload.decode())
            return _Text(tag, tuple(parts), int(field.full_name in self._escaped_in)) if len(parts) > 1 else None
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            return None
        inner = field.message_type
        if inner.full_name == "google.protobuf.Any":
            chunks = self._any(payload)
        else:
            chunks = self._compile(payload, inner)
        return _Nested(tag, chunks) if chunks is not None else None

    def _any(self, payload: bytes) -> tuple | None:
        """An Any's chunks: its value compiled as the message its type URL names."""
        probe = _ANY()
        probe.MergeFromString(payload)
        try:
            inner = descriptor_pool.Default().FindMessageTypeByName(probe.type_url.rpartition("/")[2])
        except KeyError:
            raise StencilError(f"an Any of unknown type {probe.type_url}") from None
        value = self._compile(probe.value, inner)
        if value is None:
            return None
        return (entry(1, probe.type_url.encode()), _Nested(_ANY_VALUE_TAG, value))


def tokens_pattern(tokens: list[str]) -> re.Pattern:
    """A pattern splitting strings at these tokens (longest first, so a token inside another is
    not matched in it)."""
    return re.compile("(" + "|".join(re.escape(t) for t in sorted(set(tokens), key=len, reverse=True)) + ")")


def _writer(chunks: tuple) -> Callable[[Mapping[str, tuple[str, str]]], bytes]:
    """A function writing the message: straight-line code (a fill is one call, with no walk of
    the chunks) that works out each nested message's length first and joins every piece once,
    e.g. for a route named after its model (C: the message's bytes and strings, K: the length
    of a message's bytes without its tokens):
        t0 = (C[1] + v[C[2]][0] + C[3]).encode(); n0 = len(t0); p0 = L[n0] ...
        n1 = K[0] + len(p0) + n0; p1 = L[n1] ...
        return b"".join((C[4], p1, C[0], p0, t0, C[5]))
    The code depends only on the message's structure: compiled once per structure (a shape's
    resources in 40 regions are a few structures), bound to each stencil's constants."""
    constants: list[bytes | str] = []
    known: list[int] = []
    lines: list[str] = []

    def const(data: bytes | str) -> str:
        constants.append(data)
        return f"C[{len(constants) - 1}]"

    def prefixed(value: str) -> str:
        """Lines for `value`'s length n<i> and length prefix p<i> (varint(), inlined: no call
        per field); returns i."""
        i = len(lines)
        lines.append(f"n{i} = {value}; p{i} = L[n{i}] if n{i} < {_SHORT} else _length_of(n{i})")
        return f"{i}"

    def emit(chunks: tuple) -> tuple[list[str], list[str]]:
        """The chunks' pieces (expressions of bytes, in order) and their length (terms to add)."""
        pieces: list[str] = []
        lengths: list[str] = []
        fixed = 0
        for chunk in chunks:
            if type(chunk) is bytes:
                pieces.append(const(chunk))
                fixed += len(chunk)
                continue
            fixed += len(chunk.tag)
            if type(chunk) is _Nested:
                inner_pieces, inner_lengths = emit(chunk.chunks)
                i = prefixed(" + ".join(inner_lengths))
                pieces += [const(chunk.tag), f"p{i}", *inner_pieces]
            else:  # a string with tokens (values are never empty, so the field stays set)
                text = f"t{len(lines)}"
                parts = [const(part) if k % 2 == 0 else f"v[{const(part)}][{chunk.escaped}]"
                         for k, part in enumerate(chunk.parts) if part or k % 2]
                lines.append(f"{text} = ({' + '.join(parts)}).encode()")
                i = prefixed(f"len({text})")
                pieces += [const(chunk.tag), f"p{i}", text]
            lengths += [f"len(p{i})", f"n{i}"]
        known.append(fixed)
        return pieces, [f"K[{len(known) - 1}]", *lengths]

    pieces, _ = emit(chunks)
    body = "".join(f"        {line}\n" for line in lines)
    return _bound(f"def bind(C, K):\n    def fill(v):\n{body}"
                  f"        return b''.join(({', '.join(pieces)},))\n    return fill\n")(tuple(constants), tuple(known))


@functools.lru_cache(maxsize=4096)
def _bound(source: str) -> Callable[[tuple, tuple], Callable[[Mapping[str, tuple[str, str]]], bytes]]:
    """The generated `bind` of one structure: compiled once, bound to each stencil's constants."""
    scope = {"L": _SHORT_LENGTHS, "_length_of": _VarintBytes}
    exec(source, scope)  # noqa: S102 - our own generated code, from a message we serialized
    return scope["bind"]


class Split:
    """A message's bytes around one length-delimited field (a sub-message), so that many variants
    of the message with more fields in that sub-message are written by joins: with_fields()."""

    def __init__(self, data: bytes | memoryview, number: int):
        self.number = number
        for start, _, found, body, end in _scan(data):
            if found == number and body is not None:
                self.before, self.after = bytes(data[:start]), bytes(data[end:])
                self.fields = [(f, bytes(body[s:e])) for s, _, f, _, e in _scan(body)]
                self.present = frozenset(f for f, _ in self.fields)
                self._segments: dict[tuple[int, ...], list[bytes]] = {}
                return
        raise StencilError(f"no field {number} to split at")

    def with_fields(self, extra: tuple[tuple[int, bytes], ...]) -> bytes:
        """The message with `extra` (field number, encoded field; in field-number order) in the
        sub-message, every field in field-number order: what the merged message serializes to."""
        numbers = tuple(number for number, _ in extra)
        segments = self._segments.get(numbers)
        if segments is None:
            segments = self._segments[numbers] = self._segment(numbers)
        parts = [segments[0]]
        for (_, encoded), segment in zip(extra, segments[1:]):
            parts += (encoded, segment)
        body = b"".join(parts)
        return b"".join((self.before, _tag(self.number), varint(len(body)), body, self.after))

    def _segment(self, numbers: tuple[int, ...]) -> list[bytes]:
        """The sub-message's fields cut where fields numbered `numbers` go."""
        if list(numbers) != sorted(set(numbers)) or not self.present.isdisjoint(numbers):
            raise StencilError(f"fields {numbers}: not in order, or the sub-message has one already")
        segments, fields = [], self.fields
        for number in numbers:
            cut = next((i for i, (f, _) in enumerate(fields) if f > number), len(fields))
            segments.append(b"".join(encoded for _, encoded in fields[:cut]))
            fields = fields[cut:]
        return [*segments, b"".join(encoded for _, encoded in fields)]


def _scan(data: bytes | memoryview):
    """(start, end of its key, field number, payload of a length-delimited field (else None), end)
    of each field of a serialized message, in order."""
    pos, size = 0, len(data)
    while pos < size:
        start = pos
        key, pos = _varint(data, pos)
        key_end = pos
        if key & 7 == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos)
            yield start, key_end, key >> 3, data[pos:pos + length], pos + length
            pos += length
        else:
            pos = _skip(data, pos, key & 7)
            yield start, key_end, key >> 3, None, pos


def varint(n: int) -> bytes:
    """A length as a varint: from a table for the lengths resources here have."""
    return _SHORT_LENGTHS[n] if n < _SHORT else _VarintBytes(n)


_SHORT = 0x4000  # lengths below take one or two bytes: the table holds them all (16,384 entries)
_SHORT_LENGTHS = (tuple(bytes((n,)) for n in range(0x80))
                  + tuple(bytes((n & 0x7F | 0x80, n >> 7)) for n in range(0x80, _SHORT)))


def _append(chunks: list, data: bytes) -> None:
    if chunks and type(chunks[-1]) is bytes:
        chunks[-1] += data
    else:
        chunks.append(data)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(data, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 5:
        return pos + 4
    raise StencilError(f"wire type {wire_type} (groups) not supported")


_ANY = any_pb2.Any
_ANY_VALUE_TAG = bytes([2 << 3 | _LENGTH_DELIMITED])
