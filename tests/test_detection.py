"""Family detection from real key layouts (fixture TSVs) and header-only real files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from modules.models import families as F
from modules.models.detection import detect_family
from modules.models.errors import ModelLoadError
from modules.models.loader import inspect_checkpoint
from modules.models.safetensors_io import TensorInfo

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"


def load_tsv(name: str) -> dict[str, TensorInfo]:
    header: dict[str, TensorInfo] = {}
    for line in (FIXTURES / name).read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        header[key] = TensorInfo(shape=tuple(json.loads(shape)), dtype=dtype)
    return header


def with_in_channels(header: dict[str, TensorInfo], channels: int) -> dict[str, TensorInfo]:
    info = header[CONV_IN]
    shape = list(info.shape)
    shape[1] = channels
    return {**header, CONV_IN: TensorInfo(shape=tuple(shape), dtype=info.dtype)}


@pytest.mark.parametrize(
    ("tsv", "expected"),
    [
        ("sd15_keys.tsv", F.SD15),
        ("sd21_keys.tsv", F.SD2_V),
        ("sdxl_base_keys.tsv", F.SDXL),
        ("sdxl_refiner_keys.tsv", F.SDXL_REFINER),
    ],
)
def test_fixture_families(tsv: str, expected: F.Family) -> None:
    assert detect_family(load_tsv(tsv)) == expected


@pytest.mark.parametrize(
    ("tsv", "base"),
    [("sd15_keys.tsv", F.SD15), ("sd21_keys.tsv", F.SD2), ("sdxl_base_keys.tsv", F.SDXL)],
)
def test_inpainting_variants(tsv: str, base: F.Family) -> None:
    family = detect_family(with_in_channels(load_tsv(tsv), 9))
    assert family == base.as_inpainting()
    assert family.is_inpainting and family.prediction == "eps"


def test_sd2_prediction_sources() -> None:
    header = load_tsv("sd21_keys.tsv")
    assert detect_family(header, {"global_step": 875000}) == F.SD2
    assert detect_family(header, {"modelspec.prediction_type": "epsilon"}) == F.SD2
    assert detect_family(header, {"prediction_type": "v_prediction"}) == F.SD2_V
    assert detect_family(header, prediction="eps") == F.SD2
    assert detect_family({**header, "v_pred": TensorInfo((), "F32")}) == F.SD2_V


def test_sdxl_markers() -> None:
    header = load_tsv("sdxl_base_keys.tsv")
    family = detect_family({**header, "v_pred": TensorInfo((), "F32"),
                            "ztsnr": TensorInfo((), "F32")})
    assert family == replace(F.SDXL, prediction="v", zero_terminal_snr=True)
    assert detect_family(header) == F.SDXL  # no markers: eps, no zsnr


@pytest.mark.parametrize(
    ("extra_key", "reason"),
    [
        ("model.diffusion_model.x_embedder.proj.weight", "Stable Diffusion 3"),
        ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "Stable Diffusion 3"),
        ("double_blocks.0.img_attn.qkv.weight", "Flux"),
        ("model.diffusion_model.double_blocks.0.img_mod.lin.weight", "Flux"),
        ("edm_mean", "EDM"),
    ],
)
def test_unsupported_markers(extra_key: str, reason: str) -> None:
    header = {**load_tsv("sd15_keys.tsv"), extra_key: TensorInfo((4,), "F32")}
    with pytest.raises(ModelLoadError, match=reason):
        detect_family(header, path="x.safetensors")


def test_flux_only_file_rejected() -> None:
    header = {"double_blocks.0.img_attn.qkv.weight": TensorInfo((9, 3), "BF16")}
    with pytest.raises(ModelLoadError, match="Flux"):
        detect_family(header)


def test_mismatched_text_encoder() -> None:
    sd15 = load_tsv("sd15_keys.tsv")
    sd21 = load_tsv("sd21_keys.tsv")
    unet = {k: v for k, v in sd15.items() if not k.startswith("cond_stage_model.")}
    clip_h = {k: v for k, v in sd21.items() if k.startswith("cond_stage_model.")}
    with pytest.raises(ModelLoadError, match="clip_l"):
        detect_family({**unet, **clip_h})


def test_partial_files() -> None:
    sd15 = load_tsv("sd15_keys.tsv")
    no_vae = {k: v for k, v in sd15.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(ModelLoadError, match="no VAE"):
        detect_family(no_vae)
    no_text = {k: v for k, v in sd15.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(ModelLoadError, match="text encoder"):
        detect_family(no_text)
    bare_unet = {k[len("model.diffusion_model."):]: v for k, v in sd15.items()
                 if k.startswith("model.diffusion_model.")}
    with pytest.raises(ModelLoadError, match="U-Net-only"):
        detect_family(bare_unet)


def test_distilled_sdxl_rejected() -> None:
    """SSD-1B style: middle block without attention is not the declared SDXL."""
    header = {k: v for k, v in load_tsv("sdxl_base_keys.tsv").items()
              if not k.startswith("model.diffusion_model.middle_block.1.")}
    with pytest.raises(ModelLoadError, match="transformer depth"):
        detect_family(header)


def test_unknown_unet_layout() -> None:
    header = load_tsv("sd15_keys.tsv")
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    header[key] = TensorInfo((320, 512), "F32")
    with pytest.raises(ModelLoadError, match="unknown U-Net layout"):
        detect_family(header)


def write_sparse_safetensors(path: Path, header: dict[str, TensorInfo]) -> None:
    """A real-size file whose data section is a hole: header bytes only hit the disk."""
    entries: dict[str, object] = {}
    offset = 0
    for key in sorted(header):
        info = header[key]
        entries[key] = {"dtype": info.dtype, "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(entries).encode()
    with open(path, "wb") as stream:
        stream.write(len(raw).to_bytes(8, "little") + raw)
        stream.truncate(8 + len(raw) + offset)


def test_real_size_files_header_only(tmp_path: Path) -> None:
    for tsv, expected in [("sd15_keys.tsv", F.SD15), ("sdxl_refiner_keys.tsv", F.SDXL_REFINER)]:
        path = tmp_path / tsv.replace(".tsv", ".safetensors")
        write_sparse_safetensors(path, load_tsv(tsv))
        header, family = inspect_checkpoint(path)
        assert family == expected
        assert len(header.tensors) == len(load_tsv(tsv))


def hf_text_encoder(prefix: str, width: int, layers: int) -> dict[str, TensorInfo]:
    """The keys detection reads from a diffusers (transformers-layout) text encoder."""
    header = {prefix + "text_model.embeddings.token_embedding.weight":
              TensorInfo((49408, width), "F16")}
    for layer in range(layers):
        key = prefix + f"text_model.encoder.layers.{layer}.layer_norm1.weight"
        header[key] = TensorInfo((width,), "F16")
    return header


def without_text(header: dict[str, TensorInfo]) -> dict[str, TensorInfo]:
    return {k: v for k, v in header.items() if k.startswith(("model.", "first_stage_model."))}


def test_diffusers_text_encoder_prefixes() -> None:
    sd15 = detect_family({**without_text(load_tsv("sd15_keys.tsv")),
                          **hf_text_encoder("text_encoder.", 768, 12)})
    assert sd15.name == "sd1" and sd15.text_encoders[0].prefix == "text_encoder."
    assert sd15.text_encoders[0].config == F.CLIP_L

    sd2 = detect_family({**without_text(load_tsv("sd21_keys.tsv")),
                         **hf_text_encoder("text_encoder.", 1024, 23)},
                        {"prediction_type": "epsilon"})
    clip_h = sd2.text_encoders[0]
    assert (sd2.name, clip_h.prefix, clip_h.config.source_layout) == (
        "sd2", "text_encoder.", "clip_l")
    assert (clip_h.config.num_layers, clip_h.config.layer,
            clip_h.config.final_norm) == (23, -1, True)

    refiner = detect_family({**without_text(load_tsv("sdxl_refiner_keys.tsv")),
                             **hf_text_encoder("text_encoder_2.", 1280, 32)})
    clip_g = refiner.text_encoders[0]
    assert (clip_g.prefix, clip_g.config.num_layers, clip_g.config.layer) == (
        "text_encoder_2.", 32, -2)
