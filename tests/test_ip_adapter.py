"""IP-Adapter: parity with diffusers' IP-Adapter attention processors, files, encoders.

diffusers is the oracle: a tiny `StableDiffusionPipeline` / `StableDiffusionXLPipeline`
with random weights loads an adapter file we write in the real layout
(`image_proj.*`, `ip_adapter.<n>.to_k_ip.weight`) with `pipe.load_ip_adapter` and a tiny
`CLIPVisionModelWithProjection` from a folder; its U-Net's noise prediction with the
image embeds must equal ours (same weights converted, `IPAdapterPatch`) within float32
rounding, on a negative-prompt row and a prompt row.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.models.diffusers_keys import unet_diffusers_to_ldm
from modules.models.errors import ModelLoadError
from modules.models.ip_adapter_files import (
    adapter_state_to_file,
    find_clip_vision,
    is_ip_adapter,
    load_clip_vision,
    load_ip_adapter,
)
from modules.nn.ip_adapter import (
    IPAdapter,
    IPAdapterConfig,
    IPAdapterPatch,
    cross_attention_layers,
    encode_reference,
)
from modules.nn.timestep import timestep_embedding
from modules.nn.unet import UNetModel
from modules.nn.unet_patches import UNetPatches
from tests.diffusers_configs import ADM_TIME_EMBED_DIM, unet_diffusers_config
from tests.helpers.parity import assert_close, perturb
from tests.tiny import TINY_SD15, TINY_SDXL

_assert_close = partial(assert_close, tolerance=1e-5)
ENCODER_HIDDEN = 48
ENCODER_PROJECTION = 24


def _encoder(folder: Path, seed: int = 3):
    """A tiny CLIP image encoder saved as a diffusers-loadable folder and as a flat
    safetensors file (what `models/clip_vision/` holds); returns the file's path."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=ENCODER_HIDDEN, intermediate_size=64,
                              projection_dim=ENCODER_PROJECTION, num_hidden_layers=3,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              hidden_act="gelu")
    model = CLIPVisionModelWithProjection(config).eval()
    perturb(model, seed)
    model.save_pretrained(folder / "image_encoder")
    flat = folder / "clip_vision" / "tiny-encoder.safetensors"
    flat.parent.mkdir()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(flat), metadata={"num_attention_heads": "4"})
    return flat


def _adapter_config(family, kind: str) -> IPAdapterConfig:
    widths = tuple(width for _, width in cross_attention_layers(family.unet))
    context = family.unet.context_dim
    if kind == "plain":  # diffusers always reads 4 tokens from a plain file
        return IPAdapterConfig(kind="plain", image_dim=ENCODER_PROJECTION, context_dim=context,
                               n_tokens=4, layer_widths=widths)
    # diffusers reads a resampler of depth 4 and heads of 64 channels from any plus file
    return IPAdapterConfig(kind="plus", image_dim=ENCODER_HIDDEN, context_dim=context,
                           n_tokens=3, layer_widths=widths, resampler_width=32,
                           resampler_depth=4, resampler_heads=1)


def _adapter_file(folder: Path, family, kind: str, seed: int = 5) -> Path:
    torch.manual_seed(seed)
    adapter = IPAdapter(config=_adapter_config(family, kind), base=family.unet)
    perturb(adapter, seed, scale=0.2)
    path = folder / f"ip-{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in adapter_state_to_file(adapter).items()}, str(path))
    return path


def _picture() -> Image.Image:
    generator = torch.Generator().manual_seed(11)
    pixels = (torch.rand(40, 56, 3, generator=generator) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def _unets(family, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**unet_diffusers_config(family.unet)).eval()
    perturb(reference, seed)
    ours = UNetModel(config=family.unet).eval()
    ours.load_state_dict(unet_diffusers_to_ldm(reference.state_dict(), family.unet), strict=True)
    return reference, ours


def _pipeline(family, unet):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    if family.unet.adm_in_channels is None:
        return StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                       scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, image_encoder=None,
                                       requires_safety_checker=False)
    return StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None,
                                     tokenizer=None, tokenizer_2=None, unet=unet,
                                     scheduler=scheduler, image_encoder=None,
                                     feature_extractor=None)


def _inputs(family) -> dict:
    """Two rows (negative prompt, prompt) of latents, timesteps, context, SDXL conditioning."""
    generator = torch.Generator().manual_seed(1)
    cfg = family.unet
    inputs = dict(x=torch.randn(2, cfg.in_channels, 16, 16, generator=generator),
                  timesteps=torch.tensor([600.0, 600.0]),
                  context=torch.randn(2, 7, cfg.context_dim, generator=generator),
                  y=None, added={})
    if cfg.adm_in_channels is not None:
        text = torch.randn(2, cfg.adm_in_channels - 6 * ADM_TIME_EMBED_DIM, generator=generator)
        time_ids = torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 48.0]] * 2)
        fourier = timestep_embedding(time_ids.flatten(), ADM_TIME_EMBED_DIM).reshape(2, -1)
        inputs["y"] = torch.cat([text, fourier], dim=-1)
        inputs["added"] = {"text_embeds": text, "time_ids": time_ids}
    return inputs


