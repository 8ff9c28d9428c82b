"""Hypernetworks: A1111's `.pt` layout read by our loader, checked against direct formulas."""

from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F

from modules.conditioning.prompt_parser import extract_extra_networks
from modules.models import families as FAM
from modules.models.errors import ModelLoadError
from modules.networks.hypernetwork import HypernetworkStack
from modules.networks.hypernetwork_files import HypernetworkError, read_hypernetwork
from modules.networks.hypernetwork_library import (
    AttentionWidths,
    HypernetworkLibrary,
    activate_hypernetworks,
)
from modules.nn.transformer import CrossAttention
from tests.helpers.hypernetwork_files import a1111_hypernetwork, write_hypernetwork
from tests.tiny import TINY_SD15

QUERY, CONTEXT = 16, 24


@pytest.fixture
def attn() -> CrossAttention:
    torch.manual_seed(3)
    layer = CrossAttention(query_dim=QUERY, context_dim=CONTEXT, heads=2, head_dim=8)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_(0, 0.3)
    return layer


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(4)
    return (torch.randn(2, 10, QUERY, generator=generator),
            torch.randn(2, 5, CONTEXT, generator=generator))


def load(tmp_path, data, name="hn"):
    return read_hypernetwork(write_hypernetwork(tmp_path / f"{name}.pt", data))


def attention_formula(attn: CrossAttention, x, key_source, value_source):
    """softmax(q k^T / sqrt(d)) v per head, then the output projection, written out."""
    batch, tokens, _ = x.shape
    heads = attn.heads

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1)

    q = split(x @ attn.to_q.weight.T)
    k = split(key_source @ attn.to_k.weight.T)
    v = split(value_source @ attn.to_v.weight.T)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / q.shape[-1] ** 0.5
    out = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(batch, tokens, -1)
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def known_layout_mlp(state, x, multiplier):
    """[1, 2, 1], relu, layer norm, dropout after the hidden layer, no output activation:
    Linear(0) ReLU(1) LayerNorm(2) Dropout(3) Linear(4) LayerNorm(5)."""
    h = F.relu(F.linear(x, state["linear.0.weight"], state["linear.0.bias"]))
    h = F.layer_norm(h, h.shape[-1:], state["linear.2.weight"], state["linear.2.bias"])
    h = F.linear(h, state["linear.4.weight"], state["linear.4.bias"])
    h = F.layer_norm(h, h.shape[-1:], state["linear.5.weight"], state["linear.5.bias"])
    return x + h * multiplier


KNOWN = dict(activation="relu", layer_norm=True, use_dropout=True, last_layer_dropout=True)


def test_known_layout_keys_are_what_a1111_writes(tmp_path):
    data = a1111_hypernetwork([CONTEXT], **KNOWN)
    assert sorted(data[CONTEXT][0]) == sorted(
        f"linear.{i}.{p}" for i in (0, 2, 4, 5) for p in ("weight", "bias"))
    network = load(tmp_path, data)
    assert network.dims == [CONTEXT]
    assert network.info["step"] == 1000 and network.info["sd_checkpoint_name"] == "tiny"


def test_cross_and_self_attention_equal_the_formula(tmp_path, attn, inputs):
    x, context = inputs
    data = a1111_hypernetwork([QUERY, CONTEXT], **KNOWN)
    stack = HypernetworkStack(entries=((load(tmp_path, data), 0.7),))
    (k_ctx, v_ctx), (k_x, v_x) = data[CONTEXT], data[QUERY]
    with torch.no_grad():
        cross = attn(x, context, context_transform=stack)
        expected = attention_formula(attn, x, known_layout_mlp(k_ctx, context, 0.7),
                                     known_layout_mlp(v_ctx, context, 0.7))
        torch.testing.assert_close(cross, expected, rtol=1e-5, atol=1e-5)
        # Self-attention: the pixel tokens are the source, through the MLPs of their width.
        self_attn = attn.__class__(query_dim=QUERY, context_dim=None, heads=2, head_dim=8)
        self_attn.load_state_dict({**attn.state_dict(), "to_k.weight": attn.to_q.weight,
                                   "to_v.weight": attn.to_q.weight * 0.5})
        out = self_attn(x, context_transform=stack)
        expected = attention_formula(self_attn, x, known_layout_mlp(k_x, x, 0.7),
                                     known_layout_mlp(v_x, x, 0.7))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, self_attn(x), atol=1e-3)


