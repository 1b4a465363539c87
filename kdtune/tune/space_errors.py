"""Pydantic's errors on a search-space file as kdtune's one line, ``FILE: key.path: ...``.

The line reads ``FILE: key.path: what is wrong; what is allowed``.

The first entry of pydantic's ``ValidationError`` (a misspelt key before the key it leaves
missing) is translated; its location is walked through the model of
:mod:`kdtune.tune.space_schema` to write the key path as the file writes it (without the tags
of unions, a choice's error naming its list) and to find what the key allows.
"""

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, Tag, ValidationError
from pydantic.fields import FieldInfo

from kdtune.errors import KdtuneError, choose_one, did_you_mean
from kdtune.resolve import key_types
from kdtune.tune.space_schema import (
    PARAM_TYPES,
    YAML11_HINT,
    At,
    Kind,
    ParametersBase,
    ParamSpec,
    Section,
    base_type,
    show,
    space_model,
)


def one_line(text: str) -> str:
    """``text`` with what is not printable (newlines in a user's key) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def validate(data: Any, shown: str) -> Any:
    """``data`` (a parsed space file) validated by :func:`space_model`; else one
    :class:`KdtuneError` line ``SHOWN: key.path: what is wrong; what is allowed``."""
    model = space_model()
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where, message = translate(exc, model)
        raise KdtuneError(one_line(f"{shown}: {where}: {message}" if where
                                   else f"{shown}: {message}")) from None


class _Spot:
    """Where an error's location leads in the model: the key path as the user writes it, the
    model holding the last key, that key's field type and metadata."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.owner: type[BaseModel] | None = None
        self.type: Any = None
        self.meta: list[Any] = []

    @property
    def path(self) -> str:
        return ".".join(self.parts).replace(".[", "[")

    def kind(self, default: str) -> str:
        return next((m.word for m in self.meta if isinstance(m, Kind)), default)


def _unwrap(t: Any) -> tuple[Any, list[Any]]:
    """Annotated and Optional taken off ``t``; the metadata met on the way."""
    meta: list[Any] = []
    while True:
        origin = typing.get_origin(t)
        if origin is Annotated:
            meta.extend(t.__metadata__)
            t = typing.get_args(t)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t, meta
            t = args[0]
        else:
            break
    for m in list(meta):
        if isinstance(m, FieldInfo):
            meta.extend(m.metadata)
    return t, meta


def _tags(union: Any) -> dict[str, Any]:
    """A tagged union's members by tag."""
    out: dict[str, Any] = {}
    for member in typing.get_args(union):
        t, meta = _unwrap(member)
        tag = next((m.tag for m in meta if isinstance(m, Tag)), None)
        if tag is not None:
            out[tag] = member
        elif isinstance(t, type) and issubclass(t, BaseModel) and "type" in t.model_fields:
            for literal in typing.get_args(t.model_fields["type"].annotation):
                out[literal] = member
    return out


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> _Spot:
    spot = _Spot()
    t: Any = model
    for item in loc:
        t, meta = _unwrap(t)
        if typing.get_origin(t) in (Union, types.UnionType):
            member = _tags(t).get(item)
            if member is not None:
                t = member
                continue
        if isinstance(t, type) and issubclass(t, BaseModel):
            spot.owner = t
            field = next((f for n, f in t.model_fields.items()
                          if (f.alias or n) == item), None)
            spot.parts.append(str(item))
            t = None if field is None else field.annotation
            spot.meta = [] if field is None else [*field.metadata]
            if field is not None and field.description:
                spot.meta.append(field)
            continue
        origin = typing.get_origin(t)
        if origin in (list, tuple) and isinstance(item, int):
            if spot.parts[-1:] != ["choices"]:  # a choice's error names the list
                spot.parts.append(f"[{item}]")
            t = typing.get_args(t)[0]
        else:
            spot.parts.append(str(item) if not isinstance(item, int) else f"[{item}]")
            t = typing.get_args(t)[-1] if origin is dict else None
        spot.meta = []
    spot.type, meta = _unwrap(t)
    spot.meta += meta
    return spot


def _describe_number(spot: _Spot) -> str:
    what = "an integer" if spot.type is int else "a number"
    for m in spot.meta:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            bound = getattr(m, attr, None)
            if isinstance(bound, int | float) and not isinstance(m, FieldInfo):
                what += f" {sign} {bound:g}"
    return what