@pytest.mark.parametrize("kind", ["plain", "plus"])
@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=lambda f: f.name)
def test_ip_adapter_matches_diffusers(tmp_path: Path, family, kind: str) -> None:
    _encoder(tmp_path)
    adapter_file = _adapter_file(tmp_path, family, kind)
    reference, ours = _unets(family)
    pipe = _pipeline(family, reference)
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name=adapter_file.name,
                         image_encoder_folder="image_encoder")
    pipe.set_ip_adapter_scale(0.7)
    picture = _picture()
    inputs = _inputs(family)
    with torch.no_grad():
        embeds = pipe.prepare_ip_adapter_image_embeds(
            ip_adapter_image=[picture], ip_adapter_image_embeds=None, device="cpu",
            num_images_per_prompt=1, do_classifier_free_guidance=True)
        expected = reference(inputs["x"], inputs["timesteps"], inputs["context"],
                             added_cond_kwargs={**inputs["added"], "image_embeds": embeds}).sample

        adapter = load_ip_adapter(adapter_file, base=family.unet)
        encoder = load_clip_vision(find_clip_vision(tmp_path / "clip_vision", adapter))
        cond, uncond = encode_reference(encoder, adapter, picture)
        patch = IPAdapterPatch(adapter=adapter, cond_tokens=cond, uncond_tokens=uncond,
                               weight=0.7, row_images=[0, 0], row_is_uncond=[True, False])
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        actual = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"],
                      patches=UNetPatches((patch,)))
        plain = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    _assert_close(actual, expected)
    # The image prompt changes the prediction, and the model itself stays as loaded.
    assert (actual - plain).abs().max() > 1e-3 * plain.abs().max()
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_layer_order_covers_every_attn2_layer() -> None:
    """SD1 full size: 16 attn2 layers (6 encoder, 9 decoder, 1 middle); SDXL: 70."""
    from modules.models import families

    sd1 = cross_attention_layers(families.SD15.unet)
    assert len(sd1) == 16
    assert sd1[0] == (("input", 1, 0), 320) and sd1[6] == (("output", 3, 0), 1280)
    assert sd1[-1] == (("middle", 0, 0), 1280)
    sdxl = cross_attention_layers(families.SDXL.unet)
    assert len(sdxl) == 70 and sdxl[-1] == (("middle", 0, 9), 1280)


def _bin(path: Path, file: Path) -> Path:
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    groups = {"image_proj": {}, "ip_adapter": {}}
    for name, tensor in tensors.items():
        group, rest = name.split(".", 1)
        groups[group][rest] = tensor
    torch.save(groups, path)
    return path


def test_bin_file_loads_through_the_allow_list(tmp_path: Path) -> None:
    file = _adapter_file(tmp_path, TINY_SD15, "plus")
    binary = _bin(tmp_path / "ip-adapter-plus_sd15.bin", file)
    from_bin = load_ip_adapter(binary, base=TINY_SD15.unet)
    from_safetensors = load_ip_adapter(file, base=TINY_SD15.unet)
    for (name, a), (_, b) in zip(from_bin.state_dict().items(),
                                 from_safetensors.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert is_ip_adapter(adapter_state_to_file(from_bin))
    assert not is_ip_adapter(["input_blocks.0.0.weight"])


def test_bin_with_a_foreign_global_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.bin"
    torch.save({"image_proj": {"x": Payload()}, "ip_adapter": {}}, path)
    with pytest.raises(ModelLoadError, match="evil.bin"):
        load_ip_adapter(path, base=TINY_SD15.unet)


def test_wrong_base_model_is_one_error_naming_the_file(tmp_path: Path) -> None:
    file = _adapter_file(tmp_path, TINY_SDXL, "plain")
    with pytest.raises(ModelLoadError, match=r"ip-plain\.safetensors.*another base model"):
        load_ip_adapter(file, base=TINY_SD15.unet)


def test_damaged_files_are_one_error_naming_the_file(tmp_path: Path) -> None:
    file = _adapter_file(tmp_path, TINY_SD15, "plain")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="cut.safetensors"):
        load_ip_adapter(cut, base=TINY_SD15.unet)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"PK\x03\x04 not really a zip file at all")
    with pytest.raises(ModelLoadError, match="garbage.bin"):
        load_ip_adapter(garbage, base=TINY_SD15.unet)
    from safetensors.torch import load_file

    tensors = load_file(str(file))
    del tensors["ip_adapter.3.to_v_ip.weight"]
    holed = tmp_path / "holed.safetensors"
    save_file(tensors, str(holed))
    with pytest.raises(ModelLoadError, match="holed.safetensors.*damaged"):
        load_ip_adapter(holed, base=TINY_SD15.unet)


def test_missing_encoder_names_the_folder_and_the_size(tmp_path: Path) -> None:
    adapter = load_ip_adapter(_adapter_file(tmp_path, TINY_SD15, "plus"), base=TINY_SD15.unet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"models/clip_vision.*hidden size 48"):
        find_clip_vision(tmp_path / "empty", adapter)
    _encoder(tmp_path)  # its hidden size fits the plus adapter, its image_embeds the plain
    assert find_clip_vision(tmp_path / "clip_vision", adapter).name == "tiny-encoder.safetensors"


def test_patch_rows_pick_reference_or_negative_tokens() -> None:
    adapter = IPAdapter(config=_adapter_config(TINY_SD15, "plain"), base=TINY_SD15.unet)
    cond, uncond = torch.ones(2, 4, 32), torch.zeros(2, 4, 32)
    patch = IPAdapterPatch(adapter=adapter, cond_tokens=cond, uncond_tokens=uncond, weight=1.0,
                           row_images=[0, 1, 0, 1], row_is_uncond=[True, True, False, False])
    narrowed = patch.for_rows([1, 2])
    assert narrowed.row_images == [1, 0] and narrowed.row_is_uncond == [True, False]
    tokens = narrowed._row_tokens(torch.zeros(1))
    assert torch.equal(tokens[0], uncond[1]) and torch.equal(tokens[1], cond[0])
    with pytest.raises(ValueError, match="out of range"):
        IPAdapterPatch(adapter=adapter, cond_tokens=cond, uncond_tokens=uncond, weight=1.0,
                       row_images=[2], row_is_uncond=[False])
