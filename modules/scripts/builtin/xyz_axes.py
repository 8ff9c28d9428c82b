"""X/Y/Z plot axes: what each axis changes in a request, and how its values are read.

Values are comma-separated (CSV quoting allowed, for Prompt S/R). Numeric axes also
take A1111's ranges: `1-5` (every integer), `1-9 (+2)` (step), `0.5-1.5 [3]` (count).
Each axis applies one value to a copy of the request; settings-backed axes (Clip
skip, Checkpoint name) go into that cell's `override_settings` only.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_AXIS_VALUES = 1024  # as many as a whole plot may have cells (xyz_plot.MAX_CELLS)
RANGE = re.compile(r"^\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*"
                   r"(?:\(\s*([+-]?[\d.]+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


@dataclass(frozen=True)
class Axis:
    label: str
    kind: type  # int, float or str
    apply: Callable[..., Any]  # (params, value, first value of the axis) -> params
    img2img_only: bool = False


def _field(name: str) -> Callable:
    return lambda params, value, first: dataclasses.replace(params, **{name: value})


def _setting(name: str) -> Callable:
    def apply(params, value, first):
        return dataclasses.replace(params, override_settings={**params.override_settings,
                                                              name: value})
    return apply


def _prompt_sr(params, value, first):
    """Replace the axis's first value (the search term) by `value` in both prompts."""
    if first not in params.prompt and first not in params.negative_prompt:
        raise ValueError(f"X/Y/Z plot: Prompt S/R: {first!r} is not in the prompt")
    return dataclasses.replace(params, prompt=params.prompt.replace(first, value),
                               negative_prompt=params.negative_prompt.replace(first, value))


def _size(params, value: str, first):
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match:
        raise ValueError(f"X/Y/Z plot: Size value {value!r} is not WIDTHxHEIGHT")
    return dataclasses.replace(params, width=int(match[1]), height=int(match[2]))


def _denoising(params, value, first):
    changes = {"denoising_strength": value}
    if hasattr(params, "enable_hr") and not hasattr(params, "init_images"):
        changes["enable_hr"] = True  # txt2img: denoising is the hires pass's
    return dataclasses.replace(params, **changes)


AXES: tuple[Axis, ...] = (
    Axis("Nothing", str, lambda params, value, first: params),
    Axis("Seed", int, _field("seed")),
    Axis("Var. seed", int, _field("subseed")),
    Axis("Var. strength", float, _field("subseed_strength")),
    Axis("Steps", int, _field("steps")),
    Axis("CFG Scale", float, _field("cfg_scale")),
    Axis("Prompt S/R", str, _prompt_sr),
    Axis("Sampler", str, _field("sampler_name")),
    Axis("Schedule type", str, _field("scheduler")),
    Axis("Checkpoint name", str, _setting("sd_model_checkpoint")),
    Axis("Clip skip", int, _setting("CLIP_stop_at_last_layers")),
    Axis("Denoising", float, _denoising),
    Axis("Size", str, _size),
)
AXIS_LABELS = tuple(axis.label for axis in AXES)


def axis_choices(label: str, runtime) -> list[str]:
    """Every valid value of an axis that has a fixed list (samplers, schedule types,
    checkpoints), for the UI's 📒 fill-in button; [] for an axis of free values."""
    from modules.sampling import registry

    if label == "Sampler":
        return [spec.label for spec in registry.SAMPLERS]
    if label == "Schedule type":
        return [spec.label for spec in registry.SCHEDULERS]
    if label == "Checkpoint name":
        return [info.title for info in runtime.models.checkpoints()]
    return []


def join_values(values: list[str]) -> str:
    """Values as the values box reads them back: comma-separated, CSV-quoted where a
    name holds a comma or a quote."""
    def quoted(value: str) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow([value])
        return out.getvalue()

    return ", ".join(quoted(value) for value in values)


def find_axis(choice: int | str) -> Axis:
    """An axis by A1111's index (API clients send indices) or by label."""
    if isinstance(choice, int) and not isinstance(choice, bool):
        if not 0 <= choice < len(AXES):
            raise ValueError(f"X/Y/Z plot: axis index {choice} is outside [0, {len(AXES) - 1}]")
        return AXES[choice]
    for axis in AXES:
        if axis.label.lower() == str(choice).strip().lower():
            return axis
    raise ValueError(f"X/Y/Z plot: unknown axis type {choice!r} (one of {list(AXIS_LABELS)})")


def _check_count(text: str, count: int) -> None:
    """Refuse a range of more values than a plot may have, before building it."""
    if count > MAX_AXIS_VALUES:
        raise ValueError(f"X/Y/Z plot: range {text!r} has {count} values; "
                         f"at most {MAX_AXIS_VALUES} are allowed")


def _expand_range(text: str, kind: type) -> list | None:
    match = RANGE.match(text)
    if not match or kind is str:
        return None
    start, end = kind(float(match[1])), kind(float(match[2]))
    if match[4]:  # [count]
        count = int(match[4])
        _check_count(text, count)
        if count < 2:
            return [start]
        step = (end - start) / (count - 1)
        return [kind(start + step * i) for i in range(count)]
    step = kind(float(match[3])) if match[3] else kind(1)
    if step == 0:
        raise ValueError(f"X/Y/Z plot: range {text!r} has a zero step")
    # Count first: a step lost in rounding (1-2 (1e-17)) would otherwise never end.
    if start + step == start:
        raise ValueError(f"X/Y/Z plot: range {text!r} has a step too small to advance")
    _check_count(text, math.floor((end - start) / step + 1e-9) + 1)
    values, value = [], start
    while (value <= end + 1e-9) if step > 0 else (value >= end - 1e-9):
        values.append(round(value, 10) if kind is float else value)
        value += step
    return values


def parse_values(axis: Axis, text: str) -> list:
    """The axis's values from its text box (empty for "Nothing": one blank cell)."""
    if axis.label == "Nothing":
        return [None]
    items = [item.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True)
             for item in row if item.strip()]
    if not items:
        raise ValueError(f"X/Y/Z plot: no values for the {axis.label} axis")
    values: list = []
    for item in items:
        expanded = _expand_range(item, axis.kind)
        if expanded is not None:
            values += expanded
            _check_count(text[:40], len(values))
            continue
        try:
            values.append(axis.kind(float(item)) if axis.kind is int else axis.kind(item))
        except ValueError as error:
            raise ValueError(f"X/Y/Z plot: {axis.label} value {item!r} is not "
                             f"{'an integer' if axis.kind is int else 'a number'}") from error
    _check_count(text[:40], len(values))
    return values


def format_value(axis: Axis, value: Any) -> str:
    """The label drawn on the grid for one value."""
    if axis.label == "Nothing":
        return ""
    if axis.label == "Prompt S/R":
        return str(value)
    return f"{axis.label}: {value}"