def _param_type(name: str, tag: Any) -> str:
    """Why ``tag`` is no type for parameter ``name``."""
    base = base_type(key_types()[name])
    allowed = {int: PARAM_TYPES[:2], float: PARAM_TYPES}.get(base, PARAM_TYPES[:1])
    if tag is None:
        return f"missing; choose one of: {', '.join(allowed)}"
    if tag in PARAM_TYPES:
        takes = {int: "integers", float: "numbers", bool: "true/false", str: "strings",
                 tuple: "lists of integers"}[base]
        fits = {int: "int or categorical", float: "int, float, logfloat or categorical"}.get(
            base, "categorical")
        return f"{name} takes {takes}; use type {fits}"
    return str(choose_one("type", tag, allowed))


def _unknown(owner: type[BaseModel] | None, key: Any) -> str:
    if owner is None:
        return f"unknown key {key!r}"
    section = typing.cast(type[Section], owner)
    if key in section.refused:
        return section.refused[key]
    if section.refused_other:
        return section.refused_other
    allowed = sorted((f.alias or n for n, f in owner.model_fields.items()),
                     key=lambda k: k == "when")  # the condition last, as files write it
    if issubclass(owner, ParametersBase):
        return f"{choose_one('parameter', key, allowed)} (parameters are TrainConfig fields)"
    return f"unknown key {key!r}; allowed: {', '.join(allowed)}{did_you_mean(key, allowed)}"


def translate(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """The key path and the message of ``exc``'s first error."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    if error["type"] == "missing":  # a misspelt key is also a missing one: name the misspelling
        error = next((e for e in errors if e["type"] == "extra_forbidden"
                      and e["loc"][:-1] == error["loc"][:-1]), error)
    kind, loc, value = error["type"], error["loc"], error.get("input")
    ctx = error.get("ctx") or {}
    spot = _walk(model, loc)
    path = spot.path
    cause = ctx.get("error")
    if isinstance(cause, At):
        return (f"{path}.{cause.key}".strip(".").replace(".[", "[") if cause.key else path,
                cause.message)
    if isinstance(cause, KdtuneError):
        return path, str(cause)
    if kind == "extra_forbidden":
        return path, _unknown(spot.owner, loc[-1])
    in_param = spot.owner is not None and issubclass(spot.owner, ParamSpec)
    if kind == "missing":
        if in_param and loc[-1] == "type":
            return path, _param_type(str(loc[-2]), None)
        described = next((m.description for m in spot.meta if isinstance(m, FieldInfo)), None)
        return path, "missing" + (f"; {described}" if described else "")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        raw = value.get("type") if isinstance(value, dict) else None
        if spot.owner is not None and issubclass(spot.owner, ParametersBase):
            return f"{path}.type", _param_type(str(loc[-1]), raw)
        allowed = list(_tags(spot.type))
        hint = YAML11_HINT if isinstance(raw, bool) else ""
        return f"{path}.type", str(choose_one(spot.kind("type"), raw, allowed)) + hint
    if kind == "literal_error":
        if in_param and loc[-1] == "type":
            return path, _param_type(str(loc[-2]), value)
        allowed = list(typing.get_args(spot.type))
        hint = YAML11_HINT if isinstance(value, bool) else ""
        return path, str(choose_one(spot.kind(str(loc[-1])), value, allowed)) + hint
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        shape = ParamSpec.shape if spot.owner is not None and issubclass(
            spot.owner, ParametersBase) else getattr(spot.type, "shape", "a mapping")
        return path, f"expected {shape}, got {show(value)}"
    if kind == "list_type":
        return path, f"expected a list, got {show(value)}"
    if kind in ("too_short", "string_too_short"):
        return path, "empty; " + ("list at least one value" if kind == "too_short"
                                  else "give a value")
    if kind.startswith(("int_", "float_", "greater_than", "less_than", "finite_number")):
        return path, f"expected {_describe_number(spot)}, got {show(value)}"
    if kind.startswith("string_"):
        return path, f"expected a string, got {show(value)}"
    if kind == "invalid_key":
        return path, f"expected a name as key, got {show(loc[-1])}"
    message = str(error["msg"])
    return path, message[:1].lower() + message[1:]
