"""SD3.5 / Flux.1 files and their separate parts recognised from full-size headers alone.

Headers are built from the key layouts in tests/fixtures/*.tsv (no tensor data exists);
the configs detection reads off them must equal the declared full-size ones.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from modules.models import flow_families as FF
from modules.models.flow_detection import classify_part, detect_flow
from modules.models.safetensors_io import TensorInfo
from modules.nn.configs import FLUX_VAE, SD3_VAE
from modules.nn.t5_encoder import T5_XXL
from tests.test_detection import load_tsv

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PREFIX = "model.diffusion_model."


def prefixed(header: dict[str, TensorInfo], prefix: str) -> dict[str, TensorInfo]:
    return {prefix + key: info for key, info in header.items()}


@pytest.mark.parametrize(("tsv", "family"), [
    ("sd35_large_single_file.tsv", FF.SD35_LARGE_FAMILY),
    ("sd35_medium_single_file.tsv", FF.SD35_MEDIUM_FAMILY),
])
def test_sai_sd35_single_files(tsv, family):
    layout = detect_flow(load_tsv(tsv))
    assert layout.family.name == family.name
    assert layout.family.diffusion == family.diffusion
    assert layout.family.vae == SD3_VAE  # 16 channels, scale 1.5305, shift 0.0609
    assert (layout.diffusion_prefix, layout.vae_prefix, layout.encoders) == (
        PREFIX, "first_stage_model.", ())
    assert layout.family.prediction == "flow" and layout.family.flow.shift == 3.0
    assert layout.family.needs == ("clip_l", "clip_g", "t5xxl")


def test_sd3_medium_is_the_mmdit_without_qk_norm():
    header = {k: v for k, v in load_tsv("sd35_large_single_file.tsv").items()
              if ".ln_q." not in k and ".ln_k." not in k}
    assert detect_flow(header).family.name == FF.SD3_MEDIUM_FAMILY.name


def test_large_turbo_only_from_metadata_or_name():
    header = load_tsv("sd35_large_single_file.tsv")
    turbo = {"modelspec.architecture": "stable-diffusion-v3.5-large-turbo"}
    assert detect_flow(header, turbo).family == FF.SD35_LARGE_TURBO_FAMILY
    assert detect_flow(header, path="sd3.5_large_turbo.safetensors").family.name == (
        "sd35_large_turbo")
    assert detect_flow(header, {"modelspec.title": "SD3.5"}).family == FF.SD35_LARGE_FAMILY
    assert FF.SD35_LARGE_TURBO_FAMILY.defaults.steps == 4


@pytest.mark.parametrize("prefix", ["", PREFIX])
@pytest.mark.parametrize(("tsv", "family"), [
    ("flux1_dev_transformer_bfl.tsv", FF.FLUX_DEV_FAMILY),
    ("flux1_schnell_transformer_bfl.tsv", FF.FLUX_SCHNELL_FAMILY),
])
def test_bfl_flux_transformers(tsv, family, prefix):
    layout = detect_flow(prefixed(load_tsv(tsv), prefix))
    assert layout.family == family  # the full-size config, dev by its guidance_in
    assert (layout.diffusion_prefix, layout.vae_prefix, layout.encoders) == (prefix, None, ())
    assert layout.family.vae == FLUX_VAE and layout.family.needs == ("clip_l", "t5xxl")


def test_flux_defaults():
    dev, schnell = FF.FLUX_DEV_FAMILY.defaults, FF.FLUX_SCHNELL_FAMILY.defaults
    assert (dev.cfg_scale, dev.distilled_cfg_scale) == (1.0, 3.5)
    assert FF.FLUX_DEV_FAMILY.flow.dynamic_shift and not FF.FLUX_SCHNELL_FAMILY.flow.dynamic_shift
    assert (schnell.steps, schnell.distilled_cfg_scale) == (4, None)
    for family in FF.FLOW_FAMILIES:
        assert (family.native_resolution, family.size_multiple, family.latent_channels) == (
            1024, 16, 16)
        assert family.is_flow and not family.is_sdxl and not family.is_inpainting


def test_all_in_one_flux_file():
    header = prefixed(load_tsv("flux1_dev_transformer_bfl.tsv"), PREFIX)
    header |= prefixed(load_tsv("flux1_ae.tsv"), "vae.")
    header |= prefixed(load_tsv("clip_l_text_encoder.tsv"), "text_encoders.clip_l.transformer.")
    header |= prefixed(load_tsv("t5xxl_encoder.tsv"), "text_encoders.t5xxl.transformer.")
    layout = detect_flow(header)
    assert layout.family.name == "flux_dev" and layout.vae_prefix == "vae."
    assert layout.encoders == ("clip_l", "t5xxl")
    assert layout.family == FF.FLUX_DEV_FAMILY  # every config read back equals the declared


def test_all_in_one_sd35_file():
    header = load_tsv("sd35_large_single_file.tsv")
    for name, tsv in (("clip_l", "clip_l_text_encoder.tsv"), ("clip_g", "clip_g_text_encoder.tsv"),
                      ("t5xxl", "t5xxl_encoder.tsv")):
        header |= prefixed(load_tsv(tsv), f"text_encoders.{name}.transformer.")
    layout = detect_flow(header)
    assert layout.encoders == ("clip_l", "clip_g", "t5xxl")
    configs = {spec.name: spec.config for spec in layout.family.text_encoders}
    assert configs["t5xxl"] == T5_XXL
    assert configs["clip_l"] == replace(FF.SD3_CLIP_L, source_layout="clip_l")
    assert configs["clip_g"] == replace(FF.SD3_CLIP_G, source_layout="clip_l")


@pytest.mark.parametrize(("tsv", "kind"), [
    ("clip_l_text_encoder.tsv", "clip_l"),
    ("clip_g_text_encoder.tsv", "clip_g"),
    ("t5xxl_encoder.tsv", "t5xxl"),
    ("flux1_ae.tsv", "vae"),
    ("flux1_dev_transformer_bfl.tsv", "diffusion"),
])
def test_separate_parts(tsv, kind):
    assert classify_part(load_tsv(tsv)).kind == kind


def test_part_configs_and_fp8_t5():
    t5 = load_tsv("t5xxl_encoder.tsv")
    fp8 = {k: TensorInfo(shape=v.shape, dtype="F8_E4M3") for k, v in t5.items()}
    only_shared = {k: v for k, v in t5.items() if k != "encoder.embed_tokens.weight"}
    for header in (t5, fp8, only_shared):
        assert classify_part(header).config == T5_XXL
    assert classify_part(load_tsv("flux1_ae.tsv")).config.embed_dim == 16


def test_not_parts():
    sd_vae = {k: v for k, v in load_tsv("sd15_keys.tsv").items()
              if k.startswith("first_stage_model.")}
    four_channel = {k[len("first_stage_model."):]: v for k, v in sd_vae.items()}
    assert classify_part(four_channel) is None  # a 4-channel SD VAE is no flow part
    assert classify_part(load_tsv("sd15_lora_kohya_rank4_keys.tsv")) is None
    assert detect_flow(load_tsv("sdxl_base_keys.tsv")) is None


@pytest.mark.parametrize(("tsv", "name", "parameters"), [
    ("t5xxl_encoder.tsv", "t5xxl", 4_893_906_944),
    ("clip_l_text_encoder.tsv", "clip_l", 123_060_480),
    ("clip_g_text_encoder.tsv", "clip_g", 694_659_840),
])
def test_full_size_encoders_match_the_files(tsv, name, parameters):
    """Built on the meta device from the detected config: every key and shape of the file."""
    import torch

    from modules.nn.t5_encoder import T5TextEncoder
    from modules.nn.text_encoders import TextEncoder

    header = load_tsv(tsv)
    config = classify_part(header).config
    with torch.device("meta"):
        module = (T5TextEncoder(config=config) if name == "t5xxl"
                  else TextEncoder(config=config)).transformer
    def bare(key: str) -> str:  # the `text_model.` level: in some files and classes only
        return key.removeprefix("text_model.")

    ours = {bare(k): tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {bare(k): info.shape for k, info in header.items()}
    if name != "t5xxl":
        ours = {k: v for k, v in ours.items() if not k.endswith("position_ids")}
    assert ours == theirs
    # The README counts the file's tensors: T5's tied embedding twice.
    assert sum(math.prod(shape) for shape in ours.values()) == parameters


def test_bitsandbytes_files_are_refused_by_name():
    from modules.models.errors import ModelLoadError

    header = prefixed(load_tsv("flux1_dev_transformer_bfl.tsv"), PREFIX)
    header[PREFIX + "double_blocks.0.img_attn.qkv.weight.absmax"] = TensorInfo((4,), "F32")
    with pytest.raises(ModelLoadError, match="bitsandbytes NF4"):
        detect_flow(header)


# Parameters of each part built on the meta device (the MMDiT's `pos_embed` is a buffer,
# not counted); Flux and the VAE equal the fixture README's counts.
FULL_SIZE_PARAMETERS = {
    "sd3_medium": 2_028_328_000, "sd35_large": 8_056_627_520,
    "sd35_large_turbo": 8_056_627_520, "sd35_medium": 2_243_171_520,
    "flux_dev": 11_901_408_320, "flux_schnell": 11_891_178_560,
}


@pytest.mark.parametrize("family", FF.FLOW_FAMILIES, ids=lambda family: family.name)
def test_full_size_families_build_on_meta(family):
    import torch

    from modules.models.flow_model import FlowModel

    with torch.device("meta"):
        model = FlowModel(family=family)

    def count(module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    assert count(model.diffusion_model) == FULL_SIZE_PARAMETERS[family.name]
    assert count(model.vae) == 83_819_683
    expected = {"clip_l": 123_060_480, "clip_g": 694_659_840, "t5xxl": 4_762_310_656}
    assert {name: count(encoder) for name, encoder in model.text_encoders.items()} == {
        name: expected[name] for name in family.needs}  # T5: its tied embedding once
