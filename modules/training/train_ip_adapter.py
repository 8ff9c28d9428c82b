"""Training a tiny IP-Adapter on the demo model: a reference picture that gives the colour.

IP-Adapter (Ye et al., 2023; `modules.nn.ip_adapter`) reads a reference picture through a
frozen CLIP image encoder and adds decoupled cross-attention to image tokens in every
attn2 layer of the frozen U-Net. Here:

1. the image encoder is a tiny transformers `CLIPVisionModelWithProjection` (32x32
   pictures, patches of 8, 2 layers of width 64), seeded and briefly trained to name the
   shape, its colour, the background and the position of demo pictures from its
   `image_embeds` (linear heads, thrown away), then frozen and shipped beside the adapter
   (`models/clip_vision/`), as the real adapters ship with their CLIP encoder;
2. the plain adapter (4 tokens) learns, with the demo U-Net, its text encoder and the
   image encoder frozen, the usual eps loss on pictures whose caption names no colour,
   with the image tokens of *another* picture of the same colour (other shape, place,
   size and background). The only source of the colour is then the reference.
   `to_k_ip` / `to_v_ip` start as copies of each layer's `to_k` / `to_v` (the paper's
   initialisation); 10 % of the samples drop the picture (zero image embeds, which is
   what the negative rows get at inference) and 10 % the caption.

    python -m modules.training.train_ip_adapter \\
        --out models/ControlNet/easel-demo-ip-adapter.safetensors \\
        --encoder-out models/clip_vision/easel-demo-clip-vision.safetensors
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
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.ip_adapter_files import adapter_state_to_file
from modules.models.loader import inspect_checkpoint
from modules.nn.ip_adapter import (
    IPAdapter,
    IPAdapterConfig,
    IPAdapterPatch,
    clip_pixels,
    cross_attention_layers,
)
from modules.nn.unet_patches import UNetPatches
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.captions import token_ids
from modules.training.checkpoint import save_model_file
from modules.training.evaluate import load_model
from modules.training.loop import EMA, Trainer
from modules.training.shapes import (
    COLORS,
    POSITION_JITTER,
    POSITIONS,
    SHAPES,
    SIZE_JITTER,
    ShapeLabels,
    article,
    random_truth,
    render,
)
from modules.training.train_vae import encode_latents

DEFAULT_BASE = Path("models/Stable-diffusion/easel-demo.safetensors")
DEFAULT_OUT = Path("models/ControlNet/easel-demo-ip-adapter.safetensors")
DEFAULT_ENCODER_OUT = Path("models/clip_vision/easel-demo-clip-vision.safetensors")
ENCODER_HEADS = 4


@dataclass(frozen=True, kw_only=True)
class IPAdapterTrainingConfig:
    """How long and on what to train the encoder and the adapter."""

    steps: int = 600
    batch_size: int = 32
    dataset_size: int = 2048
    learning_rate: float = 1e-3
    image_dropout: float = 0.1
    caption_dropout: float = 0.1
    background_omitted: float = 0.5
    n_tokens: int = 4
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.98
    encoder_steps: int = 400
    encoder_learning_rate: float = 2e-3
    resolution: int = 64
    seed: int = 0


def encoder_config():
    """The tiny CLIP image encoder: 32x32 pictures, 16 patches, width 64, 2 layers."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=64, intermediate_size=128, projection_dim=64,
                            num_hidden_layers=2, num_attention_heads=ENCODER_HEADS,
                            image_size=32, patch_size=8, hidden_act="gelu")


def jittered(truth: ShapeLabels, rng: np.random.Generator, resolution: int) -> np.ndarray:
    offset = tuple(rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2))
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    return render(truth, resolution=resolution, offset=offset, scale=scale)


