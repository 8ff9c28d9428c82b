"""The last step before a job is queued: styles merged, the request validated, the
selected script's arguments checked, each failure a visible error naming the field.

The same checks the HTTP API makes (`modules.api.generation`), so the UI and the API
refuse the same requests, before they wait in the queue.
"""

from __future__ import annotations

import dataclasses

import gradio as gr

from modules.pipeline.limits import PixelBudget, check_pixel_budget
from modules.pipeline.params import GenerationParams, ParamsError
from modules.styles import StyleError, apply_styles, load_styles
from webui.panel_results import gr_error
from webui.widgets import loaded_model


def with_styles(runtime, params: GenerationParams) -> GenerationParams:
    """The prompts with the picked styles merged in (A1111 does this when generating)."""
    if not params.styles:
        return params
    try:
        prompt, negative = apply_styles(params.prompt, params.negative_prompt, params.styles,
                                        load_styles(runtime.paths.styles_file))
    except StyleError as error:
        raise gr.Error(f"Styles: {error}") from error
    return dataclasses.replace(params, prompt=prompt, negative_prompt=negative)


def check_size_multiple(runtime, params: GenerationParams) -> None:
    """Width and height fit the loaded family's latent grid: 16 px for SD3 / Flux (2x2
    patches), refused here naming the field rather than cropped later."""
    loaded = loaded_model(runtime)
    if loaded is None:
        return  # validate() has checked the 8 px grid every family shares
    multiple = getattr(loaded.family, "size_multiple", 8)
    for name in ("width", "height"):
        value = getattr(params, name)
        if isinstance(value, int) and value % multiple:
            raise ParamsError(name, f"{value} is not a multiple of {multiple} "
                                    f"({loaded.family.label} draws on a {multiple} px grid)")


def check_script(runtime, params: GenerationParams, *, is_img2img: bool) -> None:
    """The always-on scripts' arguments parse; the selected script exists, its arguments
    parse, and its own check passes."""
    registry = runtime.extensions
    if registry is not None and params.alwayson_scripts:
        registry.script_run(alwayson_args=params.alwayson_scripts, is_img2img=is_img2img,
                            warnings=[])
    if not params.script_name:
        return
    from modules.scripts.selected import resolve_selected

    script, args = resolve_selected(runtime, params, is_img2img=is_img2img)
    script.check(runtime, dataclasses.replace(params, script_name=None, script_args=[]), args)


def checked_request(runtime, params: GenerationParams, *, is_img2img: bool,
                    full: bool = True) -> GenerationParams:
    """`params` ready to queue; `full=False` checks only the shared fields (a batch run
    whose pictures are read from a folder later)."""
    params = with_styles(runtime, params)
    try:
        params.validate() if full else params.validate_common()
        check_size_multiple(runtime, params)
        check_pixel_budget(params, PixelBudget.from_args(runtime.args))  # as the API
        check_script(runtime, params, is_img2img=is_img2img)
    except (ParamsError, ValueError, LookupError) as error:
        raise gr_error(error) from error
    return params
