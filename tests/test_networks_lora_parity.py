"""The same kohya LoRA file applied by diffusers (PEFT) and by Easel gives the same outputs.

A tiny SD1 model with random weights; its U-Net weights are copied into diffusers'
`UNet2DConditionModel` and its CLIP text model deep-copied. A rank-4 kohya file with
diffusers-style names covers every attention Linear, proj_in/out, resnet conv (3x3
LoCon, 1x1 shortcut), time_emb_proj, downsampler and the text encoder. diffusers
loads it through `lora_state_dict` + `load_lora_adapter` / `load_lora_into_text_encoder`
(forward-time PEFT layers); Easel merges it into weight copies used through
functional_call. The outputs must agree to float32 rounding, and the base weights must
be untouched.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from modules.conditioning.prompt_parser import extract_extra_networks
from modules.models.diffusers_keys import map_unet_keys_to_diffusers
from modules.models.hashes import HashCache
from modules.models.patcher import ModelPatcher
from modules.models.sd_model import StableDiffusionModel
from modules.networks.library import LoraLibrary
from modules.networks.lora import activate_loras, name_map
from tests.diffusers_configs import unet_diffusers_config
from tests.helpers.lora_files import kohya_lora
from tests.tiny import TINY_SD15

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

# diffusers 0.42.1's kohya converter maps `lora_unet_mid_block_*` to names its own U-Net
# lacks (it reports them as unexpected keys), so the mid block is left out of the file.
SKIP = ("lora_unet_mid_block",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = StableDiffusionModel(family=TINY_SD15).eval().requires_grad_(False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    folder = tmp_path_factory.mktemp("Lora")
    patcher = ModelPatcher(model=model)
    tensors = kohya_lora(name_map(patcher), ("lora_unet_down", "lora_unet_up", "lora_te_"),
                         skip=SKIP)
    save_file(tensors, str(folder / "parity.safetensors"))
    return model, patcher, folder


def easel_patched(patcher, folder, tag="<lora:parity:0.8:0.6>"):
    library = LoraLibrary(folder=folder, hash_cache=HashCache(path=None))
    activation = activate_loras(patcher, library, extract_extra_networks(tag)[1])
    assert not activation.warnings, activation.warnings
    return activation.patcher


def diffusers_models(model, path, te_scale, unet_scale):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(**unet_diffusers_config(TINY_SD15.unet))
    state = model.unet.state_dict()
    renames = map_unet_keys_to_diffusers(state, TINY_SD15.unet).renames
    unet.load_state_dict({renames[k]: v for k, v in state.items()}, strict=True)
    text = copy.deepcopy(model.text_encoders["clip_l"].transformer)
    lora, alphas = StableDiffusionPipeline.lora_state_dict(str(path))
    unet.load_lora_adapter(lora, prefix="unet", network_alphas=alphas, adapter_name="x")
    StableDiffusionPipeline.load_lora_into_text_encoder(
        lora, alphas, text_encoder=text, prefix="text_encoder", adapter_name="x")
    unet.set_adapters(["x"], weights=[unet_scale])
    from diffusers.utils.peft_utils import set_weights_and_activate_adapters

    set_weights_and_activate_adapters(text, ["x"], [te_scale])
    return unet.eval(), text.eval()


def parameter_bytes(model) -> dict[str, bytes]:
    return {name: p.detach().cpu().numpy().tobytes() for name, p in model.named_parameters()}


def test_unet_and_text_encoder_match_diffusers(setup):
    model, patcher, folder = setup
    before = parameter_bytes(model)
    patched = easel_patched(patcher, folder)
    ref_unet, ref_text = diffusers_models(model, folder / "parity.safetensors", 0.8, 0.6)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    t = torch.tensor([10.0, 700.0])
    context = torch.randn(2, 77, 32, generator=generator)
    ids = torch.randint(0, 1000, (2, 77), generator=generator)
    with torch.no_grad():
        ours = patched.unet()(x, t, context=context)
        theirs = ref_unet(x, t, encoder_hidden_states=context).sample
        plain = model.unet(x, t, context=context)
        our_text = patched.text_encoder("clip_l")(ids).hidden
        their_text = ref_text(input_ids=ids).last_hidden_state
    assert (ours - plain).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(our_text, their_text, rtol=1e-4, atol=1e-5)
    assert parameter_bytes(model) == before


def test_every_module_of_the_file_was_applied(setup):
    model, patcher, folder = setup
    patched = easel_patched(patcher, folder)
    merged = patched.merged()
    assert not merged.skipped
    modules = {p.path for p in patched.patches}
    assert len(modules) == len(patched.patches)
    assert {"unet", "clip_l"} == set(merged.params)
