"""T2I-Adapter against diffusers' `T2IAdapter` / `MultiAdapter` and `UNet2DConditionModel`.

Tiny random configs shaped like SD1 (three levels, the last without attention, like the
demo U-Net) and SDXL (three levels, the first without attention; the XL adapter's
fourth feature goes to the middle block). diffusers' adapter weights are saved in its
own layout and in TencentARC's (renamed by our key map), loaded through
`load_t2i_adapter`, and both the features and the whole U-Net output (diffusers'
`down_intrablock_additional_residuals` vs our `T2IAdapterPatch`) must agree within
float32 rounding: max |ours - diffusers| <= 1e-5 * max |diffusers|.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from modules.models import families as F
from modules.models.diffusers_keys import unet_diffusers_to_ldm
from modules.models.errors import ModelLoadError
from modules.models.t2i_adapter_files import (
    diffusers_to_tencentarc,
    infer_t2i_adapter_config,
    is_t2i_adapter,
    load_t2i_adapter,
)
from modules.nn.t2i_adapter import (
    StyleAdapter,
    T2IAdapter,
    T2IAdapterConfig,
    T2IAdapterPatch,
    encoder_targets,
)
from modules.nn.timestep import timestep_embedding
from modules.nn.unet import UNetModel
from modules.nn.unet_patches import UNetPatches
from tests.diffusers_configs import ADM_TIME_EMBED_DIM, unet_diffusers_config
from tests.helpers.parity import assert_close, perturb
from tests.tiny import TINY_SD15, TINY_SDXL

_assert_close = partial(assert_close, tolerance=1e-5)

# SD1-like: levels with attention, then one without (as the demo U-Net).
SD1 = replace(TINY_SD15, unet=replace(TINY_SD15.unet, channel_mult=(1, 2, 2),
                                      transformer_depth=(1, 1, 0)))
# SDXL-like: no attention at the first level, which has a downsampler.
SDXL = replace(TINY_SDXL, unet=replace(TINY_SDXL.unet, channel_mult=(1, 2, 2),
                                       transformer_depth=(0, 1, 1), transformer_depth_middle=1))
LATENT = 16
# diffusers constructor arguments of each adapter kind for the tiny U-Nets.
DIFFUSERS_ADAPTERS = {
    "full": (SD1, dict(channels=[32, 64, 64], num_res_blocks=2, downscale_factor=8,
                       adapter_type="full_adapter")),
    "light": (SD1, dict(channels=[32, 64], num_res_blocks=2, downscale_factor=8,
                        adapter_type="light_adapter")),
    "full_xl": (SDXL, dict(channels=[32, 64, 64, 64], num_res_blocks=2, downscale_factor=16,
                           adapter_type="full_adapter_xl")),
}


def _reference_adapter(kind: str, seed: int = 0, in_channels: int = 3):
    from diffusers import T2IAdapter as DiffusersT2IAdapter

    family, kwargs = DIFFUSERS_ADAPTERS[kind]
    torch.manual_seed(seed)
    adapter = DiffusersT2IAdapter(in_channels=in_channels, **kwargs).eval()
    perturb(adapter, seed)
    return family, adapter


def _hints(count: int = 2, channels: int = 3, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, channels, LATENT * 8, LATENT * 8, generator=generator)


def _save(state: dict[str, torch.Tensor], path) -> str:
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if str(path).endswith(".pth"):
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return str(path)


def _tencentarc_state(reference) -> dict[str, torch.Tensor]:
    state = reference.state_dict()
    names = diffusers_to_tencentarc(state)
    return {names[k]: v for k, v in state.items()}


@pytest.mark.parametrize("layout", ["diffusers", "tencentarc", "tencentarc.pth"])
@pytest.mark.parametrize("kind", ["full", "light", "full_xl"])
def test_features_match_diffusers(kind: str, layout: str, tmp_path) -> None:
    family, reference = _reference_adapter(kind)
    state = reference.state_dict() if layout == "diffusers" else _tencentarc_state(reference)
    suffix = ".pth" if layout.endswith(".pth") else ".safetensors"
    path = _save(state, tmp_path / f"adapter{suffix}")
    ours = load_t2i_adapter(path, base=family.unet, device="cpu", dtype=torch.float32)
    assert isinstance(ours, T2IAdapter) and ours.config.kind == kind
    hints = _hints()
    with torch.no_grad():
        expected = reference(hints)
        actual = ours(hints)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        _assert_close(a, e)


def test_single_channel_hint_is_read_from_the_first_layer(tmp_path) -> None:
    family, reference = _reference_adapter("full", in_channels=1)
    ours = load_t2i_adapter(_save(reference.state_dict(), tmp_path / "a.safetensors"),
                            base=family.unet, device="cpu", dtype=torch.float32)
    assert ours.config.hint_channels == 1
    hints = _hints(channels=1)
    with torch.no_grad():
        _assert_close(ours(hints)[-1], reference(hints)[-1])


def _unet_pair(family, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    reference = UNet2DConditionModel(**unet_diffusers_config(family.unet)).eval()
    perturb(reference, seed)
    ours = UNetModel(config=family.unet).eval()
    ours.load_state_dict(unet_diffusers_to_ldm(reference.state_dict(), family.unet), strict=True)
    return reference, ours


def _unet_inputs(family, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    cfg = family.unet
    inputs = dict(x=torch.randn(2, cfg.in_channels, LATENT, LATENT, generator=generator),
                  timesteps=torch.tensor([999.0, 250.5]),
                  context=torch.randn(2, 7, cfg.context_dim, generator=generator),
                  y=None, added_cond_kwargs=None)
    if cfg.adm_in_channels is not None:
        text = torch.randn(2, cfg.adm_in_channels - 6 * ADM_TIME_EMBED_DIM, generator=generator)
        time_ids = torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 48.0],
                                 [32.0, 32.0, 4.0, 0.0, 2.5, 1.0]])
        fourier = timestep_embedding(time_ids.flatten(), ADM_TIME_EMBED_DIM).reshape(2, -1)
        inputs["y"] = torch.cat([text, fourier], dim=-1)
        inputs["added_cond_kwargs"] = {"text_embeds": text, "time_ids": time_ids}
    return inputs


def _reference_unet(reference, inputs, residuals) -> torch.Tensor:
    return reference(inputs["x"], inputs["timesteps"], inputs["context"],
                     added_cond_kwargs=inputs["added_cond_kwargs"],
                     down_intrablock_additional_residuals=[r.clone() for r in residuals]).sample


def _ours_unet(ours, inputs, *patches) -> torch.Tensor:
    return ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"],
                patches=UNetPatches(tuple(patches)))


@pytest.mark.parametrize("kind", ["full", "light", "full_xl"])
def test_unet_with_adapter_matches_diffusers(kind: str, tmp_path) -> None:
    family, adapter = _reference_adapter(kind)
    reference, ours = _unet_pair(family)
    inputs = _unet_inputs(family)
    weight = 0.8
    ours_adapter = load_t2i_adapter(_save(adapter.state_dict(), tmp_path / "a.safetensors"),
                                    base=family.unet, device="cpu", dtype=torch.float32)
    hints = _hints()
    with torch.no_grad():
        expected = _reference_unet(reference, inputs, [weight * f for f in adapter(hints)])
        plain = _ours_unet(ours, inputs)
        patch = T2IAdapterPatch(features=ours_adapter(hints), weight=weight, row_images=[0, 1],
                                unet=family.unet)
        actual = _ours_unet(ours, inputs, patch)
    _assert_close(actual, expected)
    assert (actual - plain).abs().max() > 1e-2, "the adapter changed nothing"


def test_sdxl_fourth_feature_goes_to_the_middle_block() -> None:
    """Only the middle block's feature differs between the two runs: the outputs differ,
    and diffusers agrees (its `sample.shape == residual.shape` rule after the mid block)."""
    family, adapter = _reference_adapter("full_xl")
    reference, ours = _unet_pair(family)
    inputs = _unet_inputs(family)
    with torch.no_grad():
        features = adapter(_hints())
    zeroed = [*[torch.zeros_like(f) for f in features[:3]], features[3]]
    with torch.no_grad():
        expected = _reference_unet(reference, inputs, zeroed)
        patch = T2IAdapterPatch(features=zeroed, weight=1.0, row_images=[0, 1], unet=family.unet)
        actual = _ours_unet(ours, inputs, patch)
        plain = _ours_unet(ours, inputs)
    _assert_close(actual, expected)
    assert (actual - plain).abs().max() > 1e-2


@pytest.mark.parametrize("family", [SD1, SDXL], ids=["sd1", "sdxl"])
def test_two_adapters_match_diffusers_multi_adapter(family) -> None:
    from diffusers import MultiAdapter

    kind = "full" if family is SD1 else "full_xl"
    first, second = _reference_adapter(kind, seed=0)[1], _reference_adapter(kind, seed=5)[1]
    multi = MultiAdapter([first, second]).eval()
    reference, ours = _unet_pair(family)
    inputs = _unet_inputs(family)
    hints = [_hints(seed=3), _hints(seed=4)]
    weights = [0.7, 0.4]
    with torch.no_grad():
        expected = _reference_unet(reference, inputs, multi(hints, adapter_weights=weights))
        patches = [T2IAdapterPatch(features=a(h), weight=w, row_images=[0, 1], unet=family.unet)
                   for a, h, w in zip((first, second), hints, weights, strict=True)]
        actual = _ours_unet(ours, inputs, *patches)
    _assert_close(actual, expected)


def test_for_rows_picks_each_rows_image() -> None:
    """A step's rows (cond of images 0, 1, then uncond of 0, 1) narrowed to [3, 0]: the
    call's rows are images 1 and 0, so their features come swapped."""
    family, adapter = _reference_adapter("full")
    reference, ours = _unet_pair(family)
    inputs = _unet_inputs(family)
    hints = _hints()
    with torch.no_grad():
        features = adapter(hints)
        swapped = [f.flip(0) for f in features]
        expected = _reference_unet(reference, inputs, swapped)
        step = T2IAdapterPatch(features=features, weight=1.0, row_images=[0, 1, 0, 1],
                               unet=family.unet)
        narrowed = step.for_rows([3, 0])
        actual = _ours_unet(ours, inputs, narrowed)
    assert list(narrowed.row_images) == [1, 0]
    _assert_close(actual, expected)