def test_two_hypernetworks_stack_in_prompt_order(tmp_path, attn, inputs):
    x, context = inputs
    first = a1111_hypernetwork([CONTEXT], seed=1, **KNOWN)
    second = a1111_hypernetwork([CONTEXT], seed=2, **KNOWN)
    a, b = load(tmp_path, first, "a"), load(tmp_path, second, "b")
    with torch.no_grad():
        out = attn(x, context, context_transform=HypernetworkStack(entries=((a, 0.5), (b, -1.5))))
        k = known_layout_mlp(second[CONTEXT][0],
                             known_layout_mlp(first[CONTEXT][0], context, 0.5), -1.5)
        v = known_layout_mlp(second[CONTEXT][1],
                             known_layout_mlp(first[CONTEXT][1], context, 0.5), -1.5)
        torch.testing.assert_close(out, attention_formula(attn, x, k, v), rtol=1e-5, atol=1e-5)
        swapped = attn(x, context,
                       context_transform=HypernetworkStack(entries=((b, -1.5), (a, 0.5))))
        assert not torch.allclose(out, swapped, atol=1e-4)


def test_multiplier_zero_mlp_is_bitwise_the_identity(tmp_path, attn, inputs):
    x, context = inputs
    network = load(tmp_path, a1111_hypernetwork([QUERY, CONTEXT], **KNOWN))
    with torch.no_grad():
        identity = attn(x, context, context_transform=lambda source: (source, source))
        zero = attn(x, context, context_transform=HypernetworkStack(entries=((network, 0.0),)))
        assert torch.equal(identity, zero)
        torch.testing.assert_close(identity, attn(x, context), rtol=1e-6, atol=1e-6)


def test_width_without_mlp_is_left_unchanged(tmp_path, attn, inputs):
    x, context = inputs
    network = load(tmp_path, a1111_hypernetwork([QUERY], **KNOWN))  # no MLP for the context width
    with torch.no_grad():
        out = attn(x, context, context_transform=HypernetworkStack(entries=((network, 1.0),)))
        assert torch.equal(out, attn(x, context, context_transform=lambda s: (s, s)))


def test_old_files_linear1_linear2_and_defaults(tmp_path):
    generator = torch.Generator().manual_seed(0)

    def old_mlp():
        return {"linear1.weight": torch.randn(2 * CONTEXT, CONTEXT, generator=generator),
                "linear1.bias": torch.randn(2 * CONTEXT, generator=generator),
                "linear2.weight": torch.randn(CONTEXT, 2 * CONTEXT, generator=generator),
                "linear2.bias": torch.randn(CONTEXT, generator=generator)}

    data = {CONTEXT: (old_mlp(), old_mlp()), "step": 3}
    network = load(tmp_path, data)
    x = torch.randn(1, 4, CONTEXT)
    k = network.pair(CONTEXT)[0](x, multiplier=0.3)
    s = data[CONTEXT][0]
    # No activation stored: two plain Linears.
    expected = x + F.linear(F.linear(x, s["linear1.weight"], s["linear1.bias"]),
                            s["linear2.weight"], s["linear2.bias"]) * 0.3
    torch.testing.assert_close(k, expected)


def test_missing_activate_output_means_true(tmp_path):
    data = a1111_hypernetwork([CONTEXT], activation="tanh", activate_output=True)
    del data["activate_output"]  # A1111 reads a missing key as True
    network = load(tmp_path, data)
    s = data[CONTEXT][0]
    x = torch.randn(1, 3, CONTEXT)
    h = torch.tanh(F.linear(x, s["linear.0.weight"], s["linear.0.bias"]))
    h = torch.tanh(F.linear(h, s["linear.2.weight"], s["linear.2.bias"]))
    torch.testing.assert_close(network.pair(CONTEXT)[0](x, multiplier=1.0), x + h)


@pytest.mark.parametrize("last_layer_dropout", [False, True])
def test_legacy_dropout_slots_and_deeper_structures(tmp_path, last_layer_dropout):
    data = a1111_hypernetwork([CONTEXT], layer_structure=(1, 2, 2, 1), activation="prelu",
                              use_dropout=True, last_layer_dropout=last_layer_dropout)
    del data["dropout_structure"]  # older files: derived from use_dropout / last_layer_dropout
    expected_keys = {0, 1, 3, 4, 6} if last_layer_dropout else {0, 1, 3, 4, 5}
    assert {int(k.split(".")[1]) for k in data[CONTEXT][0]} == expected_keys
    network = load(tmp_path, data)
    assert network.dims == [CONTEXT]


def test_attention_widths_of_real_families():
    assert AttentionWidths.of(FAM.SD15.unet) == AttentionWidths(pixels=frozenset({320, 640, 1280}),
                                                                context=768)
    assert AttentionWidths.of(FAM.SD2.unet).context == 1024
    assert AttentionWidths.of(FAM.SDXL.unet) == AttentionWidths(pixels=frozenset({640, 1280}),
                                                                context=2048)
    assert AttentionWidths.of(TINY_SD15.unet).all == {32, 64}


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def _bad(name):
    good = a1111_hypernetwork([CONTEXT], **KNOWN)
    if name == "wrong shape":
        good[CONTEXT][0]["linear.4.weight"] = torch.zeros(CONTEXT, 5)
    elif name == "missing key":
        del good[CONTEXT][1]["linear.5.bias"]
    elif name == "huge structure":
        good["layer_structure"] = [1, 100000, 1]
    return good


