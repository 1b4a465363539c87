"""The search-space file's schema: pydantic models built from the registries; JSON Schema.

:func:`space_model` builds the model of a space file when a file is loaded, from what is
registered then: ``fixed``, ``teacher`` and ``parameters`` have a field per key a
:class:`~kdtune.config.TrainConfig` takes (:func:`kdtune.resolve.key_types`: its fields and every
registered method's and feature method's parameters, plugins included), and names such as
``method``, ``model`` and ``dataset`` are enums of their registries. A model is built once per
state of the registries (:func:`_registry_state`); registering a method builds a new one.

How a key is added: a setting of a section (``search.fuse``) is one field on that section's
model below -- its type, its default and, where the value needs more than a type, a validator
raising :class:`At`. A new section (``data:``: a source and its options) is one field of the
file's model in :func:`_build`; where its options depend on a registry (each data source its
own options), its type is built there like ``parameters``: a union tagged by the source, one
model per registered entry, made with ``create_model``. Unknown-key errors with "did you mean",
the one-line translation and the JSON Schema (``kdtune space-schema``) follow from the field.

Errors as one line: :mod:`kdtune.tune.space_errors`; rules across sections:
:mod:`kdtune.tune.space_checks`; checks that build models: :mod:`kdtune.tune.space_branches`.

YAML booleans: PyYAML reads YAML 1.1, where an unquoted ``yes``/``no``/``on``/``off`` is a
boolean; editors read YAML 1.2, where those are strings. A true/false key takes both forms
(the loader and the JSON Schema alike); a key that takes names says so when it gets a boolean.
"""

import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    Tag,
    WithJsonSchema,
    create_model,
    model_validator,
)

from kdtune import coerce as coercion
from kdtune.config import DEVICES, SCHEDULES, TEACHER_OUTPUTS
from kdtune.errors import KdtuneError
from kdtune.resolve import config_from_dict, key_types
from kdtune.vocabulary import OBJECTIVE_METRICS, RUNG_METRICS

PARAM_TYPES = ("categorical", "int", "float", "logfloat")
SAMPLERS = ("tpe", "random", "grid", "nsga2")
MODES = ("max", "min")
#: Data settings shared by the teacher and every trial: set under ``fixed`` only.
DATA_KEYS = ("dataset", "data_root", "download", "split_seed", "val_fraction", "train_per_class")
#: Teacher settings taken from ``fixed`` unless the ``teacher`` section sets them.
TEACHER_DEFAULT_KEYS = ("augment", "device", "threads", "amp")
#: Fields no parameter may vary (one teacher and one split per sweep; seeds come from fixed).
NOT_SEARCHABLE = {
    "seed": "set the seeds under fixed.seeds",
    **{k: "one teacher and one data split serve the whole sweep; set it under fixed"
       for k in DATA_KEYS},
    **{k: "set it under fixed" for k in ("teacher", "out", "device", "threads")},
}
#: Fields ``fixed`` may not set: the search layer fills them in.
NOT_FIXED = {"teacher": "give the teacher in the top-level teacher: section",
             "out": "the search layer chooses each trial's output folder"}
