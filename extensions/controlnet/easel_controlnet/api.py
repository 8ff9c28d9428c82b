"""The ControlNet extension's HTTP routes, on Easel's extension app.

The routes and their shapes: docs/a1111-semantics.md, "ControlNet API".

Registered from the extension's `app_started` callback through `ExtensionApp.add_api_route`,
so they sit behind `--api-auth` like `/sdapi/v1/*`:

- GET  /controlnet/version      -> {"version": 2}
- GET  /controlnet/model_list   -> {"model_list": ["stem [hash8]", ...]} (ControlNets,
  T2I-Adapters and IP-Adapters alike, as the extension lists them)
- GET  /controlnet/module_list  -> {"module_list": [...], "module_detail": {...}}
  (`alias_names=true`: the extension's UI labels, e.g. "t2ia_color_grid" for "color")
- GET  /controlnet/control_types -> {"control_types": {"All": {"module_list", "model_list",
  "default_option", "default_model"}, "Canny": {...}, ...}} (`control_types.py`)
- GET  /controlnet/settings     -> {"control_net_unit_count": n}
- POST /controlnet/detect       -> {"images": [base64 PNG], "info": "Success"}; the CLIP
  modules (IP-Adapter's, the style adapter's) make no picture: a 422 (the extension
  answers "Module not supported" for `clip_vision` and a pickled tensor for the others)
- POST /controlnet/render_openpose_json [{people, canvas_width, canvas_height}, ...]
  -> {"images": [base64 PNG], "info": "Success"} (`openpose_render.py`)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from fastapi import Body, HTTPException
from pydantic import BaseModel, Field

from easel_controlnet.control_types import control_types
from easel_controlnet.hint import decode_image, map_to_png_base64
from easel_controlnet.library import Folders, KindCache, list_models
from easel_controlnet.openpose_render import MAX_PICTURES, PoseData, png_base64, render
from easel_controlnet.prepare import detect_map
from easel_controlnet.preprocessors import (
    PreprocessorError,
    all_preprocessors,
    canonical_module,
    get_preprocessor,
    preprocessor_names,
    ui_label,
)
from easel_controlnet.units import ControlNetUnit

API_VERSION = 2


class DetectRequest(BaseModel):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_masks: list[str] = Field(default_factory=list)
    controlnet_processor_res: int = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    low_vram: bool = False


def module_detail(alias_names: bool = False) -> dict[str, Any]:
    """Per module: whether it needs weights, and its sliders (label, default, range)."""
    detail = {}
    for name, entry in all_preprocessors().items():
        sliders = []
        if entry.uses_resolution:
            sliders.append({"name": "Preprocessor Resolution", "value": 512, "min": 64,
                            "max": 2048})
        for slider in (entry.slider_a, entry.slider_b):
            if slider is not None:
                sliders.append({"name": slider.label, "value": slider.default,
                                "min": slider.minimum, "max": slider.maximum})
        key = ui_label(name) if alias_names else name
        detail[key] = {"model_free": entry.run is not None, "sliders": sliders,
                       "files": list(entry.files)}
    return detail


def detect(request: DetectRequest, annotator_dir: Path | None) -> dict[str, Any]:
    if canonical_module(request.controlnet_module) not in preprocessor_names():
        raise HTTPException(422, f"Module {request.controlnet_module} not found")
    if not request.controlnet_input_images:
        raise HTTPException(422, "No image selected")
    try:
        entry = get_preprocessor(request.controlnet_module, annotator_dir)
        if entry.embeds:
            raise HTTPException(422, f"Module not supported: {entry.name} makes a CLIP image "
                                     f"embedding for IP-Adapter / the style adapter, not a "
                                     f"picture")
        if entry.needs_mask and len(request.controlnet_masks) < len(
                request.controlnet_input_images):
            raise PreprocessorError(f"Module {entry.name} requires a mask for every image")
        images = []
        for index, text in enumerate(request.controlnet_input_images):
            masks = request.controlnet_masks
            unit = ControlNetUnit(module=entry.name, threshold_a=request.controlnet_threshold_a,
                                  threshold_b=request.controlnet_threshold_b,
                                  mask=masks[index] if index < len(masks) else None)
            detected = detect_map(unit, decode_image(text, f"controlnet_input_images[{index}]"),
                                  annotator_dir=annotator_dir,
                                  resolution=request.controlnet_processor_res)
            images.append(map_to_png_base64(detected))
    except (PreprocessorError, ValueError) as error:
        raise HTTPException(422, str(error)) from None
    return {"images": images, "info": "Success"}


def render_openpose_json(
        pose_data: list[PoseData] = Body(default_factory=list, max_length=MAX_PICTURES)
) -> dict[str, Any]:
    """Pictures of OpenPose keypoint JSON; no poses: the extension's "No pose data" info."""
    if not pose_data:
        return {"info": "No pose data detected."}
    try:
        images = [png_base64(render(pose)) for pose in pose_data]
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    return {"images": images, "info": "Success"}


def register_routes(app, *, model_dir: Folders, annotator_dir: Path | None,
                    unit_count: int) -> None:
    """Add the routes to an `ExtensionApp`."""
    app.add_api_route("/controlnet/version", lambda: {"version": API_VERSION})
    kinds = KindCache()  # headers read once per file version, for this app's listings

    def model_list(update: bool = True) -> dict[str, list[str]]:
        return {"model_list": [entry.name for entry in list_models(model_dir, kinds)]}

    def module_list(alias_names: bool = False) -> dict[str, Any]:
        names = [ui_label(n) if alias_names else n for n in preprocessor_names()]
        return {"module_list": names, "module_detail": module_detail(alias_names)}

    def types() -> dict[str, Any]:
        names = list(preprocessor_names())
        models = [entry.name for entry in list_models(model_dir, kinds)]
        return {"control_types": control_types(names, {n: ui_label(n) for n in names}, models)}

    app.add_api_route("/controlnet/model_list", model_list)
    app.add_api_route("/controlnet/module_list", module_list)
    app.add_api_route("/controlnet/control_types", types)
    app.add_api_route("/controlnet/settings", lambda: {"control_net_unit_count": unit_count})

    lane = getattr(app, "side_work", None) or contextlib.nullcontext()

    def detect_route(request: DetectRequest) -> dict[str, Any]:
        with lane:  # one of the server's few picture-work slots (docs/security.md)
            return detect(request, annotator_dir)

    app.add_api_route("/controlnet/detect", detect_route, methods=["POST"])
    app.add_api_route("/controlnet/render_openpose_json", render_openpose_json,
                      methods=["POST"])