BAD = {
    "not a dict": ([1, 2], "not a hypernetwork dict"),
    "embedding file": ({"string_to_param": {"*": torch.zeros(1, 24)}}, "no MLPs"),
    "layer structure": ({**a1111_hypernetwork([CONTEXT]), "layer_structure": [1, 2]},
                        "must start and end with 1"),
    "activation": ({**a1111_hypernetwork([CONTEXT]), "activation_func": "bogus"},
                   "unsupported activation_func 'bogus'"),
    "flag": ({**a1111_hypernetwork([CONTEXT]), "is_layer_norm": "yes"}, "is_layer_norm must be"),
    "dropout": ({**a1111_hypernetwork([CONTEXT]), "dropout_structure": [0, 0.3]},
                "dropout_structure"),
    "pair": ({CONTEXT: "x"}, f"width {CONTEXT}: expected a (k, v) pair"),
    "wrong shape": (_bad("wrong shape"), f"width {CONTEXT} k MLP does not fit"),
    "missing key": (_bad("missing key"), "linear.5.bias"),
    "huge structure": (_bad("huge structure"), "does not fit its layer_structure"),
    "pickled code": ({CONTEXT: _Payload()}, "refusing to unpickle global"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_raise_errors_that_say_why(tmp_path, case):
    data, message = BAD[case]
    path = tmp_path / "bad.pt"
    torch.save(data, path)
    with pytest.raises((HypernetworkError, ModelLoadError), match=re.escape(message)):
        read_hypernetwork(path)


def test_truncated_file_is_a_load_error(tmp_path):
    path = write_hypernetwork(tmp_path / "good.pt", a1111_hypernetwork([CONTEXT]))
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:300])
    with pytest.raises(ModelLoadError):
        read_hypernetwork(tmp_path / "cut.pt")


CPU = torch.device("cpu")
WIDTHS = AttentionWidths(pixels=frozenset({QUERY}), context=CONTEXT)


def test_library_lists_pt_files_by_stem_and_caches_reads_per_file_state(tmp_path):
    folder = tmp_path / "hypernetworks"
    write_hypernetwork(folder / "a.pt", a1111_hypernetwork([CONTEXT], seed=1))
    write_hypernetwork(folder / "sub" / "b.pt", a1111_hypernetwork([CONTEXT], seed=2))
    write_hypernetwork(folder / "None.pt", a1111_hypernetwork([CONTEXT], seed=3))
    (folder / "c.safetensors").write_bytes(b"not listed")
    library = HypernetworkLibrary(folder=folder)
    assert [(e.name, e.path.name) for e in library.list()] == [("a", "a.pt"), ("b", "b.pt")]
    first = library.read(library.find("a"), CPU)
    assert library.read(library.find("a"), CPU) is first
    write_hypernetwork(folder / "a.pt", a1111_hypernetwork([CONTEXT, QUERY], seed=4))
    assert library.read(library.find("a"), CPU).dims == [QUERY, CONTEXT]
    assert library.find("../a") is None and library.find("sub/b") is None


def test_activation_keeps_prompt_order_and_leaves_out_zero_multipliers(tmp_path):
    folder = tmp_path / "hypernetworks"
    for seed, name in enumerate("ab"):
        write_hypernetwork(folder / f"{name}.pt", a1111_hypernetwork([CONTEXT], seed=seed))
    library = HypernetworkLibrary(folder=folder)
    tags = extract_extra_networks("x <hypernet:a:0> <hypernet:b:0.5> <hypernet:a:-2>")[1]
    result = activate_hypernetworks(library, tags, widths=WIDTHS, device=CPU)
    assert not result.warnings
    assert [(net.name, m) for net, m in result.transform.entries] == [("b", 0.5), ("a", -2.0)]
    zero = activate_hypernetworks(library, extract_extra_networks("<hypernet:a:0>")[1],
                                  widths=WIDTHS, device=CPU)
    assert zero.transform is None and not zero.warnings


def test_half_precision_attention_gets_float32_mlps_and_keeps_its_dtype(tmp_path, attn, inputs):
    x, context = inputs
    network = load(tmp_path, a1111_hypernetwork([CONTEXT], **KNOWN))
    stack = HypernetworkStack(entries=((network, 1.0),))
    with torch.no_grad():
        full = attn(x, context, context_transform=stack)
        half = attn.to(torch.bfloat16)(x.bfloat16(), context.bfloat16(), context_transform=stack)
    assert half.dtype == torch.bfloat16
    assert stack.entries[0][0].pair(CONTEXT)[0].linear[0].weight.dtype == torch.float32
    torch.testing.assert_close(half.float(), full, rtol=0.1, atol=0.1)
