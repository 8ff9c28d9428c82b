"""Training a tiny T2I-Adapter on the demo model: a silhouette map that fixes where the shape goes.

The same task as the silhouette ControlNet (`modules.training.train_controlnet`, whose
data helpers this reuses: the rendered pictures, their silhouettes, and captions whose
position is often wrong or absent, so that the map is the only reliable source of the
position), learnt by a T2I-Adapter (Mou et al., 2023; `modules.nn.t2i_adapter`): a
small convolutional encoder of the map whose features are added to the frozen U-Net's
encoder levels. The U-Net and the text encoder stay frozen; only the adapter learns,
through the eps-prediction loss with its features added. As in the paper, timesteps
are drawn with a cubic bias towards the noisy end (t = (1 - u^3) T), where the layout of
a picture is decided.

The adapter is a "full" one (TencentARC's layout, 1x1 `block2`) with one level per
demo U-Net level (widths 32, 64, 128), saved in TencentARC's names as fp16
`.safetensors`, which `modules.models.t2i_adapter_files.load_t2i_adapter` reads.

    python -m modules.training.train_t2i_adapter \\
        --out models/ControlNet/easel-demo-t2i-silhouette.safetensors
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.conditioning.tokenizer import ClipTokenizer
from modules.nn.t2i_adapter import T2IAdapter, T2IAdapterConfig, T2IAdapterPatch
from modules.nn.unet_patches import UNetPatches, with_patch
from modules.sampling.base import run_sampler
from modules.sampling.cfg import CFGDenoiser, Hooks
from modules.sampling.denoiser import Denoiser, model_sigmas, scaled_linear_alphas_cumprod
from modules.sampling.registry import compute_sigmas, resolve_sampler, start_sampler
from modules.training.captions import token_ids
from modules.training.checkpoint import save_model_file
from modules.training.frozen_base import load_frozen, min_snr_mse, train_rows
from modules.training.train_controlnet import (
    ControlNetTrainingConfig,
    ControlSet,
    build_control_set,
    hint_tensor,
)

DEFAULT_BASE = Path("models/Stable-diffusion/easel-demo.safetensors")
DEFAULT_OUT = Path("models/ControlNet/easel-demo-t2i-silhouette.safetensors")


@dataclass(frozen=True, kw_only=True)
class T2IAdapterTrainingConfig:
    """How long and on what to train the silhouette T2I-Adapter."""

    steps: int = 1000
    batch_size: int = 32
    dataset_size: int = 4096
    learning_rate: float = 1e-3
    caption_dropout: float = 0.1
    # Fraction of captions naming another position than the picture's, and naming none.
    position_mismatch: float = 0.5
    position_omitted: float = 0.15
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.99
    resolution: int = 64
    num_res_blocks: int = 2
    seed: int = 0

    def data(self) -> ControlNetTrainingConfig:
        """The ControlNet's data settings: same pictures, maps and captions."""
        return ControlNetTrainingConfig(
            dataset_size=self.dataset_size, position_mismatch=self.position_mismatch,
            position_omitted=self.position_omitted, resolution=self.resolution, seed=self.seed)


def adapter_for_unet(unet_config, *, num_res_blocks: int) -> T2IAdapter:
    """A fresh full adapter with one level per U-Net level, at the U-Net's widths.

    `block2` of every residual block starts at zero, so each block starts as the identity
    and the first features are only the projected map (small, the U-Net barely moved)."""
    widths = tuple(unet_config.model_channels * m for m in unet_config.channel_mult)
    adapter = T2IAdapter(config=T2IAdapterConfig(kind="full", hint_channels=3, channels=widths,
                                                 num_res_blocks=num_res_blocks, downscale=8))
    with torch.no_grad():
        for block in adapter.body:
            block.block2.weight.zero_()
            block.block2.bias.zero_()
    return adapter


