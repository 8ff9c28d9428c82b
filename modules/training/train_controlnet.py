"""Training a tiny ControlNet on the demo model: a silhouette map that fixes where the shape goes.

The control image is the shape's silhouette (white on black) at the place and size the
picture should have it. The ControlNet (Zhang et al., 2023; `modules.nn.controlnet`)
starts as a copy of the demo U-Net's encoder with zero convolutions, so training
starts from the unchanged model; the U-Net and the text encoder stay frozen and only
the ControlNet learns, through the usual eps-prediction loss with its residuals added.

To make the map win over the words, half of the training captions name a *different*
position than the picture has (and some name none): the only reliable source of the
position is then the map. Shape, colour and background still come from the caption.

    python -m modules.training.train_controlnet \\
        --out models/ControlNet/easel-demo-silhouette.safetensors
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

from modules.conditioning.tokenizer import ClipTokenizer
from modules.nn.controlnet import ControlNet, ControlNetConfig
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.captions import token_ids
from modules.training.checkpoint import save_model_file
from modules.training.frozen_base import load_frozen, min_snr_mse, train_rows
from modules.training.shapes import (
    POSITION_JITTER,
    POSITIONS,
    SIZE_JITTER,
    ShapeLabels,
    caption_for,
    random_truth,
    render,
)
from modules.training.train_vae import encode_latents

DEFAULT_BASE = Path("models/Stable-diffusion/easel-demo.safetensors")
DEFAULT_OUT = Path("models/ControlNet/easel-demo-silhouette.safetensors")
LDM_PREFIX = "control_model."
# The encoder parts a ControlNet shares with its U-Net, copied at the start.
SHARED_PREFIXES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")


@dataclass(frozen=True, kw_only=True)
class ControlNetTrainingConfig:
    """How long and on what to train the silhouette ControlNet."""

    steps: int = 1500
    batch_size: int = 32
    dataset_size: int = 4096
    learning_rate: float = 5e-4
    caption_dropout: float = 0.1
    # Fraction of captions naming another position than the picture's, and naming none.
    position_mismatch: float = 0.5
    position_omitted: float = 0.15
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.99
    resolution: int = 64
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ControlSet:
    """Encoded training set: latents, silhouettes in [0, 1] and caption token ids."""

    means: torch.Tensor
    stds: torch.Tensor
    hints: torch.Tensor  # (N, 3, H, W)
    token_ids: torch.Tensor  # (N, 77)


def silhouette(truth: ShapeLabels, *, resolution: int, offset: tuple[float, float] = (0.0, 0.0),
               scale: float = 1.0) -> np.ndarray:
    """The control map of `truth`: its shape in white on black, (H, W, 3) uint8."""
    mask = ShapeLabels(shape=truth.shape, color="white", background="black",
                       position=truth.position, size=truth.size)
    return render(mask, resolution=resolution, offset=offset, scale=scale)


def hint_tensor(maps: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 maps -> (N, 3, H, W) float in [0, 1], as ControlNets take them."""
    return torch.from_numpy(np.ascontiguousarray(maps)).permute(0, 3, 1, 2).float() / 255.0


def training_caption(truth: ShapeLabels, rng: np.random.Generator,
                     config: ControlNetTrainingConfig) -> str:
    """A caption true in shape, colours and size, whose position is often wrong or absent."""
    draw = rng.random()
    position = truth.position
    if draw < config.position_mismatch:
        others = [p for p in POSITIONS if p != truth.position]
        position = others[rng.integers(len(others))]
    elif draw < config.position_mismatch + config.position_omitted:
        position = None
    return caption_for(ShapeLabels(shape=truth.shape, color=truth.color,
                                   background=truth.background, position=position, size=truth.size))


