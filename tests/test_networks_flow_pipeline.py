"""`<lora:...>` through txt2img on a tiny Flux.1 dev all-in-one file: image, infotext, isolation.

The runtime loads a random tiny Flux dev file (tests/helpers/flow_files.py); two LoRAs
sit in its LoRA folder: a kohya one (`lora_unet_` + BFL names, `lora_te1_` CLIP-L) and a
PEFT one (`transformer.` + diffusers names, q/k/v on rows of the fused layers). A prompt
naming either changes the image and writes `Lora hashes: name: <addnet short hash>` in
the infotext; the same prompt without the tag afterwards gives the first image again, bit
for bit (the shared weights are never written).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.infotext import parse_infotext
from modules.networks.lora import name_map
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish
from tests.helpers.flow_files import random_parts, write_all_in_one
from tests.helpers.lora_files import kohya_lora

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 11, "sampler_name": "Euler",
         "cfg_scale": 1.0, "do_not_save_samples": True}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime

    data = tmp_path_factory.mktemp("data")
    write_all_in_one(data / "models" / "Stable-diffusion" / "tiny_flux.safetensors",
                     random_parts("flux", seed=3), vae_prefix="vae.")
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--no-half"]))
    runtime.ready.set()
    names = name_map(runtime.models.get().patcher)
    folder = runtime.paths.lora_dir
    folder.mkdir(parents=True, exist_ok=True)
    kohya = kohya_lora(names, ("lora_unet_double_blocks", "lora_unet_single_blocks",
                               "lora_te1_"), rank=4, alpha=4.0, scale=0.3)
    save_file(kohya, str(folder / "kohya_style.safetensors"))
    peft = {}
    generator = torch.Generator().manual_seed(5)
    for name in ("transformer.transformer_blocks.0.attn.to_q",
                 "transformer.single_transformer_blocks.0.proj_mlp"):
        target = names.get(name)
        start, stop = target.rows
        rows = (stop if stop is not None else target.weight_shape[0]) - start
        peft[f"{name}.lora_A.weight"] = torch.randn(4, target.weight_shape[1],
                                                    generator=generator)
        peft[f"{name}.lora_B.weight"] = torch.randn(rows, 4, generator=generator)
    save_file(peft, str(folder / "peft_style.safetensors"))
    return runtime


def generate(runtime, prompt: str):
    result = finish(txt2img(runtime, Txt2ImgParams(prompt=prompt, **SMALL)))[0]
    assert not result.warnings, result.warnings
    return np.asarray(result.images[0]), parse_infotext(result.infotexts[0])


@pytest.mark.parametrize("name", ["kohya_style", "peft_style"])
def test_lora_tag_changes_the_flux_image_and_writes_hashes(runtime, name) -> None:
    plain, plain_info = generate(runtime, "a red cube")
    styled, info = generate(runtime, f"a red cube <lora:{name}:1>")
    library = runtime.networks.loras
    short = library.shorthash(library.find(name))
    assert info["Lora hashes"] == f"{name}: {short}"
    assert "Lora hashes" not in plain_info
    assert np.abs(styled.astype(int) - plain.astype(int)).max() > 0
    again, _ = generate(runtime, "a red cube")
    assert np.array_equal(again, plain)
