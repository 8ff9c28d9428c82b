"""Script arguments: one `Args` dataclass per script, filled from lists or dicts.

API clients send a script's arguments either as a list in field order (A1111's
`{"args": [...]}` slice) or as a dict by field name. Both are checked against the
dataclass's annotations and the per-field metadata declared with `arg(...)` (label,
range, choices), and a bad value raises `ScriptArgsError` naming the script and field.
`describe_args` gives `/sdapi/v1/script-info`'s `args` entries from the same metadata.
A field whose type has a `parse_arg(value)` classmethod (a structured argument, such as
one ControlNet unit given as a dict) is converted by it; a `ValueError` it raises
becomes a `ScriptArgsError` naming the field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


class ScriptArgsError(ValueError):
    """A script argument that cannot be accepted; the message names script and field."""

    def __init__(self, script: str, field_name: str | None, reason: str):
        where = f"{script}.{field_name}" if field_name else script
        super().__init__(f"script {where}: {reason}")
        self.script, self.field, self.reason = script, field_name, reason


def arg(default: Any, label: str = "", *, minimum: float | None = None,
        maximum: float | None = None, step: float | None = None,
        choices: tuple | None = None) -> Any:
    """Declare one script argument with the metadata the UI and script-info show."""
    meta = {"label": label, "minimum": minimum, "maximum": maximum, "step": step,
            "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class NoArgs:
    """Arguments of a script that takes none."""


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return None


def _type_name(args_type: type, spec: dataclasses.Field) -> str:
    hint = typing.get_type_hints(args_type).get(spec.name, Any)
    origin = typing.get_origin(hint) or hint
    return getattr(origin, "__name__", str(origin))


def _coerce(script: str, name: str, kind: str, value: Any) -> Any:
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ScriptArgsError(script, name, f"expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ScriptArgsError(script, name, f"expected an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScriptArgsError(script, name, f"expected a number, got {value!r}")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ScriptArgsError(script, name, f"expected a string, got {value!r}")
        return value
    if kind == "list" and not isinstance(value, list):
        raise ScriptArgsError(script, name, f"expected a list, got {value!r}")
    return value


def _check_range(script: str, spec: dataclasses.Field, value: Any) -> None:
    meta = spec.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ScriptArgsError(script, spec.name, f"{value!r} is not one of {list(meta['choices'])}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise ScriptArgsError(script, spec.name, f"{value} is below the minimum {meta['minimum']}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise ScriptArgsError(script, spec.name, f"{value} is above the maximum {meta['maximum']}")


def parse_args(args_type: type, payload: Any, *, script: str) -> Any:
    """An `args_type` instance from None (defaults), a list (field order) or a dict."""
    specs = fields(args_type)
    if payload is None:
        values: dict[str, Any] = {}
    elif isinstance(payload, (list, tuple)):
        if len(payload) > len(specs):
            names = ", ".join(s.name for s in specs)
            raise ScriptArgsError(script, None, f"got {len(payload)} args but it takes "
                                                f"{len(specs)} ({names})")
        values = {spec.name: value for spec, value in zip(specs, payload)}
    elif isinstance(payload, dict):
        known = {spec.name for spec in specs}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ScriptArgsError(script, unknown[0], f"unknown argument (expected one of "
                                                      f"{sorted(known)})")
        values = dict(payload)
    else:
        raise ScriptArgsError(script, None, f"args must be a list or an object, got {payload!r}")
    converted = {}
    for spec in specs:
        value = values.get(spec.name, _default(spec))
        parse = getattr(typing.get_type_hints(args_type).get(spec.name), "parse_arg", None)
        if spec.name in values and callable(parse):
            try:
                value = parse(value)
            except ValueError as error:
                raise ScriptArgsError(script, spec.name, str(error)) from None
        elif spec.name in values:
            value = _coerce(script, spec.name, _type_name(args_type, spec), value)
            _check_range(script, spec, value)
        converted[spec.name] = value
    return args_type(**converted)


def describe_args(args_type: type) -> list[dict[str, Any]]:
    """`/sdapi/v1/script-info` arg entries: label, default value, min, max, step, choices."""
    return [{"label": spec.metadata.get("label") or spec.name, "value": _default(spec),
             "minimum": spec.metadata.get("minimum"), "maximum": spec.metadata.get("maximum"),
             "step": spec.metadata.get("step"),
             "choices": list(spec.metadata["choices"]) if spec.metadata.get("choices") else None}
            for spec in fields(args_type)]


@dataclass(frozen=True)
class ArgSpec:
    """One script argument as a user interface shows it (no UI library involved):
    `kind` is the annotation's type name ("bool", "int", "float", "str", "list", "Any"),
    so a front end can pick a control; the rest is the `arg(...)` metadata."""

    name: str
    kind: str
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple | None = None


def arg_specs(args_type: type) -> list[ArgSpec]:
    """The `Args` fields of a script in order, for building its controls."""
    return [ArgSpec(name=spec.name, kind=_type_name(args_type, spec),
                    label=spec.metadata.get("label") or spec.name, default=_default(spec),
                    minimum=spec.metadata.get("minimum"), maximum=spec.metadata.get("maximum"),
                    step=spec.metadata.get("step"),
                    choices=tuple(spec.metadata["choices"]) if spec.metadata.get("choices")
                    else None)
            for spec in fields(args_type)]
