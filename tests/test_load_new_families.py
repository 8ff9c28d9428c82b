"""Tiny random SD3.5-style and Flux-style models load from every layout users have.

Layouts (tests/helpers/flow_files.py): one all-in-one file; a diffusion-model file with
separate text encoders in models/text_encoder/ and `ae.safetensors` in models/VAE/; a
diffusers folder. Each loads into a working model (a forward pass of every part runs) with
every tensor equal to the one written; float8 and GGUF diffusion weights stay low-bit
(velocity within `LOW_BIT_TOLERANCE` of the dense model). Failures (no T5 anywhere, a
wrong-shaped tensor, a truncated file) are one clear `ModelLoadError` each, and through the
model manager the model that was serving keeps serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modules.models.errors import ModelLoadError
from modules.models.flow_loader import plan_flow_checkpoint
from modules.models.flow_model import FlowModel, assemble_flow_model
from modules.models.flow_parts import MODULES_SETTING, module_infotext, resolve_modules
from tests.helpers.flow_files import (
    random_parts,
    write_all_in_one,
    write_diffusers,
    write_separate,
)

ARCHITECTURES = ("sd3", "flux")


@pytest.fixture(scope="module")
def parts():
    return {arch: random_parts(arch, seed=3) for arch in ARCHITECTURES}


def folders(models: Path) -> tuple[Path, ...]:
    return (models / "text_encoder", models / "CLIP", models / "VAE")


def load(path: Path, models: Path | None = None, names=()) -> FlowModel:
    plan = plan_flow_checkpoint(path, folders=folders(models) if models else (),
                                module_names=names)
    assert plan is not None
    return assemble_flow_model(plan, dtype=torch.float32, vae_dtype=torch.float32)


def run_every_part(model: FlowModel) -> None:
    """One forward pass of the transformer, VAE and each text encoder."""
    family, torch_rng = model.family, torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=torch_rng)
    context = torch.randn(1, 5, 64, generator=torch_rng)
    with torch.no_grad():
        if family.architecture == "sd3":
            out = model.diffusion_model(x, torch.tensor([500.0]), context,
                                        torch.randn(1, 64, generator=torch_rng))
        else:
            out = model.diffusion_model(x, torch.tensor([0.5]), context,
                                        torch.randn(1, 32, generator=torch_rng), guidance=3.5)
        image = model.vae.decode(x)
        hidden = model.text_encoders["t5xxl"](torch.tensor([[3, 7, 1]]))
        clip = model.text_encoders["clip_l"](torch.tensor([[49406] + [320] * 75 + [49407]]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert image.shape == (1, 3, 16, 16) and hidden.shape == (1, 3, 64)
    assert torch.isfinite(clip.pooled).all()
    assert model.text_encoders["clip_l"].transformer.config.num_attention_heads == 2


def assert_weights(model: FlowModel, written: dict[str, dict[str, torch.Tensor]]) -> None:
    ours = model.diffusion_model.state_dict()
    assert ours.keys() == written["diffusion"].keys()
    assert all(torch.equal(ours[k], v) for k, v in written["diffusion"].items())
    t5 = model.text_encoders["t5xxl"].transformer.state_dict()
    assert all(torch.equal(t5[k], v) for k, v in written["t5xxl"].items())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_in_one_file(tmp_path, parts, arch):
    vae_prefix = "vae." if arch == "flux" else "first_stage_model."
    path = write_all_in_one(tmp_path / "all.safetensors", parts[arch], vae_prefix=vae_prefix)
    model = load(path)
    assert model.family.name == ("sd35_large" if arch == "sd3" else "flux_dev")
    assert model.modules_used == ()
    vae = model.vae.state_dict()
    assert all(torch.equal(vae[k], v) for k, v in parts[arch]["vae"].items())
    assert_weights(model, parts[arch])
    run_every_part(model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_diffusion_file_and_separate_parts(tmp_path, parts, arch):
    models = tmp_path / "models"
    path = write_separate(tmp_path / "ckpt" / "model.safetensors", models, parts[arch],
                          t5_names=("t5xxl_fp8_e4m3fn", "t5xxl_fp16"))
    model = load(path, models)
    expected = ["ae", "clip_l", "clip_g", "t5xxl_fp16"] if arch == "sd3" else [
        "ae", "clip_l", "t5xxl_fp16"]  # fp16 preferred over fp8 when both are there
    assert list(model.modules_used) == expected
    assert_weights(model, parts[arch])
    run_every_part(model)


def test_sai_file_with_vae_takes_only_encoders(tmp_path, parts):
    models = tmp_path / "models"
    path = write_separate(tmp_path / "sd3.5_large.safetensors", models, parts["sd3"],
                          with_vae_in_checkpoint=True)
    plan = plan_flow_checkpoint(path, folders=folders(models))
    assert plan.sources["vae"].path == str(path)
    assert module_infotext(plan.modules) == {
        "Module 1": "clip_l", "Module 2": "clip_g", "Module 3": "t5xxl_fp16"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_diffusers_folder(tmp_path, parts, arch):
    model = load(write_diffusers(tmp_path / "pipeline", arch, parts[arch]))
    assert model.family.architecture == arch
    assert_weights(model, parts[arch])  # diffusers names mapped back exactly
    run_every_part(model)


@pytest.mark.parametrize(("arch", "prefix"), [("sd3", "transformer."), ("flux", "")])
def test_diffusers_named_transformer_file(tmp_path, parts, arch, prefix):
    from safetensors.torch import save_file

    from tests.helpers.flow_files import diffusers_transformer

    models = tmp_path / "models"
    write_separate(tmp_path / "unused.safetensors", models, parts[arch])
    renamed = diffusers_transformer(arch, parts[arch]["diffusion"])
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in renamed.items()}, str(path))
    model = load(path, models)
    assert model.family.architecture == arch
    assert_weights(model, parts[arch])  # renamed back to the reference names exactly
    run_every_part(model)


def test_chosen_modules_resolve_inside_the_folders_only(tmp_path, parts):
    models = tmp_path / "models"
    path = write_separate(tmp_path / "flux.safetensors", models, parts["flux"],
                          t5_names=("t5xxl_fp16", "t5xxl_fp8_e4m3fn"))
    plan = plan_flow_checkpoint(path, folders=folders(models),
                                module_names=["t5xxl_fp8_e4m3fn.safetensors", "ae"])
    assert [part.name for part in plan.modules] == ["ae", "clip_l", "t5xxl_fp8_e4m3fn"]
    outside = str(models / "text_encoder" / "t5xxl_fp16.safetensors")
    for bad in (outside, "../text_encoder/t5xxl_fp16.safetensors", "nothing.safetensors"):
        with pytest.raises(ModelLoadError, match=MODULES_SETTING):
            resolve_modules([bad], folders(models))


def test_sd3_without_t5_loads_without_it(tmp_path, parts):
    without_t5 = {kind: tensors for kind, tensors in parts["sd3"].items() if kind != "t5xxl"}
    model = load(write_all_in_one(tmp_path / "sd3_incl_clips.safetensors", without_t5),
                 tmp_path / "models")  # empty folders
    assert model.family.needs == ("clip_l", "clip_g") and "t5xxl" not in model.text_encoders
    clip_g = model.text_encoders["clip_g"].transformer.state_dict()
    assert all(torch.equal(clip_g[k], v) for k, v in parts["sd3"]["clip_g"].items())


def test_flux_without_t5_is_one_clear_error(tmp_path, parts):
    models = tmp_path / "models"
    path = write_separate(tmp_path / "flux.safetensors", models, parts["flux"], t5_names=())
    with pytest.raises(ModelLoadError, match="Flux.1 dev needs a T5-XXL text encoder in "
                                             "models/text_encoder/"):
        plan_flow_checkpoint(path, folders=folders(models))


# ---- through the model manager --------------------------------------------------------


@pytest.fixture(scope="module")
def manager(tmp_path_factory, parts):
    from modules.app.cmd_args import parse_args
    from modules.models.manager import ModelManager
    from modules.paths import Paths
    from tests.helpers.checkpoints import write_tiny_checkpoint
    from tests.tiny import TINY_SD15

    data = tmp_path_factory.mktemp("data")
    checkpoints = data / "models" / "Stable-diffusion"
    write_tiny_checkpoint(checkpoints / "a-sd1.safetensors", TINY_SD15)
    write_separate(checkpoints / "flux-no-t5.safetensors", data / "models", parts["flux"],
                   t5_names=())
    bad = {kind: dict(tensors) for kind, tensors in parts["sd3"].items()}
    key = "joint_blocks.0.x_block.mlp.fc1.weight"
    bad["diffusion"][key] = torch.zeros(bad["diffusion"][key].shape[0] + 1,
                                        bad["diffusion"][key].shape[1])
    write_all_in_one(checkpoints / "sd3-bad-shape.safetensors", bad)
    whole = write_all_in_one(checkpoints / "sd3-good.safetensors", parts["sd3"])
    (checkpoints / "sd3-truncated.safetensors").write_bytes(
        whole.read_bytes()[: whole.stat().st_size // 2])
    paths = Paths.from_args(parse_args(["--data-dir", str(data)]))
    return ModelManager(paths=paths, device=torch.device("cpu"), dtype=torch.float32,
                        vae_dtype=torch.float32, hashing=False)


@pytest.mark.parametrize(("name", "reason"), [
    ("flux-no-t5", "Flux.1 dev needs a T5-XXL text encoder in models/text_encoder/"),
    ("sd3-bad-shape", "diffusion weights do not fit: size mismatch for "
                      "joint_blocks.0.x_block.mlp.fc1.weight"),
    ("sd3-truncated", "sd3-truncated.safetensors"),
])
def test_failed_loads_leave_the_previous_model_serving(manager, name, reason):
    manager.select(manager.find("a-sd1"))
    with pytest.raises(ModelLoadError, match=reason):
        manager.select(manager.find(name))
    assert manager.current.info.model_name == "a-sd1"
    assert not manager.current.family.is_flow


def test_manager_loads_a_flow_model(manager):
    from modules.conditioning.flow_conditioner import FlowConditioner

    loaded = manager.select(manager.find("sd3-good"))
    assert loaded.family.name == "sd35_large" and loaded.family.prediction == "flow"
    assert isinstance(loaded.model, FlowModel) and isinstance(loaded.conditioner,
                                                              FlowConditioner)
    assert loaded.sigmas.shape == (1000,) and float(loaded.sigmas[-1]) == pytest.approx(1.0)
    run_every_part(loaded.model)


def test_the_setting_chooses_parts_and_a_change_reloads(tmp_path, parts):
    from modules.app.cmd_args import parse_args
    from modules.models.manager import ModelManager
    from modules.paths import Paths

    data = tmp_path / "data"
    write_separate(data / "models" / "Stable-diffusion" / "flux.safetensors", data / "models",
                   parts["flux"], t5_names=("t5xxl_fp16", "t5xxl_fp8_e4m3fn"))
    chosen: list[str] = []
    manager = ModelManager(paths=Paths.from_args(parse_args(["--data-dir", str(data)])),
                           device=torch.device("cpu"), dtype=torch.float32,
                           vae_dtype=torch.float32, hashing=False,
                           modules_source=lambda: list(chosen))
    first = manager.get("flux")
    assert first.model.infotext() == {"Module 1": "ae", "Module 2": "clip_l",
                                      "Module 3": "t5xxl_fp16"}
    assert manager.get("flux") is first  # same setting: the cached model
    chosen.append("t5xxl_fp8_e4m3fn")
    second = manager.get("flux")
    assert second is not first and second.model.modules_used[-1] == "t5xxl_fp8_e4m3fn"
    job = manager.get("flux", modules=["t5xxl_fp16.safetensors"])  # a job's override_settings
    assert job.model.modules_used[-1] == "t5xxl_fp16" and manager.job_modules is None


# ---- low-bit diffusion weights: float8 safetensors, GGUF ------------------------------

# Relative L2 error of the velocity vs the dense model: measured 0.027 (float8 e4m3fn SD3)
# and 0.0061 (GGUF Q8_0 Flux).
LOW_BIT_TOLERANCE = 0.05


def _velocity(model: FlowModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 16, 8, 8, generator=generator)
    context = torch.randn(1, 5, 64, generator=generator)
    y = torch.randn(1, 32 if model.family.architecture == "flux" else 64, generator=generator)
    with torch.no_grad():
        if model.family.architecture == "flux":
            return model.diffusion_model(x, torch.tensor([0.5]), context, y, guidance=3.5)
        return model.diffusion_model(x, torch.tensor([500.0]), context, y)


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).norm() / reference.norm())


def test_float8_all_in_one_stays_low_bit(tmp_path, parts):
    from modules.models.lowbit_load import low_bit_layers

    dense = load(write_all_in_one(tmp_path / "dense.safetensors", parts["sd3"]))
    fp8 = {kind: dict(tensors) for kind, tensors in parts["sd3"].items()}
    fp8["diffusion"] = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v
                        for k, v in fp8["diffusion"].items()}
    model = load(write_all_in_one(tmp_path / "fp8.safetensors", fp8))
    assert low_bit_layers(model.diffusion_model)  # kept in float8, as Forge's "Automatic"
    assert _relative_error(_velocity(model), _velocity(dense)) < LOW_BIT_TOLERANCE


def test_gguf_flux_transformer_with_separate_parts(tmp_path, parts):
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, quants

    models = tmp_path / "models"
    dense = load(write_separate(tmp_path / "flux.safetensors", models, parts["flux"]), models)
    writer = GGUFWriter(str(tmp_path / "flux-Q8_0.gguf"), "flux")
    for name, tensor in parts["flux"]["diffusion"].items():
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            packed = quants.quantize(array, GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_shape=packed.shape,  # bytes per row
                              raw_dtype=GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = load(tmp_path / "flux-Q8_0.gguf", models)
    from modules.models.checkpoints import list_checkpoints

    listed = [info.name for info in list_checkpoints([tmp_path])]
    assert "flux-Q8_0.gguf" in listed  # listed as a checkpoint, as Forge does
    assert model.family.name == "flux_dev" and model.modules_used == ("ae", "clip_l",
                                                                        "t5xxl_fp16")
    assert _relative_error(_velocity(model), _velocity(dense)) < LOW_BIT_TOLERANCE