def test_patch_rejects_a_feature_of_another_width() -> None:
    family, adapter = _reference_adapter("full")
    _, ours = _unet_pair(family)
    inputs = _unet_inputs(family)
    with torch.no_grad():
        features = adapter(_hints())
    bad = T2IAdapterPatch(features=[features[1], *features[1:]], weight=1.0, row_images=[0, 1],
                          unet=family.unet)
    with pytest.raises(ValueError, match="feature 0 has 64 channels"):
        _ours_unet(ours, inputs, bad)


def test_targets_follow_diffusers_block_rules() -> None:
    assert encoder_targets(F.SD15.unet) == (2, 5, 8, 11)
    assert encoder_targets(F.SDXL.unet) == (3, 5, 8)  # after the first level's downsampler


# ---- detection, full-size layouts, errors -------------------------------------------------

def _full_size(kind: str, **kwargs) -> dict[str, tuple[int, ...]]:
    """diffusers' names and shapes of a full-size adapter, built on the meta device."""
    from diffusers import T2IAdapter as DiffusersT2IAdapter

    with torch.device("meta"):
        adapter = DiffusersT2IAdapter(adapter_type=kind, **kwargs)
    return {k: tuple(v.shape) for k, v in adapter.state_dict().items()}


FULL_SIZE = {
    # t2iadapter_*_sd14v1 / coadapter-*: 4 levels of 2 blocks, sketch/canny take 1 channel.
    "full": (F.SD15, dict(in_channels=1, channels=[320, 640, 1280, 1280], num_res_blocks=2,
                          downscale_factor=8)),
    # t2iadapter_color_sd14v1: light, 4 levels (diffusers lists 3 widths and repeats the last).
    "light_adapter": (F.SD15, dict(in_channels=3, channels=[320, 640, 1280], num_res_blocks=4,
                                   downscale_factor=8)),
    # t2i-adapter-*-sdxl-1.0
    "full_adapter_xl": (F.SDXL, dict(in_channels=3, channels=[320, 640, 1280, 1280],
                                     num_res_blocks=2, downscale_factor=16)),
}