def same_colour_reference(truth: ShapeLabels, rng: np.random.Generator) -> ShapeLabels:
    """Another random picture whose shape has `truth`'s colour."""
    other = random_truth(rng)
    backgrounds = [c for c in COLORS if c != truth.color]
    return ShapeLabels(shape=other.shape, color=truth.color,
                       background=backgrounds[rng.integers(len(backgrounds))],
                       position=other.position, size=other.size)


def colourless_caption(truth: ShapeLabels, *, with_background: bool) -> str:
    """'a large circle in the center' (+ ' on a blue background'): never the shape's colour."""
    words = " ".join(w for w in (truth.size, truth.shape) if w)
    text = f"{article(words)} {words}"
    if truth.position == "center":
        text += " in the center"
    elif truth.position is not None:
        text += f" at the {truth.position}"
    if with_background:
        text += f" on {article(truth.background)} {truth.background} background"
    return text


def pixels_of(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """CLIP-preprocessed (N, 3, size, size) pictures, as `encode_reference` makes them."""
    return torch.cat([clip_pixels(Image.fromarray(image), size) for image in images])


def train_encoder(config: IPAdapterTrainingConfig, *, progress: bool = False):
    """The tiny image encoder, seeded, trained to name the four attributes, then frozen."""
    from transformers import CLIPVisionModelWithProjection

    torch.manual_seed(config.seed + 11)
    encoder = CLIPVisionModelWithProjection(encoder_config())
    rng = np.random.default_rng([config.seed, 11])
    truths = [random_truth(rng) for _ in range(config.dataset_size)]
    pixels = pixels_of([jittered(t, rng, config.resolution) for t in truths],
                       encoder.config.image_size)
    names = {"shape": SHAPES, "color": COLORS, "background": COLORS,
             "position": tuple(POSITIONS)}
    labels = {key: torch.tensor([values.index(getattr(t, key)) for t in truths])
              for key, values in names.items()}
    width = encoder.config.projection_dim
    heads = torch.nn.ModuleDict({key: torch.nn.Linear(width, len(values))
                                 for key, values in names.items()})
    trainer = Trainer(parameters=[*encoder.parameters(), *heads.parameters()],
                      learning_rate=config.encoder_learning_rate,
                      total_steps=config.encoder_steps, warmup_steps=20)
    generator = torch.Generator().manual_seed(config.seed + 12)
    encoder.train()
    for _ in tqdm(range(config.encoder_steps), desc="encoder", disable=not progress,
                  mininterval=2.0):
        rows = torch.randint(len(truths), (64,), generator=generator)
        embeds = encoder(pixels[rows]).image_embeds
        loss = sum(F.cross_entropy(head(embeds), labels[key][rows])
                   for key, head in heads.items())
        trainer.step(loss)
    return encoder.eval().requires_grad_(False)


@dataclass(frozen=True, kw_only=True)
class ReferenceSet:
    """Encoded training set: latents, the references' image_embeds, caption token ids."""

    means: torch.Tensor
    stds: torch.Tensor
    embeds: torch.Tensor  # (N, projection_dim)
    token_ids: torch.Tensor  # (N, 77)


def build_reference_set(*, vae, encoder, tokenizer: ClipTokenizer,
                        config: IPAdapterTrainingConfig, progress: bool = False) -> ReferenceSet:
    images, references, captions = [], [], []
    for index in range(config.dataset_size):
        rng = np.random.default_rng([config.seed, index, 13])
        truth = random_truth(rng)
        images.append(jittered(truth, rng, config.resolution))
        references.append(jittered(same_colour_reference(truth, rng), rng, config.resolution))
        captions.append(colourless_caption(
            truth, with_background=bool(rng.random() >= config.background_omitted)))
    means, stds = encode_latents(vae, np.stack(images), progress=progress)
    pixels = pixels_of(references, encoder.config.image_size)
    embeds = torch.cat([encoder(pixels[i:i + 256]).image_embeds
                        for i in range(0, len(pixels), 256)])
    return ReferenceSet(means=means, stds=stds, embeds=embeds,
                        token_ids=token_ids(tokenizer, captions))


def adapter_for(unet, *, image_dim: int, n_tokens: int) -> IPAdapter:
    """A plain adapter whose image keys / values start as the U-Net's text ones."""
    base = unet.config
    layers = cross_attention_layers(base)
    config = IPAdapterConfig(kind="plain", image_dim=image_dim, context_dim=base.context_dim,
                             n_tokens=n_tokens, layer_widths=tuple(w for _, w in layers))
    adapter = IPAdapter(config=config, base=base)
    attn2 = [module for name, module in unet.named_modules() if name.endswith(".attn2")]
    if len(attn2) != len(layers):  # named_modules order: input, middle, output blocks
        raise ValueError(f"{len(attn2)} attn2 modules for {len(layers)} adapter layers")
    by_key = dict(zip(_module_keys(unet), attn2, strict=True))
    with torch.no_grad():
        for key, index in adapter.layer_index.items():
            adapter.layers[index].to_k_ip.weight.copy_(by_key[key].to_k.weight)
            adapter.layers[index].to_v_ip.weight.copy_(by_key[key].to_v.weight)
    return adapter


def _module_keys(unet) -> list[tuple[str, int, int]]:
    """(stage, block, transformer) of each attn2 module in `named_modules` order."""
    keys = []
    for name, _ in unet.named_modules():
        if not name.endswith(".attn2"):
            continue
        parts = name.split(".")
        if parts[0] == "middle_block":
            keys.append(("middle", 0, int(parts[3])))
        else:
            stage = "input" if parts[0] == "input_blocks" else "output"
            keys.append((stage, int(parts[1]), int(parts[4])))
    return keys


def ip_loss(*, adapter: IPAdapter, unet, text_encoder, data: ReferenceSet, rows: torch.Tensor,
            scale_factor: float, alphas_cumprod: torch.Tensor, config: IPAdapterTrainingConfig,
            empty_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Min-SNR-weighted eps MSE of the frozen U-Net with the adapter's decoupled attention."""
    noise = torch.randn(data.means[rows].shape, generator=generator)
    latents = scale_factor * (data.means[rows] + data.stds[rows] * noise)
    ids = data.token_ids[rows].clone()
    ids[torch.rand(len(rows), generator=generator) < config.caption_dropout] = empty_ids
    embeds = data.embeds[rows].clone()
    embeds[torch.rand(len(rows), generator=generator) < config.image_dropout] = 0.0
    with torch.no_grad():
        context = text_encoder(ids).hidden
    timesteps = torch.randint(len(alphas_cumprod), (len(rows),), generator=generator)
    eps = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    tokens = adapter.image_tokens(embeds)
    patch = IPAdapterPatch(adapter=adapter, cond_tokens=tokens, uncond_tokens=tokens,
                           weight=1.0, row_images=list(range(len(rows))),
                           row_is_uncond=[False] * len(rows))
    prediction = unet(noisy, timesteps, context, patches=UNetPatches((patch,)))
    per_sample = (prediction - eps).pow(2).mean(dim=(1, 2, 3))
    snr = abar.flatten() / (1 - abar.flatten())
    return (per_sample * snr.clamp(max=config.min_snr_gamma) / snr).mean()


def train_ip_adapter(*, base: str | os.PathLike[str], config: IPAdapterTrainingConfig,
                     progress: bool = True):
    """Train the encoder, then the adapter; returns (adapter (EMA weights), encoder, losses)."""
    _, family = inspect_checkpoint(base)
    model = load_model(base)
    unet, vae = model.model.diffusion_model, model.first_stage_model
    text_encoder = model.text_encoders[family.text_encoders[0].name]
    for frozen in (unet, vae, text_encoder):
        frozen.requires_grad_(False)
    encoder = train_encoder(config, progress=progress)
    tokenizer = ClipTokenizer()
    with torch.no_grad():
        data = build_reference_set(vae=vae, encoder=encoder, tokenizer=tokenizer, config=config,
                                   progress=progress)
    torch.manual_seed(config.seed)
    adapter = adapter_for(unet, image_dim=encoder.config.projection_dim,
                          n_tokens=config.n_tokens).train()
    trainer = Trainer(parameters=adapter.parameters(), learning_rate=config.learning_rate,
                      total_steps=config.steps, warmup_steps=min(50, config.steps // 10 + 1))
    ema = EMA(modules=[adapter], decay=config.ema_decay)
    alphas_cumprod = scaled_linear_alphas_cumprod(family.schedule)
    generator = torch.Generator().manual_seed(config.seed + 2)
    empty_ids = token_ids(tokenizer, [""])[0]
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="ip-adapter", disable=not progress, mininterval=2.0)
    for _ in bar:
        rows = torch.randint(config.dataset_size, (config.batch_size,), generator=generator)
        loss = ip_loss(adapter=adapter, unet=unet, text_encoder=text_encoder, data=data,
                       rows=rows, scale_factor=family.vae.scale_factor,
                       alphas_cumprod=alphas_cumprod, config=config, empty_ids=empty_ids,
                       generator=generator)
        losses.append(trainer.step(loss))
        ema.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    ema.copy_to_modules()
    return adapter.eval().requires_grad_(False), encoder, losses


def save_ip_adapter(adapter: IPAdapter, path: str | os.PathLike[str], *, base_title: str,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write the adapter in the IP-Adapter layout (`image_proj.*`, `ip_adapter.<n>.*`)."""
    tensors = {k: v.detach().to(dtype).contiguous()
               for k, v in adapter_state_to_file(adapter).items()}
    metadata = {"modelspec.title": "Easel demo IP-Adapter",
                "modelspec.architecture": "stable-diffusion-v1/ip-adapter",
                "easel.base_model": base_title,
                "easel.image_encoder": DEFAULT_ENCODER_OUT.name}
    return save_model_file(tensors, Path(path), metadata)


def save_encoder(encoder, path: str | os.PathLike[str]) -> Path:
    """Write the image encoder's state dict (fp16) with the head count in the metadata."""
    tensors = {k: v.detach().to(torch.float16).contiguous()
               for k, v in encoder.state_dict().items() if not k.endswith("position_ids")}
    metadata = {"modelspec.title": "Easel demo CLIP image encoder",
                "num_attention_heads": str(encoder.config.num_attention_heads),
                "hidden_act": encoder.config.hidden_act}
    return save_model_file(tensors, Path(path), metadata)


EVAL_PROMPT = "a large circle in the center"


def evaluation_references(count: int = 16, *, seed: int = 4321,
                          resolution: int = 64) -> list[tuple[str, np.ndarray]]:
    """(colour, picture) references cycling through the colours, other shapes and places."""
    rng = np.random.default_rng(seed)
    references = []
    for index in range(count):
        truth = same_colour_reference(
            ShapeLabels(shape="circle", color=COLORS[index % len(COLORS)], background="black"),
            rng)
        references.append((truth.color, jittered(truth, rng, resolution)))
    return references


@torch.no_grad()
def generate_with_reference(model, adapter: IPAdapter | None, tokens, *, prompt: str,
                            seeds: Sequence[int], tokenizer: ClipTokenizer,
                            steps: int = 20, cfg_scale: float = 7.0,
                            weight: float = 1.0) -> np.ndarray:
    """Images of `prompt` (one per seed) with CFG, the adapter's patch on both halves of
    every U-Net call (reference tokens on the prompt rows, "no image" on the negative
    rows) when `adapter` is given: (N, H, W, 3) uint8."""
    from modules.sampling.base import run_sampler
    from modules.sampling.denoiser import Denoiser, model_sigmas
    from modules.sampling.registry import compute_sigmas, resolve_sampler, start_sampler

    family = model.family
    encoder = next(iter(model.text_encoders.values()))
    n = len(seeds)
    context = encoder(token_ids(tokenizer, [prompt])).hidden.expand(n, -1, -1)
    uncond = encoder(token_ids(tokenizer, [""])).hidden.expand(n, -1, -1)
    side = family.native_resolution // family.vae.downscale
    noise = torch.cat([torch.randn((1, family.latent_channels, side, side),
                                   generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    table = model_sigmas(family.schedule)
    denoiser = Denoiser(model.unet, sigmas=table, prediction=family.prediction)
    extra = {}
    if adapter is not None:
        cond_tokens, uncond_tokens = tokens
        extra["patches"] = UNetPatches((IPAdapterPatch(
            adapter=adapter, cond_tokens=cond_tokens, uncond_tokens=uncond_tokens, weight=weight,
            row_images=[0] * (2 * n), row_is_uncond=[False] * n + [True] * n),))

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        context=torch.cat([context, uncond]), **extra)
        cond, unc = both.chunk(2)
        return unc + cfg_scale * (cond - unc)

    sampler, scheduler = resolve_sampler("DPM++ 2M Karras")
    sigmas = compute_sigmas(sampler, scheduler, steps, table)
    latents = run_sampler(start_sampler(sampler, guided, noise * sigmas[0], sigmas))
    images = model.vae.decode(latents / family.vae.scale_factor + family.vae.shift_factor)
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def measure(*, base: str | os.PathLike[str], adapter_path: str | os.PathLike[str],
            encoder_folder: str | os.PathLike[str], references: int = 16,
            seeds: Sequence[int] = (0, 1, 2, 3), weight: float = 1.0) -> dict[str, float]:
    """Fraction of images whose shape has the reference's colour, with and without the
    adapter (prompt `EVAL_PROMPT`, no colour named), judged by the pixel checker."""
    from modules.models.ip_adapter_files import find_clip_vision, load_clip_vision, load_ip_adapter
    from modules.nn.ip_adapter import encode_reference
    from modules.training.checker import analyze_image

    model = load_model(base)
    adapter = load_ip_adapter(adapter_path, base=model.family.unet)
    encoder = load_clip_vision(find_clip_vision(encoder_folder, adapter))
    tokenizer = ClipTokenizer()
    plain = [analyze_image(image).color for image in generate_with_reference(
        model, None, None, prompt=EVAL_PROMPT, seeds=seeds, tokenizer=tokenizer)]
    hits = misses_plain = total = 0
    for colour, picture in evaluation_references(references):
        tokens = encode_reference(encoder, adapter, Image.fromarray(picture))
        images = generate_with_reference(model, adapter, tokens, prompt=EVAL_PROMPT,
                                         seeds=seeds, tokenizer=tokenizer, weight=weight)
        hits += sum(analyze_image(image).color == colour for image in images)
        misses_plain += sum(found == colour for found in plain)
        total += len(seeds)
    return {"with": hits / total, "without": misses_plain / total, "images": total}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the demo model's IP-Adapter and its "
                                                 "image encoder.")
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE, help="the demo checkpoint")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the adapter to write")
    parser.add_argument("--encoder-out", type=Path, default=DEFAULT_ENCODER_OUT,
                        help="the image encoder to write")
    parser.add_argument("--steps", type=int, default=IPAdapterTrainingConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = IPAdapterTrainingConfig(steps=args.steps, seed=args.seed)
    adapter, encoder, _ = train_ip_adapter(base=args.base, config=config)
    args.encoder_out.parent.mkdir(parents=True, exist_ok=True)
    encoder_path = save_encoder(encoder, args.encoder_out)
    path = save_ip_adapter(adapter, args.out, base_title=args.base.stem)
    minutes = (time.perf_counter() - start) / 60
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {encoder_path} "
          f"({encoder_path.stat().st_size / 1e6:.2f} MB) in {minutes:.1f} min")


if __name__ == "__main__":
    main()
