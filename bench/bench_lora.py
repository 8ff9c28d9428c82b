"""LoRA cost on an SD1.5-size U-Net (CPU): merge into cached copies vs forward-time adds.

Builds the full-size SD1.5 U-Net on the meta device, fills it with random weights,
makes a rank-32 LoRA covering every attention Linear, proj_in/out and every 3x3 / 1x1
conv of the resnets (LoCon), and measures, next to one U-Net step at 64x64 latents
(512x512 pixels), batch 2 (cond + uncond) measured in the same run:

* apply: merging the LoRA into weight copies (ModelPatcher.merged(), cold cache);
* switch back: the same set again (LRU hit) and dropping it (a patcher without patches);
* functional_call overhead: one step through the patched call vs the plain module;
* forward-time: the extra cost per step of computing x @ down^T @ up^T for every
  patched layer at the shapes that layer sees in one step (shapes recorded once).

Run: `nice -n 10 .venv/bin/python bench/bench_lora.py` (takes minutes on 2 cores).
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modules.models import families  # noqa: E402
from modules.models.patcher import ModelPatcher, WeightPatch  # noqa: E402
from modules.networks.names import NameMap  # noqa: E402

RANK = 32


class UNetOnly(nn.Module):
    """Just what the patcher needs: `.unet`, empty `.text_encoders`, `.family`."""

    def __init__(self, unet: nn.Module, family) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoders = nn.ModuleDict()
        self.family = replace(family, text_encoders=())


def build_unet(family) -> nn.Module:
    from modules.nn.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(config=family.unet)
    unet = unet.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return unet.eval().requires_grad_(False)


def make_patches(unet: nn.Module, family) -> list[WeightPatch]:
    names = NameMap(model=UNetOnly(unet, family))
    generator = torch.Generator().manual_seed(1)
    patches, seen = [], set()
    for target in names.targets.values():
        if target.component != "unet" or target.kind == "norm" or target.path in seen:
            continue
        seen.add(target.path)
        out, inp = target.weight_shape[:2]
        kernel = target.weight_shape[2:]
        down = torch.randn(RANK, inp, *kernel, generator=generator) * 0.01
        up = torch.randn(out, RANK, *([1] * len(kernel)), generator=generator) * 0.01
        patches.append(WeightPatch(component="unet", path=target.path, strength=1.0,
                                   tensors={"lora_down.weight": down, "lora_up.weight": up,
                                            "alpha": torch.tensor(16.0)}))
    return patches


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def step_inputs(family):
    x = torch.randn(2, 4, 64, 64)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, family.unet.context_dim)
    return x, t, context


def record_inputs(unet: nn.Module, paths: set[str], inputs) -> dict[str, torch.Tensor]:
    """One forward with temporary forward hooks (benchmark only) to get each layer's input."""
    seen, handles = {}, []
    for path in paths:
        module = unet.get_submodule(path)
        handles.append(module.register_forward_pre_hook(
            lambda m, args, path=path: seen.setdefault(path, args[0].detach())))
    with torch.inference_mode():
        unet(*inputs[:2], context=inputs[2])
    for handle in handles:
        handle.remove()
    return seen


def forward_time_extra(unet: nn.Module, patches: list[WeightPatch], inputs) -> float:
    """Seconds of LoRA branch work per step: x -> down -> up for every patched layer."""
    layer_inputs = record_inputs(unet, {p.path for p in patches}, inputs)

    def run() -> None:
        for patch in patches:
            x = layer_inputs[patch.path]
            down, up = patch.tensors["lora_down.weight"], patch.tensors["lora_up.weight"]
            module = unet.get_submodule(patch.path)
            if isinstance(module, nn.Linear):
                _ = F.linear(F.linear(x, down.flatten(1)), up.flatten(1))
            else:
                h = F.conv2d(x, down, stride=module.stride, padding=module.padding)
                _ = F.conv2d(h, up)

    with torch.inference_mode():
        run()
        return timed(run, 2)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    family = families.SD15
    unet = build_unet(family)
    patches = make_patches(unet, family)
    inputs = step_inputs(family)
    base = ModelPatcher(model=UNetOnly(unet, family))
    with torch.inference_mode():
        unet(*inputs[:2], context=inputs[2])  # warm-up
        step = timed(lambda: unet(*inputs[:2], context=inputs[2]), 2)
        clone = base.with_patches(tuple(patches), key=("bench", 1.0))
        apply = timed(clone.merged)
        again = timed(lambda: base.with_patches(tuple(patches), key=("bench", 1.0)).merged())
        remove = timed(lambda: base.clone().unet())
        call = clone.unet()
        patched_step = timed(lambda: call(*inputs[:2], context=inputs[2]), 2)
    extra = forward_time_extra(unet, patches, inputs)
    size = sum(t.numel() * t.element_size() for t in clone.merged().params["unet"].values())
    print(f"SD1.5 U-Net, rank {RANK}, {len(patches)} layers patched, "
          f"{size / 2**20:.0f} MiB of merged copies, {torch.get_num_threads()} threads")
    print(f"one U-Net step (batch 2, 64x64 latents):        {step * 1000:9.1f} ms")
    print(f"merge (apply a new LoRA set, cold):            {apply * 1000:9.1f} ms "
          f"({apply / step:.2f} steps)")
    print(f"switch to a cached set (LRU hit):              {again * 1000:9.3f} ms")
    print(f"remove (clone without patches):                {remove * 1000:9.3f} ms")
    print(f"patched step via functional_call:              {patched_step * 1000:9.1f} ms "
          f"({(patched_step - step) * 1000:+.1f} ms vs plain)")
    print(f"forward-time LoRA extra per step (x@down@up):   {extra * 1000:9.1f} ms "
          f"({extra / step:.2%} of a step; x steps per job)")


if __name__ == "__main__":
    main()
