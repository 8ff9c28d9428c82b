"""`/controlnet/control_types`: preprocessors and models grouped by control type.

The ControlNet extension's rule (facts of its API, our code): a type's keyword, lower
case, and its extra keywords select the preprocessors and model titles whose name holds
one of them; "none" always belongs, and the line-drawing types also offer "invert".
"All" lists everything. A model list starts with "None"; when no model matches, the
type offers every model and defaults to "None", else it defaults to the first match
(one whose name holds "11", a v1.1 model, when there is one). The default preprocessor
is the type's usual one when Easel has it, else the first of the list.

Only the types Easel can run are listed: those with a preprocessor here, "All", and
"InstructP2P" (a plain ControlNet fed the picture as is).
"""

from __future__ import annotations

from typing import Any

# type -> the preprocessor the extension selects by default
DEFAULTS = {
    "All": "none", "Canny": "canny", "Depth": "depth_midas", "NormalMap": "normal_bae",
    "OpenPose": "openpose_full", "MLSD": "mlsd", "Lineart": "lineart_standard",
    "SoftEdge": "softedge_pidinet", "Scribble/Sketch": "scribble_pidinet",
    "Segmentation": "seg_ofade20k", "Shuffle": "shuffle", "Tile/Blur": "tile_resample",
    "Inpaint": "inpaint_only", "InstructP2P": "none", "T2I-Adapter": "clip_vision",
    "IP-Adapter": "ip-adapter_clip_sd15",
}
KEYWORDS = {
    "instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
    "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"),
    "ip-adapter": ("ip_adapter", "ipadapter"),
    "scribble/sketch": ("scribble", "sketch"), "tile/blur": ("tile", "blur"),
    "openpose": ("openpose", "densepose"),
}
WITH_INVERT = ("canny", "lineart", "scribble/sketch", "mlsd")
ALWAYS = ("All", "InstructP2P")


def _matches(control_type: str, *names: str) -> bool:
    pattern = control_type.lower()
    words = (pattern, *KEYWORDS.get(pattern, ()))
    return any(word in name.lower() for name in names for word in words)


def _modules(control_type: str, modules: list[str], labels: dict[str, str]) -> list[str]:
    chosen = [m for m in modules if m == "none" or _matches(control_type, m, labels[m])]
    if control_type.lower() in WITH_INVERT:
        chosen += [m for m in modules if "invert" in m]
    return chosen


def select(control_type: str, modules: list[str], labels: dict[str, str],
           models: list[str]) -> dict[str, Any]:
    """One type's entry: module_list, model_list, default_option, default_model."""
    titles = ["None", *models]
    if control_type == "All":
        return {"module_list": modules, "model_list": titles, "default_option": "none",
                "default_model": "None"}
    chosen = _modules(control_type, modules, labels)
    default_option = DEFAULTS.get(control_type, "none")
    if default_option not in chosen:
        default_option = chosen[0]
    matched = ["None", *(m for m in models if _matches(control_type, m))]
    if len(matched) == 1:
        return {"module_list": chosen, "model_list": titles, "default_option": default_option,
                "default_model": "None"}
    v11 = [m for m in matched[1:] if "11" in m.split("[")[0]]
    return {"module_list": chosen, "model_list": matched, "default_option": default_option,
            "default_model": (v11 or matched[1:])[0]}


def control_types(modules: list[str], labels: dict[str, str], models: list[str]
                  ) -> dict[str, dict[str, Any]]:
    """Every type Easel can run -> its entry (`labels`: module -> the extension's label)."""
    first = [m for m in ("none", "invert") if m in modules]
    ordered = first + sorted(m for m in modules if m not in first)
    listed = {}
    for control_type in DEFAULTS:
        entry = select(control_type, ordered, labels, models)
        runnable = [m for m in entry["module_list"] if m not in ("none", "invert")]
        if control_type in ALWAYS or runnable:
            listed[control_type] = entry
    return listed
