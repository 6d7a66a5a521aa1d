"""Object keys as Ollama reads them (SPEC §3 "parser differential", §4.9).

Ollama decodes request bodies with Go's ``encoding/json``: a key matches a struct field
when the two are equal under Unicode simple case folding (so ``Model``, ``MODEL``,
``\\u212aeep_alive`` with a Kelvin sign and ``\\u017ftream`` with a long s all bind), the
last matching key wins, and keys of maps (``options``, tool arguments) match exactly.
A gateway that checks ``model`` and forwards ``Model`` lets Ollama read another body
than the one it checked.

:func:`canonical` rewrites a decoded body the way Go binds it: each key that Go matches
to a field is spelled as that field's JSON tag, and two keys that Go would read as one
field (or that fold together) are refused with a 400 naming the key. Unknown keys that
alias nothing pass through as they are, so new Ollama fields keep working. The shapes
come from the msgspec request types (:func:`shape_of`): the types that validate a body
also say how its keys bind, one source of truth.

Maps whose keys Go matches exactly but whose keys the gateway governs (``options``:
the gateway sets ``num_predict``; Ollama ignores ``NUM_PREDICT``) refuse keys that fold
together, and any key that folds onto a governed name without being it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from msgspec import inspect

from nz_proxy.errors import InvalidRequest

__all__ = ["Shape", "canonical", "go_fold", "shape_of"]

# Go's `unicode.caseOrbit` (Go 1.19, unicode/tables.go): the folding classes of more
# than two runes, each listed as a cycle `rune -> next`. Every other rune's class is
# itself with its simple lower- and upper-case forms.
_CASE_ORBIT: Final = {
    0x004B: 0x006B, 0x0053: 0x0073, 0x006B: 0x212A, 0x0073: 0x017F, 0x00B5: 0x039C,
    0x00C5: 0x00E5, 0x00DF: 0x1E9E, 0x00E5: 0x212B, 0x0130: 0x0130, 0x0131: 0x0131,
    0x017F: 0x0053, 0x01C4: 0x01C5, 0x01C5: 0x01C6, 0x01C6: 0x01C4, 0x01C7: 0x01C8,
    0x01C8: 0x01C9, 0x01C9: 0x01C7, 0x01CA: 0x01CB, 0x01CB: 0x01CC, 0x01CC: 0x01CA,
    0x01F1: 0x01F2, 0x01F2: 0x01F3, 0x01F3: 0x01F1, 0x0345: 0x0399, 0x0392: 0x03B2,
    0x0395: 0x03B5, 0x0398: 0x03B8, 0x0399: 0x03B9, 0x039A: 0x03BA, 0x039C: 0x03BC,
    0x03A0: 0x03C0, 0x03A1: 0x03C1, 0x03A3: 0x03C2, 0x03A6: 0x03C6, 0x03A9: 0x03C9,
    0x03B2: 0x03D0, 0x03B5: 0x03F5, 0x03B8: 0x03D1, 0x03B9: 0x1FBE, 0x03BA: 0x03F0,
    0x03BC: 0x00B5, 0x03C0: 0x03D6, 0x03C1: 0x03F1, 0x03C2: 0x03C3, 0x03C3: 0x03A3,
    0x03C6: 0x03D5, 0x03C9: 0x2126, 0x03D0: 0x0392, 0x03D1: 0x03F4, 0x03D5: 0x03A6,
    0x03D6: 0x03A0, 0x03F0: 0x039A, 0x03F1: 0x03A1, 0x03F4: 0x0398, 0x03F5: 0x0395,
    0x0412: 0x0432, 0x0414: 0x0434, 0x041E: 0x043E, 0x0421: 0x0441, 0x0422: 0x0442,
    0x042A: 0x044A, 0x0432: 0x1C80, 0x0434: 0x1C81, 0x043E: 0x1C82, 0x0441: 0x1C83,
    0x0442: 0x1C84, 0x044A: 0x1C86, 0x0462: 0x0463, 0x0463: 0x1C87, 0x1C80: 0x0412,
    0x1C81: 0x0414, 0x1C82: 0x041E, 0x1C83: 0x0421, 0x1C84: 0x1C85, 0x1C85: 0x0422,
    0x1C86: 0x042A, 0x1C87: 0x0462, 0x1C88: 0xA64A, 0x1E60: 0x1E61, 0x1E61: 0x1E9B,
    0x1E9B: 0x1E60, 0x1E9E: 0x00DF, 0x1FBE: 0x0345, 0x2126: 0x03A9, 0x212A: 0x004B,
    0x212B: 0x00C5, 0xA64A: 0xA64B, 0xA64B: 0x1C88,
}  # fmt: skip


def _simple_fold(rune: int) -> int:
    """Go's ``unicode.SimpleFold``: the next rune of ``rune``'s folding class."""
    if rune in _CASE_ORBIT:
        return _CASE_ORBIT[rune]
    char = chr(rune)
    # Go's ToLower/ToUpper are the simple (one-rune) mappings.
    lower, upper = char.lower(), char.upper()
    if len(lower) == 1 and lower != char:
        return ord(lower)
    if len(upper) == 1:
        return ord(upper)
    return rune


@functools.lru_cache(maxsize=4096)
def _fold_rune(char: str) -> str:
    """The smallest rune of ``char``'s folding class (Go's ``foldRune``)."""
    start = rune = ord(char)
    smallest = rune
    while True:
        rune = _simple_fold(rune)
        if rune == start:
            return chr(smallest)
        smallest = min(smallest, rune)


def go_fold(key: str) -> str:
    """A form of ``key`` equal for exactly the keys Go's decoder treats as one.

    ASCII letters fold to upper case; every other rune to the smallest rune of its
    simple folding class, which maps the Kelvin sign to ``K`` and the long s to ``S``.
    """
    if key.isascii():
        return key.upper()
    return "".join(c.upper() if c.isascii() else _fold_rune(c) for c in key)


# -- shapes: where a body holds objects, and how Go matches their keys ---------------------


class Shape:
    """How one JSON value's object keys bind; the base shape binds nothing."""

    __slots__ = ()

    def canon(self, value: Any, where: str) -> Any:
        return value


