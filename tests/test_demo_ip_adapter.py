"""The shipped demo IP-Adapter gives the demo model the reference picture's colour.

Prompt "a large circle in the center" names no colour; the reference is a picture of a
shape of some colour (another shape, place and background). With the adapter (plain,
weight 1, `IPAdapterPatch` on every U-Net call of a CFG sampling loop: reference tokens
on the prompt rows, "no image" tokens on the negative rows) the generated shape takes
the reference's colour; without it the colour matches the reference at chance (1 in 8
colours, roughly). Judged by the pixel checker. The extension's `alwayson_scripts.controlnet`
route is not used here: this drives the patch directly through the U-Net's call.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.training.train_ip_adapter import measure

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
ADAPTER = ROOT / "models" / "ControlNet" / "easel-demo-ip-adapter.safetensors"
ENCODERS = ROOT / "models" / "clip_vision"


@pytest.mark.slow
def test_reference_colour_is_followed_with_the_adapter_and_chance_without() -> None:
    assert DEMO.is_file() and ADAPTER.is_file(), "the demo model and its IP-Adapter must ship"
    figures = measure(base=DEMO, adapter_path=ADAPTER, encoder_folder=ENCODERS)
    print(f"reference colour followed: {figures['with']:.3f} with the adapter, "
          f"{figures['without']:.3f} without ({figures['images']} images each)")
    assert figures["with"] >= 0.75
    assert figures["without"] <= 0.30