#: Fields the ``teacher`` section may not set (the method's parameters neither).
#: (``train_per_class`` may differ: validation and test do not depend on it, so a teacher
#: that learns from more of the training part never sees the students' held-out images.)
NOT_TEACHER = {**{k: "the teacher takes it from fixed" for k in DATA_KEYS
                  if k != "train_per_class"},
               **{k: "the teacher is trained alone (method none)"
                  for k in ("method", "feature_method", "alpha", "temperature", "kd_warmup",
                            "teacher")},
               "out": "the search layer chooses where the teacher is saved"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The words a true/false key takes: YAML 1.1's booleans, which YAML 1.2 reads as strings.
BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")
YAML11_HINT = ("; YAML 1.1 reads an unquoted yes, no, on or off as true or false: quote the "
               "word")


class At(ValueError):
    """A refusal of the value at ``key``: a dotted path relative to the value a validator is
    given (``""``: that value), or from the top of the file in the rules after validation."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class Kind(typing.NamedTuple):
    """Field metadata: the word an error uses for the field's values (``unknown sampler``)."""

    word: str


class Section(BaseModel):
    """A mapping of the file: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    #: Keys refused with a reason of their own (key -> the error's text).
    refused: ClassVar[Mapping[str, str]] = {}
    #: The text for any other unknown key (None: "unknown key ...; allowed: ...").
    refused_other: ClassVar[str | None] = None
    #: What a value of the section must look like, for "expected ..., got ...".
    shape: ClassVar[str] = "a mapping"


# -- values ------------------------------------------------------------------------------------
def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, BeforeValidator(_whole), Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]


def show(value: Any) -> str:
    """A value as an error shows it (lists for tuples; a mapping unshown)."""
    if isinstance(value, dict):
        return "a mapping"
    return repr(list(value) if isinstance(value, tuple) else value)


def _name_type(what: str, allowed: str = "") -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            raise At("", f"expected {what}, got {show(value)}{allowed}")
        return value
    return Annotated[str, PlainValidator(check),
                     WithJsonSchema({"type": "string", "pattern": NAME.pattern})]


SpaceName = _name_type("a name of letters, digits, '_', '.', '-'")
SweepName = _name_type("a sweep name", "; a name of letters, digits, '_', '.', '-'")


def base_type(hint: Any) -> type:
    """``int | None`` -> int, ``tuple[int, ...] | None`` -> tuple, ..."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return tuple if typing.get_origin(hint) is tuple else hint


def coerce_key(name: str, value: Any, hint: Any = None) -> Any:
    """``value`` as config key ``name`` (of type ``hint``, looked up when None) takes it
    (:func:`kdtune.coerce.coerce`), with ``on``/``off`` for true/false; else
    :class:`KdtuneError` without a location."""
    hint = key_types()[name] if hint is None else hint
    base = base_type(hint)
    if base is bool and isinstance(value, str) and value.lower() in ("on", "off"):
        value = value.lower() == "on"
    try:
        return coercion.coerce(value, hint, "")
    except KdtuneError as exc:
        hint_ = YAML11_HINT if isinstance(value, bool) and base is str else ""
        raise KdtuneError(str(exc).removeprefix(": ") + hint_) from None


def check_alone(name: str, value: Any) -> None:
    """Validate one key's value with every other key valid (its range); a method parameter
    against its own spec in the method registry. Raises :class:`KdtuneError`."""
    from kdtune.methods import all_params, get_feature_method, get_method, list_methods

    if name in ("method", "feature_method"):
        (get_method if name == "method" else get_feature_method)(value)
        return
    if name in all_params():
        all_params()[name].check(value)
        return
    base: dict[str, Any] = {"method": "none"}
    if name == "temperature":
        specs = [get_method(m) for m in list_methods()]
        base = {"method": next((s.name for s in specs if s.uses_temperature), "none")}
    config_from_dict({**base, name: value})


def _bool_pattern() -> str:
    words = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in w)
             for w in BOOL_WORDS]
    return f"^(?:{'|'.join(words)})$"


def _value_schema(hint: Any, names: list[str] | None, param: Any) -> dict[str, Any]:
    base = base_type(hint)
    schema: dict[str, Any] = {
        bool: {"anyOf": [{"type": "boolean"}, {"type": "string", "pattern": _bool_pattern()}]},
        int: {"type": "integer"}, float: {"type": "number"},
        tuple: {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "integer"},
                          {"type": "string"}]},
    }.get(base, {"type": "string"})
    if names is not None:
        schema["enum"] = list(names)
    if param is not None:
        if param.choices is not None:
            schema["enum"] = list(param.choices)
        elif base in (int, float):
            for bound, open_, word in ((param.low, param.low_open, "inimum"),
                                       (param.high, param.high_open, "aximum")):
                if bound is not None:
                    key = ("exclusiveM" if open_ else "m") + word
                    schema[key] = bound
        if param.help:
            schema["description"] = param.help
    if hint is not base and type(None) in typing.get_args(hint):
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def _value_type(name: str, hint: Any, names: list[str] | None, param: Any, check: bool) -> Any:
    """The type of key ``name``'s value: coerced like a config's, range-checked when ``check``."""
    def validate(value: Any) -> Any:
        out = coerce_key(name, value, hint)
        if check:
            check_alone(name, out)
        return out
    return Annotated[Any, PlainValidator(validate),
                     WithJsonSchema(_value_schema(hint, names, param))]


def _seeds(value: Any) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or not items:
        raise At("", f"expected a non-empty list of integers, got {show(value)}")
    seeds = []
    for i, seed in enumerate(items):
        seed = _whole(seed)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise At(f"[{i}]", f"expected an integer >= 0, got {show(seed)}")
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise At("", f"duplicate seeds in {seeds}")
    return tuple(seeds)


