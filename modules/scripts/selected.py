"""Running a request's selectable script (`script_name`) in place of normal processing.

`run_selected` finds the script, parses `script_args` into its `Args`, and hands it a
`ScriptProcessing` whose `process(params)` is the normal pipeline for a copy of the
request without `script_name` (so always-on scripts still run in every inner job).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

from modules.scripts.args import parse_args
from modules.scripts.base import ScriptProcessing


def resolve_selected(runtime, params, *, is_img2img: bool):
    """(script, parsed args) for `params.script_name`; errors name the script / field."""
    script = runtime.extensions.find_selectable(params.script_name, is_img2img)
    return script, parse_args(script.Args, params.script_args or None, script=script.title())


def run_selected(runtime, params, *, is_img2img: bool, process: Callable):
    """Generator: the selected script's run; returns its GenerationResult."""
    script, args = resolve_selected(runtime, params, is_img2img=is_img2img)
    inner = dataclasses.replace(params, script_name=None, script_args=[])
    script.check(runtime, inner, args)
    p = ScriptProcessing(runtime=runtime, params=inner, is_img2img=is_img2img,
                         process=lambda job: process(runtime, job))
    outcome = script.run(p, args)
    if inspect.isgenerator(outcome):
        outcome = yield from outcome
    if outcome is None:
        raise RuntimeError(f"script {script.title()!r} returned no result")
    return outcome