LEAF: Final = Shape()


@dataclass(eq=False, slots=True)
class StructShape(Shape):
    """A Go struct: keys match field tags by folding."""

    # folded key -> (the tag as Go spells it, the field's shape)
    fields: dict[str, tuple[str, Shape]] = field(default_factory=dict)

    def canon(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            return value  # a wrong type is the validation's to refuse
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for key, item in value.items():
            folded = go_fold(key)
            if folded in seen:
                raise _collision(key, seen[folded], where)
            seen[folded] = key
            bound = self.fields.get(folded)
            if bound is None:
                out[key] = item  # aliases nothing: passes through unchanged
            else:
                name, shape = bound
                out[name] = shape.canon(item, _at(where, name))
        return out


@dataclass(eq=False, slots=True)
class MapShape(Shape):
    """A Go map: keys are taken exactly. ``checked`` maps refuse keys that fold together,
    and keys that fold onto a ``governed`` name without being it."""

    values: Shape = LEAF
    checked: bool = False
    governed: frozenset[str] = frozenset()

    def canon(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            return value
        if self.checked:
            seen: dict[str, str] = {}
            for key in value:
                folded = go_fold(key)
                if folded in seen:
                    raise _collision(key, seen[folded], where)
                seen[folded] = key
            for name in self.governed:
                if (key := seen.get(go_fold(name))) is not None and key != name:
                    raise _collision(key, name, where)
        if self.values is LEAF:
            return value
        return {key: self.values.canon(item, _at(where, key)) for key, item in value.items()}


@dataclass(eq=False, slots=True)
class ListShape(Shape):
    items: Shape = LEAF

    def canon(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            return value
        return [self.items.canon(item, f"{where}[{i}]") for i, item in enumerate(value)]


@dataclass(eq=False, slots=True)
class EitherShape(Shape):
    """A union: an object binds as ``objects``, an array as ``arrays``."""

    objects: Shape = LEAF
    arrays: Shape = LEAF

    def canon(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return self.objects.canon(value, where)
        if isinstance(value, list):
            return self.arrays.canon(value, where)
        return value


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _collision(key: str, other: str, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"'{_at(where, key)}' and '{_at(where, other)}' are the same field to Ollama "
        "(keys match case-insensitively); send each field once, spelled as documented.",
        param=_at(where, key),
    )


def canonical(body: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """``body`` as Ollama binds it, keys spelled as Go's tags; a 400 on colliding keys."""
    result: dict[str, Any] = shape.canon(body, "")
    return result


# -- deriving shapes from the msgspec types --------------------------------------------------

# Structs that Go decodes as maps (exact keys), with the keys the gateway sets.
_MAPS: dict[type, frozenset[str]] = {}


def decoded_as_map(cls: type, governed: Iterable[str] = ()) -> None:
    """Declare that Go reads ``cls`` as a ``map[string]any`` (exact keys), although the
    gateway validates it as a struct; ``governed`` are the keys the gateway sets."""
    _MAPS[cls] = frozenset(governed)
    shape_of.cache_clear()


@functools.cache
def shape_of(cls: type) -> Shape:
    """The key-binding shape of a msgspec Struct type (cached)."""
    return _Builder().build(inspect.type_info(cls))


class _Builder:
    def __init__(self) -> None:
        self._structs: dict[type, Shape] = {}

    def build(self, info: inspect.Type) -> Shape:
        if isinstance(info, inspect.Metadata):
            return self.build(info.type)
        if isinstance(info, inspect.UnionType):
            return self._union(info.types)
        if isinstance(info, inspect.StructType):
            return self._struct(info)
        if isinstance(info, inspect.ListType | inspect.VarTupleType | inspect.SetType):
            items = self.build(info.item_type)
            return ListShape(items) if items is not LEAF else ListShape()
        if isinstance(info, inspect.DictType):
            return MapShape(self.build(info.value_type))
        return LEAF

    def _struct(self, info: inspect.StructType) -> Shape:
        known = self._structs.get(info.cls)
        if known is not None:
            return known
        if info.cls in _MAPS:
            shape: Shape = MapShape(checked=True, governed=_MAPS[info.cls])
            self._structs[info.cls] = shape
            return shape
        struct = StructShape()
        self._structs[info.cls] = struct  # before the fields: types may recurse
        struct.fields.update(self._fields(info))
        return struct

    def _fields(self, info: inspect.StructType) -> Mapping[str, tuple[str, Shape]]:
        fields = {go_fold(f.encode_name): (f.encode_name, self.build(f.type)) for f in info.fields}
        if info.tag_field is not None:
            fields[go_fold(info.tag_field)] = (info.tag_field, LEAF)
        return fields

    def _union(self, members: Iterable[inspect.Type]) -> Shape:
        objects: list[Shape] = []
        arrays: list[Shape] = []
        for member in members:
            shape = self.build(member)
            if isinstance(shape, StructShape | MapShape):
                objects.append(shape)
            elif isinstance(shape, ListShape):
                arrays.append(shape)
        obj = _merge(objects)
        arr: Shape = LEAF
        if len(arrays) == 1:
            arr = arrays[0]
        elif arrays:
            arr = ListShape(_merge_items(arrays))
        if arr is LEAF:
            return obj
        if obj is LEAF:
            return arr
        return EitherShape(obj, arr)


def _merge(shapes: list[Shape]) -> Shape:
    """One shape for the object members of a union (tagged variants share one table)."""
    if not shapes:
        return LEAF
    if len(shapes) == 1:
        return shapes[0]
    structs = [s for s in shapes if isinstance(s, StructShape)]
    if not structs:
        return shapes[0]
    merged = StructShape()
    for struct in structs:
        for folded, bound in struct.fields.items():
            merged.fields.setdefault(folded, bound)
    return merged


def _merge_items(arrays: list[Shape]) -> Shape:
    return _merge([a.items for a in arrays if isinstance(a, ListShape)])
