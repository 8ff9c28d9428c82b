"""LoHa, LoKr, (IA)^3, full diff, LoCon Tucker, DoRA and dyn equal their formulas.

Each adapter is merged by the patcher into a small layer; the expected weight is
written here directly from the formula (element loops / explicit kron), not through
the code under test.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.models.patcher import WeightPatch, merge_patches
from modules.networks.adapters import AdapterError, updates_for

G = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=G)


def merged(weight: torch.Tensor, tensors: dict, strength: float = 1.0, dyn=None, bias=None):
    if weight.ndim == 2:
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    root = nn.Sequential(layer)
    patch = WeightPatch(component="unet", path="0", tensors=tensors, strength=strength, dyn=dyn)
    result = merge_patches(root, {"unet": root}, (patch,))
    assert not result.skipped, result.skipped
    return result.params["unet"]


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lora_linear_alpha_and_strength():
    w, down, up = rnd(6, 5), rnd(3, 5), rnd(6, 3)
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.5)}
    out = merged(w, tensors, 0.7)
    close(out["0.weight"], w + 0.7 * (1.5 / 3) * (up @ down))
    # No alpha: scale 1.
    out = merged(w, {"lora_down.weight": down, "lora_up.weight": up})
    close(out["0.weight"], w + up @ down)


def test_dyn_keeps_the_first_ranks():
    w, down, up = rnd(6, 5), rnd(4, 5), rnd(6, 4)
    out = merged(w, {"lora_down.weight": down, "lora_up.weight": up}, dyn=2)
    close(out["0.weight"], w + up[:, :2] @ down[:2])


def test_locon_3x3_and_tucker():
    w = rnd(4, 3, 3, 3)
    down, up = rnd(2, 3, 3, 3), rnd(4, 2, 1, 1)
    expected = w.clone()
    for i in range(4):
        for j in range(3):
            for r in range(2):
                expected[i, j] += up[i, r, 0, 0] * down[r, j]
    close(merged(w, {"lora_down.weight": down, "lora_up.weight": up})["0.weight"], expected)
    down, mid, up = rnd(2, 3, 1, 1), rnd(2, 2, 3, 3), rnd(4, 2, 1, 1)
    expected = w.clone()
    for i in range(4):
        for j in range(3):
            for n in range(2):
                for m in range(2):
                    expected[i, j] += mid[n, m] * up[i, n, 0, 0] * down[m, j, 0, 0]
    out = merged(w, {"lora_down.weight": down, "lora_up.weight": up, "lora_mid.weight": mid})
    close(out["0.weight"], expected)


def test_loha():
    w = rnd(6, 5)
    a1, b1, a2, b2 = rnd(6, 2), rnd(2, 5), rnd(6, 2), rnd(2, 5)
    tensors = {"hada_w1_a": a1, "hada_w1_b": b1, "hada_w2_a": a2, "hada_w2_b": b2,
               "alpha": torch.tensor(1.0)}
    close(merged(w, tensors, 0.5)["0.weight"], w + 0.5 * 0.5 * (a1 @ b1) * (a2 @ b2))


def test_loha_tucker_conv():
    w = rnd(4, 3, 3, 3)
    t1, t2 = rnd(2, 2, 3, 3), rnd(2, 2, 3, 3)
    a1, b1, a2, b2 = rnd(2, 4), rnd(2, 3), rnd(2, 4), rnd(2, 3)
    expected = torch.zeros(4, 3, 3, 3)
    for i in range(4):
        for j in range(3):
            h1 = sum(t1[p, q] * a1[p, i] * b1[q, j] for p in range(2) for q in range(2))
            h2 = sum(t2[p, q] * a2[p, i] * b2[q, j] for p in range(2) for q in range(2))
            expected[i, j] = h1 * h2
    tensors = {"hada_t1": t1, "hada_t2": t2, "hada_w1_a": a1, "hada_w1_b": b1,
               "hada_w2_a": a2, "hada_w2_b": b2}
    close(merged(w, tensors)["0.weight"], w + expected)


def kron(a, b):
    out = torch.zeros(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *b.shape[2:])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            rows = slice(i * b.shape[0], (i + 1) * b.shape[0])
            columns = slice(j * b.shape[1], (j + 1) * b.shape[1])
            out[rows, columns] = a[i, j] * b
    return out


def test_lokr_full_and_low_rank():
    w = rnd(6, 8)
    w1, w2 = rnd(2, 4), rnd(3, 2)
    # Both factors full: scale 1 even with an alpha.
    out = merged(w, {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(4.0)})
    close(out["0.weight"], w + kron(w1, w2))
    a, b = rnd(3, 2), rnd(2, 2)
    out = merged(w, {"lokr_w1": w1, "lokr_w2_a": a, "lokr_w2_b": b, "alpha": torch.tensor(1.0)})
    close(out["0.weight"], w + 0.5 * kron(w1, a @ b))


def test_lokr_conv():
    w = rnd(6, 4, 3, 3)
    w1, w2 = rnd(2, 2), rnd(3, 2, 3, 3)
    close(merged(w, {"lokr_w1": w1, "lokr_w2": w2})["0.weight"], w + kron(w1, w2))


def test_ia3_rows_and_columns():
    w, v_out, v_in = rnd(6, 5), rnd(6), rnd(5)
    close(merged(w, {"weight": v_out}, 0.5)["0.weight"], w * (1 + 0.5 * v_out[:, None]))
    out = merged(w, {"weight": v_in, "on_input": torch.tensor(True)})
    close(out["0.weight"], w * (1 + v_in[None, :]))


def test_full_diff_with_bias():
    w, b, diff, diff_b = rnd(6, 5), rnd(6), rnd(6, 5), rnd(6)
    out = merged(w, {"diff": diff, "diff_b": diff_b}, 0.3, bias=b)
    close(out["0.weight"], w + 0.3 * diff)
    close(out["0.bias"], b + 0.3 * diff_b)


def test_dora_column_magnitude():
    w, down, up, magnitude = rnd(6, 5), rnd(2, 5), rnd(6, 2), rnd(1, 5).abs() + 0.5
    tensors = {"lora_down.weight": down, "lora_up.weight": up, "dora_scale": magnitude}
    full = w + up @ down
    norms = torch.stack([full[:, j].norm() for j in range(5)])
    target = full * (magnitude[0] / norms)[None, :]
    close(merged(w, tensors, 0.6)["0.weight"], w + 0.6 * (target - w))


def test_wrong_shapes_are_reported_not_applied():
    w = rnd(6, 5)
    try:
        updates_for({"lora_down.weight": rnd(2, 4), "lora_up.weight": rnd(6, 2)}, w)
    except AdapterError as error:
        assert "(6, 5)" in str(error)
    else:
        raise AssertionError("a wrong-shape LoRA must raise")
    layer = nn.Sequential(nn.Linear(5, 6))
    patch = WeightPatch(component="unet", path="0", strength=1.0,
                        tensors={"lora_down.weight": rnd(2, 4), "lora_up.weight": rnd(6, 2)})
    result = merge_patches(layer, {"unet": layer}, (patch,))
    assert result.params == {}
    assert len(result.skipped) == 1