Seeds = Annotated[Any, PlainValidator(_seeds), WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": 0},
    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
     "uniqueItems": True}]})]


def _when(value: Any) -> dict[str, tuple[Any, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise At("", "expected a mapping of an earlier categorical parameter to its allowed "
                     f"values, got {show(value)}")
    out = {}
    for ref, allowed in value.items():
        allowed = allowed if isinstance(allowed, list) else [allowed]
        if not allowed:
            raise At(str(ref), f"empty; list the values of {ref} for which this parameter "
                               "exists")
        out[str(ref)] = tuple(allowed)
    return out


When = Annotated[Any, PlainValidator(_when), WithJsonSchema({
    "type": "object", "minProperties": 1,
    "description": "the parameter exists when each earlier categorical parameter named here "
                   "has one of the values listed",
    "additionalProperties": {"anyOf": [{"type": "array", "minItems": 1},
                                       {"type": ["string", "number", "boolean"]}]}})]


# -- sections ----------------------------------------------------------------------------------
class ParamSpec(Section):
    """One searched key: its ``type`` picks the model."""

    shape: ClassVar[str] = "a mapping with a type (categorical, int, float or logfloat)"
    when: When = None


class CategoricalSpec(ParamSpec):
    """The choices (each coerced to the key's type; the model per key is built)."""

    type: Literal["categorical"]

    @model_validator(mode="after")
    def _distinct(self) -> "CategoricalSpec":
        seen: list[Any] = []
        for value in self.choices:  # type: ignore[attr-defined]
            if value in seen:
                raise At("choices", f"duplicate choice {show(value)}")
            seen.append(value)
        return self


_BOUNDS = "int, float and logfloat need low and high"


class IntSpec(ParamSpec):
    type: Literal["int"]
    low: Int = Field(description=_BOUNDS)
    high: Int = Field(description=_BOUNDS)
    step: Annotated[Int, Field(gt=0)] | None = None


class FloatSpec(ParamSpec):
    type: Literal["float"]
    low: Float = Field(description=_BOUNDS)
    high: Float = Field(description=_BOUNDS)
    step: Annotated[Float, Field(gt=0)] | None = None


class LogFloatSpec(ParamSpec):
    type: Literal["logfloat"]
    low: Float = Field(description=_BOUNDS, json_schema_extra={"exclusiveMinimum": 0})
    high: Float = Field(description=_BOUNDS)


def numeric_checks(name: str, spec: IntSpec | FloatSpec | LogFloatSpec) -> None:
    """The bounds of a numeric parameter: ordered, on its step, and each a valid value."""
    low, high = spec.low, spec.high
    if low >= high:
        raise At(f"{name}.low", f"low {low:g} must be < high {high:g} (for a single value, put "
                                f"{name} under fixed)")
    if spec.type == "logfloat" and low <= 0:
        raise At(f"{name}.low", f"a logfloat needs low > 0, got {low:g}")
    step = getattr(spec, "step", None)
    if step is not None:
        span = (high - low) / step
        if step > high - low or abs(span - round(span)) > 1e-9:
            raise At(f"{name}.step", f"high - low ({high - low:g}) must be a multiple of step "
                                     f"{step:g}")
    for bound, value in (("low", low), ("high", high)):
        try:
            check_alone(name, value)
        except KdtuneError as exc:
            raise At(f"{name}.{bound}", str(exc)) from None


class Keyed(Section):
    """A section whose keys are config keys: :meth:`given` has them in the file's order."""

    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> "Keyed":
        doc = handler(data)
        doc._order = [str(k) for k in data]
        return doc

    def given(self) -> dict[str, Any]:
        """The keys the file gives, in its order, with their validated values."""
        return {k: getattr(self, k) for k in self._order}


class ParametersBase(Keyed):
    """The searched keys (built with a field per searchable config key)."""

    shape: ClassVar[str] = "a mapping of TrainConfig fields to parameter specs"

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data:
            raise At("", f"expected {cls.shape}; add at least one parameter")
        return data

    @model_validator(mode="after")
    def _bounds(self) -> "ParametersBase":
        for name in type(self).model_fields:
            spec = getattr(self, name)
            if spec is not None and not isinstance(spec, CategoricalSpec):
                numeric_checks(name, spec)
        return self


class FixedBase(Keyed):
    """Values every trial shares (built with a field per config key, and ``seeds``)."""

    refused: ClassVar[Mapping[str, str]] = {k: f"not allowed here: {why}"
                                            for k, why in NOT_FIXED.items()}
    seeds: Seeds = None

    @model_validator(mode="after")
    def _one_seed_key(self) -> "FixedBase":
        if "seeds" in self.model_fields_set and "seed" in self.model_fields_set:
            raise At("seeds", "give seeds or seed, not both")
        return self


class TeacherPathSpec(Section):
    """A teacher checkpoint."""

    refused_other: ClassVar[str | None] = ("not allowed beside teacher.path (give a "
                                           "checkpoint or a config, not both)")
    path: Annotated[str, Strict(), Field(min_length=1)]


class TeacherConfigBase(Keyed):
    """The teacher's own TrainConfig fields (built with a field per allowed key)."""

    shape: ClassVar[str] = ("{path: FILE} or the teacher's TrainConfig fields (model, hidden, "
                            "epochs, ...)")
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data:
            raise At("", f"expected {cls.shape}, got {show(data)}")
        return data


def _teacher_tag(value: Any) -> str:
    return "path" if isinstance(value, dict) and "path" in value else "config"


def _not_test_accuracy(value: Any) -> Any:
    if value == "test_accuracy":
        raise At("", "test_accuracy is for the final report, never for choosing; use "
                     "val_accuracy")
    return value


class ObjectiveSpec(Section):
    shape: ClassVar[str] = "{metric: M, mode: max|min}"
    metric: Annotated[Literal[OBJECTIVE_METRICS], BeforeValidator(_not_test_accuracy),  # type: ignore[valid-type]
                      Kind("metric")]
    mode: Annotated[Literal[MODES], Kind("mode")] | None = None  # type: ignore[valid-type]


Objectives = Annotated[
    Annotated[ObjectiveSpec, Tag("one")]
    | Annotated[Annotated[list[ObjectiveSpec], Field(min_length=1)], Tag("list")],
    Discriminator(lambda v: "list" if isinstance(v, list) else "one")]


class WarmStartSpec(Section):
    """Run the ``top`` best configurations of sweep ``from`` first."""

    shape: ClassVar[str] = "{from: SWEEP, top: K}"
    source: SweepName = Field(alias="from")
    top: Annotated[Int, Field(ge=1)] = 5


class SearchSpec(Section):
    num_samples: Annotated[Int, Field(ge=1)] | None = None
    max_concurrent: Annotated[Int, Field(ge=1)] = 1
    sampler: Annotated[Literal[SAMPLERS], Kind("sampler")] | None = None  # type: ignore[valid-type]
    seed: Annotated[Int, Field(ge=0)] = 0
    warm_start: WarmStartSpec | None = None


ASHA_KEYS = ("metric", "grace_period", "reduction_factor", "max_t")


class AshaSpec(Section):
    type: Literal["asha"] = "asha"
    metric: Annotated[Literal[RUNG_METRICS], Kind("scheduler metric")] | None = None  # type: ignore[valid-type]
    grace_period: Annotated[Int, Field(ge=1)] = 1
    reduction_factor: Annotated[Float, Field(gt=1)] = 2.0
    max_t: Annotated[Int, Field(ge=1)] | None = None


class NoSchedulerSpec(Section):
    refused: ClassVar[Mapping[str, str]] = {k: "only for type asha" for k in ASHA_KEYS}
    type: Literal["none"]


def _scheduler_tag(value: Any) -> str:
    kind = value.get("type", "asha") if isinstance(value, dict) else "asha"
    return kind if isinstance(kind, str) else repr(kind)


Scheduler = Annotated[Annotated[AshaSpec, Tag("asha")] | Annotated[NoSchedulerSpec, Tag("none")],
                      Discriminator(_scheduler_tag), Kind("scheduler")]


class ResourcesSpec(Section):
    cpus: Annotated[Float, Field(gt=0)] = 1.0
    gpus: Annotated[Float, Field(ge=0)] = 0.0
    max_retries: Annotated[Int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _gpu_share(self) -> "ResourcesSpec":
        if self.gpus > 1 and not self.gpus.is_integer():
            raise At("gpus", f"{self.gpus:g}: more than one GPU must be a whole number "
                             "(fractions only below 1, e.g. 0.25)")
        if self.gpus > 0 and self.cpus < 1:
            raise At("cpus", f"{self.cpus:g} must be >= 1 when gpus > 0 (a GPU trial still "
                             "needs a whole CPU)")
        return self


class SpaceFileBase(Section):
    """A whole file (built with the registries' sections by :func:`space_model`)."""


# -- the model, built from the registries ------------------------------------------------------
def _registry_state() -> tuple[Any, ...]:
    from kdtune.data import list_datasets
    from kdtune.methods import all_params, list_feature_methods, list_methods
    from kdtune.models import list_models

    return (tuple((n, id(p)) for n, p in all_params().items()), tuple(list_methods()),
            tuple(list_feature_methods()), tuple(list_models()), tuple(list_datasets()))


def space_model() -> type[SpaceFileBase]:
    """The model of a space file for the registries as they are now."""
    return _build(_registry_state())


@functools.lru_cache(maxsize=4)
def _build(state: tuple[Any, ...]) -> type[SpaceFileBase]:
    from kdtune.methods import all_params

    _, methods, feature_methods, models, datasets = state
    types_ = key_types()
    params = all_params()
    names = {"dataset": datasets, "model": models, "method": methods,
             "feature_method": feature_methods, "schedule": SCHEDULES,
             "teacher_outputs": TEACHER_OUTPUTS, "device": DEVICES}

    def value(key: str, check: bool) -> Any:
        return _value_type(key, types_[key], names.get(key), params.get(key), check)

    fixed = create_model("Fixed", __base__=FixedBase, **{
        k: (value(k, True), None) for k in types_ if k not in NOT_FIXED})
    teacher_config = create_model(
        "TeacherConfig", __base__=TeacherConfigBase,
        **{k: (value(k, False), None) for k in types_ if k not in NOT_TEACHER and k not in params})
    teacher_config.refused = {
        **{k: f"not allowed here: {why}" for k, why in NOT_TEACHER.items()},
        **{k: f"not allowed here: {NOT_TEACHER['method']}" for k in params}}
    teacher = Annotated[Annotated[TeacherPathSpec, Tag("path")]
                        | Annotated[teacher_config, Tag("config")],
                        Discriminator(_teacher_tag)]

    specs: dict[str, Any] = {}
    for k in types_:
        if k in NOT_SEARCHABLE:
            continue
        categorical = create_model(
            f"Categorical_{k}", __base__=CategoricalSpec,
            choices=(Annotated[list[value(k, True)], Field(  # type: ignore[misc]
                min_length=1, description="a categorical parameter needs choices")], ...))
        kinds = {int: [IntSpec], float: [IntSpec, FloatSpec, LogFloatSpec]}.get(
            base_type(types_[k]), [])
        spec = categorical if not kinds else Annotated[
            Union[(categorical, *kinds)], Field(discriminator="type")]
        specs[k] = (spec, None)  # None: not searched (a null in the file is refused)
    parameters = create_model("Parameters", __base__=ParametersBase, **specs)
    parameters.refused = {k: f"{k} cannot be searched: {why}" for k, why in NOT_SEARCHABLE.items()}

    model = create_model(
        "SpaceFile", __base__=SpaceFileBase,
        name=(SpaceName | None, None),
        fixed=(fixed | None, None),
        teacher=(teacher | None, None),
        parameters=(parameters, Field(None, validate_default=True)),
        objective=(Objectives | None, None),
        search=(SearchSpec | None, None),
        scheduler=(Scheduler | None, None),
        resources=(ResourcesSpec | None, None))
    return model


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a space file, for editors (``kdtune space-schema``)."""
    schema = _json_bounds(space_model().model_json_schema())
    schema["required"] = sorted({*schema.get("required", []), "parameters"})
    searchable = list(schema["$defs"]["Parameters"]["properties"])
    for spec in schema["$defs"].values():  # a condition names a parameter
        if "when" in spec.get("properties", {}):
            spec["properties"]["when"]["propertyNames"] = {"enum": searchable}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "kdtune search space",
            "description": "A kdtune search-space file (docs/search-space.md).", **schema}


def _json_bounds(node: Any) -> Any:
    """Pydantic writes the bounds of a number it validates after a function as ``ge``/``gt``:
    JSON Schema's ``minimum``/``exclusiveMinimum``."""
    if isinstance(node, list):
        return [_json_bounds(n) for n in node]
    if not isinstance(node, dict):
        return node
    names = {"ge": "minimum", "gt": "exclusiveMinimum"} if node.get("type") in (
        "integer", "number") else {}
    return {names.get(k, k): _json_bounds(v) for k, v in node.items()}


def print_json_schema() -> int:
    """``kdtune space-schema``: the JSON Schema on stdout."""
    import json

    print(json.dumps(json_schema(), indent=1))
    return 0