def adapter_loss(*, adapter: T2IAdapter, unet, text_encoder, data: ControlSet,
                 rows: torch.Tensor, scale_factor: float, alphas_cumprod: torch.Tensor,
                 config: T2IAdapterTrainingConfig, empty_ids: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted eps MSE of the frozen U-Net with the adapter's features, on `rows`."""
    noise = torch.randn(data.means[rows].shape, generator=generator)
    latents = scale_factor * (data.means[rows] + data.stds[rows] * noise)
    ids = data.token_ids[rows].clone()
    ids[torch.rand(len(rows), generator=generator) < config.caption_dropout] = empty_ids
    with torch.no_grad():
        context = text_encoder(ids).hidden
    # The paper's cubic schedule: most samples at the noisy end, where layout is decided.
    u = torch.rand(len(rows), generator=generator)
    count = len(alphas_cumprod)
    timesteps = ((1 - u ** 3) * count).long().clamp(0, count - 1)
    eps = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    patch = T2IAdapterPatch(features=adapter(data.hints[rows]), weight=1.0,
                            row_images=list(range(len(rows))), unet=unet.config)
    prediction = unet(noisy, timesteps, context, patches=UNetPatches((patch,)))
    return min_snr_mse(prediction, eps, abar, config.min_snr_gamma)


def train_adapter(*, base: str | os.PathLike[str], config: T2IAdapterTrainingConfig,
                  progress: bool = True) -> tuple[T2IAdapter, list[float]]:
    """Train a silhouette adapter for the checkpoint at `base`; returns it (EMA weights) and
    the losses."""
    frozen = load_frozen(base)
    tokenizer = ClipTokenizer()
    with torch.no_grad():
        data = build_control_set(vae=frozen.vae, tokenizer=tokenizer, config=config.data(),
                                 progress=progress)
    torch.manual_seed(config.seed)
    adapter = adapter_for_unet(frozen.unet.config, num_res_blocks=config.num_res_blocks).train()
    alphas_cumprod = scaled_linear_alphas_cumprod(frozen.family.schedule)
    empty_ids = token_ids(tokenizer, [""])[0]

    def loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return adapter_loss(adapter=adapter, unet=frozen.unet, text_encoder=frozen.text_encoder,
                            data=data, rows=rows, scale_factor=frozen.family.vae.scale_factor,
                            alphas_cumprod=alphas_cumprod, config=config, empty_ids=empty_ids,
                            generator=generator)
    losses = train_rows(adapter, loss, steps=config.steps, batch_size=config.batch_size,
                        dataset_size=config.dataset_size, learning_rate=config.learning_rate,
                        ema_decay=config.ema_decay, seed=config.seed, desc="t2i-adapter",
                        progress=progress)
    return adapter.eval(), losses


def save_adapter(adapter: T2IAdapter, path: str | os.PathLike[str], *, base_title: str,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Write `adapter` with TencentARC's names as fp16 `.safetensors`."""
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in adapter.state_dict().items()}
    metadata = {"modelspec.title": "Easel demo silhouette T2I-Adapter",
                "modelspec.architecture": "stable-diffusion-v1/t2i-adapter",
                "easel.base_model": base_title,
                "easel.control": "silhouette: the shape in white on black where it should be"}
    return save_model_file(tensors, path, metadata)


def train_t2i_adapter(base_checkpoint: str | os.PathLike[str],
                      config: T2IAdapterTrainingConfig = T2IAdapterTrainingConfig(),
                      out: str | os.PathLike[str] = DEFAULT_OUT, *,
                      progress: bool = True) -> Path:
    """Train the silhouette adapter on `base_checkpoint` and write it to `out` (the demo
    recipe's stage); returns the written path."""
    adapter, _ = train_adapter(base=base_checkpoint, config=config, progress=progress)
    return save_adapter(adapter, out, base_title=Path(base_checkpoint).stem)


@torch.no_grad()
def generate_with_adapter(model, prompts: Sequence[str], seeds: Sequence[int], *,
                          tokenizer: ClipTokenizer, adapter: T2IAdapter | None = None,
                          maps: np.ndarray | None = None, weight: float = 1.0,
                          steps: int = 20, cfg_scale: float = 7.0) -> np.ndarray:
    """One image per (prompt, seed, map), DPM++ 2M Karras at the native size; the adapter's
    features go in through a CFG `before_model` hook, as the ControlNet extension puts its
    units in. (N, H, W, 3) uint8."""
    family = model.family
    encoder = next(iter(model.text_encoders.values()))
    context = encoder(token_ids(tokenizer, list(prompts))).hidden
    uncond = encoder(token_ids(tokenizer, [""])).hidden[0]
    side = family.native_resolution // family.vae.downscale
    noise = torch.cat([torch.randn((1, family.latent_channels, side, side),
                                   generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    table = model_sigmas(family.schedule)
    hooks = Hooks()
    if adapter is not None:
        features = adapter(hint_tensor(maps))

        def add_adapter(params) -> None:
            patch = T2IAdapterPatch(features=features, weight=weight,
                                    row_images=list(params.row_images), unet=model.unet.config)
            params.unet_kwargs["patches"] = with_patch(params.unet_kwargs.get("patches"), patch)

        hooks.before_model.append(add_adapter)
    sampler, scheduler = resolve_sampler("DPM++ 2M Karras")
    sigmas = compute_sigmas(sampler, scheduler, steps, table)
    conds = [MultiCond.single(ScheduledCond.constant(Cond(crossattn=c))) for c in context]
    cfg = CFGDenoiser(Denoiser(model.unet, sigmas=table, prediction=family.prediction), conds,
                      [ScheduledCond.constant(Cond(crossattn=uncond))] * len(prompts), cfg_scale,
                      total_steps=steps, hooks=hooks)
    latents = run_sampler(start_sampler(sampler, cfg, noise * sigmas[0], sigmas))
    images = model.vae.decode(latents / family.vae.scale_factor + family.vae.shift_factor)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo model's silhouette T2I-Adapter.")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the demo checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .safetensors to write")
    parser.add_argument("--steps", type=int, default=T2IAdapterTrainingConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = T2IAdapterTrainingConfig(steps=args.steps, seed=args.seed)
    path = train_t2i_adapter(args.base, config, args.out)
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