def make_control_sample(seed: int, index: int, config: ControlNetTrainingConfig
                        ) -> tuple[np.ndarray, np.ndarray, str]:
    """Image, silhouette and caption number `index` (a pure function of seed and index)."""
    rng = np.random.default_rng([seed, index, 7])
    truth = random_truth(rng)
    offset = tuple(rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    image = render(truth, resolution=config.resolution, offset=offset, scale=scale)
    hint = silhouette(truth, resolution=config.resolution, offset=offset, scale=scale)
    return image, hint, training_caption(truth, rng, config)


def build_control_set(*, vae, tokenizer: ClipTokenizer, config: ControlNetTrainingConfig,
                      progress: bool = False) -> ControlSet:
    """Render, encode and tokenise `config.dataset_size` training samples."""
    samples = [make_control_sample(config.seed, i, config) for i in range(config.dataset_size)]
    images = np.stack([s[0] for s in samples])
    means, stds = encode_latents(vae, images, progress=progress)
    return ControlSet(means=means, stds=stds, hints=hint_tensor(np.stack([s[1] for s in samples])),
                      token_ids=token_ids(tokenizer, [s[2] for s in samples]))


def controlnet_from_unet(unet) -> ControlNet:
    """A ControlNet whose encoder is a copy of `unet`'s and whose zero convolutions are zero."""
    controlnet = ControlNet(config=ControlNetConfig.for_unet(unet.config))
    shared = {k: v for k, v in unet.state_dict().items() if k.startswith(SHARED_PREFIXES)}
    missing = controlnet.load_state_dict(shared, strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"U-Net tensors without a ControlNet slot: {missing.unexpected_keys[:5]}")
    with torch.no_grad():
        for conv in [*controlnet.zero_convs, controlnet.middle_block_out]:
            conv[0].weight.zero_()
            conv[0].bias.zero_()
    return controlnet


def control_loss(*, controlnet: ControlNet, unet, text_encoder, data: ControlSet,
                 rows: torch.Tensor, scale_factor: float, alphas_cumprod: torch.Tensor,
                 config: ControlNetTrainingConfig,
                 empty_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted eps MSE of the frozen U-Net steered by the ControlNet, on `rows`."""
    noise = torch.randn(data.means[rows].shape, generator=generator)
    latents = scale_factor * (data.means[rows] + data.stds[rows] * noise)
    ids = data.token_ids[rows].clone()
    ids[torch.rand(len(rows), generator=generator) < config.caption_dropout] = empty_ids
    with torch.no_grad():
        context = text_encoder(ids).hidden
    timesteps = torch.randint(len(alphas_cumprod), (len(rows),), generator=generator)
    eps = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    residuals = controlnet(noisy, data.hints[rows], timesteps, context)
    prediction = unet(noisy, timesteps, context, control=residuals)
    return min_snr_mse(prediction, eps, abar, config.min_snr_gamma)


def train_controlnet(*, base: str | os.PathLike[str], config: ControlNetTrainingConfig,
                     progress: bool = True) -> tuple[ControlNet, list[float]]:
    """Train a silhouette ControlNet for the checkpoint at `base`; returns it (EMA weights) and
    the losses."""
    frozen = load_frozen(base)
    tokenizer = ClipTokenizer()
    with torch.no_grad():
        data = build_control_set(vae=frozen.vae, tokenizer=tokenizer, config=config,
                                 progress=progress)
    torch.manual_seed(config.seed)
    controlnet = controlnet_from_unet(frozen.unet).train()
    alphas_cumprod = scaled_linear_alphas_cumprod(frozen.family.schedule)
    empty_ids = token_ids(tokenizer, [""])[0]

    def loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return control_loss(controlnet=controlnet, unet=frozen.unet,
                            text_encoder=frozen.text_encoder, data=data, rows=rows,
                            scale_factor=frozen.family.vae.scale_factor,
                            alphas_cumprod=alphas_cumprod, config=config, empty_ids=empty_ids,
                            generator=generator)
    losses = train_rows(controlnet, loss, steps=config.steps, batch_size=config.batch_size,
                        dataset_size=config.dataset_size, learning_rate=config.learning_rate,
                        ema_decay=config.ema_decay, seed=config.seed, desc="controlnet",
                        progress=progress)
    return controlnet.eval(), losses


def save_controlnet(controlnet: ControlNet, path: str | os.PathLike[str], *, base_title: str,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write `controlnet` in the LDM layout (`control_model.` names) as fp16 `.safetensors`."""
    path = Path(path)
    tensors = {LDM_PREFIX + k: v.detach().to(dtype).contiguous()
               for k, v in controlnet.state_dict().items()}
    metadata = {"modelspec.title": "Easel demo silhouette ControlNet",
                "modelspec.architecture": "stable-diffusion-v1/controlnet",
                "easel.base_model": base_title,
                "easel.control": "silhouette: the shape in white on black where it should be"}
    return save_model_file(tensors, path, metadata)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo model's silhouette ControlNet.")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the demo checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the .safetensors to write")
    parser.add_argument("--steps", type=int, default=ControlNetTrainingConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = ControlNetTrainingConfig(steps=args.steps, seed=args.seed)
    controlnet, _ = train_controlnet(base=args.base, config=config)
    path = save_controlnet(controlnet, args.out, base_title=args.base.stem)
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