@pytest.mark.parametrize("kind", list(FULL_SIZE))
def test_full_size_layouts_detected_and_loaded_by_name(kind: str) -> None:
    family, kwargs = FULL_SIZE[kind]
    shapes = _full_size("full_adapter" if kind == "full" else kind, **kwargs)
    assert is_t2i_adapter(shapes)
    names = diffusers_to_tencentarc(shapes)
    tencentarc = {names[k]: v for k, v in shapes.items()}
    assert is_t2i_adapter(tencentarc)
    config = infer_t2i_adapter_config(tencentarc, base=family.unet)
    with torch.device("meta"):
        ours = T2IAdapter(config=config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == tencentarc
    assert config.hint_channels == kwargs["in_channels"]
    if kind == "full":  # TencentARC's own names for the level starts
        assert "body.2.in_conv.weight" in tencentarc and "conv_in.weight" in tencentarc
    if kind == "light_adapter":
        assert config.channels == (320, 640, 1280, 1280) and config.num_res_blocks == 4


def _style_state(context_dim: int = 32, width: int = 48, tokens: int = 8, seed: int = 0):
    config = T2IAdapterConfig(kind="style", width=width, context_dim=context_dim, num_heads=8,
                              num_layers=2, num_tokens=tokens)
    torch.manual_seed(seed)
    adapter = StyleAdapter(config=config)
    perturb(adapter, seed, scale=0.5)
    return adapter.state_dict()


def test_style_adapter_matches_tencentarc_formula(tmp_path) -> None:
    """Loaded from a `.pth` by TencentARC's names; the output is their forward written out
    with sequence-first attention (`nn.MultiheadAttention` as CLIP calls it)."""
    state = _style_state()
    ours = load_t2i_adapter(_save(state, tmp_path / "style.pth"), base=SD1.unet, device="cpu",
                            dtype=torch.float32)
    assert isinstance(ours, StyleAdapter) and ours.config.num_tokens == 8
    clip = torch.randn(2, 5, 48, generator=torch.Generator().manual_seed(2))
    layer_norm = partial(torch.nn.functional.layer_norm, normalized_shape=(48,))
    x = torch.cat([clip, state["style_embedding"].expand(2, -1, -1)], dim=1)
    x = layer_norm(x, weight=state["ln_pre.weight"], bias=state["ln_pre.bias"]).permute(1, 0, 2)
    for i in range(2):
        p = f"transformer_layes.{i}."
        attention = torch.nn.MultiheadAttention(48, 8)
        attention.load_state_dict({k[len(p) + 5:]: v for k, v in state.items()
                                   if k.startswith(p + "attn.")})
        h = layer_norm(x, weight=state[p + "ln_1.weight"], bias=state[p + "ln_1.bias"])
        x = x + attention(h, h, h, need_weights=False)[0]
        h = layer_norm(x, weight=state[p + "ln_2.weight"], bias=state[p + "ln_2.bias"])
        h = h @ state[p + "mlp.c_fc.weight"].T + state[p + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)
        x = x + h @ state[p + "mlp.c_proj.weight"].T + state[p + "mlp.c_proj.bias"]
    x = x.permute(1, 0, 2)[:, -8:]
    expected = layer_norm(x, weight=state["ln_post.weight"], bias=state["ln_post.bias"]) \
        @ state["proj"]
    with torch.no_grad():
        _assert_close(ours(clip), expected)


def test_detection_of_every_layout_and_nothing_else() -> None:
    _, full = _reference_adapter("full")
    _, light = _reference_adapter("light")
    for state in (full.state_dict(), light.state_dict(), _tencentarc_state(full),
                  _tencentarc_state(light), _style_state()):
        assert is_t2i_adapter(state)
    _, unet = _unet_pair(SD1)
    assert not is_t2i_adapter(unet.state_dict())
    assert not is_t2i_adapter(["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"])
    assert not is_t2i_adapter(["control_model.input_hint_block.0.weight"])


@pytest.mark.parametrize(("kind", "base"), [("full_xl", SD1), ("full", SDXL), ("light", SDXL),
                                            ("full", replace(SD1, unet=F.SD15.unet))])
def test_adapter_for_another_base_model_is_refused(kind, base, tmp_path) -> None:
    _, adapter = _reference_adapter(kind)
    path = _save(adapter.state_dict(), tmp_path / "wrong-base.safetensors")
    with pytest.raises(ModelLoadError, match="wrong-base.safetensors: T2I-Adapter for another"):
        load_t2i_adapter(path, base=base.unet, device="cpu", dtype=torch.float32)


def test_style_adapter_for_another_text_width_is_refused(tmp_path) -> None:
    path = _save(_style_state(context_dim=24), tmp_path / "style.safetensors")
    with pytest.raises(ModelLoadError, match="style.safetensors: style adapter makes 24-wide"):
        load_t2i_adapter(path, base=SD1.unet, device="cpu", dtype=torch.float32)


def test_damaged_files_are_refused_naming_the_file(tmp_path) -> None:
    _, adapter = _reference_adapter("full")
    good = _save(_tencentarc_state(adapter), tmp_path / "good.safetensors")
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    state = _tencentarc_state(adapter)
    state["body.3.block2.weight"] = torch.zeros(64, 64, 3, 3)  # a wrong shape
    misshapen = _save(state, tmp_path / "misshapen.safetensors")
    for path in (truncated, garbage, misshapen):
        with pytest.raises(ModelLoadError, match=str(path.name if hasattr(path, "name")
                                                     else path).replace(".", r"\.")):
            load_t2i_adapter(path, base=SD1.unet, device="cpu", dtype=torch.float32)
    del state["body.3.block2.weight"]
    incomplete = _save(state, tmp_path / "incomplete.safetensors")
    with pytest.raises(ModelLoadError, match="incomplete.safetensors"):
        load_t2i_adapter(incomplete, base=SD1.unet, device="cpu", dtype=torch.float32)
