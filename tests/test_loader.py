"""Reading checkpoints: header-only reads, strict errors, dtype casts, diffusers folders, VAEs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.models.errors import ModelLoadError
from modules.models.loader import load_state_dict, load_vae_state_dict, read_checkpoint_header
from modules.models.safetensors_io import TensorInfo, parse_safetensors_header


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3, generator=generator),
        "first_stage_model.decoder.conv_out.bias": torch.randn(3, generator=generator).half(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_header_read_touches_no_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_file(tensors(), str(path), metadata={"ss_tag": '{"a": 1}', "plain": "x"})
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    stream = CountingStream(data)
    header = parse_safetensors_header(stream, file_size=len(data), path=str(path))
    assert stream.bytes_read == 8 + header_len < len(data)
    assert header.tensors["model.diffusion_model.out.2.weight"] == TensorInfo((4, 8, 3, 3), "F32")
    assert header.metadata == {"ss_tag": {"a": 1}, "plain": "x"}
    assert read_checkpoint_header(path).tensors == header.tensors


def test_load_with_dtype_and_selection(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    source = tensors()
    save_file(source, str(path))
    loaded = load_state_dict(path, dtype=torch.bfloat16)
    assert loaded.keys() == source.keys()
    weight = loaded["model.diffusion_model.out.2.weight"]
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, source["model.diffusion_model.out.2.weight"].bfloat16())
    ids = loaded["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64 and torch.equal(ids, torch.arange(77)[None])  # ints keep dtype
    only = load_state_dict(path, keys=["first_stage_model.decoder.conv_out.bias"],
                           dtype=torch.float32)
    assert list(only) == ["first_stage_model.decoder.conv_out.bias"]
    assert torch.equal(only["first_stage_model.decoder.conv_out.bias"],
                       source["first_stage_model.decoder.conv_out.bias"].float())


def test_pickle_unwrap_and_old_clip_names(tmp_path: Path) -> None:
    path = tmp_path / "m.ckpt"
    source = {"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3),
              "cond_stage_model.transformer.embeddings.position_ids": torch.arange(77)[None]}
    torch.save({"state_dict": {"state_dict": source, "global_step": 875000}, "epoch": 3}, path)
    header = read_checkpoint_header(path)
    assert header.format == "pickle"
    assert header.metadata["global_step"] == 875000
    new_clip = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert header.tensors[new_clip] == TensorInfo((1, 77), "I64")
    loaded = load_state_dict(path, dtype=torch.float16)
    assert set(loaded) == {"model.diffusion_model.out.2.weight", new_clip}
    assert torch.equal(loaded["model.diffusion_model.out.2.weight"],
                       source["model.diffusion_model.out.2.weight"].half())
    assert torch.equal(load_state_dict(path, keys=[new_clip])[new_clip], torch.arange(77)[None])


def write_raw(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "reason"),
    [
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
        ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, "lying header"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "gap"),
        ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8,
         "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12,
         "after the last"),
    ],
)
def test_bad_safetensors(tmp_path: Path, header: dict, data: bytes, reason: str) -> None:
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    for action in (read_checkpoint_header, load_state_dict):
        with pytest.raises(ModelLoadError, match=reason) as info:
            action(path)
        assert str(path) in str(info.value)


def test_truncated_real_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file(tensors(), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors: truncated"):
        load_state_dict(path)


def test_file_level_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x13\x37" * 500)
    (tmp_path / "garbage.bin").write_bytes(b"hello world, not a model" * 10)
    (tmp_path / "plain_dir").mkdir()
    cases = {
        "empty.safetensors": "empty file",
        "garbage.safetensors": "not a safetensors file",
        "garbage.bin": "unrecognised file format",
        "plain_dir": "not a diffusers folder",
        "missing.ckpt": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(ModelLoadError, match=reason) as info:
            read_checkpoint_header(tmp_path / name)
        assert info.value.path == str(tmp_path / name)


def tiny_diffusers_folder(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=32, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=37, vocab_size=100,
                                        max_position_embeddings=77))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text('{"prediction_type": "v_prediction"}')
    return {"unet": unet.state_dict(), "vae": vae.state_dict()}


def test_diffusers_folder(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-diffusers"
    source = tiny_diffusers_folder(folder)
    header = read_checkpoint_header(folder)
    assert header.format == "diffusers" and header.metadata["prediction_type"] == "v_prediction"
    conv_in = source["unet"]["conv_in.weight"]
    assert (header.tensors["model.diffusion_model.input_blocks.0.0.weight"]
            == TensorInfo(tuple(conv_in.shape), "F32"))
    assert header.tensors["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1)
    assert "text_encoder.text_model.embeddings.token_embedding.weight" in header.tensors
    assert len(header.tensors) == len(source["unet"]) + len(source["vae"]) + sum(
        1 for k in header.tensors if k.startswith("text_encoder."))

    loaded = load_state_dict(folder, dtype=torch.float16)
    assert loaded.keys() == header.tensors.keys()
    assert torch.equal(loaded["model.diffusion_model.input_blocks.0.0.weight"], conv_in.half())
    q = source["vae"]["encoder.mid_block.attentions.0.to_q.weight"]
    assert torch.equal(loaded["first_stage_model.encoder.mid.attn_1.q.weight"],
                       q.half()[:, :, None, None])
    assert {TensorInfo.of(t) for t in loaded.values()} >= {TensorInfo((64, 64, 1, 1), "F16")}

    only_vae = load_state_dict(folder, keys=["first_stage_model.decoder.conv_out.weight"])
    assert torch.equal(only_vae["first_stage_model.decoder.conv_out.weight"],
                       source["vae"]["decoder.conv_out.weight"])

    vae = load_vae_state_dict(folder / "vae")  # a bare diffusers VAE folder
    assert torch.equal(vae["encoder.mid.attn_1.q.weight"], q[:, :, None, None])
    single = tmp_path / "tiny.vae.safetensors"  # a diffusers-layout VAE as one file
    save_file({k: v.contiguous() for k, v in source["vae"].items()}, str(single))
    assert load_vae_state_dict(single).keys() == vae.keys()


def test_sharded_component(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    source = tiny_diffusers_folder(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    names = sorted(source["unet"])
    halves = {"part-1.safetensors": names[: len(names) // 2],
              "part-2.safetensors": names[len(names) // 2:]}
    for shard, keys in halves.items():
        save_file({k: source["unet"][k].contiguous() for k in keys}, str(folder / "unet" / shard))
    weights.unlink()
    index = {"weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    index_file = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index_file.write_text(json.dumps(index))
    loaded = load_state_dict(folder, keys=["model.diffusion_model.out.2.weight"])
    assert torch.equal(loaded["model.diffusion_model.out.2.weight"],
                       source["unet"]["conv_out.weight"])


def test_standalone_ldm_vae(tmp_path: Path) -> None:
    path = tmp_path / "vae-ft.ckpt"
    conv = torch.randn(3, 8, 3, 3)
    torch.save({"state_dict": {"decoder.conv_out.weight": conv, "loss.logvar": torch.zeros(()),
                               "model_ema.decay": torch.ones(()),
                               "quant_conv.bias": torch.ones(8)}}, path)
    vae = load_vae_state_dict(path, dtype=torch.float16)
    assert set(vae) == {"decoder.conv_out.weight", "quant_conv.bias"}
    assert torch.equal(vae["decoder.conv_out.weight"], conv.half())
    not_vae = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(1)}, str(not_vae))
    with pytest.raises(ModelLoadError, match="not a VAE"):
        load_vae_state_dict(not_vae)
