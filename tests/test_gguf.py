"""GGUF: torch dequantization against gguf's numpy reference, and the file reader.

Dequantization must equal `gguf.quants.dequantize` bit for bit (both compute in float32
from the same float16 scales and integer codes), for every supported type, on random
block bytes (every bit pattern of the codes) and on real quantizations of random data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants

from modules.models.errors import ModelLoadError
from modules.models.gguf_io import GGUFError, read_gguf, read_gguf_header
from modules.nn.gguf_quants import SUPPORTED_TYPES, QuantizedTensor, dequantize
from tests.gguf_kquants import quantize

# Where each type's float16 scales sit in its block (d; and m / dmin where there is one).
SCALE_OFFSETS = {
    GGMLQuantizationType.Q8_0: (0,), GGMLQuantizationType.Q4_0: (0,),
    GGMLQuantizationType.Q5_0: (0,), GGMLQuantizationType.Q4_1: (0, 2),
    GGMLQuantizationType.Q5_1: (0, 2), GGMLQuantizationType.Q4_K: (0, 2),
    GGMLQuantizationType.Q5_K: (0, 2), GGMLQuantizationType.Q6_K: (208,),
}


def random_blocks(qtype: GGMLQuantizationType, rows: int, blocks_per_row: int,
                  seed: int = 0) -> np.ndarray:
    """Random block bytes with finite float16 scales (random codes cover every bit)."""
    rng = np.random.default_rng(seed)
    type_size = GGML_QUANT_SIZES[qtype][1]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, type_size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[qtype]:
        scales = rng.standard_normal(len(raw)).astype(np.float16)
        raw[:, offset:offset + 2] = scales.reshape(-1, 1).view(np.uint8)
    return raw.reshape(rows, blocks_per_row * type_size)


def test_every_listed_type_is_supported():
    names = {qtype.name for qtype in SUPPORTED_TYPES}
    assert names >= {"Q8_0", "Q6_K", "Q5_K", "Q5_0", "Q4_K", "Q4_0"}


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_dequantize_random_blocks_bit_exact(qtype):
    block_size = GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, rows=5, blocks_per_row=3)
    expected = quants.dequantize(raw, qtype)
    got = dequantize(torch.from_numpy(raw.copy()), qtype, (5, 3 * block_size))
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
    assert torch.equal(got, torch.from_numpy(expected))


@pytest.mark.parametrize("qtype", SUPPORTED_TYPES, ids=lambda t: t.name)
def test_dequantize_real_quantization_bit_exact(qtype):
    x = np.random.default_rng(1).standard_normal((6, 512)).astype(np.float32)
    packed = quantize(x, qtype)
    expected = quants.dequantize(packed, qtype)
    tensor = QuantizedTensor(torch.from_numpy(packed.copy()), qtype, (6, 512))
    assert torch.equal(tensor.dequantize(), torch.from_numpy(expected))
    # And the quantization is one of the input (a check on the test's own k-quant packer).
    assert np.abs(expected - x).max() < 0.5
    assert tensor.dequantize(torch.bfloat16).dtype == torch.bfloat16


def test_dequantize_rejects_wrong_sizes():
    data = torch.zeros(34 * 2, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Q8_0"):
        dequantize(data, GGMLQuantizationType.Q8_0, (3, 32))
    with pytest.raises(ValueError, match="Q2_K"):
        dequantize(data, GGMLQuantizationType.Q2_K, (1, 256))


def write_gguf(path, tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType | None]],
               architecture: str = "flux") -> None:
    """A GGUF file through gguf's own writer; quantized entries pass their block bytes."""
    writer = GGUFWriter(str(path), architecture)
    for name, (array, qtype) in tensors.items():
        if qtype is None:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture
def gguf_file(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 256)).astype(np.float32)
    tensors = {
        "img_in.weight": (quants.quantize(weight, GGMLQuantizationType.Q8_0),
                          GGMLQuantizationType.Q8_0),
        "double_blocks.0.img_mlp.0.weight": (quantize(weight, GGMLQuantizationType.Q4_K),
                                             GGMLQuantizationType.Q4_K),
        "img_in.bias": (rng.standard_normal(16).astype(np.float32), None),
        "final_layer.linear.bias": (rng.standard_normal(16).astype(np.float16), None),
        "norm.scale": (quants.quantize(weight[0], GGMLQuantizationType.BF16),
                       GGMLQuantizationType.BF16),
    }
    path = tmp_path / "flux1-dev-Q4_K_S.gguf"
    write_gguf(path, tensors)
    return path, tensors, weight


def test_a_written_gguf_file_loads(gguf_file):
    path, tensors, weight = gguf_file
    header = read_gguf_header(path)
    assert header.architecture == "flux"
    assert header.tensors["img_in.weight"].shape == (16, 256)
    assert header.shapes["norm.scale"] == (256,)
    assert header.tensors["img_in.weight"].qtype == GGMLQuantizationType.Q8_0
    loaded = read_gguf(path)
    assert set(loaded) == set(tensors)
    q8 = loaded["img_in.weight"]
    assert isinstance(q8, QuantizedTensor) and q8.shape == (16, 256)
    assert q8.nbytes == 16 * 256 // 32 * 34
    expected = quants.dequantize(tensors["img_in.weight"][0], GGMLQuantizationType.Q8_0)
    assert torch.equal(q8.dequantize(), torch.from_numpy(expected))
    q4k = loaded["double_blocks.0.img_mlp.0.weight"]
    assert q4k.qtype == GGMLQuantizationType.Q4_K
    assert (q4k.dequantize() - torch.from_numpy(weight)).abs().max() < 0.5
    assert loaded["img_in.bias"].dtype == torch.float32
    assert torch.equal(loaded["img_in.bias"], torch.from_numpy(tensors["img_in.bias"][0]))
    assert loaded["final_layer.linear.bias"].dtype == torch.float16
    bf16 = loaded["norm.scale"]
    assert bf16.dtype == torch.bfloat16 and bf16.shape == (256,)
    assert torch.equal(bf16, torch.from_numpy(weight[0]).to(torch.bfloat16))


def test_only_the_asked_keys_are_read(gguf_file):
    path, _, _ = gguf_file
    assert set(read_gguf(path, keys=["img_in.bias"])) == {"img_in.bias"}
    with pytest.raises(GGUFError, match="no tensor named 'nope'"):
        read_gguf(path, keys=["nope"])


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_a_truncated_gguf_is_one_clear_error_naming_the_file(gguf_file, tmp_path, keep):
    path, _, _ = gguf_file
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelLoadError) as caught:
        read_gguf(cut)
    assert isinstance(caught.value, GGUFError)
    assert str(cut) in str(caught.value)
    assert "truncated" in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"GGUF", b"not a gguf file at all" * 40])
def test_garbage_and_empty_files_are_named_errors(tmp_path, content):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match="model.gguf"):
        read_gguf(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(GGUFError, match="file not found"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(GGUFError, match="not a file"):
        read_gguf(tmp_path)


def test_an_unsupported_quantization_is_named(tmp_path):
    raw = np.zeros((4, GGML_QUANT_SIZES[GGMLQuantizationType.Q2_K][1]), dtype=np.uint8)
    path = tmp_path / "q2.gguf"
    write_gguf(path, {"w": (raw, GGMLQuantizationType.Q2_K)})
    with pytest.raises(GGUFError, match="unsupported type Q2_K"):
        read_gguf(path)
