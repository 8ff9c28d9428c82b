"""The shipped demo IP-Adapter gives the demo model the reference picture's colour.

Prompt "a large circle in the center" names no colour; the reference is a picture of a
shape of some colour (another shape, place and background). Every job runs through
`processing.txt2img` with an `alwayson_scripts.controlnet` unit (module
"ip-adapter_clip_sd15", model "easel-demo-ip-adapter", the reference as base64 PNG,
weight 1.0), as the API does; the image encoder is found in `models/clip_vision` (the
`--models-dir` given here). With the unit the generated shape takes the reference's
colour; the same jobs without it match the reference at chance (1 in the palette's 8
colours). Judged by the pixel checker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.training.ip_adapter_demo import measure
from modules.training.shapes import COLORS

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
ADAPTER = ROOT / "models" / "ControlNet" / "easel-demo-ip-adapter.safetensors"
ENCODER = ROOT / "models" / "clip_vision" / "easel-demo-clip-vision.safetensors"


@pytest.mark.slow
def test_reference_colour_is_followed_with_the_unit_and_chance_without(tmp_path) -> None:
    assert DEMO.is_file() and ADAPTER.is_file() and ENCODER.is_file(), \
        "the demo model, its IP-Adapter and the image encoder must ship"
    assert len(COLORS) == 8  # chance is 1/8: "without" stays far below 0.35
    figures = measure(base=DEMO, adapter_path=ADAPTER, models_dir=ROOT / "models",
                      data_dir=tmp_path)
    print(f"reference colour followed: {figures['with']:.3f} with the unit, "
          f"{figures['without']:.3f} without ({figures['images']} images each)")
    assert figures["images"] == 64
    assert figures["with"] >= 0.75
    assert figures["without"] <= 0.35
